"""JetStream API compatibility tests through nats-py's JetStream API.

Reference behaviour: nats-server 2.9.10.  File storage unless the test is about memory.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)

from conftest import close_quietly, connect, spread_skip, sync, wait_for

pytestmark = [
    pytest.mark.timeout(30),
    spread_skip(
        "JetStream (streams, consumers): in Stork a stream still lives on one node, so JetStream is "
        "not part of spread mode yet; it runs in the single-server mode",
    ),
]

FILE = StorageType.FILE

# nats-py 2.16's fetch(batch>1) raises either nats.errors.TimeoutError or, when its
# deadline runs out between the two pull requests it makes, a bare asyncio.TimeoutError
# (nats.errors.TimeoutError is a subclass of it). Accept both there.
FETCH_TIMEOUT = asyncio.TimeoutError


@pytest_asyncio.fixture
async def js(nc):
    return nc.jetstream(timeout=5)


async def add_stream(js, name="ORDERS", subjects=None, **kw):
    kw.setdefault("storage", FILE)
    return await js.add_stream(name=name, subjects=subjects or [f"{name.lower()}.>"], **kw)


async def publish_n(js, subject, n, start=0):
    acks = []
    for i in range(start, start + n):
        acks.append(await js.publish(subject, f"m{i}".encode()))
    return acks


async def fetch_upto(psub, n, timeout=5.0):
    """Fetch until n messages were received or `timeout` passed; returns what arrived."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            break
        try:
            out += await psub.fetch(n - len(out), timeout=min(remaining, 2.0))
        except FETCH_TIMEOUT:
            pass
    return out


def sseq(msg) -> int:
    return msg.metadata.sequence.stream


async def acked(js, stream, consumer, floor, pending=0, timeout=5.0):
    """Wait until the consumer's ack floor reaches `floor` with `pending` unacked."""
    async def check():
        ci = await js.consumer_info(stream, consumer)
        return ci.ack_floor.stream_seq == floor and ci.num_ack_pending == pending and ci
    return await wait_for(check, timeout=timeout, interval=0.05)


# --------------------------------------------------------------------------------------
# streams
# --------------------------------------------------------------------------------------


async def test_stream_create_and_info(js):
    si = await add_stream(js, "ORDERS", ["orders.>"])
    assert si.config.name == "ORDERS"
    assert si.config.subjects == ["orders.>"]
    assert si.config.storage == StorageType.FILE
    assert si.state.messages == 0 and si.state.bytes == 0
    assert si.state.last_seq == 0 and si.state.consumer_count == 0
    # server defaults
    assert si.config.max_msgs == -1 and si.config.max_bytes == -1
    assert si.config.duplicate_window == 120.0  # 2 min, in seconds after nats-py conversion

    await publish_n(js, "orders.new", 3)
    info = await js.stream_info("ORDERS")
    assert info.config.name == "ORDERS"
    assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (3, 1, 3)
    assert info.state.bytes > 0
    assert isinstance(info.created, datetime.datetime)

    # creating the same stream again with the same config is idempotent
    again = await add_stream(js, "ORDERS", ["orders.>"])
    assert again.state.messages == 3
    # ... but a different config under the same name is an error
    with pytest.raises(nats.js.errors.BadRequestError) as ei:
        await add_stream(js, "ORDERS", ["other.>"])
    assert ei.value.err_code == 10058  # stream name already in use


async def test_stream_not_found(js):
    with pytest.raises(nats.js.errors.NotFoundError) as ei:
        await js.stream_info("MISSING")
    assert ei.value.code == 404 and ei.value.err_code == 10059


async def test_stream_subject_overlap_rejected(js):
    await add_stream(js, "A", ["ov.>"])
    with pytest.raises(nats.js.errors.APIError) as ei:
        await add_stream(js, "B", ["ov.x"])
    assert ei.value.code == 400 and ei.value.err_code == 10065  # subjects overlap


async def test_stream_update(js):
    await add_stream(js, "UPD", ["upd.a"])
    await publish_n(js, "upd.a", 5)
    si = await js.update_stream(StreamConfig(name="UPD", subjects=["upd.a", "upd.b"], storage=FILE, max_msgs=3))
    assert si.config.subjects == ["upd.a", "upd.b"]
    assert si.config.max_msgs == 3
    # the new limit applies immediately to the stored messages
    assert (si.state.messages, si.state.first_seq, si.state.last_seq) == (3, 3, 5)
    ack = await js.publish("upd.b", b"new subject")
    assert ack.stream == "UPD" and ack.seq == 6
    info = await js.stream_info("UPD")
    assert info.config.max_msgs == 3 and info.state.messages == 3
    # updating a missing stream
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.update_stream(StreamConfig(name="NOPE", subjects=["nope"], storage=FILE))
    # storage type cannot be changed
    # (nats-server 2.9.10 answers code 500, err_code 10052 "stream configuration update
    # can not change storage type" -> nats-py ServerError)
    with pytest.raises(nats.js.errors.APIError) as ei:
        await js.update_stream(StreamConfig(name="UPD", subjects=["upd.a", "upd.b"], storage=StorageType.MEMORY))
    assert ei.value.err_code == 10052


async def test_stream_names_and_list(nc, js):
    for name in ("S1", "S2", "S3"):
        await add_stream(js, name, [f"{name.lower()}.*"])
    # STREAM.NAMES (nats-py has no wrapper for the unfiltered form; use the raw API)
    resp = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"", timeout=5)).data)
    assert sorted(resp["streams"]) == ["S1", "S2", "S3"]
    assert resp["total"] == 3
    # filtered by subject (what nats-py uses to find the stream of a subject)
    assert await js.find_stream_name_by_subject("s2.x") == "S2"
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.find_stream_name_by_subject("zzz")
    # STREAM.LIST
    infos = await js.streams_info()
    assert sorted(i.config.name for i in infos) == ["S1", "S2", "S3"]
    assert all(i.state is not None for i in infos)


async def test_stream_delete(js):
    await add_stream(js, "DEL", ["del.>"])
    await publish_n(js, "del.x", 2)
    assert await js.delete_stream("DEL") is True
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.stream_info("DEL")
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.delete_stream("DEL")
    # publishing to its subjects now has no responders
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await js.publish("del.x", b"gone", timeout=2)


async def test_stream_purge(js):
    await add_stream(js, "PRG", ["prg.>"])
    await publish_n(js, "prg.a", 6)
    await publish_n(js, "prg.b", 4)
    # purge by subject
    assert await js.purge_stream("PRG", subject="prg.b") is True
    si = await js.stream_info("PRG")
    assert si.state.messages == 6 and si.state.last_seq == 10
    # full purge keeps the sequence: next first_seq is last_seq + 1
    assert await js.purge_stream("PRG") is True
    si = await js.stream_info("PRG")
    assert (si.state.messages, si.state.bytes, si.state.first_seq, si.state.last_seq) == (0, 0, 11, 10)
    ack = await js.publish("prg.a", b"after purge")
    assert ack.seq == 11


async def test_memory_stream(js):
    si = await js.add_stream(name="MEM", subjects=["mem.>"], storage=StorageType.MEMORY)
    assert si.config.storage == StorageType.MEMORY
    await publish_n(js, "mem.x", 3)
    info = await js.stream_info("MEM")
    assert info.state.messages == 3 and info.config.storage == StorageType.MEMORY


# --------------------------------------------------------------------------------------
# publish
# --------------------------------------------------------------------------------------


async def test_publish_ack(js):
    await add_stream(js, "PUBS", ["pubs.>"])
    for i in range(1, 6):
        ack = await js.publish("pubs.x", f"p{i}".encode())
        assert ack.stream == "PUBS" and ack.seq == i
        assert not ack.duplicate
    # expected stream header
    ack = await js.publish("pubs.y", b"ok", stream="PUBS")
    assert ack.seq == 6
    with pytest.raises(nats.js.errors.APIError) as ei:
        await js.publish("pubs.y", b"wrong", stream="OTHER")
    assert ei.value.err_code == 10060  # expected stream does not match
    # headers are stored with the message
    await js.publish("pubs.h", b"with headers", headers={"X-Key": "v"})
    psub = await js.pull_subscribe("pubs.h", durable="h", stream="PUBS")
    msg = (await psub.fetch(1, timeout=5))[0]
    assert msg.data == b"with headers" and msg.headers.get("X-Key") == "v"


async def test_publish_without_stream(js):
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await js.publish("no.stream.here", b"x", timeout=2)


async def test_duplicate_detection(js):
    await add_stream(js, "DUP", ["dup.>"], duplicate_window=60)
    a1 = await js.publish("dup.x", b"one", headers={"Nats-Msg-Id": "id-1"})
    assert a1.seq == 1 and not a1.duplicate
    a2 = await js.publish("dup.x", b"one again", headers={"Nats-Msg-Id": "id-1"})
    assert a2.duplicate is True
    assert a2.seq == 1  # seq of the original
    a3 = await js.publish("dup.x", b"two", headers={"Nats-Msg-Id": "id-2"})
    assert a3.seq == 2 and not a3.duplicate
    a4 = await js.publish("dup.x", b"no id")
    assert a4.seq == 3
    si = await js.stream_info("DUP")
    assert si.state.messages == 3 and si.state.last_seq == 3


# --------------------------------------------------------------------------------------
# pull consumers
# --------------------------------------------------------------------------------------


async def test_pull_fetch_ack(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 5)
    psub = await js.pull_subscribe("orders.>", durable="proc", stream="ORDERS")
    msgs = await fetch_upto(psub, 5)
    assert [m.data for m in msgs] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    md = msgs[0].metadata
    assert md.stream == "ORDERS" and md.consumer == "proc"
    assert [sseq(m) for m in msgs] == [1, 2, 3, 4, 5]
    assert [m.metadata.sequence.consumer for m in msgs] == [1, 2, 3, 4, 5]
    assert [m.metadata.num_delivered for m in msgs] == [1] * 5
    assert [m.metadata.num_pending for m in msgs] == [4, 3, 2, 1, 0]
    ci = await js.consumer_info("ORDERS", "proc")
    assert ci.num_ack_pending == 5 and ci.delivered.stream_seq == 5
    for m in msgs[:3]:
        await m.ack()
    await msgs[3].ack_sync(timeout=5)  # double ack: server confirms
    await msgs[4].ack_sync(timeout=5)
    ci = await acked(js, "ORDERS", "proc", floor=5)
    assert ci.num_pending == 0 and ci.num_redelivered == 0
    assert ci.config.durable_name == "proc" and ci.config.ack_policy == AckPolicy.EXPLICIT
    assert ci.stream_name == "ORDERS" and ci.name == "proc"
    # messages published later are fetched next
    await publish_n(js, "orders.new", 2, start=5)
    more = await fetch_upto(psub, 2)
    assert [sseq(m) for m in more] == [6, 7]


async def test_consumer_info_list_delete(js):
    await add_stream(js)
    await js.add_consumer("ORDERS", ConsumerConfig(durable_name="c1", ack_policy=AckPolicy.EXPLICIT))
    await js.add_consumer("ORDERS", ConsumerConfig(durable_name="c2", ack_policy=AckPolicy.EXPLICIT))
    names = sorted(c.name for c in await js.consumers_info("ORDERS"))
    assert names == ["c1", "c2"]
    assert (await js.stream_info("ORDERS")).state.consumer_count == 2
    assert await js.delete_consumer("ORDERS", "c1") is True
    with pytest.raises(nats.js.errors.NotFoundError) as ei:
        await js.consumer_info("ORDERS", "c1")
    assert ei.value.err_code == 10014  # consumer not found
    assert (await js.stream_info("ORDERS")).state.consumer_count == 1


async def test_fetch_no_messages_times_out(js):
    await add_stream(js)
    psub = await js.pull_subscribe("orders.>", durable="idle", stream="ORDERS")
    with pytest.raises(nats.errors.TimeoutError):
        await psub.fetch(1, timeout=1)
    with pytest.raises(FETCH_TIMEOUT):
        await psub.fetch(5, timeout=1)
    # and the consumer still works afterwards
    await js.publish("orders.x", b"late")
    msgs = await fetch_upto(psub, 1)
    assert [m.data for m in msgs] == [b"late"]


async def test_fetch_waits_for_new_message(js):
    await add_stream(js)
    psub = await js.pull_subscribe("orders.>", durable="waiter", stream="ORDERS")

    async def later():
        await asyncio.sleep(0.3)
        await js.publish("orders.x", b"arrives")

    task = asyncio.ensure_future(later())
    msgs = await psub.fetch(1, timeout=5)
    await task
    assert msgs[0].data == b"arrives"


async def test_redelivery_after_ack_wait(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 2)
    psub = await js.pull_subscribe("orders.>", durable="slow", stream="ORDERS",
                                   config=ConsumerConfig(ack_wait=1))
    first = await fetch_upto(psub, 2)
    assert [sseq(m) for m in first] == [1, 2]
    await first[1].ack_sync(timeout=5)  # only seq 2 acked
    again = await fetch_upto(psub, 1, timeout=6)  # seq 1 comes back after ack_wait (1 s)
    assert len(again) == 1
    m = again[0]
    assert sseq(m) == 1 and m.data == b"m0"
    assert m.metadata.num_delivered == 2
    assert m.metadata.sequence.consumer == 3  # redeliveries get a new consumer sequence
    await m.ack_sync(timeout=5)
    ci = await acked(js, "ORDERS", "slow", floor=2)
    assert ci.num_redelivered == 0  # nothing is pending redelivery any more


async def test_nak_redelivers(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 1)
    psub = await js.pull_subscribe("orders.>", durable="nak", stream="ORDERS")
    m = (await psub.fetch(1, timeout=5))[0]
    assert m.metadata.num_delivered == 1
    await m.nak()
    m2 = (await fetch_upto(psub, 1))[0]  # immediate redelivery (ack_wait is 30 s)
    assert sseq(m2) == 1 and m2.data == b"m0"
    assert m2.metadata.num_delivered == 2
    await m2.ack_sync(timeout=5)
    await acked(js, "ORDERS", "nak", floor=1)


async def test_nak_with_delay(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 1)
    psub = await js.pull_subscribe("orders.>", durable="nakd", stream="ORDERS")
    m = (await psub.fetch(1, timeout=5))[0]
    t0 = time.monotonic()
    await m.nak(delay=2)
    # not redelivered right away ...
    with pytest.raises(nats.errors.TimeoutError):
        await psub.fetch(1, timeout=0.8)
    # ... but after the delay
    m2 = (await fetch_upto(psub, 1, timeout=8))[0]
    assert time.monotonic() - t0 >= 1.5
    assert sseq(m2) == 1 and m2.metadata.num_delivered == 2
    await m2.ack_sync(timeout=5)


async def test_in_progress_extends_ack_wait(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 1)
    psub = await js.pull_subscribe("orders.>", durable="wpi", stream="ORDERS",
                                   config=ConsumerConfig(ack_wait=1.5))
    m = (await psub.fetch(1, timeout=5))[0]
    stop = asyncio.Event()

    async def keep_alive():
        while not stop.is_set():
            await m.in_progress()  # +WPI, repeatable
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except asyncio.TimeoutError:
                pass

    task = asyncio.ensure_future(keep_alive())
    try:
        # 3.5 s > 2 x ack_wait: without +WPI the message would have been redelivered
        with pytest.raises(nats.errors.TimeoutError):
            await psub.fetch(1, timeout=3.5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    await m.ack_sync(timeout=5)
    ci = await acked(js, "ORDERS", "wpi", floor=1)
    assert ci.num_redelivered == 0
    assert ci.delivered.consumer_seq == 1  # delivered exactly once


async def test_term_stops_redelivery(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 2)
    psub = await js.pull_subscribe("orders.>", durable="term", stream="ORDERS",
                                   config=ConsumerConfig(ack_wait=1))
    msgs = await fetch_upto(psub, 2)
    await msgs[0].term()
    await msgs[1].ack_sync(timeout=5)
    with pytest.raises(nats.errors.TimeoutError):
        await psub.fetch(1, timeout=2.5)  # > 2 x ack_wait
    ci = await acked(js, "ORDERS", "term", floor=2)
    assert ci.delivered.consumer_seq == 2


# --------------------------------------------------------------------------------------
# deliver policies
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["all", "last", "new", "by_start_sequence", "by_start_time"])
async def test_deliver_policies(js, policy):
    await add_stream(js, "DP", ["dp.>"])
    await publish_n(js, "dp.a", 3)  # seqs 1..3
    start_time = None
    if policy == "by_start_time":
        await asyncio.sleep(0.5)
        start_time = datetime.datetime.now(datetime.timezone.utc)  # same host clock as the server
        await asyncio.sleep(0.5)
    await publish_n(js, "dp.b", 3, start=3)  # seqs 4..6

    cfg = ConsumerConfig(durable_name=f"dp_{policy}", deliver_policy=DeliverPolicy(policy))
    expected = {
        "all": [1, 2, 3, 4, 5, 6],
        "last": [6],
        "new": [],
        "by_start_sequence": [5, 6],
        "by_start_time": [4, 5, 6],
    }[policy]
    if policy == "by_start_sequence":
        cfg.opt_start_seq = 5
    if policy == "by_start_time":
        cfg.opt_start_time = start_time
    psub = await js.pull_subscribe("dp.>", durable=cfg.durable_name, stream="DP", config=cfg)
    got = await fetch_upto(psub, len(expected), timeout=5) if expected else []
    assert [sseq(m) for m in got] == expected
    # nothing else is pending
    with pytest.raises(nats.errors.TimeoutError):
        await psub.fetch(1, timeout=0.5)
    # all policies continue with new messages
    await js.publish("dp.c", b"next")
    nxt = await fetch_upto(psub, 1)
    assert [sseq(m) for m in nxt] == [7]
    ci = await js.consumer_info("DP", cfg.durable_name)
    assert ci.config.deliver_policy == DeliverPolicy(policy)


async def test_filter_subject(js):
    await add_stream(js, "FLT", ["flt.>"])
    for i in range(6):
        await js.publish("flt.even" if i % 2 == 0 else "flt.odd", str(i).encode())
    psub = await js.pull_subscribe("flt.odd", durable="odd", stream="FLT")
    got = await fetch_upto(psub, 3)
    assert [m.data for m in got] == [b"1", b"3", b"5"]
    assert [m.subject for m in got] == ["flt.odd"] * 3
    with pytest.raises(nats.errors.TimeoutError):
        await psub.fetch(1, timeout=0.5)


# --------------------------------------------------------------------------------------
# ack policies and flow
# --------------------------------------------------------------------------------------


async def test_ack_explicit_is_per_message(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 3)
    psub = await js.pull_subscribe("orders.>", durable="expl", stream="ORDERS",
                                   config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
    msgs = await fetch_upto(psub, 3)
    await msgs[2].ack_sync(timeout=5)  # acking 3 does not ack 1 and 2
    ci = await js.consumer_info("ORDERS", "expl")
    assert ci.num_ack_pending == 2 and ci.ack_floor.stream_seq == 0
    await msgs[0].ack_sync(timeout=5)
    await msgs[1].ack_sync(timeout=5)
    await acked(js, "ORDERS", "expl", floor=3)


async def test_ack_policy_all(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 5)
    psub = await js.pull_subscribe("orders.>", durable="all", stream="ORDERS",
                                   config=ConsumerConfig(ack_policy=AckPolicy.ALL, ack_wait=30))
    msgs = await fetch_upto(psub, 5)
    assert len(msgs) == 5
    await msgs[3].ack_sync(timeout=5)  # acks 1..4
    ci = await acked(js, "ORDERS", "all", floor=4, pending=1)
    assert ci.config.ack_policy == AckPolicy.ALL
    await msgs[4].ack_sync(timeout=5)
    await acked(js, "ORDERS", "all", floor=5)


async def test_ack_policy_none(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 4)
    psub = await js.pull_subscribe("orders.>", durable="none", stream="ORDERS",
                                   config=ConsumerConfig(ack_policy=AckPolicy.NONE, ack_wait=1))
    msgs = await fetch_upto(psub, 4)
    assert [sseq(m) for m in msgs] == [1, 2, 3, 4]
    ci = await js.consumer_info("ORDERS", "none")
    assert ci.num_ack_pending == 0
    assert ci.ack_floor.stream_seq == 4 and ci.delivered.stream_seq == 4
    # never redelivered, even after ack_wait
    with pytest.raises(nats.errors.TimeoutError):
        await psub.fetch(1, timeout=2)


async def test_max_ack_pending(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 10)
    psub = await js.pull_subscribe("orders.>", durable="map", stream="ORDERS",
                                   config=ConsumerConfig(max_ack_pending=3))
    first = await fetch_upto(psub, 10, timeout=2)
    assert [sseq(m) for m in first] == [1, 2, 3]  # at most 3 in flight
    with pytest.raises(nats.errors.TimeoutError):
        await psub.fetch(1, timeout=0.5)
    ci = await js.consumer_info("ORDERS", "map")
    assert ci.num_ack_pending == 3 and ci.config.max_ack_pending == 3
    await first[0].ack_sync(timeout=5)
    nxt = await fetch_upto(psub, 10, timeout=2)
    assert [sseq(m) for m in nxt] == [4]  # one slot freed
    for m in first[1:] + nxt:
        await m.ack_sync(timeout=5)
    rest = await fetch_upto(psub, 3, timeout=5)
    assert [sseq(m) for m in rest] == [5, 6, 7]


# --------------------------------------------------------------------------------------
# ephemeral and push consumers
# --------------------------------------------------------------------------------------


async def test_ephemeral_pull_consumer(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 3)
    psub = await js.pull_subscribe("orders.>", stream="ORDERS")  # no durable name
    msgs = await fetch_upto(psub, 3)
    assert [m.data for m in msgs] == [b"m0", b"m1", b"m2"]
    for m in msgs:
        await m.ack()
    ci = await psub.consumer_info()
    assert ci.config.durable_name is None
    assert ci.name and ci.stream_name == "ORDERS"


async def test_ephemeral_push_consumer(js):
    await add_stream(js)
    await publish_n(js, "orders.new", 3)
    sub = await js.subscribe("orders.>")  # ephemeral push consumer, client-chosen deliver inbox
    got = [await sub.next_msg(timeout=5) for _ in range(3)]
    assert [m.data for m in got] == [b"m0", b"m1", b"m2"]
    for m in got:
        await m.ack()
    await js.publish("orders.new", b"live")
    m = await sub.next_msg(timeout=5)
    assert m.data == b"live" and sseq(m) == 4
    ci = await sub.consumer_info()
    assert ci.config.deliver_subject and ci.config.durable_name is None
    await sub.unsubscribe()


async def test_push_consumer_with_deliver_subject(nc, js):
    await add_stream(js)
    await publish_n(js, "orders.new", 3)
    await js.add_consumer("ORDERS", ConsumerConfig(durable_name="pusher", deliver_subject="deliver.pusher",
                                                   ack_policy=AckPolicy.EXPLICIT))
    sub = await nc.subscribe("deliver.pusher")  # plain core subscription on the deliver subject
    got = [await sub.next_msg(timeout=5) for _ in range(3)]
    assert [m.data for m in got] == [b"m0", b"m1", b"m2"]
    assert all(m.reply.startswith("$JS.ACK.ORDERS.pusher.") for m in got)
    assert [sseq(m) for m in got] == [1, 2, 3]
    for m in got:
        await m.ack_sync(timeout=5)
    await acked(js, "ORDERS", "pusher", floor=3)
    await js.publish("orders.new", b"live")
    m = await sub.next_msg(timeout=5)
    assert m.data == b"live" and sseq(m) == 4


async def test_push_durable_queue_group(server, js):
    await add_stream(js)
    N = 100
    nc1 = await connect(server.url, name="member1")
    nc2 = await connect(server.url, name="member2")
    try:
        got = {1: [], 2: []}

        def cb_for(i):
            async def cb(msg):
                got[i].append(sseq(msg))
                await msg.ack()
            return cb

        js1, js2 = nc1.jetstream(timeout=5), nc2.jetstream(timeout=5)
        # nats-py: queue name == durable name == deliver_group
        await js1.subscribe("orders.>", queue="workers", durable="workers", stream="ORDERS",
                            cb=cb_for(1), manual_ack=True)
        await js2.subscribe("orders.>", queue="workers", durable="workers", stream="ORDERS",
                            cb=cb_for(2), manual_ack=True)
        await sync(nc1)
        await sync(nc2)
        ci = await js.consumer_info("ORDERS", "workers")
        assert ci.config.deliver_group == "workers"
        for i in range(N):
            await js.publish("orders.new", str(i).encode())
        await wait_for(lambda: len(got[1]) + len(got[2]) >= N, timeout=10)
        await asyncio.sleep(0.3)
        assert sorted(got[1] + got[2]) == list(range(1, N + 1)), "each message to exactly one member"
        assert got[1] and got[2], "both members receive some"
        await acked(js, "ORDERS", "workers", floor=N)
    finally:
        await close_quietly(nc1)
        await close_quietly(nc2)


# --------------------------------------------------------------------------------------
# restarts
# --------------------------------------------------------------------------------------


async def test_consumer_resume_after_restart(server):
    nc = await connect(server.url)
    try:
        js = nc.jetstream(timeout=5)
        await add_stream(js)
        await publish_n(js, "orders.new", 10)
        psub = await js.pull_subscribe("orders.>", durable="resume", stream="ORDERS",
                                       config=ConsumerConfig(ack_wait=2))
        msgs = await fetch_upto(psub, 4)
        assert [sseq(m) for m in msgs] == [1, 2, 3, 4]
        for m in msgs[:3]:
            await m.ack_sync(timeout=5)  # 1..3 acked, 4 delivered but not acked
        await acked(js, "ORDERS", "resume", floor=3, pending=1)
    finally:
        await close_quietly(nc)

    await asyncio.to_thread(server.restart)

    nc = await connect(server.url)
    try:
        js = nc.jetstream(timeout=5)
        ci = await js.consumer_info("ORDERS", "resume")
        assert ci.ack_floor.stream_seq == 3  # ack floor kept
        assert ci.config.ack_wait == 2
        si = await js.stream_info("ORDERS")
        assert si.state.messages == 10
        psub = await js.pull_subscribe("orders.>", durable="resume", stream="ORDERS")
        seen = {}
        deadline = time.monotonic() + 10
        while set(seen) != set(range(4, 11)) and time.monotonic() < deadline:
            for m in await fetch_upto(psub, 7, timeout=2):
                seen.setdefault(sseq(m), m)
                await m.ack_sync(timeout=5)
        # continues where it stopped: never 1..3 again; 4 is redelivered; 5..10 are new
        assert sorted(seen) == list(range(4, 11))
        assert seen[4].metadata.num_delivered >= 2
        assert all(seen[s].metadata.num_delivered == 1 for s in range(5, 11))
        await acked(js, "ORDERS", "resume", floor=10)
    finally:
        await close_quietly(nc)


async def test_stream_survives_restart(server):
    nc = await connect(server.url)
    try:
        js = nc.jetstream(timeout=5)
        await add_stream(js, "KEEP", ["keep.>"], max_msgs=100, description="survivor")
        await publish_n(js, "keep.a", 5)
        await js.publish("keep.h", b"hdr", headers={"H": "1"})
    finally:
        await close_quietly(nc)

    await asyncio.to_thread(server.restart)

    nc = await connect(server.url)
    try:
        js = nc.jetstream(timeout=5)
        si = await js.stream_info("KEEP")
        assert si.config.subjects == ["keep.>"] and si.config.max_msgs == 100
        assert si.config.description == "survivor" and si.config.storage == FILE
        assert (si.state.messages, si.state.first_seq, si.state.last_seq) == (6, 1, 6)
        psub = await js.pull_subscribe("keep.>", durable="reader", stream="KEEP")
        msgs = await fetch_upto(psub, 6)
        assert [m.data for m in msgs] == [b"m0", b"m1", b"m2", b"m3", b"m4", b"hdr"]
        assert msgs[5].headers.get("H") == "1"
        ack = await js.publish("keep.a", b"after")
        assert ack.seq == 7
    finally:
        await close_quietly(nc)


async def test_stream_survives_kill9(server):
    nc = await connect(server.url)
    try:
        js = nc.jetstream(timeout=5)
        await add_stream(js, "HARD", ["hard.>"])
        await publish_n(js, "hard.a", 5)
        # NOTE: nats-server 2.9.10's file store writes acknowledged messages to its
        # block file from a background flusher (milliseconds later, no fsync by default);
        # give it a moment before SIGKILL. (The page cache survives a process kill.)
        await asyncio.sleep(0.5)
    finally:
        await close_quietly(nc)

    def bounce():
        server.kill9()
        server.start()

    await asyncio.to_thread(bounce)

    nc = await connect(server.url)
    try:
        js = nc.jetstream(timeout=5)
        si = await js.stream_info("HARD")
        assert (si.state.messages, si.state.last_seq) == (5, 5)
        ack = await js.publish("hard.a", b"after")
        assert ack.seq == 6
    finally:
        await close_quietly(nc)


# --------------------------------------------------------------------------------------
# stream limits
# --------------------------------------------------------------------------------------


async def test_limit_max_msgs_discard_old(js):
    await add_stream(js, "LIM", ["lim.>"], max_msgs=5, discard=DiscardPolicy.OLD)
    acks = await publish_n(js, "lim.x", 8)
    assert [a.seq for a in acks] == list(range(1, 9))  # all accepted
    si = await js.stream_info("LIM")
    assert (si.state.messages, si.state.first_seq, si.state.last_seq) == (5, 4, 8)


async def test_limit_max_msgs_discard_new(js):
    await add_stream(js, "LIMN", ["limn.>"], max_msgs=3, discard=DiscardPolicy.NEW)
    await publish_n(js, "limn.x", 3)
    with pytest.raises(nats.js.errors.APIError) as ei:
        await js.publish("limn.x", b"rejected")
    # nats-server 2.9.10: code 503, err_code 10077, "maximum messages exceeded"
    assert ei.value.err_code == 10077
    assert "maximum messages" in (ei.value.description or "")
    si = await js.stream_info("LIMN")
    assert (si.state.messages, si.state.first_seq, si.state.last_seq) == (3, 1, 3)


async def test_limit_max_bytes(js):
    await add_stream(js, "LIMB", ["limb.>"], max_bytes=2000)
    for i in range(20):
        await js.publish("limb.x", b"x" * 200)
    si = await js.stream_info("LIMB")
    assert si.state.bytes <= 2000
    assert si.state.last_seq == 20
    assert 0 < si.state.messages < 10  # each message costs 200 bytes + overhead
    assert si.state.first_seq == 20 - si.state.messages + 1  # oldest dropped

    await add_stream(js, "LIMBN", ["limbn.>"], max_bytes=1000, discard=DiscardPolicy.NEW)
    stored = 0
    with pytest.raises(nats.js.errors.APIError) as ei:
        for i in range(20):
            await js.publish("limbn.x", b"y" * 200)
            stored += 1
    assert 0 < stored < 5
    # nats-server 2.9.10: code 503, err_code 10077, "maximum bytes exceeded"
    assert ei.value.err_code == 10077
    assert "maximum bytes" in (ei.value.description or "")
    si = await js.stream_info("LIMBN")
    assert si.state.messages == stored and si.state.bytes <= 1000


async def test_limit_max_age(js):
    await add_stream(js, "AGE", ["age.>"], max_age=1)
    await publish_n(js, "age.x", 3)
    si = await js.stream_info("AGE")
    assert si.config.max_age == 1.0
    assert si.config.duplicate_window <= 1.0  # server caps the dedupe window at max_age
    assert si.state.messages == 3

    async def expired():
        s = await js.stream_info("AGE")
        return s.state.messages == 0 and s
    si = await wait_for(expired, timeout=8, interval=0.2)
    assert si.state.last_seq == 3 and si.state.first_seq == 4


async def test_limit_max_msg_size(js):
    await add_stream(js, "SIZE", ["size.>"], max_msg_size=100)
    ack = await js.publish("size.x", b"a" * 100)
    assert ack.seq == 1
    with pytest.raises(nats.js.errors.APIError) as ei:
        await js.publish("size.x", b"a" * 101)
    # nats-server 2.9.10: code 400, err_code 10054, "message size exceeds maximum allowed"
    assert ei.value.err_code == 10054
    si = await js.stream_info("SIZE")
    assert si.state.messages == 1 and si.config.max_msg_size == 100
