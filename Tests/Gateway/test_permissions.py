"""The permission matrix over the WebSocket (the main node's rules, conftest.MAIN_RULES), and rules reload."""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import pytest

from conftest import PASSWORDS, async_wait_until

ALLOW, DENY = True, False

# (user, action, subject, allowed): own channels yes, the other user's never, public read-only for non-admins,
# inboxes write-only for others, default deny, the servers' own subjects never.
MATRIX = []
for me, other in (("alice", "bob"), ("bob", "alice")):
    MATRIX += [
        # own channels
        (me, "subscribe", f"users.{me}.notes", ALLOW),
        (me, "subscribe", f"users.{me}.>", ALLOW),
        (me, "subscribe", f"users.{me}.*", ALLOW),
        (me, "subscribe", f"users.{me}.inbox", ALLOW),
        (me, "publish", f"users.{me}.notes", ALLOW),
        (me, "request", f"users.{me}.rpc", ALLOW),
        (me, "presence", f"users.{me}.notes", ALLOW),
        # the other user's channels: never, whatever the action, also through wildcards
        (me, "subscribe", f"users.{other}.notes", DENY),
        (me, "subscribe", f"users.{other}.>", DENY),
        (me, "subscribe", f"users.{other}.inbox", DENY),
        (me, "subscribe", "users.*.notes", DENY),
        (me, "subscribe", "users.>", DENY),
        (me, "subscribe", ">", DENY),
        (me, "publish", f"users.{other}.notes", DENY),
        (me, "request", f"users.{other}.rpc", DENY),
        (me, "presence", f"users.{other}.notes", DENY),
        # inboxes: anyone may write, only the owner reads; no requests into them
        (me, "publish", f"users.{other}.inbox", ALLOW),
        (me, "request", f"users.{other}.inbox", DENY),
        # public: read-only for members
        (me, "subscribe", "public.news", ALLOW),
        (me, "subscribe", "public.>", ALLOW),
        (me, "presence", "public.news", ALLOW),
        (me, "publish", "public.news", DENY),
        (me, "request", "public.news", DENY),
        # default deny and the servers' own subjects
        (me, "subscribe", "elsewhere.x", DENY),
        (me, "publish", "elsewhere.x", DENY),
        (me, "subscribe", "$SYS.>", DENY),
        (me, "publish", "_GW.x.1", DENY),
    ]
MATRIX += [
    # rooms: the user's data decides (alice: r1, bob: r2), and the message's data
    ("alice", "subscribe", "rooms.r1.messages", ALLOW),
    ("alice", "subscribe", "rooms.r2.messages", DENY),
    ("bob", "subscribe", "rooms.r2.messages", ALLOW),
    ("bob", "publish", "rooms.r1.messages", DENY),
    ("alice", "publish", "rooms.r1.messages", ALLOW),
    # the admin: may publish on public, still not in other users' channels
    ("carol", "publish", "public.news", ALLOW),
    ("carol", "subscribe", "users.alice.notes", DENY),
    ("carol", "publish", "users.alice.notes", DENY),
    ("carol", "publish", "users.alice.inbox", ALLOW),
]


async def attempt(ws, action: str, subject: str, data: Any = None) -> Dict[str, Any]:
    frame: Dict[str, Any] = {"type": action, "subject": subject}
    if action in ("publish", "request"):
        frame["data"] = {"text": "hi"} if data is None else data
    if action == "request":
        frame["timeout"] = 200
    return await ws.call(frame)


def allowed(action: str, answer: Dict[str, Any]) -> bool:
    if answer["type"] == "error":
        if answer["code"] == "forbidden":
            return False
        # An allowed request with nobody answering.
        assert action == "request" and answer["code"] in ("timeout", "no_responders"), answer
        return True
    expected = {"subscribe": "ok", "publish": "ok", "request": "response", "presence": "presence"}[action]
    assert answer["type"] == expected, answer
    return True


@pytest.mark.parametrize("user, action, subject, expected", MATRIX,
                         ids=[f"{u}-{a}-{s}-{'allow' if e else 'deny'}" for u, a, s, e in MATRIX])
async def test_matrix(main_node, clients, user, action, subject, expected):
    ws = await clients.login(main_node, user=user, password=PASSWORDS[user])
    answer = await attempt(ws, action, subject)
    assert allowed(action, answer) == expected, answer
    # The connection stays usable after a refusal.
    assert (await ws.call({"type": "ping"}))["type"] == "pong"


async def test_conditions_read_the_message(main_node, clients):
    ws = await clients.login(main_node, user="alice", password=PASSWORDS["alice"])
    assert not allowed("publish", await attempt(ws, "publish", "rooms.r1.messages", {"no": "text"}))
    assert not allowed("publish", await attempt(ws, "publish", "rooms.r1.messages", {"text": "x" * 2001}))
    assert allowed("publish", await attempt(ws, "publish", "rooms.r1.messages", {"text": "x" * 2000}))


async def test_refused_actions_deliver_nothing(main_node, clients):
    alice = await clients.login(main_node, user="alice", password=PASSWORDS["alice"])
    bob = await clients.login(main_node, user="bob", password=PASSWORDS["bob"])
    await alice.subscribe("users.alice.>")
    assert (await attempt(bob, "publish", "users.alice.notes", {"text": "sneaky"}))["code"] == "forbidden"
    assert (await attempt(bob, "publish", "users.alice.inbox", {"text": "hello"}))["type"] == "ok"
    message = await alice.next_message()
    assert message["subject"] == "users.alice.inbox" and message["data"] == {"text": "hello"}, message
    assert (await alice.call({"type": "ping"}))["type"] == "pong"
    assert not alice.messages(), alice.messages()
    # Bob's refused subscription receives nothing of alice's either.
    assert (await attempt(bob, "subscribe", "users.alice.>"))["code"] == "forbidden"
    await alice.publish("users.alice.notes", {"text": "private"})
    await alice.next_message(subject="users.alice.notes")
    assert (await bob.call({"type": "ping"}))["type"] == "pong"
    assert not bob.messages(), bob.messages()


# --------------------------------------------------------------------------------------
# Reload without restart
# --------------------------------------------------------------------------------------


def write_rules(path: str, document: Any) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        f.write(document if isinstance(document, str) else json.dumps(document))
    os.replace(temporary, path)


@pytest.fixture(scope="module")
def reload_node(nodes):
    workdir = nodes.workdir("reload")
    rules = os.path.join(workdir, "rules.json")
    write_rules(rules, {"rules": [{"subject": "reload.a", "subscribe": True}]})
    node = nodes.single("reload", {"auth": [{"type": "open"}], "permissions": {"file": rules}}, workdir=workdir)
    return node, rules


async def test_rules_reload_without_restart(reload_node, clients):
    node, rules = reload_node
    ws = await clients.login(node, user="zoe")
    assert (await ws.call({"type": "subscribe", "subject": "reload.a"}))["type"] == "ok"
    assert (await ws.call({"type": "subscribe", "subject": "reload.b"}))["code"] == "forbidden"

    write_rules(rules, {"rules": [{"subject": "reload.b", "subscribe": True}]})

    async def b_allowed() -> bool:
        answer = await ws.call({"type": "subscribe", "subject": "reload.b"})
        return answer["type"] == "ok"

    await async_wait_until("the new rule applies", 15, b_allowed, interval=0.2)
    # The old rule is gone for the next action (a fresh connection, to ask again).
    other = await clients.login(node, user="zoe")
    assert (await other.call({"type": "subscribe", "subject": "reload.a"}))["code"] == "forbidden"

    # A broken file leaves the rules in force (and is logged).
    write_rules(rules, "rules: [ {subject: 'reload.c', subscribe: 'user.id ==' ")

    def logged() -> bool:
        with open(node.log_path, "rb") as f:
            return b"permission rules not reloaded" in f.read()

    await async_wait_until("the broken file is noticed", 15, logged, interval=0.2)
    third = await clients.login(node, user="zoe")
    assert (await third.call({"type": "subscribe", "subject": "reload.b"}))["type"] == "ok"
    assert (await third.call({"type": "subscribe", "subject": "reload.c"}))["code"] == "forbidden"
