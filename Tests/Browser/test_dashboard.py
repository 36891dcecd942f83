"""Browser test of the node dashboard (`GET /dashboard`): headless Chromium against three `stork serve` processes.

Starts three nodes on 127.0.0.1 (free ports; node 1 is the seed; a file source of 20 resources run by the log
handler), opens node 1's dashboard and checks that it lists the three members alive and every resource under one
of them; publishes with nats-py to node 1 and checks that the page's NATS message rate goes above 0; drains node 3
and checks that its resources show under nodes 1 and 2 and that its moves are listed. A screenshot goes to
$DASHBOARD_SCREENSHOT (default: a temporary file; `Docs/dashboard.png` is made this way).

Binary: $STORK_BIN, default .build/debug/stork. Every wait is bounded; every process started is stopped at the end,
pass or fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

import nats
import pytest
from conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
STORK_BIN = os.environ.get("STORK_BIN") or str(ROOT / ".build" / "debug" / "stork")
HOST = "127.0.0.1"
RESOURCES = [f"res-{i:02d}" for i in range(1, 21)]


def free_ports(count: int) -> List[int]:
    """Ports free for TCP and UDP (a node's cluster port carries both)."""
    ports: List[int] = []
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    while len(ports) < count:
        port = rng.randint(20000, 39999)
        if port in ports:
            continue
        free = True
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    free = False
        if free:
            ports.append(port)
    return ports


class Node:
    def __init__(self, index: int, workdir: Path, ports: List[int], seed: Optional[str], source: Path) -> None:
        self.name = f"n{index}"
        self.cluster_port, self.http_port, self.nats_port = ports
        self.config = workdir / f"{self.name}.yaml"
        self.log_path = workdir / f"{self.name}.log"
        self.process: Optional[subprocess.Popen] = None
        self.config.write_text(
            "\n".join(
                [
                    "node:",
                    f"  name: {self.name}",
                    f"  bind: {HOST}:{self.cluster_port}",
                    f"  http: {HOST}:{self.http_port}",
                    f"  nats: {HOST}:{self.nats_port}",
                    f"  seeds: [{seed or ''}]",
                    f"  data: {json.dumps(str(workdir / (self.name + '-data')))}",
                    "cluster: {name: dashboard-test}",
                    # Lenient failure detection: the nodes share a small, busy machine (a debug build).
                    "membership: {probeInterval: 300ms, probeTimeout: 1s, indirectProbeTimeout: 2s, suspicionMinimum: 4s}",
                    "resources:",
                    "  sources:",
                    f"    - {{type: file, name: dashboard, path: {json.dumps(str(source))}}}",
                    "",
                ]
            )
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [STORK_BIN, "serve", "--config", str(self.config), "--log-level", "notice"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())

    def post(self, path: str) -> int:
        request = urllib.request.Request(self.url + path, data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status

    def running(self) -> int:
        resources = self.get("/v1/resources")["resources"]
        return sum(1 for r in resources if r["state"] == "running" and not r["id"].startswith("$js.stream."))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def cluster(tmp_path):
    if not os.access(STORK_BIN, os.X_OK):
        pytest.fail(f"no stork binary at {STORK_BIN}: build it (swift build) or set STORK_BIN")
    source = tmp_path / "resources.json"
    source.write_text(json.dumps({"data": [{"id": r, "team": "dashboard"} for r in RESOURCES]}))
    ports = free_ports(9)
    seed = f"{HOST}:{ports[0]}"
    nodes = [Node(i + 1, tmp_path, ports[i * 3 : i * 3 + 3], seed if i else None, source) for i in range(3)]
    try:
        nodes[0].start()
        wait_for("n1 ready", 30, lambda: nodes[0].get("/v1/cluster")["ready"])
        for node in nodes[1:]:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        for node in nodes:
            print(f"---- {node.name} log ----\n{node.log_tail()}")


class Publisher(threading.Thread):
    """Publishes small messages to a node's NATS endpoint (and receives them, so that messages go out too) until
    stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stopping = threading.Event()
        self.published = 0
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            asyncio.run(self.publish())
        except BaseException as error:  # reported by the test
            self.error = error

    async def publish(self) -> None:
        client = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=0, name="dashboard-test")

        async def ignore(_message) -> None:
            pass

        try:
            await client.subscribe("dashboard.>", cb=ignore)
            while not self.stopping.is_set():
                for _ in range(20):
                    await client.publish("dashboard.ticks", b"tick " * 20)
                    self.published += 1
                await client.flush(timeout=10)
                await asyncio.sleep(0.05)
        finally:
            await client.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=20)


# The page redraws every second, so it is read in one script call (no element outlives a redraw).


def members(driver) -> dict:
    return driver.execute_script(
        "const r = {}; for (const e of document.querySelectorAll('#members tr[data-member]')) r[e.dataset.member] = e.dataset.status; return r;"
    )


def owners(driver) -> dict:
    return driver.execute_script(
        "const r = {}; for (const g of document.querySelectorAll('#resources .node-group[data-node]'))"
        " for (const e of g.querySelectorAll('[data-resource]')) r[e.dataset.resource] = g.dataset.node; return r;"
    )


def local_states(driver) -> dict:
    return driver.execute_script(
        "const r = {}; for (const e of document.querySelectorAll('#resources .node-group[data-node=\"n1\"] [data-resource]'))"
        " r[e.dataset.resource] = e.dataset.state; return r;"
    )


def moves(driver) -> list:
    return driver.execute_script(
        "return [...document.querySelectorAll('#moves li[data-resource]')].map(e => [e.dataset.resource, e.dataset.from, e.dataset.to]);"
    )


def rate(driver, counter: str) -> float:
    value = driver.execute_script(
        "const e = document.querySelector('#rates [data-rate=\"' + arguments[0] + '\"]'); return e ? e.dataset.value : '';",
        counter,
    )
    return float(value) if value else 0.0


@pytest.mark.timeout(170)
def test_dashboard_shows_members_resources_rates_and_a_drain(cluster, browser):
    n1, n2, n3 = cluster
    everything = set(RESOURCES)

    def settled():
        for node in cluster:
            assert node.process.poll() is None, f"{node.name} exited with {node.process.returncode}:\n{node.log_tail()}"
        document = n1.get("/v1/cluster")
        alive = [m["name"] for m in document["members"] if m["status"] == "alive"]
        return len(alive) == 3 and len(document["view"]) == 3 and sum(node.running() for node in cluster) == len(RESOURCES)

    wait_for("three members alive, running the 20 resources between them", 60, settled)

    browser.get(n1.url + "/dashboard")
    wait_for("the page loaded", 15, lambda: browser.execute_script("return document.body.dataset.loaded") == "true")
    assert browser.title == "Stork dashboard"
    wait_for("three members shown alive", 15, lambda: members(browser) == {"n1": "alive", "n2": "alive", "n3": "alive"})
    shown = wait_for("every resource under a node", 15, lambda: (lambda o: o if set(o) == everything else None)(owners(browser)))
    assert set(shown.values()) <= {"n1", "n2", "n3"}
    assert len(set(shown.values())) >= 2, f"the resources should spread over the nodes: {shown}"
    # Node 1's own resources carry their state.
    states = wait_for("n1's resources shown running", 15, lambda: (lambda s: s if s and set(s.values()) == {"running"} else None)(local_states(browser)))
    assert set(states) == {r for r, node in shown.items() if node == "n1"}
    on_n3 = sorted(r for r, node in shown.items() if node == "n3")

    # Messages to node 1 show as a rate.
    publisher = Publisher(f"nats://{HOST}:{n1.nats_port}")
    publisher.start()
    try:
        wait_for("a NATS message rate above 0", 30, lambda: rate(browser, "nats.inMsgs") > 0 and rate(browser, "nats.outMsgs") > 0)
        assert publisher.error is None, publisher.error

        # Node 3 drains: it hands its resources to the others and exits.
        assert n3.post("/v1/drain") == 202
        wait_for("n3 exited after draining", 60, lambda: n3.process.poll() is not None)

        def moved():
            current = owners(browser)
            return set(current) == everything and set(current.values()) <= {"n1", "n2"}

        wait_for("n3's resources shown on n1 and n2", 30, moved)
        wait_for("n3 shown as no longer alive", 30, lambda: members(browser).get("n3", "left") in ("left", "dead"))
        # The list also has the moves of n2 and n3 joining, if node 1 looked at its view in between.
        if on_n3:
            listed = wait_for("n3's moves listed", 15, lambda: {r for r, source, _ in moves(browser) if source == "n3"} or None)
            assert listed == set(on_n3), f"moves {moves(browser)}, n3 had {on_n3}"
        assert all(to in ("n1", "n2") for _, source, to in moves(browser) if source == "n3")

        # A picture, with the rates still moving.
        browser.set_window_size(1280, 900)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1280, max(900, min(int(height) + 20, 1600)))
        time.sleep(2)
        assert rate(browser, "nats.inMsgs") > 0
        screenshot = os.environ.get("DASHBOARD_SCREENSHOT") or os.path.join(tempfile.gettempdir(), "stork-dashboard.png")
        browser.save_screenshot(screenshot)
        print(f"screenshot: {screenshot}; published {publisher.published}")
    finally:
        publisher.stop()
    assert publisher.error is None, publisher.error
