#!/usr/bin/env python3
"""Long streams: memory, publish → ack latency, restart and replay, Stork beside nats-server in one run.

For each server (one `stork serve` node on the file store, one `nats-server -js`), with the nats.go load generator
(`Benchmarks/anchors/natsgo`, modes `jspub` and `jsreplay`):

1. start it empty and read its resident memory (RSS, /proc/<pid>/status);
2. store `--messages` messages of `--size` bytes in one file stream with async publishes (`--pending` acks in
   flight): the rate, publish → ack latency p50 / p99 / max, and every client error (a stalled publisher is one);
3. RSS with the stream stored;
   Then `--paced` more at `--rate` msgs/s: publish → ack latency at a steady rate on the long stream;
4. replay `--replay` messages with a pull consumer and acks from the start of the stream and from its end;
5. stop it (SIGTERM), start it again, and time from the spawn until `STREAM.INFO` answers with every message;
6. RSS after the restart.

    swift build -c release --product stork
    Benchmarks/anchors/natsgo/build.sh /tmp/natsgo-load
    Benchmarks/streams/streams.py --stork .build/release/stork --natsgo /tmp/natsgo-load --messages 20000000

Prints a line per step and a Markdown table with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import nats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchkit import HOST, ServerProcess  # noqa: E402

STREAM = "LOAD"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Server(ServerProcess):
    name = ""

    def start(self) -> float:
        """Starts it; returns when (monotonic seconds), for the start-up time."""
        super().start()
        return time.monotonic()

    def stop(self, timeout: float = 120) -> None:
        super().stop(timeout)


class StorkServer(Server):
    name = "Stork"

    def __init__(self, workdir: str, binary: str):
        super().__init__(workdir)
        self.binary = binary

    def command(self) -> List[str]:
        return [
            self.binary, "serve", "--name", "streams", "--bind", f"{HOST}:{self.cluster_port}",
            "--http", f"{HOST}:{self.http_port}", "--nats", f"{HOST}:{self.nats_port}",
            "--data", os.path.join(self.workdir, "data"), "--log-level", "warning",
        ]


class NatsServer(Server):
    name = "nats-server"

    def __init__(self, workdir: str, binary: str):
        super().__init__(workdir)
        self.binary = binary

    def command(self) -> List[str]:
        return [self.binary, "-a", HOST, "-p", str(self.nats_port), "-js", "-sd", os.path.join(self.workdir, "js")]


async def quiet(_error) -> None:
    pass


def listening(url: str) -> bool:
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


async def stream_messages(url: str) -> Optional[int]:
    """The number of messages of the stream, or None while the server does not answer."""
    if not listening(url):
        return None
    try:
        client = await nats.connect(
            url, connect_timeout=1, max_reconnect_attempts=0, allow_reconnect=False, error_cb=quiet
        )
    except Exception:
        return None
    try:
        info = await client.jetstream(timeout=2).stream_info(STREAM)
        return info.state.messages
    except Exception:
        return None
    finally:
        await client.close()


def wait_for_stream(url: str, messages: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(stream_messages(url)) == messages:
            return True
        time.sleep(0.02)
    return False


def natsgo(binary: str, *arguments: str) -> Dict:
    out = subprocess.run([binary, *arguments], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        return {"errors": [f"exit {out.returncode}: {out.stderr.strip()[-500:]}"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(server: Server, args) -> Dict:
    row: Dict = {"server": server.name}
    server.start()
    wait_for_ready(server)
    time.sleep(1)
    row["rss_empty"] = rss_mib(server.proc.pid)
    published = natsgo(
        args.natsgo, "-mode", "jspub", "-pub", server.url, "-sub", server.url, "-stream", STREAM,
        "-n", str(args.messages), "-size", str(args.size), "-pending", str(args.pending),
    )
    print(f"{server.name}: publish {json.dumps(published)}", flush=True)
    row["publish"] = published
    if args.paced > 0:
        paced = natsgo(
            args.natsgo, "-mode", "jspub", "-pub", server.url, "-sub", server.url, "-stream", STREAM,
            "-n", str(args.paced), "-size", str(args.size), "-pending", str(args.pending), "-rate", str(args.rate),
        )
        print(f"{server.name}: paced {json.dumps(paced)}", flush=True)
        row["paced"] = paced
    time.sleep(1)
    row["rss_stored"] = rss_mib(server.proc.pid)
    stored = asyncio.run(stream_messages(server.url)) or 0
    row["stored"] = stored
    replay = min(args.replay, stored)
    if replay > 0:
        for where, start in (("replay_start", 1), ("replay_end", stored - replay + 1)):
            result = natsgo(
                args.natsgo, "-mode", "jsreplay", "-pub", server.url, "-sub", server.url, "-stream", STREAM,
                "-n", str(replay), "-start", str(start),
            )
            print(f"{server.name}: {where} {json.dumps(result)}", flush=True)
            row[where] = result
    server.stop()
    spawned = server.start()
    if wait_for_stream(server.url, stored, timeout=600):
        row["startup"] = time.monotonic() - spawned
    time.sleep(1)
    row["rss_restarted"] = rss_mib(server.proc.pid)
    server.stop()
    print(f"{server.name}: {json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)})}", flush=True)
    return row


def wait_for_ready(server: Server, timeout: float = 60) -> None:
    async def connects() -> bool:
        if not listening(server.url):
            return False
        try:
            client = await nats.connect(
                server.url, connect_timeout=1, max_reconnect_attempts=0, allow_reconnect=False, error_cb=quiet
            )
        except Exception:
            return False
        await client.close()
        return True

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(connects()):
            return
        time.sleep(0.1)
    raise SystemExit(f"{server.name} did not start")


def table(rows: List[Dict]) -> str:
    def number(value, unit="", digits=0) -> str:
        return "–" if value is None else f"{value:,.{digits}f}{unit}"

    lines = [
        "| server | stored | errors | publish msgs/s | ack p50 / p99 / max | paced: msgs/s, ack p50 / p99 / max "
        "| RSS empty → stored → restarted | start-up | replay msgs/s at start / end |",
        "|---|---:|---:|---:|---|---|---|---:|---|",
    ]
    for row in rows:
        p = row.get("publish", {})
        q = row.get("paced", {})
        rs, re_ = row.get("replay_start", {}), row.get("replay_end", {})
        lines.append(
            f"| {row['server']} | {row.get('stored', 0):,} | {len(p.get('errors') or [])} | {number(p.get('rate'))} | "
            f"{number(p.get('p50_us', 0) / 1000, ' ms', 1)} / {number(p.get('p99_us', 0) / 1000, ' ms', 1)} / "
            f"{number(p.get('max_us', 0) / 1000, ' ms', 1)} | {number(q.get('rate'))}, "
            f"{number(q.get('p50_us', 0) / 1000, ' ms', 1)} / {number(q.get('p99_us', 0) / 1000, ' ms', 1)} / "
            f"{number(q.get('max_us', 0) / 1000, ' ms', 1)} ({len(q.get('errors') or [])} errors) | "
            f"{number(row.get('rss_empty'), ' MiB')} → "
            f"{number(row.get('rss_stored'), ' MiB')} → {number(row.get('rss_restarted'), ' MiB')} | "
            f"{number(row.get('startup'), ' s', 2)} | {number(rs.get('rate'))} / {number(re_.get('rate'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stork", required=True)
    parser.add_argument("--nats-server", default=shutil.which("nats-server") or "nats-server")
    parser.add_argument("--natsgo", default="/tmp/natsgo-load")
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--pending", type=int, default=4096)
    parser.add_argument("--replay", type=int, default=200_000)
    parser.add_argument("--paced", type=int, default=1_000_000, help="then publish this many more at --rate")
    parser.add_argument("--rate", type=float, default=300_000)
    parser.add_argument("--only", choices=["stork", "nats-server"])
    args = parser.parse_args()
    load = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix="stork-streams-bench-")
    rows = []
    try:
        servers = [NatsServer(os.path.join(workdir, "nats"), args.nats_server), StorkServer(os.path.join(workdir, "stork"), args.stork)]
        for server in servers:
            if args.only and server.name.lower() != args.only:
                continue
            try:
                rows.append(measure(server, args))
            finally:
                server.stop()
                shutil.rmtree(server.workdir, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.messages:,} messages of {args.size} B, {args.pending} async publishes in flight; "
          f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
