"""What the benchmark scripts share: free loopback ports and a server process with a work directory of its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from typing import List, Optional

HOST = "127.0.0.1"


def free_ports(count: int) -> List[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind((HOST, 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


class ServerProcess:
    """A server (`command()`) with a NATS, an HTTP and a cluster port, logging to `<workdir>/log`."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.proc: Optional[subprocess.Popen] = None
        self.nats_port, self.cluster_port, self.http_port = free_ports(3)

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.nats_port}"

    def command(self) -> List[str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(os.path.join(self.workdir, "log"), "a") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
