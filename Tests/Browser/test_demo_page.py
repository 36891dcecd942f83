"""Browser test of `stork demo`'s page: headless Chromium against a real demo on loopback.

Starts `stork demo` (the binary at $STORK_BIN, default .build/debug/stork) with its three `stork serve` nodes,
opens the page, checks that it shows three live nodes and the 22 players with their owners and shots arriving,
clicks "kill node" and checks that the page shows the node dead and its players owned by the other nodes, then
clicks "add node" and checks that the new node shows up live and runs some of the players.
A screenshot goes to $DEMO_SCREENSHOT (default: a temporary file; `Docs/demo.png` is made this way).

Chromium (the `browser` fixture of conftest.py) loads only the demo's page.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_for
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[2]
STORK_BIN = os.environ.get("STORK_BIN") or str(ROOT / ".build" / "debug" / "stork")
HOST = "127.0.0.1"
PLAYERS = 22


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _base_port() -> int:
    """A base port whose demo ports (nodes 1-6, the page and the feed) are free."""
    for _ in range(50):
        base = random.randrange(40000, 50000, 100)
        offsets = [i for n in range(1, 7) for i in (n, 100 + n, 200 + n)] + [300, 301]
        if all(_free(base + offset) for offset in offsets):
            return base
    raise RuntimeError("no free base port in 40000-50000")


def _state(base: int) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{base + 300}/api/state", timeout=2) as response:
        return json.loads(response.read())


@pytest.fixture
def demo(tmp_path):
    if not os.access(STORK_BIN, os.X_OK):
        pytest.fail(f"no stork binary at {STORK_BIN}: build it (swift build) or set STORK_BIN")
    base = _base_port()
    log = open(tmp_path / "demo.log", "w")
    process = subprocess.Popen(
        [STORK_BIN, "demo", "--base-port", str(base), "--match-seconds", "90", "--no-auto-moves"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        text = (tmp_path / "demo.log").read_text(errors="replace")
        print("---- stork demo output ----\n" + text[-6000:])


# The page redraws twice a second, so it is read in one script call (no element outlives a redraw).


def _nodes(driver) -> dict:
    return driver.execute_script(
        "const r = {}; for (const e of document.querySelectorAll('#nodes .node')) r[e.dataset.node] = e.dataset.status; return r;"
    )


def _owners(driver) -> dict:
    return driver.execute_script(
        "const r = {}; for (const e of document.querySelectorAll('#players tr[data-player]')) r[e.dataset.player] = e.dataset.owner; return r;"
    )


def _counts(driver) -> dict:
    return driver.execute_script(
        "const r = {}; for (const e of document.querySelectorAll('#counts [data-count]')) r[e.dataset.count] = e.querySelector('b').textContent; return r;"
    )


def _count(driver, selector: str) -> int:
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length;", selector)


def test_page_shows_nodes_players_and_a_kill(demo, browser):
    base, process = demo
    page = f"http://{HOST}:{base + 300}/"

    # The demo is up when its three nodes run every player and every player is connected to the feed.
    def ready():
        assert process.poll() is None, f"stork demo exited with {process.returncode}"
        state = _state(base)
        live = [n for n in state["nodes"] if n["status"] == "live"]
        owned = [p for p in state["players"] if p["owner"] and p["connections"] > 0]
        return len(live) == 3 and len(owned) == PLAYERS

    wait_for("three live nodes running all 22 players", 60, ready)

    browser.get(page)
    wait_for("the page loaded its state", 10, lambda: browser.execute_script("return document.body.dataset.loaded") == "true")
    assert browser.title == "Stork live demo"
    nodes = wait_for("three nodes shown live", 10, lambda: (lambda n: n if list(n.values()).count("live") == 3 else None)(_nodes(browser)))
    assert sorted(nodes) == ["n1", "n2", "n3"]
    owners = wait_for("22 players shown with owners", 10, lambda: (lambda o: o if len(o) == PLAYERS and all(o.values()) else None)(_owners(browser)))
    assert set(owners.values()) <= {"n1", "n2", "n3"}
    assert len(set(owners.values())) >= 2, f"the players should spread over the nodes: {owners}"

    # Shots arrive (the first one is due about 3 s after kick-off).
    wait_for("a shot in the feed list", 30, lambda: _count(browser, "#feed li") > 0)

    # Kill a node from the page: the oldest live one (n1).
    victim_players = sorted(p for p, o in owners.items() if o == "n1")
    browser.find_element(By.ID, "kill-node").click()
    wait_for("n1 shown killed", 10, lambda: _nodes(browser).get("n1") == "killed")

    def moved():
        current = _owners(browser)
        return all(current.get(p) in ("n2", "n3") for p in victim_players) and len(current) == PLAYERS and all(current.values())

    wait_for("n1's players shown on n2 and n3", 30, moved)
    assert list(_nodes(browser).values()).count("live") == 2
    if victim_players:
        wait_for("the moves listed", 5, lambda: _count(browser, "#moves li") > 0)

    # Add a node from the page: n4 starts, joins, and takes its share of the players.
    browser.find_element(By.ID, "add-node").click()
    wait_for("n4 shown live", 20, lambda: _nodes(browser).get("n4") == "live")

    def took_share():
        current = _owners(browser)
        return "n4" in current.values() and len(current) == PLAYERS and all(current.values())

    wait_for("n4 shown running players", 30, took_share)

    # Let a few more shots arrive, then keep a picture of the page.
    time.sleep(float(os.environ.get("DEMO_SCREENSHOT_WAIT", "3")))
    counts = _counts(browser)
    assert int(counts["received"]) > 0
    screenshot = os.environ.get("DEMO_SCREENSHOT") or os.path.join(tempfile.gettempdir(), "stork-demo-page.png")
    browser.save_screenshot(screenshot)
    print(f"screenshot: {screenshot}; counts: {counts}")
