"""Core NATS protocol compatibility tests (nats-py client + raw sockets).

Reference behaviour: nats-server 2.9.10.  Where that server's behaviour is not what
the protocol documentation suggests, the test asserts the real behaviour and says so.

With COMPAT_SPREAD=1 these tests run on a three-node cluster, each new client
connection on the next node (see conftest.py, "Spread mode"): where a test publishes
on one connection for subscriptions made on another, it first waits for the interest
to cross nodes (``spread_interest`` and friends, no-ops otherwise).  Tests about one
server's own behaviour are skipped there (``spread_skip``, with the reason) or run with
all their clients on one node (``spread_one_node``).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket

import nats
import nats.errors
import pytest

from conftest import (
    HOST,
    SPREAD,
    RawClient,
    close_quietly,
    connect,
    spread_interest,
    spread_interest_before,
    spread_responder,
    spread_skip,
    sync,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)

OPTS = "the spread cluster's nodes run with default options"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


async def take_all(sub, idle: float = 0.3):
    """Collect messages from a callback-less subscription until `idle` seconds pass without one."""
    out = []
    while True:
        try:
            out.append(await sub.next_msg(timeout=idle))
        except nats.errors.TimeoutError:
            return out


async def take(sub, n: int, timeout: float = 5.0):
    """Receive exactly n messages (each within `timeout`)."""
    return [await sub.next_msg(timeout=timeout) for _ in range(n)]


def port_of(nc):
    """The port of the server (spread mode: the node) a nats-py client is connected to."""
    return nc.connected_url.port if nc.connected_url is not None else None


# --------------------------------------------------------------------------------------
# connect / INFO
# --------------------------------------------------------------------------------------


async def test_connect_and_server_info(server, nc):
    assert nc.is_connected
    info = nc._server_info
    # Fields the reference says are always present in INFO.
    for key in ("server_id", "server_name", "version", "go", "host", "port", "headers", "max_payload", "proto"):
        assert key in info, f"INFO lacks {key}: {info}"
    assert info["headers"] is True
    assert info["max_payload"] == 1048576  # default
    assert nc.max_payload == 1048576
    assert info["proto"] >= 1
    # nats-py switches JetStream API forms on the version: it must parse as semver and
    # be 2.x with minor >= 9 to get the CONSUMER.CREATE.<s>.<c>.<filter> form.
    v = nc.connected_server_version
    assert v.major == 2 and v.minor >= 9, info["version"]


async def test_info_line_raw(server, raw_factory):
    raw = await raw_factory(server, handshake=False)
    info = raw.info
    assert isinstance(info["server_id"], str) and info["server_id"]
    assert info["headers"] is True
    assert isinstance(info["max_payload"], int)
    assert re.match(r"^\d+\.\d+\.\d+", info["version"])
    # CONNECT then PING must be answered by PONG (what nats-py waits for).
    await raw.send(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"headers":true}\r\nPING\r\n')
    assert await raw.read_op() == b"PONG"


@spread_skip("one server's max_payload option (its INFO and the client-side limit); " + OPTS)
async def test_max_payload_option(server_factory):
    srv = server_factory(max_payload=2048)
    nc = await connect(srv.url)
    try:
        assert nc._server_info["max_payload"] == 2048
        assert nc.max_payload == 2048
        sub = await nc.subscribe("mp")
        await nc.publish("mp", b"x" * 2048)  # exactly the limit is fine
        msg = await sub.next_msg(timeout=5)
        assert len(msg.data) == 2048
        with pytest.raises(nats.errors.MaxPayloadError):
            await nc.publish("mp", b"x" * 2049)  # nats-py checks against INFO.max_payload
    finally:
        await close_quietly(nc)


# --------------------------------------------------------------------------------------
# publish / subscribe
# --------------------------------------------------------------------------------------


async def test_pub_sub_exact(server, nc):
    sub = await nc.subscribe("orders.new")
    other = await connect(server.url)
    try:
        await spread_interest(other, sub)
        for i in range(5):
            await other.publish("orders.new", f"m{i}".encode())
        await other.publish("orders.old", b"nope")
        await other.publish("orders.new.x", b"nope")
        await other.publish("Orders.new", b"nope")  # subjects are case-sensitive
        await sync(other)
        msgs = await take(sub, 5)
        assert [m.data for m in msgs] == [f"m{i}".encode() for i in range(5)]  # order kept per publisher
        assert all(m.subject == "orders.new" for m in msgs)
        assert await take_all(sub) == []
    finally:
        await close_quietly(other)


async def test_wildcards(server, nc):
    patterns = ["w.*", "w.>", "w.a.*", "w.*.c", "w.a", "*.a", ">"]
    subs = {p: await nc.subscribe(p) for p in patterns}
    published = ["w", "w.a", "w.b", "w.a.b", "w.a.c", "w.b.c", "w.b.c.d", "x.a", "x.a.b"]
    for s in published:
        await nc.publish(s, s.encode())
    # Everything is published on the same connection as the subscriptions, so every
    # delivery is queued before the PONG of this flush.
    await sync(nc)

    def matches(pattern: str, subject: str) -> bool:
        pt, st = pattern.split("."), subject.split(".")
        for i, tok in enumerate(pt):
            if tok == ">":
                return len(st) > i
            if i >= len(st) or (tok != "*" and tok != st[i]):
                return False
        return len(pt) == len(st)

    for p, sub in subs.items():
        got = sorted(m.subject for m in await take_all(sub, idle=0.2))
        want = sorted(s for s in published if matches(p, s))
        assert got == want, f"pattern {p}"
    # spot checks of the matcher itself
    assert matches("w.>", "w.a.b") and not matches("w.>", "w")
    assert matches("w.*", "w.a") and not matches("w.*", "w.a.b")


async def test_queue_groups(server):
    N = 200
    pub = await connect(server.url, name="pub")
    members = [await connect(server.url, name=f"m{i}") for i in range(4)]
    plain_nc = await connect(server.url, name="plain")
    try:
        got = {i: [] for i in range(4)}
        plain = []

        def cb_for(i):
            async def cb(msg):
                got[i].append(int(msg.data))
            return cb

        async def plain_cb(msg):
            plain.append(int(msg.data))

        # group g1 = members 0,1 ; group g2 = members 2,3 ; plus a plain subscriber
        msubs = []
        for i in range(4):
            msubs.append(await members[i].subscribe("jobs", queue="g1" if i < 2 else "g2", cb=cb_for(i)))
            await sync(members[i])
        psub = await plain_nc.subscribe("jobs", cb=plain_cb)
        await sync(plain_nc)
        await spread_interest(pub, msubs[:2], msubs[2:], psub)

        for n in range(N):
            await pub.publish("jobs", str(n).encode())
        await sync(pub)

        await wait_for(lambda: len(plain) == N and len(got[0]) + len(got[1]) == N and len(got[2]) + len(got[3]) == N,
                       timeout=5, msg=f"all messages delivered {len(plain)} {[len(g) for g in got.values()]}")
        await asyncio.sleep(0.2)  # nothing extra may arrive
        assert sorted(plain) == list(range(N))
        # Spread: a group with a member on the publisher's own node need not be balanced:
        # Stork's router prefers a local member by design (all 200 go to it), nats-server
        # 2.9 picks at random among local and remote members.  Groups with both members
        # on other nodes are balanced by both.
        on_pub_node = {i for i in range(4) if SPREAD and port_of(members[i]) == port_of(pub)}
        for a, b in ((0, 1), (2, 3)):
            assert sorted(got[a] + got[b]) == list(range(N)), "each message to exactly one member"
            if not on_pub_node & {a, b}:
                assert len(got[a]) > 0 and len(got[b]) > 0, "both members get some"
    finally:
        for c in [pub, plain_nc] + members:
            await close_quietly(c)


async def test_unsubscribe(server, nc):
    sub = await nc.subscribe("u.x")
    keep = await nc.subscribe("u.x")
    await nc.publish("u.x", b"1")
    await sync(nc)
    assert [m.data for m in await take(sub, 1)] == [b"1"]
    await sub.unsubscribe()
    await nc.publish("u.x", b"2")
    await sync(nc)
    assert [m.data for m in await take_all(keep, idle=0.2)] == [b"1", b"2"]
    # nothing more for the unsubscribed one (nats-py just times out on it)
    with pytest.raises(nats.errors.Error):
        await sub.next_msg(timeout=0.2)


async def test_auto_unsubscribe_max_msgs(server, nc):
    pub = await connect(server.url)
    try:
        # Probes would count against the limits: wait with pilot subscriptions instead.
        await spread_interest_before(nc, pub, "auto.a", "auto.b")
        sub_a = await nc.subscribe("auto.a", max_msgs=3)
        sub_b = await nc.subscribe("auto.b")
        await sub_b.unsubscribe(limit=2)  # UNSUB <sid> 2
        await sync(nc)
        for i in range(10):
            await pub.publish("auto.a", str(i).encode())
            await pub.publish("auto.b", str(i).encode())
        await sync(pub)
        assert [m.data for m in await take(sub_a, 3)] == [b"0", b"1", b"2"]
        assert [m.data for m in await take(sub_b, 2)] == [b"0", b"1"]
        await asyncio.sleep(0.2)
        assert sub_a.pending_msgs == 0 and sub_b.pending_msgs == 0
    finally:
        await close_quietly(pub)


async def test_auto_unsubscribe_raw(server, raw_factory):
    raw = await raw_factory(server)
    await raw.send(b"SUB raw.auto 7\r\nUNSUB 7 2\r\n")
    await raw.ping_pong()
    for i in range(5):
        await raw.send(f"PUB raw.auto 1\r\n{i}\r\n".encode())
    await raw.send(b"PING\r\n")
    seen = []
    while True:
        line = await raw.read_op()
        if line == b"PONG":
            break
        fields = line.split()
        assert fields[0] == b"MSG" and fields[2] == b"7"
        seen.append((await raw.reader.readexactly(int(fields[-1]) + 2))[:-2])
    assert seen == [b"0", b"1"]


# --------------------------------------------------------------------------------------
# request / reply
# --------------------------------------------------------------------------------------


async def _responder(nc, subject):
    async def cb(msg):
        await nc.publish(msg.reply, b"re:" + msg.data)
    return await nc.subscribe(subject, cb=cb)


async def test_request_reply_new_style(server, nc):
    svc = await connect(server.url, name="svc")
    try:
        await _responder(svc, "svc.echo")
        await sync(svc)
        await spread_responder(nc, "svc.echo")
        for i in range(5):
            resp = await nc.request("svc.echo", f"q{i}".encode(), timeout=5)
            assert resp.data == f"re:q{i}".encode()
    finally:
        await close_quietly(svc)


async def test_request_reply_old_style(server, nc):
    svc = await connect(server.url, name="svc")
    try:
        await _responder(svc, "svc.old")
        await sync(svc)
        await spread_responder(nc, "svc.old")
        resp = await nc.request("svc.old", b"hello", timeout=5, old_style=True)
        assert resp.data == b"re:hello"
    finally:
        await close_quietly(svc)


async def test_request_reply_reply_subject_visible(server, nc):
    # A plain subscriber sees the reply subject in MSG; replying to it reaches the requester.
    sub = await nc.subscribe("svc.manual")
    task = asyncio.ensure_future(nc.request("svc.manual", b"ping", timeout=5))
    msg = await sub.next_msg(timeout=5)
    assert msg.reply.startswith("_INBOX.")
    await nc.publish(msg.reply, b"pong")
    resp = await asyncio.wait_for(task, 6)
    assert resp.data == b"pong"


async def test_no_responders(server, nc):
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request("nobody.listens", b"?", timeout=5)
    # and old style too (server answers the 503 on the unique inbox)
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request("nobody.listens", b"?", timeout=5, old_style=True)


async def test_no_responders_raw(server, raw_factory):
    raw = await raw_factory(server, connect={"headers": True, "no_responders": True})
    await raw.send(b"SUB reply.inbox 3\r\nPUB nobody.here reply.inbox 2\r\nhi\r\n")
    fields, body = await raw.read_msg()
    assert fields[0] == b"HMSG" and fields[1] == b"reply.inbox" and fields[2] == b"3"
    assert body.startswith(b"NATS/1.0 503")
    assert int(fields[-2]) == len(body) and body.endswith(b"\r\n\r\n")


# --------------------------------------------------------------------------------------
# headers
# --------------------------------------------------------------------------------------


async def test_headers_round_trip(server, nc):
    sub = await nc.subscribe("hdr.x")
    hdrs = {"X-One": "1", "X-Two": "two words", "Nats-Msg-Id": "abc-123"}
    await nc.publish("hdr.x", b"payload", headers=hdrs)
    msg = await sub.next_msg(timeout=5)
    assert msg.data == b"payload"
    assert msg.headers == hdrs
    # headers with empty payload
    await nc.publish("hdr.x", b"", headers={"Only": "headers"})
    msg = await sub.next_msg(timeout=5)
    assert msg.data == b"" and msg.headers == {"Only": "headers"}
    # request with headers, reply with headers
    async def cb(m):
        await nc.publish(m.reply, m.data, headers={"Echo": m.headers.get("Q", "")})
    await nc.subscribe("hdr.svc", cb=cb)
    resp = await nc.request("hdr.svc", b"d", timeout=5, headers={"Q": "v"})
    assert resp.headers == {"Echo": "v"} and resp.data == b"d"


async def test_headers_multiple_values_raw(server, raw_factory, nc):
    """HPUB with a repeated header name is relayed byte-for-byte (HMSG)."""
    sub_py = await nc.subscribe("hdr.multi")
    await sync(nc)
    raw_sub = await raw_factory(server, connect={"headers": True})
    await raw_sub.send(b"SUB hdr.multi 9\r\n")
    await raw_sub.ping_pong()
    raw_pub = await raw_factory(server, connect={"headers": True})
    await spread_interest(raw_pub, sub_py, raw_sub, subject="hdr.multi")
    hdr = b"NATS/1.0\r\nX-Multi: a\r\nX-Multi: b\r\nOther: c\r\n\r\n"
    payload = b"body!"
    await raw_pub.send(b"HPUB hdr.multi reply.to %d %d\r\n%s%s\r\n" % (len(hdr), len(hdr) + len(payload), hdr, payload))
    fields, body = await raw_sub.read_msg()
    assert fields == [b"HMSG", b"hdr.multi", b"9", b"reply.to", str(len(hdr)).encode(),
                      str(len(hdr) + len(payload)).encode()]
    assert body == hdr + payload
    # nats-py's parser keeps a dict, so a repeated name collapses to one entry (last wins).
    msg = await sub_py.next_msg(timeout=5)
    assert msg.data == payload and msg.reply == "reply.to"
    assert msg.headers["Other"] == "c" and msg.headers["X-Multi"] in ("a", "b")


async def test_hpub_from_nats_py_seen_raw(server, raw_factory, nc):
    raw_sub = await raw_factory(server, connect={"headers": True})
    await raw_sub.send(b"SUB hdr.py 4\r\n")
    await raw_sub.ping_pong()
    await spread_interest(nc, raw_sub, subject="hdr.py")
    await nc.publish("hdr.py", b"xyz", headers={"K": "V"})
    await sync(nc)
    fields, body = await raw_sub.read_msg()
    assert fields[0] == b"HMSG" and fields[1] == b"hdr.py" and fields[2] == b"4"
    hdr_len, total = int(fields[-2]), int(fields[-1])
    assert body[:hdr_len].startswith(b"NATS/1.0\r\n") and body[:hdr_len].endswith(b"\r\n\r\n")
    assert b"K: V\r\n" in body[:hdr_len]
    assert body[hdr_len:] == b"xyz" and total == len(body)


# --------------------------------------------------------------------------------------
# flush / drain
# --------------------------------------------------------------------------------------


async def test_flush(server, nc):
    sub = await nc.subscribe("fl")
    await sync(nc)
    for i in range(100):
        await nc.publish("fl", b"x")
    await nc.flush(timeout=5)  # PING -> PONG
    await wait_for(lambda: sub.pending_msgs == 100, timeout=5)
    for i in range(100):
        await nc.publish("fl", b"y")
    await sync(nc)
    # with a real barrier, all 100 deliveries precede the PONG (server keeps per-connection order)
    assert sub.pending_msgs == 200


async def test_subscription_drain(server, nc):
    done = []

    async def slow(msg):
        await asyncio.sleep(0.005)
        done.append(int(msg.data))

    sub = await nc.subscribe("dr.sub", cb=slow)
    for i in range(50):
        await nc.publish("dr.sub", str(i).encode())
    await asyncio.wait_for(sub.drain(), 10)
    assert done == list(range(50)), "in-flight messages are processed by a draining subscription"
    # drained = unsubscribed
    await nc.publish("dr.sub", b"999")
    await sync(nc)
    await asyncio.sleep(0.2)
    assert done == list(range(50))


async def test_connection_drain(server):
    closed = asyncio.Event()
    done_a, done_b = [], []

    async def on_closed():
        closed.set()

    nc = await connect(server.url, drain_timeout=10, closed_cb=on_closed)

    async def a(msg):
        await asyncio.sleep(0.002)
        done_a.append(int(msg.data))

    async def b(msg):
        done_b.append(int(msg.data))

    try:
        await nc.subscribe("dr.a", cb=a)
        await nc.subscribe("dr.b", cb=b)
        for i in range(40):
            await nc.publish("dr.a", str(i).encode())
            await nc.publish("dr.b", str(i).encode())
        await asyncio.wait_for(nc.drain(), 15)
        assert done_a == list(range(40)) and done_b == list(range(40))
        assert nc.is_closed
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        await close_quietly(nc)


# --------------------------------------------------------------------------------------
# reconnect
# --------------------------------------------------------------------------------------


RESTART_REASON = ("restarts the one server its clients are on; in a cluster nats-py fails over to another "
                  "node instead (failover, kill -9 and rejoin are covered by test_cluster.py)")


async def _reconnect_scenario(server, bounce):
    events = {"sub": asyncio.Event(), "pub": asyncio.Event()}

    def reconnected_cb(key):
        async def cb():
            events[key].set()
        return cb

    subc = await connect(server.url, name="subc", reconnected_cb=reconnected_cb("sub"), max_reconnect_attempts=-1)
    pubc = await connect(server.url, name="pubc", reconnected_cb=reconnected_cb("pub"), max_reconnect_attempts=-1)
    try:
        sub = await subc.subscribe("rc.>")
        qsub = await subc.subscribe("rc.q", queue="workers")
        await sync(subc)
        await pubc.publish("rc.a", b"before")
        await sync(pubc)
        assert (await sub.next_msg(timeout=5)).data == b"before"

        await asyncio.to_thread(bounce)

        await asyncio.wait_for(events["sub"].wait(), 15)
        await asyncio.wait_for(events["pub"].wait(), 15)
        await sync(subc)  # subscriptions are re-sent before this PING

        await pubc.publish("rc.b", b"after")
        await pubc.publish("rc.q", b"queued")
        await sync(pubc)
        got = sorted([(await sub.next_msg(timeout=5)).data for _ in range(2)])
        assert got == [b"after", b"queued"]
        assert (await qsub.next_msg(timeout=5)).data == b"queued"
        # request/reply works again too
        await _responder(subc, "rc.svc")
        await sync(subc)
        assert (await pubc.request("rc.svc", b"x", timeout=5)).data == b"re:x"
    finally:
        await close_quietly(subc)
        await close_quietly(pubc)


@spread_skip(RESTART_REASON)
async def test_reconnect_after_restart(server):
    await _reconnect_scenario(server, server.restart)


@spread_skip(RESTART_REASON)
async def test_reconnect_after_kill9(server):
    def bounce():
        server.kill9()
        server.start()
    await _reconnect_scenario(server, bounce)


# --------------------------------------------------------------------------------------
# echo
# --------------------------------------------------------------------------------------


async def test_no_echo(server):
    quiet = await connect(server.url, no_echo=True)
    other = await connect(server.url)
    loud = await connect(server.url)  # echo on (default)
    try:
        qsub = await quiet.subscribe("echo.x")
        lsub = await loud.subscribe("echo.x")
        await sync(quiet)
        await sync(loud)
        await spread_interest(quiet, lsub)  # (quiet's own qsub never sees quiet's probes)
        await spread_interest(loud, qsub)
        await spread_interest(other, qsub, lsub)
        await quiet.publish("echo.x", b"own")
        await sync(quiet)  # if echoed, "own" would be delivered before this PONG
        await loud.publish("echo.x", b"loud-own")
        await sync(loud)
        await other.publish("echo.x", b"other")
        await sync(other)
        # Spread: the three publishers are on three nodes, and nothing orders the
        # messages of different publishers on their ways to a subscriber on another
        # node; compare without order there (one publisher's order is checked elsewhere).
        order = sorted if SPREAD else list
        assert order(m.data for m in await take(qsub, 2)) == order([b"loud-own", b"other"])
        assert await take_all(qsub, idle=0.2) == []
        # echo-enabled connection gets its own message
        assert order(m.data for m in await take(lsub, 3)) == order([b"own", b"loud-own", b"other"])
    finally:
        for c in (quiet, other, loud):
            await close_quietly(c)


# --------------------------------------------------------------------------------------
# auth
# --------------------------------------------------------------------------------------


AUTH_REASON = "auth is one server's configuration (token, users); the spread cluster's nodes run without auth"


def _assert_auth_error(exc: BaseException):
    assert "authorization" in str(exc).lower(), f"error should mention authorization: {exc!r}"


@spread_skip(AUTH_REASON)
async def test_token_auth(server_factory):
    srv = server_factory(token="s3cr3t")
    nc = await connect(srv.url, token="s3cr3t")
    try:
        assert nc._server_info.get("auth_required") is True
        sub = await nc.subscribe("t")
        await nc.publish("t", b"ok")
        assert (await sub.next_msg(timeout=5)).data == b"ok"
    finally:
        await close_quietly(nc)

    for kwargs in ({"token": "wrong"}, {}):
        errors = []

        async def err_cb(e):
            errors.append(e)

        with pytest.raises(nats.errors.Error) as ei:
            await connect(srv.url, allow_reconnect=False, error_cb=err_cb, **kwargs)
        _assert_auth_error(ei.value)


@spread_skip(AUTH_REASON)
async def test_user_password_auth(server_factory, raw_factory):
    srv = server_factory(user="alice", password="pa55")
    nc = await connect(srv.url, user="alice", password="pa55")
    try:
        assert nc._server_info.get("auth_required") is True
        await sync(nc)
    finally:
        await close_quietly(nc)
    # credentials in the URL
    nc = await connect(f"nats://alice:pa55@{HOST}:{srv.port}")
    await close_quietly(nc)

    for kwargs in ({"user": "alice", "password": "nope"}, {"user": "bob", "password": "pa55"}, {}):
        with pytest.raises(nats.errors.Error) as ei:
            await connect(srv.url, allow_reconnect=False, **kwargs)
        _assert_auth_error(ei.value)

    # raw: bad credentials -> -ERR 'Authorization Violation' and close
    raw = await raw_factory(srv, connect={"user": "alice", "pass": "bad"})
    data = await raw.wait_closed(5)
    assert b"-ERR 'Authorization Violation'" in data


@spread_skip(AUTH_REASON)
async def test_auth_error_with_reconnect_enabled(server_factory):
    """With reconnects allowed nats-py eventually gives up; the error callback saw the violation."""
    srv = server_factory(token="tok")
    errors = []

    async def err_cb(e):
        errors.append(e)

    with pytest.raises(nats.errors.Error):
        await connect(srv.url, token="bad", max_reconnect_attempts=1, reconnect_time_wait=0.1, error_cb=err_cb)
    assert errors and any("authorization" in str(e).lower() for e in errors), errors


# --------------------------------------------------------------------------------------
# raw protocol: verbose, pedantic-off tolerance, errors, ping/pong
# --------------------------------------------------------------------------------------


async def test_verbose_ok(server, raw_factory):
    raw = await raw_factory(server, connect={"verbose": True})
    assert await raw.read_op() == b"+OK"  # for CONNECT
    await raw.send(b"SUB v.x 1\r\n")
    assert await raw.read_op() == b"+OK"
    await raw.send(b"PUB v.x 2\r\nhi\r\n")
    lines = [await raw.read_op(), await raw.read_op()]
    # +OK for the PUB and the MSG itself (nats-server sends the +OK first)
    assert lines[0] == b"+OK"
    assert lines[1] == b"MSG v.x 1 2"
    assert await raw.readline() == b"hi\r\n"
    await raw.send(b"UNSUB 1\r\n")
    assert await raw.read_op() == b"+OK"
    await raw.send(b"PING\r\n")
    assert await raw.read_op() == b"PONG"  # no +OK for PING


async def test_pedantic_off_tolerance(server, raw_factory):
    # CONNECT with fields in an unusual order and lowercase op name
    raw = await raw_factory(server, handshake=False)
    await raw.send(b'connect {"version":"1","protocol":1,"name":"odd","pedantic":false,"lang":"x","verbose":false}\r\n')
    # lowercase ops, tabs and multiple spaces between fields
    await raw.send(b"sub\tt.one   11\r\n")
    await raw.send(b"SUB t.*  12\r\n")          # empty queue group -> two spaces (nats-py)
    await raw.send(b"Sub t.one  \t q  13\r\n")  # queue group with mixed whitespace
    await raw.send(b"ping\r\n")
    assert await raw.read_op() == b"PONG"
    await raw.send(b"pub  t.one \t 5\r\nhello\r\n")
    await raw.send(b"PUB t.one  5\r\nworld\r\n")  # empty reply -> two spaces (nats-py)
    await raw.send(b"PING\r\n")
    seen = []
    while True:
        line = await raw.read_op()
        if line == b"PONG":
            break
        f = line.split()
        assert f[0] == b"MSG" and f[1] == b"t.one"
        seen.append((int(f[2]), (await raw.reader.readexactly(int(f[-1]) + 2))[:-2]))
    assert sorted(seen) == sorted([(s, p) for p in (b"hello", b"world") for s in (11, 12, 13)])
    # UNSUB with trailing space (nats-py form) and lowercase
    await raw.send(b"UNSUB 11 \r\nunsub 12\r\nUNSUB\t13 \r\n")
    await raw.send(b"PUB t.one 1\r\nx\r\nPING\r\n")
    assert await raw.read_op() == b"PONG", "no MSG after all were unsubscribed"


async def test_client_ping_pong(server, raw_factory):
    raw = await raw_factory(server)
    for _ in range(3):
        await raw.ping_pong()
    await raw.send(b"PING\r\nPING\r\n")
    assert [await raw.read_op(), await raw.read_op()] == [b"PONG", b"PONG"]


async def test_unknown_op(server, raw_factory):
    raw = await raw_factory(server)
    await raw.ping_pong()
    await raw.send(b"FOO bar\r\n")
    data = await raw.wait_closed(5)
    assert data.startswith(b"-ERR 'Unknown Protocol Operation'\r\n"), data


@spread_skip("one server's max_payload limit on one connection; " + OPTS)
async def test_max_payload_violation(server_factory, raw_factory):
    srv = server_factory(max_payload=1024)
    raw = await raw_factory(srv)
    await raw.send(b"SUB big 1\r\n")
    await raw.send(b"PUB big 1024\r\n" + b"a" * 1024 + b"\r\n")  # at the limit: fine
    fields, body = await raw.read_msg()
    assert fields[-1] == b"1024" and len(body) == 1024
    # Over the limit: the server rejects on the control line, before reading the payload.
    await raw.send(b"PUB big 1025\r\n")
    data = await raw.wait_closed(5)
    assert data.startswith(b"-ERR 'Maximum Payload Violation'\r\n"), data


@pytest.mark.parametrize("terminated", [True, False], ids=["with-crlf", "unterminated"])
async def test_max_control_line(server, raw_factory, terminated):
    raw = await raw_factory(server)
    await raw.ping_pong()
    # a 4000-byte control line is fine (limit is 4096)
    await raw.send(b"SUB " + b"s" * 4000 + b" 1\r\nPING\r\n")
    assert await raw.read_op() == b"PONG"
    line = b"SUB " + b"a" * 5000 + b" 2"
    await raw.send(line + (b"\r\n" if terminated else b""))
    data = await raw.wait_closed(5)
    # NOTE: nats-server 2.9.10 sends this one in lower case:
    #   -ERR 'maximum control line exceeded'
    # (the protocol docs spell it 'Maximum Control Line Exceeded'), so compare case-insensitively.
    assert data.lower().startswith(b"-err 'maximum control line exceeded'\r\n"), data


async def test_invalid_subject_in_sub(server, raw_factory):
    raw = await raw_factory(server)
    for bad in (b"foo..bar", b"foo.>.bar", b".foo", b"foo."):
        await raw.send(b"SUB " + bad + b" 1\r\n")
        # nats-server answers -ERR 'Invalid Subject' and keeps the connection open.
        assert await raw.read_op() == b"-ERR 'Invalid Subject'", bad
        await raw.ping_pong()
    # the connection is still fully usable
    await raw.send(b"SUB good.subject 2\r\nPUB good.subject 2\r\nok\r\n")
    fields, body = await raw.read_msg()
    assert fields == [b"MSG", b"good.subject", b"2", b"2"] and body == b"ok"
    # NOTE: nats-server 2.9.10 accepts a '*' or '>' *inside* a token ("foo.*bar"): it is
    # a literal token for the sublist, not a wildcard. It is not an error.
    await raw.send(b"SUB foo.*bar 3\r\nPING\r\n")
    assert await raw.read_op() == b"PONG"


async def test_hpub_without_headers_negotiated(server, raw_factory):
    # NOTE: nats-server 2.9.10 closes a connection that sends HPUB without having
    # sent "headers":true in CONNECT (no -ERR line is sent; the log says
    # "message headers not supported").
    raw = await raw_factory(server, connect={"headers": False})
    await raw.ping_pong()
    await raw.send(b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
    data = await raw.wait_closed(5)
    assert b"MSG" not in data


PING_REASON = "one server's ping_interval option and its PING/PONG with one connection; " + OPTS


@spread_skip(PING_REASON)
async def test_server_ping(server_factory, raw_factory):
    srv = server_factory(ping_interval=1)
    raw = await raw_factory(srv)
    for _ in range(2):
        assert await raw.read_op(timeout=5, skip_ping=False) == b"PING"
        await raw.send(b"PONG\r\n")
    await raw.ping_pong()  # still alive


@spread_skip(PING_REASON)
async def test_server_ping_unanswered_is_stale(server_factory, raw_factory):
    srv = server_factory(ping_interval=1)
    raw = await raw_factory(srv)
    data = await raw.wait_closed(15)
    assert data.startswith(b"PING\r\n")
    assert b"-ERR 'Stale Connection'" in data, data


@spread_skip(PING_REASON)
async def test_nats_py_survives_server_pings(server_factory):
    srv = server_factory(ping_interval=1)
    disconnects = []

    async def on_disc():
        disconnects.append(1)

    nc = await connect(srv.url, disconnected_cb=on_disc)
    try:
        sub = await nc.subscribe("alive")
        await asyncio.sleep(3.5)  # several server ping intervals; nats-py answers with PONG
        await nc.publish("alive", b"yes")
        assert (await sub.next_msg(timeout=5)).data == b"yes"
        assert nc.is_connected and not disconnects
    finally:
        await close_quietly(nc)


# --------------------------------------------------------------------------------------
# slow consumer
# --------------------------------------------------------------------------------------


@spread_skip("one server's max_pending limit and how it closes one slow connection (checked in its /connz); "
             + OPTS)
@pytest.mark.timeout(60)
async def test_slow_consumer_disconnected(server_factory):
    # max_payload must not exceed max_pending on nats-server, so set both.
    srv = server_factory(max_payload=65536, max_pending=256 * 1024)

    # A raw subscriber with a tiny receive buffer that never reads.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.sock_connect(sock, (HOST, srv.port)), 5)
    reader, writer = await asyncio.open_connection(sock=sock, limit=16384)
    slow = RawClient(reader, writer, {})
    try:
        assert (await slow.readline()).startswith(b"INFO ")
        await slow.send(b'CONNECT {"verbose":false,"pedantic":false,"name":"slow"}\r\nSUB flood 1\r\n')
        await slow.ping_pong()

        pub = await connect(srv.url, name="pub")
        fast_nc = await connect(srv.url, name="fast")
        received = []

        async def fast_cb(msg):
            received.append(len(msg.data))

        await fast_nc.subscribe("flood", cb=fast_cb, pending_bytes_limit=-1)
        await sync(fast_nc)
        N, size, batch = 300, 60000, 10
        payload = b"z" * size
        try:
            for i in range(0, N, batch):
                for _ in range(batch):
                    await pub.publish("flood", payload)
                # Pace on the healthy subscriber so that it never falls behind itself.
                # NOTE: nats-server 2.9.10 stalls here once: the publisher's read loop
                # itself blocks writing to the full socket of the slow consumer until
                # the write deadline (default 10 s; the fixture sets 2 s when
                # max_pending is given) and only then closes it as a slow consumer.
                await wait_for(lambda: len(received) >= i + batch, timeout=20, msg="fast subscriber keeps up")
            await wait_for(lambda: len(received) == N, timeout=10)
            assert all(n == size for n in received)

            # The non-reading connection must have been closed by the server.
            # (nats-server closes it without being able to send anything, since its socket is full.)
            await slow.wait_closed(15)
            conns = await srv.http_json("/connz")
            assert "slow" not in [c.get("name") for c in conns["connections"]]
            assert fast_nc.is_connected and pub.is_connected
        finally:
            await close_quietly(pub)
            await close_quietly(fast_nc)
    finally:
        slow.close()


# --------------------------------------------------------------------------------------
# monitoring
# --------------------------------------------------------------------------------------


@pytest.mark.spread_one_node("monitoring reports one server's own connections and counters: every client on n1")
async def test_monitoring_varz(server):
    pub = await connect(server.url, name="mon-pub")
    subc = await connect(server.url, name="mon-sub")
    try:
        v0 = await server.http_json("/varz")
        for key in ("server_id", "connections", "in_msgs", "out_msgs", "in_bytes", "out_bytes",
                    "max_payload", "subscriptions"):
            assert key in v0, f"/varz lacks {key}"
        assert v0["server_id"] == pub._server_info["server_id"]
        assert v0["max_payload"] == 1048576
        assert v0["connections"] == 2
        sub = await subc.subscribe("mon.x")
        await sync(subc)
        for _ in range(3):
            await pub.publish("mon.x", b"12345")
        await sync(pub)
        await take(sub, 3)

        async def counters_moved():
            v = await server.http_json("/varz")
            return (v["in_msgs"] - v0["in_msgs"] >= 3 and v["out_msgs"] - v0["out_msgs"] >= 3
                    and v["in_bytes"] - v0["in_bytes"] >= 15 and v["out_bytes"] - v0["out_bytes"] >= 15
                    and v["subscriptions"] >= v0["subscriptions"] + 1) and v
        v = await wait_for(counters_moved, timeout=5)
        assert v["connections"] == 2
    finally:
        await close_quietly(pub)
        await close_quietly(subc)


@pytest.mark.spread_one_node("monitoring reports one server's own connections and counters: every client on n1")
async def test_monitoring_connz(server, raw_factory):
    pub = await connect(server.url, name="cz-pub")
    raw = await raw_factory(server, connect={"name": "cz-raw"})
    await raw.send(b"SUB cz.a 1\r\nSUB cz.b 2\r\n")
    await raw.ping_pong()
    raw_port = raw.writer.get_extra_info("sockname")[1]
    try:
        for _ in range(4):
            await pub.publish("cz.a", b"abc")
        await sync(pub)
        for _ in range(4):
            await raw.read_msg()

        async def converged():
            cz = await server.http_json("/connz")
            by_name = {c.get("name"): c for c in cz["connections"]}
            r, p = by_name.get("cz-raw"), by_name.get("cz-pub")
            ok = r and p and r["out_msgs"] == 4 and p["in_msgs"] == 4 and r["subscriptions"] == 2
            return ok and cz
        cz = await wait_for(converged, timeout=5)
        assert cz["num_connections"] == 2
        for c in cz["connections"]:
            for key in ("cid", "ip", "port", "subscriptions", "in_msgs", "out_msgs", "name"):
                assert key in c, f"connz entry lacks {key}: {c}"
            assert c["ip"] == "127.0.0.1"
            assert isinstance(c["cid"], int)
        r = next(c for c in cz["connections"] if c["name"] == "cz-raw")
        assert r["port"] == raw_port
        assert r["in_msgs"] == 0
        assert len({c["cid"] for c in cz["connections"]}) == 2
    finally:
        await close_quietly(pub)


@pytest.mark.spread_one_node("monitoring reports one server's own connections and counters: every client on n1")
async def test_monitoring_subsz(server, nc):
    s0 = await server.http_json("/subsz")
    assert "num_subscriptions" in s0
    base = s0["num_subscriptions"]
    subs = [await nc.subscribe(f"sz.{i}") for i in range(3)]
    await sync(nc)
    await wait_for(lambda: _subsz_is(server, base + 3), timeout=5)
    await subs[0].unsubscribe()
    await sync(nc)
    await wait_for(lambda: _subsz_is(server, base + 2), timeout=5)


async def _subsz_is(server, n):
    return (await server.http_json("/subsz"))["num_subscriptions"] == n


@pytest.mark.spread_one_node("monitoring reports one server's own connections and counters: every client on n1")
async def test_monitoring_healthz(server):
    status, body = await asyncio.to_thread(server.http_get, "/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}
