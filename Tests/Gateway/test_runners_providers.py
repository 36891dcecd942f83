"""Runners and listening providers across three real `stork serve` processes with the gateway on.

* A provider (a nats-py client on the provider's listen subject, connected to node 1) is started when the first
  WebSocket client anywhere subscribes to a subject it serves, exactly once while clients on two nodes listen, and
  stopped after the last one left; its messages reach subscribers on other nodes.
* A runner opened by a client streams each node's output and `completed` to that client only; the REST call returns
  the same outputs; it is unloaded when its session ends; when its node is killed (kill -9) it is reopened elsewhere,
  the run in progress is reported `failed` (code node-failed) and a new run completes.

Binary: $STORK_BIN (default .build/debug/stork). Loopback only; every wait is bounded; every process is killed at
the end, pass or fail.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

import nats
import pytest
import websockets
from conftest import async_wait_until, free_ports, stork_binary

HOST = "127.0.0.1"
_PROCS: List[subprocess.Popen] = []

RULES = """
rules:
  - subject: "users.$userId.>"
    publish: "user.id == $userId"
    subscribe: "user.id == $userId"
    runner: "user.id == $userId"
  - subject: "prices.>"
    subscribe: true
"""

GREETING = {
    "id": "greeting", "name": "Greeting", "version": 1,
    "nodes": [
        {"id": "who", "kind": "input", "options": {"name": "name", "type": "string", "default": "world"}},
        {"id": "greet", "kind": "template", "inputs": {"name": "string"}, "options": {"template": "Hello, {{name}}!"}},
        {"id": "out", "kind": "output", "options": {"name": "greeting"}},
    ],
    "edges": [{"from": "who.value", "to": "greet.name"}, {"from": "greet.value", "to": "out.value"}],
}

# A run that takes a while: input -> delay 4 s -> output.
SLOW = {
    "id": "slow", "name": "Slow", "version": 1,
    "nodes": [
        {"id": "in", "kind": "input", "options": {"name": "value", "type": "string", "default": "x"}},
        {"id": "wait", "kind": "delay", "options": {"milliseconds": 4000}},
        {"id": "out", "kind": "output", "options": {"name": "value"}},
    ],
    "edges": [{"from": "in.value", "to": "wait.value"}, {"from": "wait.value", "to": "out.value"}],
}


class Node:
    def __init__(self, index: int, workdir: str, ports: List[int], seeds: List[str]) -> None:
        self.name = f"n{index}"
        self.cluster_port, self.http_port, self.nats_port = ports
        self.config = os.path.join(workdir, f"{self.name}.yaml")
        self.log_path = os.path.join(workdir, f"{self.name}.log")
        self.proc: Optional[subprocess.Popen] = None
        with open(self.config, "w") as f:
            f.write("\n".join([
                "node:",
                f"  name: {self.name}",
                f"  bind: {HOST}:{self.cluster_port}",
                f"  http: {HOST}:{self.http_port}",
                f"  nats: {HOST}:{self.nats_port}",
                f"  seeds: [{', '.join(seeds)}]",
                f"  data: {json.dumps(os.path.join(workdir, self.name + '-data'))}",
                "cluster: {name: gateway-cluster}",
                "membership: {probeInterval: 300ms, probeTimeout: 1s, indirectProbeTimeout: 2s, suspicionMinimum: 3s}",
                "gateway:",
                "  auth: [{type: open}]",
                f"  permissions: {{file: {json.dumps(os.path.join(workdir, 'rules.yaml'))}}}",
                f"  runners: {json.dumps(os.path.join(workdir, 'runners'))}",
                "  recoveryWindow: 2s",
                "  providerRefresh: 3s",
                "  providers:",
                "    - {name: prices, pattern: 'prices.*', type: nats, listen: stork.listen.prices, grace: 2s}",
                "",
            ]))

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [stork_binary(), "serve", "--config", self.config, "--log-level", "notice"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        _PROCS.append(self.proc)

    @property
    def ws(self) -> str:
        return f"ws://{HOST}:{self.http_port}/v1/ws"

    def get(self, path: str, timeout: float = 5.0):
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return None, b""

    def post(self, path: str, body: dict, user: str) -> tuple:
        request = urllib.request.Request(
            f"http://{HOST}:{self.http_port}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode(),
                     "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def resource_ids(self) -> List[str]:
        status, body = self.get("/v1/resources", 10.0)
        if status != 200:
            return []
        return [item["id"] for item in json.loads(body)["resources"]]

    def members_alive(self) -> int:
        status, body = self.get("/v1/cluster", 5.0)
        if status != 200:
            return 0
        document = json.loads(body)
        members = document.get("members", [])
        return sum(1 for m in members if m.get("status") == "alive")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def wait_for(what: str, timeout: float, condition, interval: float = 0.2):
    return await async_wait_until(what, timeout, condition, interval)


class Client:
    """A gateway WebSocket client that keeps every frame it receives."""

    def __init__(self, url: str, user: str) -> None:
        self.url, self.user = url, user
        self.frames: List[dict] = []
        self.next_id = 0
        self.socket = None
        self.reader: Optional[asyncio.Task] = None

    async def connect(self) -> dict:
        self.socket = await websockets.connect(self.url, max_size=1 << 22)
        self.reader = asyncio.create_task(self._read())
        return await self.call({"type": "auth", "v": 1, "user": self.user})

    async def _read(self) -> None:
        try:
            async for text in self.socket:
                self.frames.append(json.loads(text))
        except websockets.ConnectionClosed:
            pass

    async def call(self, frame: dict, timeout: float = 30.0) -> dict:
        self.next_id += 1
        frame = dict(frame, id=self.next_id)
        await self.socket.send(json.dumps(frame))
        ident = self.next_id
        return await wait_for(f"answer to {frame['type']}", timeout,
                              lambda: next((f for f in self.frames if f.get("id") == ident), None))

    def runner_events(self, instance: Optional[str] = None) -> List[dict]:
        return [f["event"] for f in self.frames if f.get("type") == "runner"
                and (instance is None or f.get("instance") == instance)]

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self.reader is not None:
            await asyncio.wait([self.reader], timeout=5)


@pytest.fixture(scope="module")
def cluster():
    workdir = tempfile.mkdtemp(prefix="stork-gateway-cluster-")
    os.makedirs(os.path.join(workdir, "runners"))
    with open(os.path.join(workdir, "rules.yaml"), "w") as f:
        f.write(RULES)
    for definition in (GREETING, SLOW):
        with open(os.path.join(workdir, "runners", definition["id"] + ".json"), "w") as f:
            json.dump(definition, f)
    ports = free_ports(9)
    seeds = [f"{HOST}:{ports[0]}"]
    nodes = [Node(i + 1, workdir, ports[3 * i:3 * i + 3], seeds) for i in range(3)]
    try:
        for node in nodes:
            node.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(n.members_alive() == 3 for n in nodes):
            time.sleep(0.3)
        assert all(n.members_alive() == 3 for n in nodes), "\n".join(n.log_tail() for n in nodes)
        yield nodes
    finally:
        for proc in _PROCS:
            if proc.poll() is None:
                proc.kill()
        for proc in _PROCS:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def owner_of(nodes: List[Node], resource_id: str) -> Optional[Node]:
    for node in nodes:
        if node.proc and node.proc.poll() is None and resource_id in node.resource_ids():
            return node
    return None


@pytest.mark.timeout(150)
def test_provider_runs_once_while_anyone_listens(cluster):
    async def scenario():
        events: List[dict] = []
        producing: Dict[str, bool] = {}
        provider = await nats.connect(f"nats://{HOST}:{cluster[0].nats_port}")

        async def on_listen(msg):
            event = json.loads(msg.data)
            events.append(event)
            producing[event["subject"]] = event["event"] == "start"
            if msg.reply:
                await provider.publish(msg.reply, b'{"ok":true}')

        await provider.subscribe("stork.listen.prices", cb=on_listen)
        await provider.flush()

        async def produce():
            n = 0
            while True:
                for subject, on in list(producing.items()):
                    if on:
                        n += 1
                        await provider.publish(subject, json.dumps({"price": n}).encode())
                await asyncio.sleep(0.1)

        producer = asyncio.create_task(produce())
        a = Client(cluster[2].ws, "ann")
        b = Client(cluster[1].ws, "ben")
        try:
            assert (await a.connect())["type"] == "welcome"
            assert (await b.connect())["type"] == "welcome"
            assert (await a.call({"type": "subscribe", "subject": "prices.eur"}))["type"] == "ok"
            await wait_for("the provider's start", 30, lambda: any(e["event"] == "start" for e in events))
            await wait_for("prices on node 3", 30,
                           lambda: any(f.get("subject") == "prices.eur" for f in a.frames if f.get("type") == "message"))
            assert (await b.call({"type": "subscribe", "subject": "prices.eur"}))["type"] == "ok"
            await wait_for("prices on node 2", 30,
                           lambda: any(f.get("subject") == "prices.eur" for f in b.frames if f.get("type") == "message"))
            # Two listeners on two nodes, several refresh rounds: still one start.
            await asyncio.sleep(4)
            assert [e for e in events if e["event"] == "start"] == [{"event": "start", "subject": "prices.eur"}]
            await a.call({"type": "unsubscribe", "subject": "prices.eur"})
            await asyncio.sleep(3)
            assert not any(e["event"] == "stop" for e in events), "stopped while node 2 still listened"
            await b.call({"type": "unsubscribe", "subject": "prices.eur"})
            await wait_for("the provider's stop", 30, lambda: any(e["event"] == "stop" for e in events))
            starts = [e for e in events if e["event"] == "start"]
            stops = [e for e in events if e["event"] == "stop"]
            assert len(starts) == 1 and len(stops) == 1, events
            resource = "$gw.provider.prices.eur"
            await wait_for("the provider resource gone", 30, lambda: owner_of(cluster, resource) is None)
        finally:
            producer.cancel()
            await a.close()
            await b.close()
            await provider.close()

    asyncio.run(scenario())


@pytest.mark.timeout(150)
def test_runner_streams_to_its_owner_only_and_unloads(cluster):
    async def scenario():
        alice = Client(cluster[1].ws, "alice")
        bob = Client(cluster[2].ws, "bob")
        try:
            await alice.connect()
            await bob.connect()
            opened = await alice.call({"type": "runner.open", "runner": "greeting"})
            assert opened["type"] == "ok", opened
            instance = opened["instance"]
            # Bob may not open runners under Alice's name, and does not know hers.
            assert (await bob.call({"type": "runner.run", "instance": instance, "inputs": {}}))["code"] == "unknown_instance"
            bobs = await bob.call({"type": "runner.open", "runner": "greeting"})
            assert bobs["type"] == "ok"
            started = await alice.call({"type": "runner.run", "instance": instance, "inputs": {"name": "Ada"}})
            assert started["type"] == "ok", started
            run_id = started["runId"]
            await wait_for("completed", 30, lambda: any(e.get("type") == "completed" for e in alice.runner_events(instance)))
            events = alice.runner_events(instance)
            node_ids = [e["nodeId"] for e in events if e.get("type") == "node"]
            assert node_ids == ["who", "greet", "out"], events
            completed = [e for e in events if e.get("type") == "completed"][0]
            assert completed == {"type": "completed", "runId": run_id, "outputs": {"greeting": "Hello, Ada!"}}
            # Bob runs his own; neither sees the other's events.
            await bob.call({"type": "runner.run", "instance": bobs["instance"], "inputs": {"name": "Bo"}})
            await wait_for("bob's completed", 30, lambda: any(e.get("type") == "completed" for e in bob.runner_events()))
            assert all(e.get("runId") != run_id for e in bob.runner_events())
            assert all(f.get("instance") != bobs["instance"] for f in alice.frames if f.get("type") == "runner")

            # The same through REST, on another node.
            status, body = cluster[0].post("/v1/runners/greeting/run", {"inputs": {"name": "Rest"}}, "alice")
            assert status == 200 and body["outputs"] == {"greeting": "Hello, Rest!"}, body
            status, body = cluster[0].post("/v1/runners/nothing/run", {"inputs": {}}, "alice")
            assert status == 404

            # Disconnecting unloads the runner once the session's recovery window passed.
            resource = "$gw.runner." + instance
            assert owner_of(cluster, resource) is not None
            await alice.close()
            await wait_for("alice's runner unloaded", 30, lambda: owner_of(cluster, resource) is None)
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


@pytest.mark.timeout(200)
def test_runner_survives_kill_of_its_node(cluster):
    async def scenario():
        # The client stays on node 1; the runner must live on another node, so reopen until it does.
        client = Client(cluster[0].ws, "carol")
        try:
            await client.connect()
            owner = None
            instance = None
            for _ in range(12):
                opened = await client.call({"type": "runner.open", "runner": "slow"})
                assert opened["type"] == "ok", opened
                instance = opened["instance"]
                owner = owner_of(cluster, "$gw.runner." + instance)
                if owner is not None and owner is not cluster[0]:
                    break
                await client.call({"type": "runner.close", "instance": instance})
            assert owner is not None and owner is not cluster[0], "could not place a runner off node 1"
            started = await client.call({"type": "runner.run", "instance": instance, "inputs": {"value": "v"}})
            assert started["type"] == "ok", started
            run_id = started["runId"]
            owner.proc.send_signal(signal.SIGKILL)
            failed = await wait_for(
                "the run reported failed after its node died", 90,
                lambda: next((e for e in client.runner_events(instance)
                              if e.get("type") == "failed" and e.get("runId") == run_id), None))
            assert failed["code"] == "node-failed", failed
            # Reopened elsewhere: a new run completes.
            survivors = [n for n in cluster if n is not owner]
            await wait_for("the runner reopened on a survivor", 60,
                           lambda: owner_of(survivors, "$gw.runner." + instance) is not None)
            again = await client.call({"type": "runner.run", "instance": instance, "inputs": {"value": "w"}})
            assert again["type"] == "ok", again
            await wait_for("the new run completed", 60, lambda: any(
                e.get("type") == "completed" and e.get("runId") == again["runId"] for e in client.runner_events(instance)))
        finally:
            await client.close()

    asyncio.run(scenario())
