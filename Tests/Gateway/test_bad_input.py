"""Bad input: malformed and oversized frames get errors or a close, and the server keeps serving other clients."""

from __future__ import annotations

import json

from conftest import PASSWORDS, async_wait_until

BOB = {"user": "bob", "password": PASSWORDS["bob"]}


async def test_malformed_frames_get_errors_and_the_connection_stays(main_node, clients):
    observer = await clients.login(main_node, **BOB)
    await observer.subscribe("users.bob.watch")

    ws = await clients.open(main_node)
    cases = [
        ("not json at all", "bad_frame"),
        ('{"type": "subscribe", "subject": ', "bad_frame"),
        ("[1, 2, 3]", "bad_frame"),
        ('"just a string"', "bad_frame"),
        ('{"type": "launch_missiles", "id": 1}', "unknown_type"),
        ('{"type": 7, "id": 2}', None),
        ('{"id": 3}', None),
        ('{"type": "auth", "v": 2, "id": 4, "user": "bob", "password": "builder"}', "unsupported_version"),
    ]
    for text, code in cases:
        await ws.send(text)
        error = await ws.wait_frame(lambda f: f.get("type") == "error", what=f"an error for {text!r}")
        if code is not None:
            assert error["code"] == code, (text, error)
        else:
            assert error["code"] in ("bad_frame", "bad_field", "unknown_type"), (text, error)
    # Wrongly typed fields after auth; the id is echoed.
    await ws.login(**BOB)
    for frame, code in [
        ({"type": "subscribe", "id": 11, "subject": 7}, "bad_field"),
        ({"type": "publish", "id": 12, "subject": ["users.bob.x"], "data": 1}, "bad_field"),
        ({"type": "request", "id": 13, "subject": "users.bob.x", "data": 1, "timeout": "soon"}, "bad_field"),
        ({"type": "subscribe", "id": 14, "subject": "users.bob.watch", "from": {"seq": "one"}}, "bad_field"),
        ({"type": "ping", "id": 15, "v": 9}, None),
        ({"type": "auth", "id": 16, "v": 1, "user": "bob", "password": "builder"}, "already_authenticated"),
    ]:
        await ws.send(frame)
        error = await ws.wait_frame(lambda f: f.get("id") == frame["id"], what=f"an answer to {frame}")
        if code is None:
            assert error["type"] in ("error", "pong"), error
        else:
            assert error["type"] == "error" and error["code"] == code, (frame, error)
    # Subjects that are not subjects.
    for subject in ["", "users..bob", "users.bob.", "users.bob watch", "users.>.bob"]:
        answer = await ws.call({"type": "subscribe", "subject": subject})
        assert answer["type"] == "error", (subject, answer)
    for subject in ["users.bob.*", "users.bob.>"]:
        answer = await ws.call({"type": "publish", "subject": subject, "data": 1})
        assert answer["type"] == "error", (subject, answer)
    # A binary frame of garbage.
    await ws.send(b"\x00\x01\x02\xff")
    error = await ws.wait_frame(lambda f: f.get("type") == "error", what="an error for a binary frame")
    assert error["code"] == "bad_frame", error

    # Still open and working, and so is everyone else.
    assert (await ws.call({"type": "ping"}))["type"] == "pong"
    await ws.publish("users.bob.watch", {"still": "here"})
    assert (await observer.next_message(subject="users.bob.watch"))["data"] == {"still": "here"}


async def test_oversized_frame_closes_with_1009(main_node, clients):
    observer = await clients.login(main_node, **BOB)
    await observer.subscribe("users.bob.big")
    ws = await clients.login(main_node, **BOB)
    # Just under the limit (8192 bytes): fine.
    near = {"type": "publish", "id": 1, "subject": "users.bob.big", "data": ""}
    near["data"] = "x" * (8192 - len(json.dumps(near)) - 16)
    await ws.send(json.dumps(near))
    assert (await ws.wait_frame(lambda f: f.get("id") == 1))["type"] == "ok"
    assert len((await observer.next_message(subject="users.bob.big"))["data"]) == len(near["data"])
    # Over it: closed with 1009.
    await ws.send(json.dumps({"type": "publish", "id": 2, "subject": "users.bob.big", "data": "y" * 20000}))
    assert await ws.wait_closed() == 1009
    # Nothing of it was delivered; the others carry on, and new clients are served.
    assert (await observer.call({"type": "ping"}))["type"] == "pong"
    assert not observer.messages(), observer.messages()
    again = await clients.login(main_node, **BOB)
    await again.publish("users.bob.big", {"after": True})
    assert (await observer.next_message(subject="users.bob.big"))["data"] == {"after": True}


async def test_unauthenticated_connection_is_closed_after_auth_timeout(main_node, clients):
    ws = await clients.open(main_node)
    assert (await ws.call({"type": "ping"}))["type"] == "pong"
    # authTimeout is 5s on the main node; a bounded wait well beyond it.
    assert await ws.wait_closed(timeout=20) == 1008
    other = await clients.login(main_node, **BOB)
    assert (await other.call({"type": "ping"}))["type"] == "pong"
