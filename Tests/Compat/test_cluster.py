"""Three-node cluster compatibility tests (nats-py clients on different nodes).

Reference behaviour: three nats-server 2.9.10 processes with routes between them
(fixture ``cluster`` in conftest.py); against Stork, three ``stork serve`` nodes
clustered through their seeds.

Interest propagation between nodes is asynchronous.  Before a test publishes on one
node for subscriptions made on another, it publishes *probe* messages (payload
starting with ``PROBE``) on the publishing connection until the subscriptions have
seen one (``await_interest``); a server keeps the order of one publisher's messages,
so everything published after that reaches them.  Probes are kept apart from the
messages a test counts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Callable, List, Optional, Sequence

import nats
import nats.errors
import pytest

from conftest import COMPAT_SERVER, RawClient, close_quietly, connect, sync, wait_for

# Cluster start-up (Stork: membership) plus kill/restart cycles need more than 30 s.
pytestmark = pytest.mark.timeout(120)

PROBE = b"__compat_probe__"
INTEREST_TIMEOUT = 15.0  # seconds for a subscription made on one node to be known on another
SETTLE = 0.3  # quiet period after the last expected message: nothing extra may arrive


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


class Collector:
    """Message callback for one subscription: real messages in `msgs`, probes counted apart."""

    def __init__(self, name: str = ""):
        self.name = name
        self.msgs: List = []
        self.probes = 0
        self.probe_tokens: set = set()
        self.sub = None

    def probe(self, msg) -> bool:
        """Count `msg` if it is a probe (and remember its token); True if it was one."""
        if not msg.data.startswith(PROBE):
            return False
        self.probes += 1
        self.probe_tokens.add(msg.data.split(b":")[1])
        return True

    async def cb(self, msg) -> None:
        if not self.probe(msg):
            self.msgs.append(msg)

    @property
    def data(self) -> List[bytes]:
        return [m.data for m in self.msgs]

    def has(self, payload: bytes) -> bool:
        return any(m.data == payload for m in self.msgs)


async def subscribe(nc, subject: str, queue: str = "", name: str = "") -> Collector:
    c = Collector(name or f"{subject}/{queue}")
    c.sub = await nc.subscribe(subject, queue=queue, cb=c.cb)
    return c


async def await_interest(pub, subject: str, collectors: Sequence[Collector], any_of: bool = False,
                         timeout: float = INTEREST_TIMEOUT) -> None:
    """Publish probes to `subject` on `pub` until every collector (any_of: at least one,
    e.g. the members of one queue group) has received one of *these* probes (a token
    per call, so a late probe of an earlier call does not count)."""
    token = uuid.uuid4().hex.encode()

    def seen() -> bool:
        got = [token in c.probe_tokens for c in collectors]
        return any(got) if any_of else all(got)

    deadline = time.monotonic() + timeout
    i = 0
    while not seen():
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"interest in {subject!r} not seen on {netloc(pub.connected_url)} within {timeout}s: "
                + ", ".join(f"{c.name}={c.probes}" for c in collectors)
            )
        await pub.publish(subject, b"%s:%s:%d" % (PROBE, token, i))
        i += 1
        await sync(pub)
        # Give this probe a moment before sending the next one (bounded, no fixed sleep).
        step_end = time.monotonic() + 0.1
        while not seen() and time.monotonic() < step_end:
            await asyncio.sleep(0.005)


async def wait_responder(nc, subject: str, timeout: float = INTEREST_TIMEOUT) -> None:
    """Request `subject` (probe payload) until a reply comes back; no-responders and
    timeouts while interest propagates are expected."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.request(subject, PROBE + b":request:0", timeout=0.5)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() >= deadline:
                raise AssertionError(f"no reply on {subject!r} via {netloc(nc.connected_url)} within {timeout}s")
            await asyncio.sleep(0.05)


def port_of(nc) -> Optional[int]:
    u = nc.connected_url
    return u.port if u is not None else None


def netloc(u) -> str:
    return f"{u.hostname}:{u.port}" if u is not None else "(not connected)"


async def connect_to(node, name: str, **kw):
    """A nats-py client given only `node`'s URL (it may still learn the others from INFO)."""
    nc = await connect(node.url, name=name, **kw)
    assert port_of(nc) == node.port
    return nc


async def closing(*clients) -> None:
    for c in clients:
        await close_quietly(c)


async def raw_await_interest(pub: RawClient, sub: RawClient, subject: str, timeout: float = INTEREST_TIMEOUT) -> None:
    """Raw-socket version of await_interest: `sub` has subscribed to `subject`."""
    deadline = time.monotonic() + timeout
    i = 0
    while True:
        if time.monotonic() >= deadline:
            raise AssertionError(f"raw interest in {subject!r} not seen within {timeout}s")
        p = b"%s:raw:%d" % (PROBE, i)
        i += 1
        await pub.send(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(p), p))
        await pub.ping_pong()
        try:
            line = await sub.read_op(timeout=0.1)
        except asyncio.TimeoutError:
            continue
        fields = line.split()
        assert fields and fields[0] in (b"MSG", b"HMSG"), line
        body = await asyncio.wait_for(sub.reader.readexactly(int(fields[-1]) + 2), 5)
        assert body[:-2].startswith(PROBE), body
        return


async def raw_read_msg(sub: RawClient, timeout: float = 5.0):
    """Next MSG/HMSG that is not a (late) probe."""
    while True:
        fields, body = await sub.read_msg(timeout)
        if not body.startswith(PROBE):
            return fields, body


# --------------------------------------------------------------------------------------
# 1. literal subjects
# --------------------------------------------------------------------------------------


async def test_literal_pub_sub_across_nodes(cluster):
    n1, n2, n3 = cluster.nodes
    sub_nc = await connect_to(n2, "sub@n2")
    pub_nc = await connect_to(n1, "pub@n1")
    try:
        c = await subscribe(sub_nc, "cl.orders")
        await await_interest(pub_nc, "cl.orders", [c])

        want = [f"m{i}".encode() for i in range(100)]
        for p in want:
            await pub_nc.publish("cl.orders", p)
        await pub_nc.publish("cl.orders.x", b"other subject")
        await pub_nc.publish("cl.Orders", b"other subject")  # case-sensitive
        await pub_nc.publish("cl.orders", b"end")
        await sync(pub_nc)
        await wait_for(lambda: c.has(b"end"), timeout=10, msg=f"got {len(c.msgs)}")
        await asyncio.sleep(SETTLE)
        assert c.data == want + [b"end"], "each message once, in publication order"
        assert all(m.subject == "cl.orders" for m in c.msgs)
    finally:
        await closing(sub_nc, pub_nc)


# --------------------------------------------------------------------------------------
# 2. wildcards
# --------------------------------------------------------------------------------------


def matches(pattern: str, subject: str) -> bool:
    pt, st = pattern.split("."), subject.split(".")
    for i, tok in enumerate(pt):
        if tok == ">":
            return len(st) > i
        if i >= len(st) or (tok != "*" and tok != st[i]):
            return False
    return len(pt) == len(st)


async def test_wildcards_across_nodes(cluster):
    n1, n2, n3 = cluster.nodes
    sub2 = await connect_to(n2, "sub@n2")
    sub3 = await connect_to(n3, "sub@n3")
    pub = await connect_to(n1, "pub@n1")
    try:
        # Two overlapping subscriptions on one connection (n2), one of each on n3.
        colls = {
            ("n2", "a.*.c"): await subscribe(sub2, "a.*.c"),
            ("n2", "a.>"): await subscribe(sub2, "a.>"),
            ("n3", "a.*.c"): await subscribe(sub3, "a.*.c"),
            ("n3", "a.>"): await subscribe(sub3, "a.>"),
        }
        await await_interest(pub, "a.probe.c", list(colls.values()))

        published = ["a.b.c", "a.b", "a.b.c.d", "a.x.c", "b.b.c", "a", "a.b.d", "x.a.c", "a.y.c"]
        for s in published:
            await pub.publish(s, s.encode())
        await pub.publish("a.end.c", b"end")  # matches every subscription
        await sync(pub)
        await wait_for(lambda: all(c.has(b"end") for c in colls.values()), timeout=10)
        await asyncio.sleep(SETTLE)

        for (node, pattern), c in colls.items():
            got = [m.subject for m in c.msgs]
            want = [s for s in published if matches(pattern, s)] + ["a.end.c"]
            assert got == want, f"{pattern} on {node}: once per subscription, in order"
        # So the connection with both subscriptions got a.b.c twice: once for each.
        both = [m for k, c in colls.items() if k[0] == "n2" for m in c.msgs if m.subject == "a.b.c"]
        assert len(both) == 2
    finally:
        await closing(sub2, sub3, pub)


# --------------------------------------------------------------------------------------
# 3. queue groups
# --------------------------------------------------------------------------------------


async def test_queue_group_across_nodes(cluster):
    N = 1000
    n1, n2, n3 = cluster.nodes
    pub = await connect_to(n1, "pub@n1")
    member_ncs = []
    members: List[Collector] = []
    plain_nc = await connect_to(n3, "plain@n3")
    try:
        for node in (n1, n2, n3):
            for k in range(2):
                nc = await connect_to(node, f"member{k}@{node.node_name}")
                member_ncs.append(nc)
                members.append(await subscribe(nc, "cl.jobs", queue="workers", name=f"{node.node_name}/{k}"))
        plain = await subscribe(plain_nc, "cl.jobs", name="plain@n3")
        await await_interest(pub, "cl.jobs", [plain])
        await await_interest(pub, "cl.jobs", members, any_of=True)

        for n in range(N):
            await pub.publish("cl.jobs", str(n).encode())
        await sync(pub)

        def total() -> int:
            return sum(len(m.msgs) for m in members)

        await wait_for(lambda: len(plain.msgs) >= N and total() >= N, timeout=15,
                       msg=f"plain {len(plain.msgs)}, group {total()}")
        await asyncio.sleep(SETTLE)
        assert [int(d) for d in plain.data] == list(range(N)), "the plain subscriber sees every message, in order"
        delivered = sorted(int(d) for m in members for d in m.data)
        assert delivered == list(range(N)), "each message delivered to exactly one member of the group"
        for m in members:  # per member, messages keep publication order
            got = [int(d) for d in m.data]
            assert got == sorted(got), m.name
    finally:
        await closing(pub, plain_nc, *member_ncs)


async def test_queue_group_members_only_on_other_nodes(cluster):
    """The publisher's node has no member: every message goes to exactly one remote member."""
    N = 1000
    n1, n2, n3 = cluster.nodes
    pub = await connect_to(n1, "pub@n1")
    member_ncs = []
    members: List[Collector] = []
    try:
        for node in (n2, n3):
            for k in range(2):
                nc = await connect_to(node, f"member{k}@{node.node_name}")
                member_ncs.append(nc)
                members.append(await subscribe(nc, "cl.rjobs", queue="remote", name=f"{node.node_name}/{k}"))
        await await_interest(pub, "cl.rjobs", members, any_of=True)

        for n in range(N):
            await pub.publish("cl.rjobs", str(n).encode())
        await sync(pub)
        await wait_for(lambda: sum(len(m.msgs) for m in members) >= N, timeout=15,
                       msg=f"group {[len(m.msgs) for m in members]}")
        await asyncio.sleep(SETTLE)
        delivered = sorted(int(d) for m in members for d in m.data)
        assert delivered == list(range(N)), "each message delivered to exactly one member of the group"
    finally:
        await closing(pub, *member_ncs)


# --------------------------------------------------------------------------------------
# 4. request / reply
# --------------------------------------------------------------------------------------


async def _echo_responder(nc, subject: str, queue: str = "") -> Collector:
    """Replies b"re:" + payload; echoes header Q as Echo-Q and adds Reply-Hdr.
    Probe messages without a reply subject are only counted."""
    c = Collector(f"responder {subject}")

    async def cb(msg):
        if not c.probe(msg):
            c.msgs.append(msg)
        elif not msg.reply:
            return
        headers = None
        if msg.headers:
            headers = {"Reply-Hdr": "r", "Echo-Q": msg.headers.get("Q", "")}
        await nc.publish(msg.reply, b"re:" + msg.data, headers=headers)

    c.sub = await nc.subscribe(subject, queue=queue, cb=cb)
    return c


async def test_request_reply_across_nodes(cluster):
    n1, n2, n3 = cluster.nodes
    svc = await connect_to(n2, "svc@n2")
    req = await connect_to(n1, "req@n1")
    try:
        await _echo_responder(svc, "cl.svc.echo")
        await wait_responder(req, "cl.svc.echo")

        for i in range(20):
            resp = await req.request("cl.svc.echo", f"q{i}".encode(), timeout=5)
            assert resp.data == f"re:q{i}".encode()
            assert not resp.headers
        # concurrent requests: each gets its own reply
        resps = await asyncio.gather(*[req.request("cl.svc.echo", f"c{i}".encode(), timeout=5) for i in range(50)])
        assert [r.data for r in resps] == [f"re:c{i}".encode() for i in range(50)]
        # headers on the request and on the reply
        resp = await req.request("cl.svc.echo", b"d", timeout=5, headers={"Q": "v", "X-Two": "two words"})
        assert resp.data == b"re:d"
        assert resp.headers == {"Reply-Hdr": "r", "Echo-Q": "v"}
        # old style: a fresh inbox subscription made just before the request; its
        # interest reaches n2 ahead of the request itself.
        resp = await req.request("cl.svc.echo", b"old", timeout=5, old_style=True)
        assert resp.data == b"re:old"
    finally:
        await closing(svc, req)


# --------------------------------------------------------------------------------------
# 5. no responders
# --------------------------------------------------------------------------------------


async def test_no_responders_across_nodes(cluster):
    n1, n2, n3 = cluster.nodes
    req = await connect_to(n1, "req@n1")
    svc = await connect_to(n3, "svc@n3")
    try:
        nobody = f"cl.nobody.{uuid.uuid4().hex}"
        for old_style in (False, True):
            t0 = time.monotonic()
            with pytest.raises(nats.errors.NoRespondersError):
                await req.request(nobody, b"?", timeout=5, old_style=old_style)
            assert time.monotonic() - t0 < 2.0, "no-responders is immediate, not a timeout"

        # The only responders are on n3 (one plain, one queue group): once their interest
        # has reached n1, every request is answered (no false no-responders).
        plain = await _echo_responder(svc, "cl.svc3")
        queued = await _echo_responder(svc, "cl.svc3q", queue="workers")
        await await_interest(req, "cl.svc3", [plain])
        await await_interest(req, "cl.svc3q", [queued])
        for subject in ("cl.svc3", "cl.svc3q"):
            for i in range(20):
                resp = await req.request(subject, f"q{i}".encode(), timeout=5)
                assert resp.data == f"re:q{i}".encode()

        # Once the responder is gone (and that has reached n1), no-responders again.
        await plain.sub.unsubscribe()
        await sync(svc)
        deadline = time.monotonic() + INTEREST_TIMEOUT
        while True:
            try:
                await req.request("cl.svc3", b"?", timeout=2)
            except nats.errors.NoRespondersError:
                break
            except nats.errors.TimeoutError:
                pass  # the request reached n3 as the subscription went away there
            assert time.monotonic() < deadline, "still answered/timeouts after the responder unsubscribed"
            await asyncio.sleep(0.05)
    finally:
        await closing(req, svc)


# --------------------------------------------------------------------------------------
# 6. headers
# --------------------------------------------------------------------------------------


async def test_headers_across_nodes(cluster):
    n1, n2, n3 = cluster.nodes
    sub_nc = await connect_to(n2, "sub@n2")
    pub = await connect_to(n1, "pub@n1")
    try:
        c = await subscribe(sub_nc, "cl.hdr")
        await await_interest(pub, "cl.hdr", [c])
        hdrs = {"X-One": "1", "X-Two": "two words", "Nats-Msg-Id": "abc-123"}
        await pub.publish("cl.hdr", b"payload", headers=hdrs)
        await pub.publish("cl.hdr", b"", headers={"Only": "headers"})
        await pub.publish("cl.hdr", b"with reply", reply="cl.reply.to", headers={"K": "V"})
        await pub.publish("cl.hdr", b"plain")
        await sync(pub)
        await wait_for(lambda: len(c.msgs) >= 4, timeout=10, msg=f"got {len(c.msgs)}")
        await asyncio.sleep(SETTLE)
        assert len(c.msgs) == 4
        m0, m1, m2, m3 = c.msgs
        assert m0.data == b"payload" and m0.headers == hdrs
        assert m1.data == b"" and m1.headers == {"Only": "headers"}
        assert m2.data == b"with reply" and m2.headers == {"K": "V"} and m2.reply == "cl.reply.to"
        assert m3.data == b"plain" and not m3.headers
    finally:
        await closing(sub_nc, pub)


async def test_multi_value_headers_across_nodes_raw(cluster, raw_factory):
    """HPUB on n1 with a repeated header name arrives on n2 (and n3) byte for byte."""
    n1, n2, n3 = cluster.nodes
    subs = {}
    for node in (n2, n3):
        s = await raw_factory(node, connect={"headers": True})
        await s.send(b"SUB cl.multi 9\r\n")
        await s.ping_pong()
        subs[node.node_name] = s
    pub = await raw_factory(n1, connect={"headers": True})
    for s in subs.values():
        await raw_await_interest(pub, s, "cl.multi")

    hdr = b"NATS/1.0\r\nX-Multi: a\r\nX-Multi: b\r\nOther: c\r\nX-Multi: c\r\n\r\n"
    payload = b"body!"
    await pub.send(b"HPUB cl.multi reply.to %d %d\r\n%s%s\r\n" % (len(hdr), len(hdr) + len(payload), hdr, payload))
    # headers only, no payload
    await pub.send(b"HPUB cl.multi %d %d\r\n%s\r\n" % (len(hdr), len(hdr), hdr))
    await pub.ping_pong()
    for name, s in subs.items():
        fields, body = await raw_read_msg(s)
        assert fields == [b"HMSG", b"cl.multi", b"9", b"reply.to", str(len(hdr)).encode(),
                          str(len(hdr) + len(payload)).encode()], name
        assert body == hdr + payload, name
        fields, body = await raw_read_msg(s)
        assert fields == [b"HMSG", b"cl.multi", b"9", str(len(hdr)).encode(), str(len(hdr)).encode()], name
        assert body == hdr, name


# --------------------------------------------------------------------------------------
# 7. kill -9 and rejoin
# --------------------------------------------------------------------------------------


async def test_interest_follows_kill9_and_rejoin(cluster):
    n1, n2, n3 = cluster.nodes
    errors: List[Exception] = []

    async def err_cb(e):
        errors.append(e)

    sub2 = await connect_to(n2, "sub@n2", allow_reconnect=False)
    watch3 = await connect_to(n3, "watch@n3")
    pub = await connect_to(n1, "pub@n1", error_cb=err_cb)
    sub2b = None
    try:
        c2 = await subscribe(sub2, "cl.k")
        c3 = await subscribe(watch3, "cl.k")
        await await_interest(pub, "cl.k", [c2, c3])
        await pub.publish("cl.k", b"before")
        await sync(pub)
        await wait_for(lambda: c2.has(b"before") and c3.has(b"before"), timeout=10)

        await asyncio.to_thread(cluster.kill9, n2)
        # Publishing on n1 right away (n1 may not have noticed yet) and later: no error,
        # and the subscriber on n3 still gets every message.
        during = [f"during{i}".encode() for i in range(20)]
        for i, p in enumerate(during):
            await pub.publish("cl.k", p)
            if i == 9:
                await sync(pub)
                await asyncio.sleep(0.5)
        await sync(pub)
        await wait_for(lambda: c3.has(during[-1]), timeout=10)
        assert pub.is_connected and port_of(pub) == n1.port
        assert not errors, errors

        await asyncio.to_thread(cluster.restart, n2)
        sub2b = await connect_to(n2, "sub@n2-again")
        c2b = await subscribe(sub2b, "cl.k")
        await await_interest(pub, "cl.k", [c2b])
        after = [f"after{i}".encode() for i in range(20)]
        for p in after:
            await pub.publish("cl.k", p)
        await sync(pub)
        await wait_for(lambda: c2b.has(after[-1]) and c3.has(after[-1]), timeout=10)
        await asyncio.sleep(SETTLE)
        assert c2b.data == after, "the new subscriber on the restarted node gets what n1 publishes"
        assert c3.data == [b"before"] + during + after
        assert c2.data == [b"before"]
        assert not errors, errors
    finally:
        await closing(sub2, watch3, pub, *([sub2b] if sub2b else []))


# --------------------------------------------------------------------------------------
# 8. connect_urls / failover
# --------------------------------------------------------------------------------------


async def test_discovers_servers_and_fails_over(cluster):
    n1, n2, n3 = cluster.nodes
    reconnected = asyncio.Event()
    disconnected = asyncio.Event()

    async def on_reconnected():
        reconnected.set()

    async def on_disconnected():
        disconnected.set()

    nc = await connect_to(n1, "roamer", reconnected_cb=on_reconnected, disconnected_cb=on_disconnected)
    pub = await connect_to(n3, "pub@n3")
    try:
        others = {f"127.0.0.1:{n2.port}", f"127.0.0.1:{n3.port}"}
        # nats-py adds INFO.connect_urls (minus the URL it already has) to its server pool.
        await wait_for(lambda: {netloc(u) for u in nc.discovered_servers} == others, timeout=10,
                       msg=f"discovered {[netloc(u) for u in nc.discovered_servers]}, want {others}")
        assert {netloc(u) for u in nc.servers} == others | {f"127.0.0.1:{n1.port}"}

        plain = await subscribe(nc, "cl.fo")
        queued = await subscribe(nc, "cl.fo.q", queue="workers")
        await await_interest(pub, "cl.fo", [plain])
        await await_interest(pub, "cl.fo.q", [queued])

        await asyncio.to_thread(cluster.kill9, n1)
        await asyncio.wait_for(disconnected.wait(), 10)
        await asyncio.wait_for(reconnected.wait(), 20)
        assert port_of(nc) in (n2.port, n3.port)

        # The subscriptions were re-sent on reconnect; wait until n3 knows them again.
        await await_interest(pub, "cl.fo", [plain])
        await await_interest(pub, "cl.fo.q", [queued])
        want = [f"after{i}".encode() for i in range(50)]
        for p in want:
            await pub.publish("cl.fo", p)
            await pub.publish("cl.fo.q", p)
        await sync(pub)
        await wait_for(lambda: len(plain.msgs) >= 50 and len(queued.msgs) >= 50, timeout=10,
                       msg=f"plain {len(plain.msgs)} queued {len(queued.msgs)}")
        await asyncio.sleep(SETTLE)
        assert plain.data == want
        assert queued.data == want
    finally:
        await closing(nc, pub)


# --------------------------------------------------------------------------------------
# 9. lame duck mode
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["signal", "command"])
async def test_lame_duck_mode_moves_clients(cluster, how):
    """SIGUSR2 (or `nats-server --signal ldm=<pid>` / `stork drain --node <admin>`) on n1:
    its clients get an INFO with "ldm": true, are disconnected after the grace period
    and reconnect to another node with their subscriptions."""
    n1, n2, n3 = cluster.nodes
    events = {k: asyncio.Event() for k in ("ldm", "disconnected", "reconnected")}

    def setter(k):
        async def cb():
            events[k].set()
        return cb

    # All three URLs, in order, so the client starts on n1 whatever it discovers.
    nc = await connect(
        [n1.url, n2.url, n3.url], name="ldm-client", dont_randomize=True,
        lame_duck_mode_cb=setter("ldm"), disconnected_cb=setter("disconnected"),
        reconnected_cb=setter("reconnected"),
    )
    pub = await connect_to(n3, "pub@n3")
    try:
        assert port_of(nc) == n1.port
        plain = await subscribe(nc, "cl.ldm")
        queued = await subscribe(nc, "cl.ldm.q", queue="workers")
        await await_interest(pub, "cl.ldm", [plain])
        await await_interest(pub, "cl.ldm.q", [queued])

        await asyncio.to_thread(n1.lame_duck, how)
        await asyncio.wait_for(events["ldm"].wait(), 10)
        await asyncio.wait_for(events["disconnected"].wait(), 30)
        await asyncio.wait_for(events["reconnected"].wait(), 20)
        assert port_of(nc) in (n2.port, n3.port)

        await await_interest(pub, "cl.ldm", [plain])
        await await_interest(pub, "cl.ldm.q", [queued])
        want = [f"after{i}".encode() for i in range(50)]
        for p in want:
            await pub.publish("cl.ldm", p)
            await pub.publish("cl.ldm.q", p)
        await sync(pub)
        await wait_for(lambda: len(plain.msgs) >= 50 and len(queued.msgs) >= 50, timeout=10,
                       msg=f"plain {len(plain.msgs)} queued {len(queued.msgs)}")
        await asyncio.sleep(SETTLE)
        assert plain.data == want
        assert queued.data == want
    finally:
        await closing(nc, pub)
