"""Crash test: kill -9 the server while a client publishes with acks to a durable stream.

After every restart, every acknowledged message must be present exactly once, at the sequence its ack named, in
publication order, and the store must open without manual repair. Run against each of Stork's persistent stores
(file, SQLite, PostgreSQL when STORK_TEST_POSTGRES_URL is set); against nats-server only the file store exists.
"""

import asyncio
import json
import os
import uuid

import pytest

from conftest import COMPAT_SERVER, close_quietly, connect, spread_skip

pytestmark = spread_skip(
    "JetStream crash test (kill -9 of the one server holding a stream): in Stork a stream still lives "
    "on one node, so JetStream is not part of spread mode yet; it runs in the single-server mode"
)

ROUNDS = 3
WINDOW = 200  # publishes in flight at once (an "async batch")


def stores():
    if COMPAT_SERVER != "stork":
        return ["file"]
    kinds = ["file", "sqlite"]
    if os.environ.get("STORK_TEST_POSTGRES_URL"):
        kinds.append("postgres")
    return kinds


async def create_stream(nc, name, subjects, store):
    config = {"name": name, "subjects": subjects, "storage": "file"}
    if COMPAT_SERVER == "stork":
        config["stork_store"] = store
    reply = await nc.request(f"$JS.API.STREAM.CREATE.{name}", json.dumps(config).encode(), timeout=10)
    body = json.loads(reply.data)
    assert "error" not in body, body


async def publish_until_killed(server, subject, first_id, acked):
    """Publishes ids from first_id on with acks, WINDOW at a time, and kills the server mid-stream."""
    nc = await connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)
    js = nc.jetstream(timeout=2)
    next_id = first_id
    killed = False

    async def one(i):
        try:
            ack = await js.publish(subject, f"{i}".encode())
            acked[i] = ack.seq
        except Exception:
            pass  # in flight when the server died: may or may not be stored

    try:
        while not killed:
            batch = [one(i) for i in range(next_id, next_id + WINDOW)]
            next_id += WINDOW
            if next_id - first_id >= 3 * WINDOW:
                # Kill while this window is in flight.
                tasks = [asyncio.ensure_future(b) for b in batch]
                await asyncio.sleep(0.01)
                await asyncio.to_thread(server.kill9)
                killed = True
                await asyncio.gather(*tasks, return_exceptions=True)
            else:
                await asyncio.gather(*batch)
    finally:
        await close_quietly(nc)
    return next_id


async def read_all(nc, stream, subject_filter):
    """Every stored message as (seq, id), read with a fresh ephemeral pull consumer."""
    js = nc.jetstream(timeout=10)
    info = await js.stream_info(stream)
    total = info.state.messages
    psub = await js.pull_subscribe(subject_filter, stream=stream)
    seen = []
    while len(seen) < total:
        msgs = await psub.fetch(min(500, total - len(seen)), timeout=10)
        for m in msgs:
            seen.append((m.metadata.sequence.stream, int(m.data)))
            await m.ack()
    await psub.unsubscribe()
    return seen, info


@pytest.mark.timeout(120)
@pytest.mark.parametrize("store", stores())
async def test_kill9_while_publishing_keeps_every_acked_message(server_factory, store):
    streaming = None
    if COMPAT_SERVER == "stork" and store == "postgres":
        streaming = {"postgres": os.environ["STORK_TEST_POSTGRES_URL"]}
    server = server_factory(stork_streaming=streaming)
    stream = "CRASH" + uuid.uuid4().hex[:8].upper()
    subject = f"crash.{stream.lower()}"
    nc = await connect(server.url)
    try:
        await create_stream(nc, stream, [f"{subject}.>"], store)
    finally:
        await close_quietly(nc)

    acked = {}
    next_id = 0
    for round_ in range(ROUNDS):
        next_id = await publish_until_killed(server, f"{subject}.x", next_id, acked)
        await asyncio.to_thread(server.start)  # opens the store as it was left: no repair step

        nc = await connect(server.url)
        try:
            seen, info = await read_all(nc, stream, f"{subject}.>")
        finally:
            await close_quietly(nc)

        ids = [i for _, i in seen]
        seqs = [s for s, _ in seen]
        assert len(ids) == len(set(ids)), f"round {round_}: a message is stored twice"
        assert seqs == sorted(seqs)
        assert ids == sorted(ids), f"round {round_}: messages out of publication order"
        stored = dict((i, s) for s, i in seen)
        missing = [i for i in acked if i not in stored]
        assert not missing, f"round {round_}: {len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
        moved = [i for i, s in acked.items() if stored[i] != s]
        assert not moved, f"round {round_}: acknowledged at one sequence, stored at another: {moved[:5]}"
        assert info.state.last_seq >= max(acked.values())
    assert len(acked) >= ROUNDS * 2 * WINDOW
    # The stream goes (a PostgreSQL stream is kept in the database, and listed for every later start of Stork).
    nc = await connect(server.url)
    try:
        assert await nc.jetstream(timeout=10).delete_stream(stream)
    finally:
        await close_quietly(nc)
