"""Fixtures for the gateway suite: real `stork serve` processes with the gateway on, WebSocket clients.

Every node listens on 127.0.0.1 only, on free ports picked in 10000-29999, with its own temporary directory
(config, users and rules files, data, log). Nodes are started by a session-wide `Nodes` registry that kills every
process it started at teardown and, as a last resort, at interpreter exit (atexit), pass or fail. Every wait is a
bounded wait on a condition.

Binary: $STORK_BIN, default ./.build/debug/stork.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
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
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0  # a debug build on a busy 2-core machine
STOP_TIMEOUT = 10.0
# Short enough that PBKDF2 in a debug build is quick; the suite tests the users file, not the work factor.
HASH_ITERATIONS = 1000

_ALL_PROCS: List[subprocess.Popen] = []


@atexit.register
def _kill_leftovers() -> None:
    for proc in _ALL_PROCS:
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(timeout=5)
            except Exception:
                pass


def stork_binary() -> str:
    path = os.environ.get("STORK_BIN") or ".build/debug/stork"
    return os.path.abspath(path) if os.sep in path else path


_handed_out: set = set()


def free_ports(count: int) -> List[int]:
    """`count` distinct loopback ports free for TCP and UDP (the cluster port carries both)."""
    ports: List[int] = []
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(5000):
        if len(ports) == count:
            return ports
        port = rng.randint(10000, 29999)
        if port in ports or port in _handed_out:
            continue
        ok = True
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    ok = False
        if ok:
            ports.append(port)
            _handed_out.add(port)
    raise RuntimeError("no free loopback ports")


def hash_password(password: str) -> str:
    """The users file's `password:` value, made by `stork hash-password --password-stdin`."""
    out = subprocess.run(
        [stork_binary(), "hash-password", "--password-stdin", "--iterations", str(HASH_ITERATIONS)],
        input=password.encode(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    value = out.stdout.decode().strip()
    assert value.startswith("pbkdf2-sha256$"), value
    return value


def wait_until(what: str, timeout: float, condition: Callable[[], Any], interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        time.sleep(interval)


async def stop_task(task: "asyncio.Task", timeout: float = 10.0) -> None:
    """Cancels `task` and waits for it to end. Python 3.11's `asyncio.wait_for` can swallow a cancellation that
    arrives as the awaited event fires (the task then runs on), so the cancellation is repeated until it ends."""
    deadline = time.monotonic() + timeout
    while not task.done():
        assert time.monotonic() < deadline, f"{task} did not end within {timeout}s of its cancellation"
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled():
        task.exception()  # retrieved: once asked to stop, how the task ended is not the test's concern


async def async_wait_until(what: str, timeout: float, condition: Callable[[], Any], interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------


class Node:
    """One `stork serve` process with a `gateway:` section (written as JSON, which YAML reads)."""

    def __init__(self, name: str, workdir: str, gateway: Dict[str, Any], seeds: List[str], cluster: str) -> None:
        self.name = name
        self.workdir = workdir
        self.cluster_port, self.http_port, self.nats_port = free_ports(3)
        self.config = os.path.join(workdir, f"{name}.yaml")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc: Optional[subprocess.Popen] = None
        lines = [
            "node:",
            f"  name: {name}",
            f"  bind: {HOST}:{self.cluster_port}",
            f"  http: {HOST}:{self.http_port}",
            f"  nats: {HOST}:{self.nats_port}",
            f"  data: {json.dumps(os.path.join(workdir, name + '-data'))}",
        ]
        if seeds:
            lines.append(f"  seeds: [{', '.join(seeds)}]")
        lines += [
            f"cluster: {{name: {cluster}}}",
            # Lenient failure detection: the nodes share a small, busy machine (a debug build).
            "membership: {probeInterval: 300ms, probeTimeout: 1s, indirectProbeTimeout: 2s, suspicionMinimum: 4s}",
            f"gateway: {json.dumps(gateway)}",
            "",
        ]
        with open(self.config, "w") as f:
            f.write("\n".join(lines))

    @property
    def address(self) -> str:
        return f"{HOST}:{self.cluster_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.http_port}/v1/ws"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://{HOST}:{self.nats_port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [stork_binary(), "serve", "--config", self.config, "--log-level", "notice"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Not the config's directory: relative paths in the config must be resolved against the config file.
            cwd=tempfile.gettempdir(),
        )
        log.close()
        _ALL_PROCS.append(self.proc)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited (rc={self.proc and self.proc.returncode}):\n{self.log_tail()}")
            return self.http("GET", "/readyz", timeout=2.0)[0] == 200

        try:
            wait_until(f"{self.name} ready", READY_TIMEOUT, ready)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.log_tail()}") from None

    def http(
        self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None, timeout: float = 10.0
    ) -> Tuple[Optional[int], Any]:
        """(status, parsed JSON body or raw bytes); status None when nothing answered."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(self.http_url + path, data=data, method=method, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except OSError:
            return None, b""
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def members(self) -> List[str]:
        status, body = self.http("GET", "/v1/cluster", timeout=2.0)
        if status != 200 or not isinstance(body, dict):
            return []
        return sorted(m["name"] for m in body.get("members", []) if m.get("status") == "alive")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f"---- {self.name} log ----\n" + "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"({self.name}: no log)"


class Nodes:
    """Starts nodes and clusters; kills them all at teardown."""

    def __init__(self) -> None:
        self.nodes: List[Node] = []
        self.dirs: List[str] = []
        self.failed = False

    def workdir(self, prefix: str) -> str:
        path = tempfile.mkdtemp(prefix=f"stork-gw-{prefix}-")
        self.dirs.append(path)
        return path

    def single(self, name: str, gateway: Dict[str, Any], workdir: Optional[str] = None) -> Node:
        return self.cluster(name, 1, gateway, workdir=workdir)[0]

    def cluster(self, prefix: str, size: int, gateway: Dict[str, Any], workdir: Optional[str] = None) -> List[Node]:
        workdir = workdir or self.workdir(prefix)
        cluster = f"gw-{prefix}-{os.getpid()}-{random.randint(0, 1 << 30)}"
        nodes: List[Node] = []
        for i in range(size):
            seeds = [nodes[0].address] if nodes else []
            node = Node(f"{prefix}{i + 1}", workdir, gateway, seeds, cluster)
            nodes.append(node)
            self.nodes.append(node)
        # The first node alone makes the cluster; the others join it.
        nodes[0].start()
        nodes[0].wait_ready()
        for node in nodes[1:]:
            node.start()
        for node in nodes[1:]:
            node.wait_ready()
        if size > 1:
            names = sorted(n.name for n in nodes)
            try:
                wait_until("every node sees the whole cluster", READY_TIMEOUT,
                           lambda: all(n.members() == names for n in nodes), interval=0.2)
            except AssertionError as error:
                raise AssertionError(f"{error}\n" + "\n".join(n.log_tail() for n in nodes)) from None
        return nodes

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        if self.failed:
            for node in self.nodes:
                print(node.log_tail())
        else:
            for path in self.dirs:
                shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def nodes():
    registry = Nodes()
    try:
        yield registry
    finally:
        registry.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        registry = getattr(item.session, "_gateway_nodes", None)
        if registry is not None:
            registry.failed = True


@pytest.fixture(autouse=True)
def _track_failures(request, nodes):
    request.session._gateway_nodes = nodes
    yield


# --------------------------------------------------------------------------------------
# WebSocket client
# --------------------------------------------------------------------------------------


class WS:
    """A WebSocket client of the gateway: a reader task files every server frame; tests wait for the ones they want.

    `call` sends a frame with a fresh `id` and returns the answer with that id (ok, error, or a typed reply);
    `next_message` returns the next `message` frame.
    """

    def __init__(self, connection) -> None:
        self.connection = connection
        self.frames: List[Dict[str, Any]] = []
        self.raw: List[Any] = []
        self.changed = asyncio.Event()
        self.closed = False
        self.close_code: Optional[int] = None
        self.next_id = 0
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, node_or_url, **kwargs) -> "WS":
        from websockets.asyncio.client import connect

        url = node_or_url if isinstance(node_or_url, str) else node_or_url.ws_url
        kwargs.setdefault("open_timeout", 10)
        kwargs.setdefault("max_size", 16 << 20)
        connection = await asyncio.wait_for(connect(url, **kwargs), 15)
        return cls(connection)

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self.connection:
                self.raw.append(raw)
                try:
                    frame = json.loads(raw)
                except ValueError:
                    frame = {"type": "<not json>", "raw": raw}
                self.frames.append(frame)
                self.changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            rcvd = getattr(self.connection, "close_code", None)
            self.close_code = rcvd
            self.changed.set()

    async def send(self, frame: Any) -> None:
        text = frame if isinstance(frame, (str, bytes)) else json.dumps(frame)
        await asyncio.wait_for(self.connection.send(text), 10)

    async def wait_frame(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float = 10.0,
                         what: str = "a frame") -> Dict[str, Any]:
        """Removes and returns the first frame (received so far or later) for which `predicate` holds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, frame in enumerate(self.frames):
                if predicate(frame):
                    return self.frames.pop(i)
            if self.closed:
                raise AssertionError(f"connection closed ({self.close_code}) while waiting for {what}; "
                                     f"frames: {self.frames[-10:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout}s; frames: {self.frames[-10:]}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def call(self, frame: Dict[str, Any], timeout: float = 10.0) -> Dict[str, Any]:
        self.next_id += 1
        frame = dict(frame, id=self.next_id)
        wanted = self.next_id
        await self.send(frame)
        return await self.wait_frame(lambda f: f.get("id") == wanted and f.get("type") != "message",
                                     timeout, f"answer to {frame}")

    async def auth(self, **credentials) -> Dict[str, Any]:
        return await self.call(dict({"type": "auth", "v": 1}, **credentials))

    async def login(self, **credentials) -> Dict[str, Any]:
        answer = await self.auth(**credentials)
        assert answer["type"] == "welcome", answer
        return answer

    async def subscribe(self, subject: str, **extra) -> Dict[str, Any]:
        answer = await self.call(dict({"type": "subscribe", "subject": subject}, **extra))
        assert answer["type"] == "ok", answer
        return answer

    async def publish(self, subject: str, data: Any) -> Dict[str, Any]:
        answer = await self.call({"type": "publish", "subject": subject, "data": data})
        assert answer["type"] == "ok", answer
        return answer

    async def next_message(self, timeout: float = 10.0, subject: Optional[str] = None) -> Dict[str, Any]:
        return await self.wait_frame(
            lambda f: f.get("type") == "message" and (subject is None or f.get("subject") == subject),
            timeout, f"message on {subject or 'any subject'}")

    def messages(self) -> List[Dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == "message"]

    async def wait_closed(self, timeout: float = 10.0) -> Optional[int]:
        await async_wait_until("the server closes the connection", timeout, lambda: self.closed)
        return self.close_code

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.connection.close(), 5)
        except Exception:
            pass
        self.reader.cancel()
        try:
            await self.reader
        except (asyncio.CancelledError, Exception):
            pass


class Clients:
    """WS clients opened in a test, all closed at its end."""

    def __init__(self) -> None:
        self.opened: List[WS] = []

    async def open(self, node_or_url, **kwargs) -> WS:
        ws = await WS.open(node_or_url, **kwargs)
        self.opened.append(ws)
        return ws

    async def login(self, node, **credentials) -> WS:
        ws = await self.open(node)
        await ws.login(**credentials)
        return ws


@pytest.fixture
async def clients():
    registry = Clients()
    try:
        yield registry
    finally:
        for ws in registry.opened:
            await ws.close()


def basic(user: str, password: str) -> Dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------------------
# The servers the tests share (each started once, on first use)
# --------------------------------------------------------------------------------------

PASSWORDS = {"alice": "wonderland", "bob": "builder", "carol": "chief-admin"}
ALICE_API_TOKEN = "stork-test-token-alice-0123456789"
JWT_SECRET = "an HS256 secret of thirty-two bytes or more, for tests"
AUDIENCE = "stork-tests"
ISSUER = "https://issuer.stork.test"

# The rules of the main node: the permission matrix's (Docs/realtime.md's example) plus what the other tests use.
MAIN_RULES = {
    "rules": [
        {
            "subject": "users.$userId.>",
            "publish": "user.id == $userId",
            "subscribe": "user.id == $userId",
            "request": "user.id == $userId",
            "respond": "user.id == $userId",
            "presence": "user.id == $userId",
        },
        {"subject": "users.$userId.inbox", "publish": True},
        {"subject": "public.>", "subscribe": True, "presence": True, "publish": "'admin' in user.roles"},
        {
            "subject": "rooms.$room.messages",
            "publish": "$room in user.data.rooms && data.text != null && count(data.text) <= 2000",
            "subscribe": "$room in user.data.rooms",
        },
        {"subject": "orders.>", "subscribe": True, "publish": True},
    ]
}


def _users_document() -> Dict[str, Any]:
    import hashlib

    return {
        "users": [
            {"id": "alice", "password": hash_password(PASSWORDS["alice"]), "roles": ["member"],
             "data": {"rooms": ["r1"]}},
            {"id": "bob", "password": hash_password(PASSWORDS["bob"]), "roles": ["member"],
             "data": {"rooms": ["r2"]}},
            {"id": "carol", "password": hash_password(PASSWORDS["carol"]), "roles": ["admin"],
             "data": {"rooms": []}},
        ],
        "tokens": [{"sha256": hashlib.sha256(ALICE_API_TOKEN.encode()).hexdigest(), "user": "alice"}],
    }


@pytest.fixture(scope="session")
def main_node(nodes) -> Node:
    """users (a file, relative to the config file) then jwt HS256; the rules file above; small frames."""
    workdir = nodes.workdir("main")
    with open(os.path.join(workdir, "users.json"), "w") as f:
        json.dump(_users_document(), f)
    rules = os.path.join(workdir, "rules.json")
    with open(rules, "w") as f:
        json.dump(MAIN_RULES, f)
    gateway = {
        "auth": [
            {"type": "users", "file": "users.json"},
            {"type": "jwt", "algorithm": "HS256", "secret": JWT_SECRET, "audience": AUDIENCE, "issuer": ISSUER},
        ],
        "permissions": {"file": rules},
        "maxFrameBytes": 8192,
        "requestTimeout": "2s",
        "authTimeout": "5s",
    }
    node = nodes.single("main", gateway, workdir=workdir)
    return node


OPEN_GATEWAY = {
    "auth": [{"type": "open"}],
    "permissions": {
        "rules": [{"subject": ">", "publish": True, "subscribe": True, "request": True, "respond": True,
                   "presence": True}]
    },
    "requestTimeout": "3s",
    # Generous: a presence query on a busy machine must hear from both other nodes.
    "presenceTimeout": "2s",
}


@pytest.fixture(scope="session")
def cluster(nodes) -> List[Node]:
    """Three nodes with the `open` authenticator and rules that allow everything."""
    return nodes.cluster("c", 3, OPEN_GATEWAY)
