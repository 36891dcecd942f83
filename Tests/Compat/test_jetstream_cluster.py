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
import signal
import subprocess
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
        except (
            nats.js.errors.NotFoundError,
            nats.js.errors.ServiceUnavailableError,  # "stream offline" while a stream is taken over
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
        ) as error:
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
            for c, js in ((c1, js1), (c2, js2), (c3, js3)):
                if [s.config.name for s in await js.streams_info()]:
                    return False
                # NAMES lists streams the cluster records but nobody serves too: the record is gone as well.
                if json.loads((await c.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)).data)["streams"]:
                    return False
            return True

        await wait_for(gone_everywhere, timeout=15)
        with pytest.raises(nats.js.errors.NotFoundError):
            await js2.stream_info("ORDERS")
    finally:
        for c in (c1, c2, c3):
            await close_quietly(c)


async def offline_error(js, name: str):
    """The error `js.stream_info(name)` answers with (None when it answers with the stream, or not in time: the
    others still count a killed node's interest until they declare it dead)."""
    try:
        await js.stream_info(name)
        return None
    except nats.js.errors.APIError as error:
        return error
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None


async def test_a_file_stream_whose_node_is_down_answers_offline_everywhere(cluster):
    """A file stream stays on the node that made it. While that node is down, every other node answers requests for
    it with "stream offline" (503, 10118) and lists it as missing; the name stays taken; it comes back with its node,
    with its messages (a memory stream comes back empty)."""
    n1, n2, n3 = cluster.nodes
    c1 = await connect(n1.url, name="c1", max_reconnect_attempts=-1)
    c2 = await connect(n2.url, name="c2")
    c3 = await connect(n3.url, name="c3")
    try:
        js1, js2, js3 = (c.jetstream(timeout=2) for c in (c1, c2, c3))
        await js1.add_stream(name="KEPT", subjects=["kept.>"], storage=StorageType.FILE)
        await js1.add_stream(name="VOLATILE", subjects=["volatile.>"], storage=StorageType.MEMORY)
        for i in range(5):
            await js1.publish("kept.x", f"k{i}".encode())

        # Every node knows where the streams live (their resources are pinned to n1).
        async def recorded():
            status, body = await asyncio.to_thread(n2.http_get, "/v1/resources?scope=cluster")
            owners = {r["id"]: r.get("owner") for r in json.loads(body)["resources"]}
            return owners.get("$js.stream.KEPT") == "n1" and owners.get("$js.stream.VOLATILE") == "n1"

        await wait_for(recorded, timeout=15)
        await close_quietly(c1)
        await asyncio.to_thread(cluster.kill9, n1)

        async def offline_everywhere():
            for js in (js2, js3):
                error = await offline_error(js, "KEPT")
                if error is None or error.err_code != 10118:
                    return False
            return True

        await wait_for(offline_everywhere, timeout=30, interval=0.3)
        error = await offline_error(js3, "KEPT")
        assert error.code == 503 and "stream offline" in error.description and "n1" in error.description, error
        # Listed by name, as missing; the name and the subjects stay taken.
        names = await js2.streams_info()
        assert [s.config.name for s in names] == []
        reply = await c2.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)
        assert sorted(json.loads(reply.data)["streams"]) == ["KEPT", "VOLATILE"]
        reply = await c3.request("$JS.API.STREAM.LIST", b"{}", timeout=5)
        assert sorted(json.loads(reply.data)["missing"]) == ["KEPT", "VOLATILE"]
        with pytest.raises(nats.js.errors.APIError) as ei:
            await js2.add_stream(name="KEPT", subjects=["elsewhere.>"])
        assert ei.value.err_code == 10118
        with pytest.raises(nats.js.errors.BadRequestError) as ei:
            await js2.add_stream(name="OTHER", subjects=["kept.y"])
        assert ei.value.err_code == 10065  # subjects overlap with the offline stream's

        # Deleting a stream whose node is away forgets it in the cluster.
        assert await js2.delete_stream("VOLATILE")
        error = await offline_error(js3, "VOLATILE")
        assert error is not None and error.err_code == 10059, error

        # Back with its node: the file stream with its messages; the memory stream (still in n1's directory) is
        # recorded again, empty.
        await asyncio.to_thread(cluster.restart, n1)
        info = await eventually(lambda: js2.stream_info("KEPT"), timeout=30)
        assert info.state.messages == 5
        info = await eventually(lambda: js3.stream_info("VOLATILE"), timeout=30)
        assert info.state.messages == 0
        assert await js3.delete_stream("KEPT")

        async def forgotten():
            error = await offline_error(js2, "KEPT")
            return error is not None and error.err_code == 10059

        await wait_for(forgotten, timeout=15)
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

        # A new configuration (through a node that does not serve it) is placed with the stream: it reopens with
        # its messages and consumer.
        from nats.js.api import StreamConfig
        updated = await publisher.update_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"], max_msgs=1000))
        assert updated.config.max_msgs == 1000
        info = await eventually(lambda: reader.stream_info(name), timeout=30)
        assert info.config.max_msgs == 1000 and info.state.messages == 21, info
        assert (await reader.consumer_info(name, "reader")).ack_floor.stream_seq == 21

        assert await reader.delete_stream(name)
    finally:
        for c in clients:
            await close_quietly(c)
        cluster.cleanup()
        shutil.rmtree(cluster.workdir, ignore_errors=True)


@pytest.mark.timeout(240)
@pytest.mark.skipif(not os.environ.get("STORK_TEST_POSTGRES_URL"), reason="needs the PostgreSQL of scripts/test")
async def test_a_postgres_stream_through_kills_and_a_pause():
    """Publishers with acks on two nodes and a durable pull consumer, while the node serving the stream is killed
    three times (and restarted) and paused once past its failure detection: every acknowledged message is stored
    once at the sequence its ack named, in order; the consumer gets every message at least once and none again
    after its ack was confirmed; every takeover raised the stream's fence in the database."""
    url = os.environ["STORK_TEST_POSTGRES_URL"]
    cluster = Cluster(3)
    name = f"CHAOS{uuid.uuid4().hex[:8].upper()}"
    subject = f"{name.lower()}.x"
    resource = f"$js.stream.{name}"
    clients = []
    stop = asyncio.Event()
    acked = {}  # seq -> payload
    problems = []
    try:
        for node in cluster.nodes:
            node.opts.stork_streaming = {"store": "postgres", "postgres": url}
            node.write_config()
        await asyncio.to_thread(cluster.start)
        urls = [n.url for n in cluster.nodes]

        async def client(first: int):
            order = urls[first:] + urls[:first]
            c = await nats.connect(servers=order, name=f"chaos{first}", max_reconnect_attempts=-1,
                                   reconnect_time_wait=0.2, dont_randomize=True)
            clients.append(c)
            return c

        admin = await client(0)
        await admin.jetstream(timeout=10).add_stream(name=name, subjects=[f"{name.lower()}.>"])

        async def publish(index: int):
            js = (await client(index)).jetstream(timeout=2)
            n = 0
            while not stop.is_set():
                data = f"p{index}-{n}".encode()
                try:
                    ack = await js.publish(subject, data, timeout=1)
                except Exception:  # noqa: BLE001 - the stream is moving: publish it again
                    await asyncio.sleep(0.05)
                    continue
                if ack.seq in acked and acked[ack.seq] != data:
                    problems.append(f"sequence {ack.seq} acked for two messages")
                acked[ack.seq] = data
                n += 1
                await asyncio.sleep(0.01)

        publishers = [asyncio.create_task(publish(1)), asyncio.create_task(publish(2))]

        async def owner():
            return await wait_for(lambda: owner_of(cluster.nodes, resource), timeout=60, interval=0.1)

        for round_ in range(3):
            await asyncio.sleep(1.5)
            victim = await owner()
            await asyncio.to_thread(cluster.kill9, victim)
            survivors = [n for n in cluster.nodes if n is not victim]
            await wait_for(lambda: owner_of(survivors, resource), timeout=60, interval=0.1)
            await asyncio.to_thread(cluster.restart, victim)
        # A pause past failure detection: the others take the stream over; the paused node wakes up fenced.
        await asyncio.sleep(1.5)
        victim = await owner()
        victim.proc.send_signal(signal.SIGSTOP)
        try:
            survivors = [n for n in cluster.nodes if n is not victim]
            await wait_for(lambda: owner_of(survivors, resource), timeout=60, interval=0.1)
            await asyncio.sleep(1.0)
        finally:
            victim.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(cluster.wait_ready, 60)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*publishers)
        assert not problems, problems[:5]
        assert len(acked) > 50, f"only {len(acked)} publishes were acknowledged"

        # Every acknowledged message, once, at its sequence, in publication order per publisher.
        js = admin.jetstream(timeout=10)
        info = await eventually(lambda: js.stream_info(name), timeout=30)
        for seq, data in sorted(acked.items()):
            assert (await js.get_msg(name, seq)).data == data, f"sequence {seq}"
        for index in (1, 2):
            mine = [int(d.decode().split("-")[1]) for _, d in sorted(acked.items()) if d.startswith(f"p{index}-".encode())]
            assert mine == sorted(mine), f"publisher {index}: out of order"
        assert info.state.last_seq >= max(acked)

        # The consumer: every message at least once, none again after its ack was confirmed.
        psub = await eventually(lambda: js.pull_subscribe(subject, durable="chaos", stream=name))
        confirmed, delivered = set(), set()
        for _ in range(60):
            if acked.keys() <= confirmed:
                break
            try:
                msgs = await psub.fetch(200, timeout=2)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                assert seq not in confirmed, f"sequence {seq} delivered again after its ack was confirmed"
                delivered.add(seq)
                await msg.ack_sync()
                confirmed.add(seq)
        assert acked.keys() <= confirmed, f"{len(acked.keys() - confirmed)} acknowledged messages never delivered"

        # Every kill was followed by an opening (by a survivor, or by the restarted node when the stream went back to
        # it), each raising the fence in the database: at least 1 + 3.
        fence = subprocess.run(
            ["psql", url, "-tAc", f"SELECT fence FROM stork_streams WHERE name = '{name}'"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        assert int(fence) >= 4, f"fence {fence}"
        assert await js.delete_stream(name)
    finally:
        stop.set()
        for c in clients:
            await close_quietly(c)
        for node in cluster.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
        cluster.cleanup()
        shutil.rmtree(cluster.workdir, ignore_errors=True)
