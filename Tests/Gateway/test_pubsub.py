"""Publish and subscribe: WebSocket to WebSocket, NATS to WebSocket and back, requests, and across a 3-node cluster
(the relay carries messages, replies and presence between nodes).

The relay forwards what the gateway's subscriptions want (Docs/design.md, "Cluster relay"): a WebSocket subscriber on
one node gets what WebSocket or NATS clients publish on another; a NATS client's own subscription is node-local."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any, Dict, List

import nats

from conftest import PASSWORDS, async_wait_until, stop_task


async def nats_connect(node):
    return await asyncio.wait_for(nats.connect(node.nats_url, connect_timeout=5, allow_reconnect=False), 15)


async def nats_sync(nc) -> None:
    """A round trip that the server has seen everything sent before it (nats-py's flush pings ahead of its
    buffer, so push the buffer out first)."""
    flush_pending = getattr(nc, "_flush_pending", None)
    if flush_pending is not None:
        await asyncio.wait_for(flush_pending(force_flush=True), 5)
    await nc.flush(timeout=5)


async def quiet(ws) -> None:
    """A round trip on the connection: what the server sent before the pong has arrived."""
    assert (await ws.call({"type": "ping"}))["type"] == "pong"


# --------------------------------------------------------------------------------------
# One node
# --------------------------------------------------------------------------------------


async def test_ws_to_ws(main_node, clients):
    alice = await clients.login(main_node, user="alice", password=PASSWORDS["alice"])
    second = await clients.login(main_node, user="alice", password=PASSWORDS["alice"])
    ok = await alice.subscribe("users.alice.>")
    assert ok["subject"] == "users.alice.>"
    payloads: List[Any] = [{"text": "hi"}, [1, 2, 3], "a string", 42, None, {"nested": {"ü": "✓"}}]
    for data in payloads:
        await second.publish("users.alice.notes", data)
    got = [await alice.next_message() for _ in payloads]
    assert [m["data"] for m in got] == payloads
    assert all(m["subject"] == "users.alice.notes" for m in got)
    seqs = [m["seq"] for m in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(payloads))) and seqs[0] == 1, seqs
    # Unsubscribed: nothing more.
    assert (await alice.call({"type": "unsubscribe", "subject": "users.alice.>"}))["type"] == "ok"
    await second.publish("users.alice.notes", {"text": "after"})
    await quiet(second)
    await quiet(alice)
    assert not alice.messages(), alice.messages()


async def test_nats_to_ws(main_node, clients):
    alice = await clients.login(main_node, user="alice", password=PASSWORDS["alice"])
    await alice.subscribe("users.alice.feed")
    nc = await nats_connect(main_node)
    try:
        await nc.publish("users.alice.feed", b'{"from":"nats","n":1}')
        await nc.publish("users.alice.feed", "plain text, not JSON".encode())
        await nc.publish("users.alice.feed", b"\xff\xfe\x00binary")
        await nats_sync(nc)
    finally:
        await nc.close()
    json_message = await alice.next_message()
    assert json_message["data"] == {"from": "nats", "n": 1} and "encoding" not in json_message, json_message
    text = await alice.next_message()
    assert text["data"] == "plain text, not JSON" and text["encoding"] == "text", text
    binary = await alice.next_message()
    assert binary["encoding"] == "base64" and base64.b64decode(binary["data"]) == b"\xff\xfe\x00binary", binary


async def test_ws_to_nats(main_node, clients):
    alice = await clients.login(main_node, user="alice", password=PASSWORDS["alice"])
    nc = await nats_connect(main_node)
    try:
        received: asyncio.Queue = asyncio.Queue()
        await nc.subscribe("users.alice.out", cb=received.put)
        await nats_sync(nc)
        await alice.publish("users.alice.out", {"to": "nats", "list": [1, "two"]})
        message = await asyncio.wait_for(received.get(), 10)
        assert json.loads(message.data) == {"to": "nats", "list": [1, "two"]}
    finally:
        await nc.close()


async def test_requests_between_ws_and_nats(main_node, clients):
    alice = await clients.login(main_node, user="alice", password=PASSWORDS["alice"])
    nc = await nats_connect(main_node)
    try:
        # A NATS responder answers a WebSocket request.
        async def add(msg) -> None:
            numbers = json.loads(msg.data)
            await msg.respond(json.dumps(sum(numbers)).encode())

        await nc.subscribe("users.alice.add", cb=add)
        await nats_sync(nc)
        answer = await alice.call({"type": "request", "subject": "users.alice.add", "data": [1, 2, 39],
                                   "timeout": 5000})
        assert answer["type"] == "response" and answer["data"] == 42, answer

        # A WebSocket responder answers a NATS request (and may answer only once).
        responder = await clients.login(main_node, user="alice", password=PASSWORDS["alice"])
        await responder.subscribe("users.alice.svc")
        request = asyncio.create_task(nc.request("users.alice.svc", b'{"q":"ping"}', timeout=10))
        message = await responder.next_message(subject="users.alice.svc")
        assert message["data"] == {"q": "ping"} and message["replyTo"].startswith("_"), message
        assert (await responder.call({"type": "respond", "to": message["replyTo"], "data": {"a": "pong"}}))[
            "type"] == "ok"
        reply = await asyncio.wait_for(request, 15)
        assert json.loads(reply.data) == {"a": "pong"}
        again = await responder.call({"type": "respond", "to": message["replyTo"], "data": 1})
        assert again["code"] == "not_a_request", again
        forged = await responder.call({"type": "respond", "to": "_INBOX.forged", "data": 1})
        assert forged["code"] == "not_a_request", forged
        # Nobody answers: a timeout error.
        late = await alice.call({"type": "request", "subject": "users.alice.nobody", "data": 1, "timeout": 300})
        assert late["type"] == "error" and late["code"] in ("timeout", "no_responders"), late
    finally:
        await nc.close()


# --------------------------------------------------------------------------------------
# Three nodes
# --------------------------------------------------------------------------------------


async def probe_until_delivered(publisher, subscriber, subject: str, timeout: float = 20) -> None:
    """Publishes probes until the subscriber has one: the other node's interest has reached the publisher's."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        n += 1
        await publisher.publish(subject, {"probe": n})
        try:
            await subscriber.next_message(timeout=0.3, subject=subject)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no probe on {subject} crossed the cluster within {timeout}s")


async def test_cluster_publish_exactly_once(cluster, clients):
    n1, _, n3 = cluster
    subscriber = await clients.login(n3, user="sam")
    publisher = await clients.login(n1, user="pat")
    await subscriber.subscribe("chat.>")
    await probe_until_delivered(publisher, subscriber, "chat.probe")
    nc = await nats_connect(n1)
    try:
        for i in range(10):
            await publisher.publish("chat.room", {"i": i, "via": "ws"})
        for i in range(10):
            await nc.publish("chat.room", json.dumps({"i": i, "via": "nats"}).encode())
        await nats_sync(nc)
    finally:
        await nc.close()
    got: List[Dict[str, Any]] = []
    for _ in range(20):
        got.append((await subscriber.next_message(subject="chat.room", timeout=15))["data"])
    by_source = {via: [d["i"] for d in got if d["via"] == via] for via in ("ws", "nats")}
    assert by_source == {"ws": list(range(10)), "nats": list(range(10))}, got
    # Exactly once: a marker published after them arrives with nothing extra before it.
    await publisher.publish("chat.room", {"i": "end", "via": "ws"})
    marker = await subscriber.next_message(subject="chat.room", timeout=15)
    assert marker["data"] == {"i": "end", "via": "ws"}, (marker, subscriber.messages())
    await quiet(subscriber)
    assert not [m for m in subscriber.messages() if m["subject"] == "chat.room"], subscriber.messages()


async def test_cluster_request_respond(cluster, clients):
    n1, n2, _ = cluster
    responder = await clients.login(n2, user="rita")
    requester = await clients.login(n1, user="quinn")
    await responder.subscribe("rpc.add")
    served = 0

    async def serve() -> None:
        nonlocal served
        while True:
            message = await responder.next_message(subject="rpc.add", timeout=60)
            answer = await responder.call({"type": "respond", "to": message["replyTo"], "data": sum(message["data"])})
            assert answer["type"] == "ok", answer
            served += 1

    server = asyncio.create_task(serve())
    try:
        deadline = time.monotonic() + 20
        while True:
            answer = await requester.call({"type": "request", "subject": "rpc.add", "data": [20, 22],
                                           "timeout": 1000})
            if answer["type"] == "response":
                break
            assert answer["code"] in ("timeout", "no_responders"), answer
            assert time.monotonic() < deadline, "no response crossed the cluster"
        assert answer["data"] == 42
        # Now that interest is known, every request is answered.
        for i in range(5):
            answer = await requester.call({"type": "request", "subject": "rpc.add", "data": [i, 1], "timeout": 5000})
            assert answer["type"] == "response" and answer["data"] == i + 1, answer
        # The HTTP call too.
        # (on a thread: the responder runs on this event loop)
        status, body = await asyncio.to_thread(
            n1.http, "POST", "/v1/request", {"subject": "rpc.add", "data": [2, 3], "timeout": 5000})
        assert status == 200 and body == {"data": 5}, (status, body)
    finally:
        await stop_task(server)


async def test_cluster_presence(cluster, clients):
    n1, n2, n3 = cluster
    alice = await clients.login(n2, user="alice")
    bob = await clients.login(n3, user="bob")
    carol = await clients.login(n1, user="carol")
    await alice.subscribe("lobby.main")
    await bob.subscribe("lobby.*")
    await carol.subscribe("elsewhere")

    async def users() -> List[str]:
        answer = await carol.call({"type": "presence", "subject": "lobby.main"})
        assert answer["type"] == "presence" and answer["subject"] == "lobby.main", answer
        return sorted(answer["users"])

    async def both() -> bool:
        return await users() == ["alice", "bob"]

    await async_wait_until("alice (node 2) and bob (node 3) present, seen from node 1", 20, both, interval=0.2)
    # Leaving shows too (unsubscribing: a closed connection's session keeps its subscriptions for resume).
    assert (await bob.call({"type": "unsubscribe", "subject": "lobby.*"}))["type"] == "ok"

    async def only_alice() -> bool:
        return await users() == ["alice"]

    await async_wait_until("bob gone", 20, only_alice, interval=0.2)
