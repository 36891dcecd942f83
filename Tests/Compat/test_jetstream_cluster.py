"""JetStream across a three-node Stork cluster: a stream created through one node is served through every node.

nats-py clients on different nodes: create on n1, info, publish and consume through n2 and n3, names and list on
every node, account info counts every node's streams, a second stream may not take the first one's name or
subjects through another node, and delete through n3 removes it everywhere. (The nats-server cluster of the
``cluster`` fixture runs without JetStream, so this is Stork's own test.)
"""

from __future__ import annotations

import nats
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig, StorageType

from conftest import COMPAT_SERVER, close_quietly, connect, spread_skip, wait_for

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
