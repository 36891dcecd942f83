"""JetStream across a three-node Stork cluster: a stream created through one node is served through every node.

nats-py clients on different nodes: create on n1, info, publish and consume through n2 and n3, names and list on
every node, account info counts every node's streams, a second stream may not take the first one's name or
subjects through another node, and delete through n3 removes it everywhere. (The nats-server cluster of the
``cluster`` fixture runs without JetStream, so this is Stork's own test.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid

import nats
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig, StorageType

from conftest import COMPAT_SERVER, Cluster, close_quietly, connect, spread_skip, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(COMPAT_SERVER != "stork", reason="the compat cluster of nats-server runs without JetStream"),
    spread_skip("starts a cluster of its own"),
]


async def eventually(js_call, timeout: float = 15.0):
    """Retries a JetStream call until it succeeds: a stream's API subjects take a moment to cross nodes."""
    last = None

    async def attempt():
        nonlocal last
        try:
            return await js_call()
        except (nats.js.errors.NotFoundError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
            last = error
            return None

    result = await wait_for(attempt, timeout=timeout, interval=0.1, msg=f"last error: {last!r}")
    return result


async def test_a_stream_is_served_through_every_node(cluster):
    n1, n2, n3 = cluster.nodes
    c1 = await connect(n1.url, name="c1")
    c2 = await connect(n2.url, name="c2")
    c3 = await connect(n3.url, name="c3")
    try:
        js1, js2, js3 = (c.jetstream(timeout=5) for c in (c1, c2, c3))
        info = await js1.add_stream(name="ORDERS", subjects=["orders.>"], storage=StorageType.FILE)
        assert info.config.name == "ORDERS"

        info = await eventually(lambda: js2.stream_info("ORDERS"))
        assert info.config.subjects == ["orders.>"]
        for i in range(10):
            ack = await js2.publish("orders.new", f"o{i}".encode())
            assert ack.stream == "ORDERS" and ack.seq == i + 1
        assert (await js3.stream_info("ORDERS")).state.messages == 10

        psub = await eventually(lambda: js3.pull_subscribe("orders.new", durable="shipper", stream="ORDERS"))
        got = []
        while len(got) < 10:
            for msg in await psub.fetch(10 - len(got), timeout=5):
                got.append(msg.data)
                await msg.ack_sync()
        assert got == [f"o{i}".encode() for i in range(10)]

        async def acked():
            ci = await js1.consumer_info("ORDERS", "shipper")
            return ci.ack_floor.stream_seq == 10 and ci.num_ack_pending == 0

        await wait_for(acked, timeout=10)
        assert [c.name for c in await js2.consumers_info("ORDERS")] == ["shipper"]
        assert (await js1.get_msg("ORDERS", 3)).data == b"o2"

        for js in (js1, js2, js3):
            names = [s.config.name for s in await js.streams_info()]
            assert names == ["ORDERS"], names
            account = await js.account_info()
            assert account.streams == 1 and account.consumers == 1

        # Through another node, the name and the subjects are taken.
        with pytest.raises(nats.js.errors.BadRequestError) as ei:
            await js3.add_stream(name="ORDERS", subjects=["other.>"])
        assert ei.value.err_code == 10058  # stream name already in use
        with pytest.raises(nats.js.errors.BadRequestError) as ei:
            await js2.add_stream(name="COPY", subjects=["orders.new"])
        assert ei.value.err_code == 10065  # subjects overlap with an existing stream

        assert await js3.delete_stream("ORDERS")

        async def gone_everywhere():
            for js in (js1, js2, js3):
                if [s.config.name for s in await js.streams_info()]:
                    return False
            return True

        await wait_for(gone_everywhere, timeout=15)
        with pytest.raises(nats.js.errors.NotFoundError):
            await js2.stream_info("ORDERS")
    finally:
        for c in (c1, c2, c3):
            await close_quietly(c)


def owner_of(nodes, resource_id: str):
    """The live node that runs `resource_id` (its /v1/resources lists it), or None."""
    for node in nodes:
        if node.proc is None or node.proc.poll() is not None:
            continue
        try:
            status, body = node.http_get("/v1/resources", timeout=2)
        except OSError:
            continue
        if status == 200 and resource_id in [r["id"] for r in json.loads(body)["resources"]]:
            return node
    return None


@pytest.mark.skipif(not os.environ.get("STORK_TEST_POSTGRES_URL"), reason="needs the PostgreSQL of scripts/test")
async def test_a_stream_on_postgres_moves_when_its_node_dies():
    """Streams on PostgreSQL are placed: kill -9 of the node serving one, and another node takes it over with every
    acknowledged message and the consumer's position."""
    cluster = Cluster(3)
    name = f"PG{uuid.uuid4().hex[:8].upper()}"
    clients = []
    try:
        for node in cluster.nodes:
            node.opts.stork_streaming = {"store": "postgres", "postgres": os.environ["STORK_TEST_POSTGRES_URL"]}
            node.write_config()
        await asyncio.to_thread(cluster.start)
        clients = [await connect(n.url, name=f"c{i}", max_reconnect_attempts=-1) for i, n in enumerate(cluster.nodes)]
        js = [c.jetstream(timeout=5) for c in clients]
        await js[0].add_stream(name=name, subjects=[f"{name.lower()}.>"])
        resource = f"$js.stream.{name}"
        owner = await wait_for(lambda: owner_of(cluster.nodes, resource), timeout=15)
        others = [i for i, n in enumerate(cluster.nodes) if n is not owner]
        publisher, reader = js[others[0]], js[others[1]]

        acked = []
        for i in range(20):
            ack = await eventually(lambda i=i: publisher.publish(f"{name.lower()}.x", f"m{i}".encode()))
            acked.append((ack.seq, f"m{i}".encode()))
        psub = await eventually(lambda: reader.pull_subscribe(f"{name.lower()}.x", durable="reader", stream=name))
        for msg in await psub.fetch(5, timeout=5):
            await msg.ack_sync()

        await asyncio.to_thread(cluster.kill9, owner)
        survivors = [n for n in cluster.nodes if n is not owner]
        new_owner = await wait_for(lambda: owner_of(survivors, resource), timeout=30, interval=0.2)
        assert new_owner is not owner

        # Every acknowledged message is there, at the sequence its ack named; the consumer goes on after the five.
        info = await eventually(lambda: publisher.stream_info(name), timeout=30)
        assert info.state.messages == 20 and info.state.last_seq == 20, info.state
        for seq, data in acked:
            assert (await publisher.get_msg(name, seq)).data == data
        ack = await eventually(lambda: publisher.publish(f"{name.lower()}.x", b"after"))
        assert ack.seq == 21
        got = []
        for _ in range(10):
            if len(got) >= 16:
                break
            try:
                for msg in await psub.fetch(16 - len(got), timeout=5):
                    got.append(msg.metadata.sequence.stream)
                    await msg.ack_sync()
            except nats.errors.TimeoutError:
                pass
        assert got == list(range(6, 22)), got

        assert await reader.delete_stream(name)
    finally:
        for c in clients:
            await close_quietly(c)
        cluster.cleanup()
        shutil.rmtree(cluster.workdir, ignore_errors=True)
