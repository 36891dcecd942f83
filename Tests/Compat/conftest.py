"""Server fixtures for the NATS compatibility suite.

The same tests run against the real nats-server (the reference behaviour) and
against Stork.  Choose with the environment variable ``COMPAT_SERVER``:

* ``nats-server`` (default): runs ``$NATS_SERVER_BIN`` (default: ``nats-server``
  from PATH, falling back to /usr/sbin/nats-server) with a generated config file.
* ``stork``: runs ``$STORK_BIN serve --config FILE`` (default
  /work/main/.build/debug/stork) with a generated YAML config.

Every server listens on 127.0.0.1 only, on free ports picked in 10000-29999,
with its own temporary data directory.  Teardown kills every process started,
whatever the outcome of the test.

``COMPAT_SPREAD=1`` (opt-in) runs the core tests against a three-node cluster
instead of one server: the ``server`` a test gets is a ``SpreadServer`` whose
``url``/``port`` hand out the cluster's nodes round-robin, one per new client
connection, so the publishers and subscribers of a test land on different nodes.
Tests that subscribe on one connection and publish on another wait for the
interest to cross nodes with ``spread_interest`` / ``spread_interest_before`` /
``spread_responder`` (no-ops without COMPAT_SPREAD).  Tests about one server's own
behaviour are marked ``spread_skip(reason)`` (skipped in spread mode) or
``@pytest.mark.spread_one_node(reason)`` (every client on node n1 of the cluster).
See "Spread mode" below and README.md.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import pytest_asyncio

HOST = "127.0.0.1"
PORT_RANGE = (10000, 29999)
READY_TIMEOUT = 15.0  # seconds to wait for a (re)started server to accept clients
STOP_TIMEOUT = 10.0  # seconds to wait for a graceful stop before SIGKILL

COMPAT_SERVER = os.environ.get("COMPAT_SERVER", "nats-server").strip().lower()
if COMPAT_SERVER not in ("nats-server", "stork"):
    raise pytest.UsageError(f"COMPAT_SERVER must be 'nats-server' or 'stork', not {COMPAT_SERVER!r}")

# Opt-in: core tests against a 3-node cluster, client connections spread round-robin.
SPREAD = os.environ.get("COMPAT_SPREAD", "").strip().lower() not in ("", "0", "false", "no", "off")
SPREAD_NODES = 3
SPREAD_EXTRA_TIMEOUT = 60  # seconds added to a spread test's timeout: starting the cluster
SPREAD_INTEREST_TIMEOUT = 15.0  # seconds for a subscription on one node to be known on another


# --------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------

_handed_out: set = set()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> List[int]:
    """Pick `count` distinct free loopback ports in PORT_RANGE (checked by binding)."""
    ports: List[int] = []
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(5000):
        if len(ports) == count:
            break
        p = rng.randint(*PORT_RANGE)
        if p in ports or p in _handed_out:
            continue
        if _port_is_free(p):
            ports.append(p)
    if len(ports) != count:
        raise RuntimeError("could not find free loopback ports")
    _handed_out.update(ports)
    return ports


def _wait_port_closed(port: int, timeout: float) -> None:
    """Wait until nothing accepts connections on the port any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                pass
        except OSError:
            return
        time.sleep(0.05)


# --------------------------------------------------------------------------------------
# Server options and process handling
# --------------------------------------------------------------------------------------

# Every process ever started, so that an interpreter exit (e.g. a hard timeout) still
# kills them; normal teardown happens in the fixtures.
_ALL_PROCS: List[subprocess.Popen] = []


@atexit.register
def _kill_leftovers() -> None:
    for p in _ALL_PROCS:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass

# nats-server defaults, written explicitly into Stork's config when a test sets nothing.
DEFAULT_MAX_PAYLOAD = 1048576
DEFAULT_MAX_PENDING = 64 * 1024 * 1024
DEFAULT_PING_INTERVAL = 120


@dataclass
class ServerOptions:
    token: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = None
    max_payload: Optional[int] = None  # bytes
    max_pending: Optional[int] = None  # bytes (slow consumer threshold)
    ping_interval: Optional[int] = None  # seconds
    stork_streaming: Optional[Dict[str, Any]] = None  # Stork only: the `streaming:` section


class CompatServer:
    """A real server process (nats-server or Stork) on fixed ports and data dir."""

    kind = "abstract"

    def __init__(self, workdir: str, opts: ServerOptions):
        self.workdir = workdir
        self.opts = opts
        self.data_dir = os.path.join(workdir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.port, self.monitor_port, self.cluster_port = free_ports(3)
        self.config_file = os.path.join(workdir, "server.conf")
        self.log_file = os.path.join(workdir, "server.log")
        self.proc: Optional[subprocess.Popen] = None
        self.all_procs: List[subprocess.Popen] = []
        self._log_handles: List[Any] = []
        self.write_config()

    # -- public API used by the tests ---------------------------------------------------

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.monitor_port}"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("server already running")
        log = open(self.log_file, "ab")
        self._log_handles.append(log)
        log.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        self.all_procs.append(self.proc)
        _ALL_PROCS.append(self.proc)
        self._wait_ready()

    def stop(self) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after STOP_TIMEOUT)."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=STOP_TIMEOUT)
        self.proc = None
        _wait_port_closed(self.port, 5.0)

    def restart(self) -> None:
        """Graceful stop and start again on the same ports and data dir."""
        self.stop()
        self.start()

    def kill9(self) -> None:
        """SIGKILL the server (no chance to flush anything)."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.kill()
        p.wait(timeout=STOP_TIMEOUT)
        self.proc = None
        _wait_port_closed(self.port, 5.0)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def http_get(self, path: str, timeout: float = 5.0) -> Tuple[int, bytes]:
        """Blocking GET on the monitoring port; returns (status, body)."""
        try:
            with urllib.request.urlopen(self.monitor_url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    async def http_json(self, path: str, timeout: float = 5.0) -> Dict[str, Any]:
        status, body = await asyncio.wait_for(asyncio.to_thread(self.http_get, path, timeout), timeout + 1)
        assert status == 200, f"GET {path} -> {status}: {body[:200]!r}"
        return json.loads(body)

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_file, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        """Kill every process this server ever started (idempotent)."""
        for p in self.all_procs:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None
        for h in self._log_handles:
            try:
                h.close()
            except OSError:
                pass

    # -- implementation -------------------------------------------------------------------

    def command(self) -> List[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        """Poll (bounded) until the client port sends an INFO line and the monitor port accepts."""
        deadline = time.monotonic() + READY_TIMEOUT
        client_ok = monitor_ok = False
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited early (rc={self.proc.returncode if self.proc else None}):\n{self.log_tail()}"
                )
            if not client_ok:
                client_ok = self._probe_info()
            if client_ok and not monitor_ok:
                monitor_ok = self._probe_tcp(self.monitor_port)
            if client_ok and monitor_ok:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not ready within {READY_TIMEOUT}s:\n{self.log_tail()}")

    def _probe_info(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as s:
                s.settimeout(1.0)
                buf = b""
                while b"\r\n" not in buf and len(buf) < 65536:
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    buf += chunk
                return buf.upper().startswith(b"INFO")
        except OSError:
            return False

    @staticmethod
    def _probe_tcp(port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return True
        except OSError:
            return False


def _abs_binary(path: str) -> str:
    """Resolve a relative binary path against pytest's cwd (servers run in their temp dir)."""
    if os.sep in path and not os.path.isabs(path):
        return os.path.abspath(path)
    return path


class NatsServer(CompatServer):
    kind = "nats-server"

    def command(self) -> List[str]:
        binary = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server") or "/usr/sbin/nats-server"
        return [_abs_binary(binary), "-c", self.config_file]

    def write_config(self) -> None:
        o = self.opts
        lines = [
            f'listen: "{HOST}:{self.port}"',
            f'http: "{HOST}:{self.monitor_port}"',
            "server_name: compat",
            "jetstream {",
            f"  store_dir: {json.dumps(self.data_dir)}",
            "}",
        ]
        if o.token is not None:
            lines += ["authorization {", f"  token: {json.dumps(o.token)}", "}"]
        elif o.user is not None:
            lines += [
                "authorization {",
                f"  user: {json.dumps(o.user)}",
                f"  password: {json.dumps(o.password or '')}",
                "}",
            ]
        if o.max_payload is not None:
            lines.append(f"max_payload: {int(o.max_payload)}")
        if o.max_pending is not None:
            lines.append(f"max_pending: {int(o.max_pending)}")
            # A slow-consumer test: nats-server detects a consumer whose socket is full
            # only after a blocked write hits the write deadline (default 10 s), stalling
            # the publisher meanwhile. Shorten it to keep such tests quick.
            lines.append('write_deadline: "2s"')
        if o.ping_interval is not None:
            lines.append(f'ping_interval: "{int(o.ping_interval)}s"')
        with open(self.config_file, "w") as f:
            f.write("\n".join(lines) + "\n")


class StorkServer(CompatServer):
    kind = "stork"

    def command(self) -> List[str]:
        binary = os.environ.get("STORK_BIN") or "/work/main/.build/debug/stork"
        return [_abs_binary(binary), "serve", "--config", self.config_file]

    def write_config(self) -> None:
        o = self.opts
        lines = [
            "node:",
            "  name: compat",
            f"  bind: {HOST}:{self.cluster_port}",
            f"  http: {HOST}:{self.monitor_port}",
            f"  nats: {HOST}:{self.port}",
            f"  data: {json.dumps(self.data_dir)}",
        ]
        nats_lines = []
        if o.token is not None:
            nats_lines.append(f"  token: {json.dumps(o.token)}")
        elif o.user is not None:
            nats_lines.append(
                f"  users: [{{user: {json.dumps(o.user)}, password: {json.dumps(o.password or '')}}}]"
            )
        nats_lines.append(f"  maxPayload: {int(o.max_payload if o.max_payload is not None else DEFAULT_MAX_PAYLOAD)}")
        nats_lines.append(f"  maxPending: {int(o.max_pending if o.max_pending is not None else DEFAULT_MAX_PENDING)}")
        interval = o.ping_interval if o.ping_interval is not None else DEFAULT_PING_INTERVAL
        nats_lines.append(f"  pingInterval: {int(interval)}s")
        if nats_lines:
            lines.append("nats:")
            lines += nats_lines
        if o.stork_streaming:
            lines.append("streaming:")
            for key, value in o.stork_streaming.items():
                lines.append(f"  {key}: {json.dumps(value)}")
        with open(self.config_file, "w") as f:
            f.write("\n".join(lines) + "\n")


SERVER_CLASSES = {"nats-server": NatsServer, "stork": StorkServer}


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture
def server_factory(request):
    """Factory: ``server_factory(token=..., max_payload=...)`` starts a fresh server.

    All servers started through it are killed at teardown, pass or fail.  If the test
    failed, the tail of each server log is attached to the report output.

    With COMPAT_SPREAD it starts a converged 3-node cluster instead and returns a
    `SpreadServer` over it (or, for a test marked ``spread_one_node``, the cluster's
    node n1 itself).  The cluster nodes run with default options: a test that needs
    server options must be marked ``spread_skip``; calling the factory with options
    in spread mode fails the test and says so.
    """
    started: List[CompatServer] = []
    clusters: List["Cluster"] = []

    def make(**kwargs) -> CompatServer:
        if SPREAD:
            if kwargs:
                pytest.fail(f"COMPAT_SPREAD: server options {kwargs} are not supported on the spread "
                            f"cluster; mark the test with conftest.spread_skip(reason)", pytrace=False)
            c = Cluster(SPREAD_NODES)
            clusters.append(c)
            c.start()
            if request.node.get_closest_marker("spread_one_node") is not None:
                return c.nodes[0]
            return SpreadServer(c)
        workdir = tempfile.mkdtemp(prefix=f"compat-{COMPAT_SERVER}-")
        srv = SERVER_CLASSES[COMPAT_SERVER](workdir, ServerOptions(**kwargs))
        started.append(srv)
        srv.start()
        return srv

    yield make

    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for srv in started:
        srv.cleanup()
        if failed:
            print(f"\n---- {srv.kind} log ({srv.workdir}) ----\n{srv.log_tail()}")
        else:
            shutil.rmtree(srv.workdir, ignore_errors=True)
    for c in clusters:
        c.cleanup()
        if failed:
            print(f"\n{c.log_tails()}")
        else:
            shutil.rmtree(c.workdir, ignore_errors=True)


@pytest.fixture
def server(server_factory) -> CompatServer:
    """A fresh server with default options for this test."""
    return server_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# --------------------------------------------------------------------------------------
# Spread mode (COMPAT_SPREAD=1)
# --------------------------------------------------------------------------------------


def spread_skip(reason: str):
    """Mark: skip this test (or module, as ``pytestmark``) in spread mode, saying why."""
    return pytest.mark.skipif(SPREAD, reason=f"COMPAT_SPREAD: {reason}")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "spread_one_node(reason): with COMPAT_SPREAD, every client of the test connects to node n1 "
        "of the cluster (the test is about one server's own behaviour, e.g. its monitoring)",
    )


def pytest_report_header(config):
    if SPREAD:
        return [f"COMPAT_SPREAD: core tests on a {SPREAD_NODES}-node {COMPAT_SERVER} cluster, "
                "client connections round-robin over the nodes"]
    return []


def pytest_collection_modifyitems(config, items):
    """Spread mode: every test on a fresh cluster gets SPREAD_EXTRA_TIMEOUT more seconds
    (the timeout covers fixture set-up, and a cluster takes longer to converge)."""
    if not SPREAD:
        return
    for item in items:
        if "server_factory" not in getattr(item, "fixturenames", ()):
            continue
        marker = item.get_closest_marker("timeout")
        base = marker.args[0] if marker is not None and marker.args else config.getini("timeout")
        item.add_marker(pytest.mark.timeout(float(base or 30) + SPREAD_EXTRA_TIMEOUT), append=False)


class SpreadServer:
    """The `server` of a core test in spread mode: a converged cluster whose client
    address moves on to the next node at every read of `url` (or `port`, for raw
    connections), n1, n2, n3, n1, ...  Every test opens each connection with one
    ``connect(server.url)`` / ``raw_factory(server)``, so its n-th connection lands on
    node n % 3: the ``nc`` fixture (opened first) on n1, the next one on n2, and so on.

    Anything about one server (monitoring, restart, logs) is deliberately missing:
    such a test is marked ``spread_skip`` or ``spread_one_node``."""

    kind = "spread"

    def __init__(self, cluster: "Cluster"):
        self.cluster = cluster
        self.connections = 0  # connection addresses handed out so far

    @property
    def nodes(self) -> List[Any]:
        return self.cluster.nodes

    def next_node(self):
        node = self.nodes[self.connections % len(self.nodes)]
        self.connections += 1
        return node

    @property
    def url(self) -> str:
        return self.next_node().url

    @property
    def port(self) -> int:
        return self.next_node().port

    def __getattr__(self, name: str):
        raise AttributeError(
            f"COMPAT_SPREAD: the spread cluster has no single-server {name!r}; mark a test about one "
            f"server's own behaviour with spread_skip(reason) or @pytest.mark.spread_one_node(reason)"
        )


# --------------------------------------------------------------------------------------
# Client helpers
# --------------------------------------------------------------------------------------


async def connect(url: str, **kwargs):
    """nats.connect with bounded, test-friendly defaults."""
    import nats

    kwargs.setdefault("connect_timeout", 2)
    kwargs.setdefault("reconnect_time_wait", 0.2)
    kwargs.setdefault("max_reconnect_attempts", 50)
    kwargs.setdefault("allow_reconnect", True)
    client = await asyncio.wait_for(nats.connect(url, **kwargs), 15)
    if SPREAD:
        _install_probe_filter(client)
    return client


@pytest_asyncio.fixture
async def nc(server):
    """A connected nats-py client on the default server; closed at teardown."""
    client = await connect(server.url, name="compat-nc")
    yield client
    await close_quietly(client)


async def close_quietly(client) -> None:
    try:
        if not client.is_closed:
            await asyncio.wait_for(client.close(), 5)
    except Exception:
        pass


async def sync(client, timeout: float = 5.0) -> None:
    """A real round-trip barrier for a nats-py connection.

    nats-py 2.16's ``flush()`` writes its PING straight to the socket, *ahead of*
    commands still sitting in its write buffer (a SUB or PUB issued just before), so
    its PONG does not prove that the server has seen them.  Push the buffer out first
    (private ``_flush_pending``), then PING.
    """
    flush_pending = getattr(client, "_flush_pending", None)
    if flush_pending is not None:
        await asyncio.wait_for(flush_pending(force_flush=True), timeout)
    else:  # other nats-py versions: two round trips
        await client.flush(timeout=timeout)
    await client.flush(timeout=timeout)


async def wait_for(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02, msg: str = "") -> Any:
    """Poll `pred` (sync or async) until truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s {msg}".strip())
        await asyncio.sleep(interval)


class RawClient:
    """A bare TCP NATS connection (asyncio streams) for protocol-level tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: Dict[str, Any]):
        self.reader = reader
        self.writer = writer
        self.info = info
        self.probe_tokens: set = set()  # spread mode: tokens of the interest probes received

    @classmethod
    async def open(cls, srv: CompatServer, connect: Optional[Dict[str, Any]] = None, handshake: bool = True,
                   limit: int = 1 << 20) -> "RawClient":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, srv.port, limit=limit), 5)
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"INFO "), line
        info = json.loads(line[5:])
        c = cls(reader, writer, info)
        if handshake:
            opts = {"verbose": False, "pedantic": False, "protocol": 1, "lang": "raw", "version": "0"}
            opts.update(connect or {})
            await c.send(b"CONNECT " + json.dumps(opts).encode() + b"\r\n")
        return c

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), 5)

    async def readline(self, timeout: float = 5.0) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            raise EOFError("connection closed by server")
        return line

    async def read_op(self, timeout: float = 5.0, skip_ping: bool = True) -> bytes:
        """Next control line (without CRLF); answers/skips server PINGs if skip_ping."""
        while True:
            line = (await self.readline(timeout)).rstrip(b"\r\n")
            if skip_ping and line == b"PING":
                await self.send(b"PONG\r\n")
                continue
            return line

    async def read_msg(self, timeout: float = 5.0) -> Tuple[List[bytes], bytes]:
        """Read the next MSG/HMSG; returns (control line fields, payload incl. headers).
        In spread mode, interest probes (late ones of `spread_interest`) are skipped."""
        while True:
            fields, body = await self._read_any_msg(timeout)
            if not (SPREAD and self._take_probe(body)):
                return fields, body

    async def _read_any_msg(self, timeout: float, payload_timeout: Optional[float] = None):
        line = await self.read_op(timeout)
        fields = line.split()
        assert fields and fields[0] in (b"MSG", b"HMSG"), line
        size = int(fields[-1])
        body = await asyncio.wait_for(self.reader.readexactly(size + 2), payload_timeout or timeout)
        assert body.endswith(b"\r\n")
        return fields, body[:-2]

    def _take_probe(self, body: bytes) -> bool:
        if not body.startswith(SPREAD_PROBE):
            return False
        self.probe_tokens.add(_probe_token(body))
        return True

    async def _poll_probe(self, timeout: float) -> None:
        """Spread mode: wait up to `timeout` for one message, which must be a probe."""
        try:
            _, body = await self._read_any_msg(timeout, payload_timeout=5.0)
        except asyncio.TimeoutError:
            return
        assert self._take_probe(body), f"message before the interest wait was over: {body[:100]!r}"

    async def ping_pong(self, timeout: float = 5.0) -> None:
        await self.send(b"PING\r\n")
        assert await self.read_op(timeout) == b"PONG"

    async def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Read until EOF (or reset); returns everything read. Fails if still open after timeout."""
        data = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection still open after {timeout}s; last data {bytes(data[-200:])!r}")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            except (ConnectionResetError, BrokenPipeError):
                # A reset (server closed with our unread bytes in its socket) makes
                # StreamReader raise before handing out what it already buffered;
                # salvage those bytes (private attribute) so a final -ERR isn't lost.
                data += bytes(getattr(self.reader, "_buffer", b""))
                return bytes(data)
            except asyncio.TimeoutError:
                continue
            if not chunk:
                return bytes(data)
            data += chunk

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


@pytest_asyncio.fixture
async def raw_factory():
    """Factory for RawClient connections; all closed at teardown."""
    clients: List[RawClient] = []

    async def make(srv: CompatServer, **kw) -> RawClient:
        c = await RawClient.open(srv, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


# --------------------------------------------------------------------------------------
# Spread mode: waiting for interest to cross nodes
# --------------------------------------------------------------------------------------
#
# A subscription made on one node is known on the others a moment later (both servers
# propagate interest asynchronously); until then a message published on another node
# does not reach it.  The helpers below publish *probe* messages on the publishing
# connection until the subscriptions have received one: a server keeps the order of one
# publisher's messages, so everything that publisher sends afterwards reaches them too.
#
# Probes never reach test code: in spread mode every nats-py client made by `connect`
# drops messages whose payload starts with SPREAD_PROBE before nats-py sees them (no
# callback, no next_msg, no pending count) and only notes their token per subscription;
# RawClient.read_msg skips them likewise.  (test_cluster.py's own probes use another
# prefix and are not filtered.)  Outside spread mode the helpers return at once.

SPREAD_PROBE = b"__compat_spread_probe__"
SPREAD_REQUEST_PROBE = b"__compat_spread_ping__"  # wait_responder's requests: not filtered


def _probe_token(body: bytes) -> bytes:
    parts = body.split(b":")
    return parts[1] if len(parts) > 1 else b""


def _install_probe_filter(client) -> None:
    tokens: Dict[int, set] = {}
    client._compat_probe_tokens = tokens
    process_msg = client._process_msg  # the parser looks it up on the instance for every MSG

    async def filtered(sid, subject, reply, data, headers):
        if data.startswith(SPREAD_PROBE):
            tokens.setdefault(sid, set()).add(_probe_token(data))
            return
        await process_msg(sid, subject, reply, data, headers)

    client._process_msg = filtered


def _probe_seen(target, token: bytes) -> bool:
    if isinstance(target, RawClient):
        return token in target.probe_tokens
    return token in target._conn._compat_probe_tokens.get(target._id, ())


async def spread_interest(pub, *targets, subject: Optional[str] = None,
                          timeout: float = SPREAD_INTEREST_TIMEOUT) -> None:
    """Spread mode: publish probes to `subject` on `pub` (a nats-py client or a
    RawClient) until every target has received one of them.  A target is a nats-py
    Subscription, a RawClient subscribed to `subject`, or a list of those meaning "any
    one of them" (the members of one queue group).  `subject` defaults to the first
    Subscription's (it must be a literal subject).  No-op without COMPAT_SPREAD."""
    if not SPREAD:
        return
    groups = [list(t) if isinstance(t, (list, tuple)) else [t] for t in targets]
    flat = [t for g in groups for t in g]
    if subject is None:
        subject = next(t.subject for t in flat if not isinstance(t, RawClient))
    assert "*" not in subject.split(".") and ">" not in subject.split("."), f"probe a literal subject, not {subject!r}"
    raws = [t for t in flat if isinstance(t, RawClient)]
    token = uuid.uuid4().hex.encode()

    def done() -> bool:
        return all(any(_probe_seen(t, token) for t in g) for g in groups)

    deadline = time.monotonic() + timeout
    i = 0
    while not done():
        if time.monotonic() >= deadline:
            missing = [k for k, g in enumerate(groups) if not any(_probe_seen(t, token) for t in g)]
            raise AssertionError(f"COMPAT_SPREAD: interest in {subject!r} not seen by the publisher's node "
                                 f"within {timeout}s (targets {missing} got no probe)")
        probe = b"%s:%s:%d" % (SPREAD_PROBE, token, i)
        i += 1
        if isinstance(pub, RawClient):
            await pub.send(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(probe), probe))
            await pub.ping_pong()
        else:
            await pub.publish(subject, probe)
            await sync(pub)
        # Give this probe a moment before sending the next one (bounded, no fixed sleep).
        step_end = time.monotonic() + 0.1
        while not done() and time.monotonic() < step_end:
            for r in raws:
                if not _probe_seen(r, token):
                    await r._poll_probe(0.01)
            await asyncio.sleep(0.005)


async def spread_interest_before(sub_nc, pub, *subjects: str, timeout: float = SPREAD_INTEREST_TIMEOUT) -> None:
    """Spread mode, for subscriptions that must not receive probes (a server counts every
    message it delivers to one with an auto-unsubscribe limit): subscribe a plain *pilot*
    subscription to each subject on `sub_nc` and wait until probes from `pub` reach it.
    Both servers propagate interest per node and subject, and the pilots stay until the
    connection closes, so subscriptions made afterwards on `sub_nc` to those subjects are
    known on `pub`'s node as soon as `sub_nc`'s own server has them.  The pilots ignore
    every message.  No-op without COMPAT_SPREAD."""
    if not SPREAD:
        return

    async def ignore(msg) -> None:
        pass

    for s in subjects:
        pilot = await sub_nc.subscribe(s, cb=ignore)
        await spread_interest(pub, pilot, timeout=timeout)


async def spread_responder(nc, subject: str, timeout: float = SPREAD_INTEREST_TIMEOUT) -> None:
    """Spread mode: request `subject` on `nc` (payload SPREAD_REQUEST_PROBE, which the
    responders of the tests just echo) until a reply comes back: the responder's interest
    has reached `nc`'s node and the reply found its way back.  No-responders and
    timeouts while interest propagates are expected.  No-op without COMPAT_SPREAD."""
    if not SPREAD:
        return
    import nats.errors

    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.request(subject, SPREAD_REQUEST_PROBE, timeout=0.5)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() >= deadline:
                raise AssertionError(f"COMPAT_SPREAD: no reply on {subject!r} within {timeout}s")
            await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------
# Clusters (test_cluster.py)
# --------------------------------------------------------------------------------------

CLUSTER_NAME = "compat"
CLUSTER_KEY = "compat-key"
CLUSTER_READY_TIMEOUT = 30.0  # seconds for every running node to see the whole cluster
# Lame duck mode: nats-server refuses a lame_duck_duration under 30 s, but with a
# handful of clients it closes them at most ~1 s apart once the grace period is over
# and then exits, so a test still takes only a few seconds.  Stork takes the keys the
# brief asks for (nats.lameDuckDuration / nats.lameDuckGracePeriod).
NATS_SERVER_LAME_DUCK_DURATION = "30s"
STORK_LAME_DUCK_DURATION = "5s"
LAME_DUCK_GRACE_PERIOD = "1s"


class _ClusterNodeMixin:
    """One node of a `Cluster`: a CompatServer that knows its name and its peers.

    `peers` (every node of the cluster, this one included) is filled in by `Cluster`
    once all nodes have their ports; the config is rewritten then.
    """

    node_name: str
    peers: List["CompatServer"]

    @property
    def admin_address(self) -> str:
        return f"{HOST}:{self.monitor_port}"

    def others(self) -> List["CompatServer"]:
        return [p for p in self.peers if p is not self]

    def lame_duck(self, how: str) -> None:
        """Put the node into lame duck mode: how="signal" (SIGUSR2) or "command"
        (``nats-server --signal ldm=<pid>`` / ``stork drain --node <admin>``)."""
        p = self.proc
        if p is None or p.poll() is not None:
            raise RuntimeError(f"{self.node_name} is not running")
        if how == "signal":
            p.send_signal(signal.SIGUSR2)
            return
        if how != "command":
            raise ValueError(how)
        r = subprocess.run(self.lame_duck_command(), stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
        if r.returncode != 0:
            raise RuntimeError(f"{self.lame_duck_command()} -> rc {r.returncode}: {r.stdout!r} {r.stderr!r}")

    def lame_duck_command(self) -> List[str]:
        raise NotImplementedError

    def cluster_state(self, members: List["CompatServer"]) -> Tuple[bool, str, Any]:
        """(converged, description, view id): does this node see exactly `members` as its
        cluster?  The cluster has converged when every member says so with the same view id."""
        raise NotImplementedError


class NatsClusterNode(_ClusterNodeMixin, NatsServer):
    kind = "nats-server"

    def __init__(self, workdir: str, opts: ServerOptions, name: str):
        self.node_name = name
        self.peers = []
        super().__init__(workdir, opts)

    def write_config(self) -> None:
        routes = ", ".join(f'"nats://{HOST}:{p.cluster_port}"' for p in self.others())
        lines = [
            f'listen: "{HOST}:{self.port}"',
            f'http: "{HOST}:{self.monitor_port}"',
            f"server_name: {self.node_name}",
            f'lame_duck_duration: "{NATS_SERVER_LAME_DUCK_DURATION}"',
            f'lame_duck_grace_period: "{LAME_DUCK_GRACE_PERIOD}"',
            "cluster {",
            f"  name: {CLUSTER_NAME}",
            f'  listen: "{HOST}:{self.cluster_port}"',
            f"  routes: [{routes}]",
            "}",
        ]
        with open(self.config_file, "w") as f:
            f.write("\n".join(lines) + "\n")

    def lame_duck_command(self) -> List[str]:
        return [self.command()[0], "--signal", f"ldm={self.proc.pid}"]

    def cluster_state(self, members: List["CompatServer"]) -> Tuple[bool, str, Any]:
        # Full mesh: this node's routes go to exactly the server ids of the other members.
        try:
            want = set()
            for m in members:
                if m is not self:
                    want.add(json.loads(m.http_get("/varz", timeout=2)[1])["server_id"])
            routez = json.loads(self.http_get("/routez", timeout=2)[1])
        except (OSError, ValueError, KeyError) as e:
            return False, f"{self.node_name}: {e!r}", None
        have = sorted(r.get("remote_id", "?") for r in routez.get("routes") or [])
        return sorted(want) == have, f"{self.node_name}: routes to {have}, want {sorted(want)}", None


class StorkClusterNode(_ClusterNodeMixin, StorkServer):
    kind = "stork"

    def __init__(self, workdir: str, opts: ServerOptions, name: str):
        self.node_name = name
        self.peers = []
        super().__init__(workdir, opts)

    def write_config(self) -> None:
        o = self.opts
        seeds = ", ".join(f"{HOST}:{p.cluster_port}" for p in self.peers)
        lines = [
            "node:",
            f"  name: {self.node_name}",
            f"  bind: {HOST}:{self.cluster_port}",
            f"  http: {HOST}:{self.monitor_port}",
            f"  nats: {HOST}:{self.port}",
            f"  seeds: [{seeds}]",
            f"  data: {json.dumps(self.data_dir)}",
            "cluster:",
            f"  name: {CLUSTER_NAME}",
            f"  key: {CLUSTER_KEY}",
            "nats:",
            f"  maxPayload: {int(o.max_payload if o.max_payload is not None else DEFAULT_MAX_PAYLOAD)}",
            f"  maxPending: {int(o.max_pending if o.max_pending is not None else DEFAULT_MAX_PENDING)}",
            f"  pingInterval: {int(o.ping_interval if o.ping_interval is not None else DEFAULT_PING_INTERVAL)}s",
            f"  lameDuckDuration: {STORK_LAME_DUCK_DURATION}",
            f"  lameDuckGracePeriod: {LAME_DUCK_GRACE_PERIOD}",
        ]
        if o.stork_streaming:
            lines.append("streaming:")
            for key, value in o.stork_streaming.items():
                lines.append(f"  {key}: {json.dumps(value)}")
        with open(self.config_file, "w") as f:
            f.write("\n".join(lines) + "\n")

    def lame_duck_command(self) -> List[str]:
        return [self.command()[0], "drain", "--node", self.admin_address]

    def cluster_state(self, members: List["CompatServer"]) -> Tuple[bool, str, Any]:
        # Ready, the view names exactly the members, and (checked by Cluster.wait_ready)
        # every member has applied the same view: after a restart the old incarnation's
        # view has the same names but another checksum.
        try:
            status, body = self.http_get("/v1/cluster", timeout=2)
            doc = json.loads(body)
        except (OSError, ValueError) as e:
            return False, f"{self.node_name}: {e!r}", None
        if status != 200 or not isinstance(doc, dict):
            return False, f"{self.node_name}: /v1/cluster -> {status} {body[:200]!r}", None
        view = sorted(str(v) for v in doc.get("view") or [])
        want = sorted(m.node_name for m in members)
        ok = doc.get("ready") is True and view == want
        checksum = doc.get("checksum")
        return ok, f"{self.node_name}: ready={doc.get('ready')} view={view} checksum={checksum}, want {want}", checksum


CLUSTER_NODE_CLASSES = {"nats-server": NatsClusterNode, "stork": StorkClusterNode}


class Cluster:
    """`size` clustered server processes n1..nK on loopback, each with its own ports,
    config file, log and data dir (under one temp dir).  Helpers are blocking; call
    them from async tests through ``asyncio.to_thread``."""

    def __init__(self, size: int = 3):
        self.workdir = tempfile.mkdtemp(prefix=f"compat-cluster-{COMPAT_SERVER}-")
        cls = CLUSTER_NODE_CLASSES[COMPAT_SERVER]
        self.nodes: List[Any] = []
        for i in range(1, size + 1):
            d = os.path.join(self.workdir, f"n{i}")
            os.makedirs(d)
            self.nodes.append(cls(d, ServerOptions(), f"n{i}"))
        for n in self.nodes:
            n.peers = list(self.nodes)
            n.write_config()

    def node(self, name: str):
        return next(n for n in self.nodes if n.node_name == name)

    @property
    def started_nodes(self) -> List[Any]:
        """Nodes started and not killed/stopped through the helpers (running, or crashed)."""
        return [n for n in self.nodes if n.proc is not None]

    def start(self) -> None:
        """Start every node at once (a node may wait for its seeds), then wait until converged."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            for f in [pool.submit(n.start) for n in self.nodes]:
                f.result()
        self.wait_ready()

    def wait_ready(self, timeout: float = CLUSTER_READY_TIMEOUT) -> None:
        """Poll (bounded) until every started node sees exactly the started nodes as
        its cluster; fails at once if one of them has exited."""
        deadline = time.monotonic() + timeout
        while True:
            members = self.started_nodes
            for n in members:
                if n.proc.poll() is not None:
                    raise RuntimeError(f"{n.node_name} exited (rc={n.proc.returncode}):\n{n.log_tail()}")
            states = [n.cluster_state(members) for n in members]
            if members and all(ok for ok, _, _ in states) and len({v for _, _, v in states}) == 1:
                return
            if time.monotonic() >= deadline:
                detail = "\n".join(d for _, d, _ in states)
                raise RuntimeError(f"cluster not converged within {timeout}s:\n{detail}")
            time.sleep(0.1)

    def kill9(self, node) -> None:
        """SIGKILL one node (its peers are not told)."""
        node.kill9()

    def restart(self, node, timeout: float = CLUSTER_READY_TIMEOUT) -> None:
        """Start a stopped/killed node again with the same config, ports and data dir,
        then wait until the cluster has converged with it."""
        if node.running:
            node.kill9()
        node.start()
        self.wait_ready(timeout)

    def log_tails(self, n: int = 60) -> str:
        return "\n".join(f"---- {x.kind} {x.node_name} log ({x.workdir}) ----\n{x.log_tail(n)}" for x in self.nodes)

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()


@pytest.fixture
def cluster(request):
    """A converged 3-node cluster (n1, n2, n3); every process is killed at teardown."""
    c = Cluster(3)
    ok = False
    try:
        c.start()
        yield c
        ok = not (getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed)
    finally:
        c.cleanup()
        if ok:
            shutil.rmtree(c.workdir, ignore_errors=True)
        else:
            print(f"\n{c.log_tails()}")
