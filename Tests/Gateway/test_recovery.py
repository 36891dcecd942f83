"""Recovery after a reconnect (`resume`), replay from a stream position (`from`), and `GET /v1/history`."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse

import nats
import pytest

from conftest import PASSWORDS, basic

ALICE = {"user": "alice", "password": PASSWORDS["alice"]}


async def test_resume_delivers_exactly_the_missed_messages(main_node, clients):
    publisher = await clients.login(main_node, **ALICE)
    alice = await clients.open(main_node)
    welcome = await alice.login(**ALICE)
    welcome_session = welcome["session"]
    await alice.subscribe("users.alice.feed")
    await publisher.publish("users.alice.feed", {"n": "before"})
    last = await alice.next_message(subject="users.alice.feed")
    assert last["data"] == {"n": "before"}
    await alice.close()

    for i in range(5):
        await publisher.publish("users.alice.feed", {"n": i})

    back = await clients.open(main_node)
    welcome = await back.auth(**ALICE, resume={"session": welcome_session, "lastSeq": last["seq"]})
    assert welcome["type"] == "welcome" and welcome["recovered"] is True, welcome
    assert welcome["session"] == welcome_session
    missed = [await back.next_message(subject="users.alice.feed") for _ in range(5)]
    assert [m["data"] for m in missed] == [{"n": i} for i in range(5)], missed
    assert [m["seq"] for m in missed] == [last["seq"] + 1 + i for i in range(5)], missed
    # Then live ones, numbered on; and nothing else.
    await publisher.publish("users.alice.feed", {"n": "live"})
    live = await back.next_message(subject="users.alice.feed")
    assert live["data"] == {"n": "live"} and live["seq"] == last["seq"] + 6, live
    assert (await back.call({"type": "ping"}))["type"] == "pong"
    assert not back.messages(), back.messages()


async def test_resume_refused(main_node, clients):
    alice = await clients.open(main_node)
    session = (await alice.login(**ALICE))["session"]
    await alice.subscribe("users.alice.gone")
    await alice.close()
    # Another user may not take the session over.
    bob = await clients.open(main_node)
    welcome = await bob.auth(user="bob", password=PASSWORDS["bob"], resume={"session": session, "lastSeq": 0})
    assert welcome["type"] == "welcome" and welcome["recovered"] is False, welcome
    assert welcome["session"] != session and welcome["user"]["id"] == "bob"
    # An unknown session.
    other = await clients.open(main_node)
    welcome = await other.auth(**ALICE, resume={"session": "no-such-session", "lastSeq": 3})
    assert welcome["type"] == "welcome" and welcome["recovered"] is False, welcome


@pytest.fixture(scope="module")
def orders(main_node):
    """Stream ORDERS (orders.>) with five messages, made with nats-py's JetStream API."""
    # On a thread of its own: asyncio.run must not touch the tests' event loop.
    errors = []

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(make_orders(main_node), 30))
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "creating the stream did not finish"
    if errors:
        raise errors[0]
    return "ORDERS"


async def make_orders(main_node) -> None:
    nc = await asyncio.wait_for(nats.connect(main_node.nats_url, connect_timeout=5, allow_reconnect=False), 15)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        acks = []
        for i in range(1, 6):
            acks.append(await js.publish(f"orders.eu.{i}", json.dumps({"order": i}).encode()))
        assert [a.seq for a in acks] == [1, 2, 3, 4, 5], acks
    finally:
        await nc.close()


async def test_replay_from_stream_position(main_node, orders, clients):
    alice = await clients.login(main_node, **ALICE)
    ok = await alice.subscribe("orders.eu.>", **{"from": {"seq": 3}})
    assert ok["replayed"] == 3, ok
    replayed = [await alice.next_message(subject=None) for _ in range(3)]
    assert [(m["streamSeq"], m["subject"], m["data"]) for m in replayed] == [
        (3, "orders.eu.3", {"order": 3}), (4, "orders.eu.4", {"order": 4}), (5, "orders.eu.5", {"order": 5})
    ], replayed
    assert all(m["stream"] == orders for m in replayed)
    seqs = [m["seq"] for m in replayed]
    assert seqs == sorted(seqs)
    # Then live ones, once (the stream captures them too).
    await alice.publish("orders.eu.6", {"order": 6})
    live = await alice.next_message(subject="orders.eu.6")
    assert live["data"] == {"order": 6}, live
    assert (await alice.call({"type": "ping"}))["type"] == "pong"
    assert not alice.messages(), alice.messages()

    last_two = await clients.login(main_node, **ALICE)
    ok = await last_two.subscribe("orders.eu.>", **{"from": {"last": 2}})
    assert ok["replayed"] == 2, ok
    got = [await last_two.next_message() for _ in range(2)]
    assert [m["streamSeq"] for m in got] == [5, 6], got

    # Without a stream for the subject: no_history (and no subscription).
    answer = await alice.call({"type": "subscribe", "subject": "users.alice.nostream", "from": {"seq": 1}})
    assert answer["type"] == "error" and answer["code"] == "no_history", answer
    # Replay is still checked against the rules.
    bob = await clients.login(main_node, user="bob", password=PASSWORDS["bob"])
    answer = await bob.call({"type": "subscribe", "subject": "users.alice.feed", "from": {"seq": 1}})
    assert answer["code"] == "forbidden", answer


async def test_http_history(main_node, orders):
    def history(query: dict, headers=None):
        return main_node.http("GET", "/v1/history?" + urllib.parse.urlencode(query),
                              headers=headers if headers is not None else basic("alice", PASSWORDS["alice"]))

    status, body = history({"subject": "orders.eu.2"})
    assert status == 200, (status, body)
    assert body["stream"] == orders and body["lastSeq"] >= 5, body
    assert [(m["seq"], m["subject"], m["data"]) for m in body["messages"]] == [(2, "orders.eu.2", {"order": 2})]
    assert isinstance(body["messages"][0]["time"], (int, float))

    status, body = history({"subject": "orders.eu.>", "from": 2, "limit": 3})
    assert status == 200, (status, body)
    assert [m["seq"] for m in body["messages"]] == [2, 3, 4], body

    status, body = history({"subject": "orders.eu.>", "limit": 2})
    assert status == 200 and len(body["messages"]) == 2, (status, body)
    assert body["messages"][-1]["seq"] == body["lastSeq"], body

    status, body = history({"subject": "orders.eu.1"}, headers={})
    assert status == 401, (status, body)
    status, body = history({"subject": "users.alice.feed"}, headers=basic("bob", PASSWORDS["bob"]))
    assert status == 403, (status, body)
    status, body = history({"subject": "users.alice.nostream"})
    assert status == 404 and body["error"]["code"] == "no_history", (status, body)
    status, body = history({})
    assert status == 400, (status, body)


async def test_history_and_replay_through_every_node(cluster, clients):
    """A stream held by n1: a WebSocket client of n2 replays from it, and n3 serves its history over HTTP."""
    n1, n2, n3 = cluster
    nc = await asyncio.wait_for(nats.connect(n1.nats_url, connect_timeout=5, allow_reconnect=False), 15)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(name="CLUSTERHIST", subjects=["clusterhist.>"])
        for i in range(1, 4):
            await js.publish(f"clusterhist.{i}", json.dumps({"n": i}).encode())
    finally:
        await nc.close()

    reader = await clients.login(n2, user="rita")
    ok = await reader.subscribe("clusterhist.>", **{"from": {"seq": 2}})
    assert ok["replayed"] == 2, ok
    replayed = [await reader.next_message() for _ in range(2)]
    assert [(m["stream"], m["streamSeq"], m["data"]) for m in replayed] == [
        ("CLUSTERHIST", 2, {"n": 2}), ("CLUSTERHIST", 3, {"n": 3})
    ], replayed

    status, body = await asyncio.to_thread(
        n3.http, "GET", "/v1/history?" + urllib.parse.urlencode({"subject": "clusterhist.>", "limit": 10}))
    assert status == 200, (status, body)
    assert body["stream"] == "CLUSTERHIST" and [m["seq"] for m in body["messages"]] == [1, 2, 3], body
    status, body = await asyncio.to_thread(
        n3.http, "GET", "/v1/history?" + urllib.parse.urlencode({"subject": "clusterhist-none.x"}))
    assert status == 404, (status, body)
