"""Stream and consumer options: each one a client can set is either enforced or refused by name.

The shared tests hold on nats-server 2.9.10 (the reference) and on Stork; the ones marked for Stork check its
refusals of what it does not implement (nats-server implements those options, so it accepts them).
"""

from __future__ import annotations

import asyncio
import json

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from conftest import COMPAT_SERVER, close_quietly, connect, spread_skip, wait_for

pytestmark = [
    pytest.mark.timeout(30),
    spread_skip("JetStream runs in the single-server mode"),
]

stork_only = pytest.mark.skipif(COMPAT_SERVER != "stork", reason="Stork's refusals of options it does not implement")


@pytest_asyncio.fixture
async def js(nc):
    return nc.jetstream(timeout=5)


async def api(nc, subject: str, body: dict) -> dict:
    reply = await nc.request(subject, json.dumps(body).encode(), timeout=5)
    return json.loads(reply.data)


# --------------------------------------------------------------------------------------
# enforced (both servers)
# --------------------------------------------------------------------------------------


async def test_max_consumers_is_enforced(js):
    await js.add_stream(name="MAXC", subjects=["maxc.>"], storage=StorageType.FILE, max_consumers=2)
    await js.add_consumer("MAXC", ConsumerConfig(durable_name="one"))
    await js.add_consumer("MAXC", ConsumerConfig(durable_name="two"))
    with pytest.raises(nats.js.errors.APIError) as ei:
        await js.add_consumer("MAXC", ConsumerConfig(durable_name="three"))
    # nats-server 2.9.10: code 400, err_code 10026, "maximum consumers limit reached"
    assert ei.value.err_code == 10026
    # Updating an existing consumer is not a new one.
    await js.add_consumer("MAXC", ConsumerConfig(durable_name="two", ack_wait=10))
    names = sorted(ci.name for ci in await js.consumers_info("MAXC"))
    assert names == ["one", "two"]


async def test_no_ack_stream_stores_without_answering(nc, js):
    await js.add_stream(name="NOACK", subjects=["noack.>"], storage=StorageType.FILE, no_ack=True)
    with pytest.raises(nats.errors.TimeoutError):
        await nc.request("noack.x", b"kept", timeout=0.5)

    async def stored():
        return (await js.stream_info("NOACK")).state.messages == 1

    await wait_for(stored, timeout=5)
    assert (await js.get_msg("NOACK", 1)).data == b"kept"


async def test_rollup_needs_allow_rollup_hdrs(js):
    await js.add_stream(name="NOROLL", subjects=["noroll.>"], storage=StorageType.FILE)
    with pytest.raises(nats.js.errors.APIError) as ei:
        await js.publish("noroll.a", b"x", headers={"Nats-Rollup": "sub"})
    assert "rollup" in (ei.value.description or "").lower()
    assert (await js.stream_info("NOROLL")).state.messages == 0


async def test_rollup_by_subject_and_all(js):
    await js.add_stream(name="ROLL", subjects=["roll.>"], storage=StorageType.FILE, allow_rollup_hdrs=True)
    for i in range(3):
        await js.publish("roll.a", f"a{i}".encode())
    for i in range(2):
        await js.publish("roll.b", f"b{i}".encode())
    ack = await js.publish("roll.a", b"a-rolled", headers={"Nats-Rollup": "sub"})
    info = await js.stream_info("ROLL")
    assert info.state.messages == 3, "the rollup replaced roll.a's three earlier messages"
    assert (await js.get_last_msg("ROLL", "roll.a")).data == b"a-rolled"
    assert (await js.get_last_msg("ROLL", "roll.b")).data == b"b1"
    assert ack.seq == 6

    await js.publish("roll.c", b"everything", headers={"Nats-Rollup": "all"})
    info = await js.stream_info("ROLL")
    assert info.state.messages == 1 and info.state.first_seq == 7 and info.state.last_seq == 7


async def test_headers_only_consumer(js):
    await js.add_stream(name="HDRS", subjects=["hdrs.>"], storage=StorageType.FILE)
    await js.publish("hdrs.x", b"twelve bytes", headers={"Kind": "demo"})
    psub = await js.pull_subscribe("hdrs.x", durable="heads", config=ConsumerConfig(headers_only=True))
    [msg] = await psub.fetch(1, timeout=5)
    assert msg.data == b""
    assert msg.headers["Kind"] == "demo"
    assert msg.headers["Nats-Msg-Size"] == "12"
    ci = await js.consumer_info("HDRS", "heads")
    assert ci.config.headers_only is True


async def test_flow_controlled_push_consumer_delivers_everything(nc, js):
    n = 3000
    await js.add_stream(name="FLOW", subjects=["flow.>"], storage=StorageType.FILE)
    for i in range(n):
        await nc.publish("flow.x", str(i).encode())
    await nc.flush()
    got = []
    sub = await js.subscribe("flow.x", flow_control=True, idle_heartbeat=1.0)
    try:
        while len(got) < n:
            msg = await sub.next_msg(timeout=5)
            got.append(int(msg.data))
            await msg.ack()
    finally:
        await sub.unsubscribe()
    assert got == list(range(n))


# --------------------------------------------------------------------------------------
# Stork: the flow-control protocol itself, and refusals
# --------------------------------------------------------------------------------------


@stork_only
async def test_flow_control_holds_deliveries_until_answered(nc, js):
    await js.add_stream(name="FCRAW", subjects=["fcraw.>"], storage=StorageType.FILE)
    for i in range(1500):
        await nc.publish("fcraw.x", str(i).encode())
    await nc.flush()
    data, requests = [], []

    async def collect(msg):
        status = (msg.headers or {}).get("Status")
        if status == "100" and "FlowControl" in (msg.headers.get("Description") or ""):
            requests.append(msg)
        elif status is not None:
            pass  # an idle heartbeat
        else:
            data.append(int(msg.data))

    sub = await nc.subscribe("fcin.raw", cb=collect)
    await js.add_consumer("FCRAW", ConsumerConfig(durable_name="fc", deliver_subject="fcin.raw", flow_control=True,
                                                  idle_heartbeat=5.0, ack_policy="none"))
    try:
        await wait_for(lambda: len(requests) == 1, timeout=10, msg=f"{len(data)} messages, no request")
        # The request follows the 1,024th delivery on the same subject, so all of them have arrived; the consumer's
        # own count says it delivered no more while the request waits.
        assert len(data) == 1024, "deliveries wait for the answer to the flow-control request"
        ci = await js.consumer_info("FCRAW", "fc")
        assert ci.delivered.consumer_seq == 1024 and ci.num_pending == 1500 - 1024, ci
        assert requests[0].reply.startswith("$JS.FC.FCRAW.fc.")
        await nc.publish(requests[0].reply, b"")
        await wait_for(lambda: len(data) == 1500, timeout=10, msg=f"{len(data)} after the answer")
        assert data == list(range(1500))
    finally:
        await sub.unsubscribe()


async def test_deliver_subject_inside_the_stream_is_refused(js):
    await js.add_stream(name="CYCLE", subjects=["cycle.>"], storage=StorageType.FILE)
    with pytest.raises(nats.js.errors.APIError) as ei:
        await js.add_consumer("CYCLE", ConsumerConfig(durable_name="loop", deliver_subject="cycle.out"))
    # nats-server 2.9.10: code 400, err_code 10081, "consumer deliver subject forms a cycle"
    assert ei.value.err_code == 10081


@stork_only
async def test_options_stork_does_not_implement_are_refused_by_name(nc, js):
    with pytest.raises(nats.js.errors.APIError) as ei:
        await js.add_stream(name="REP", subjects=["rep.>"], num_replicas=3)
    assert ei.value.err_code == 10052 and "num_replicas" in ei.value.description
    with pytest.raises(nats.js.errors.APIError) as ei:
        await js.add_stream(name="WQ", subjects=["wq.>"], retention=RetentionPolicy.WORK_QUEUE)
    assert "retention" in ei.value.description

    answer = await api(nc, "$JS.API.STREAM.CREATE.MIR", {"name": "MIR", "mirror": {"name": "ORIGIN"}})
    assert answer["error"]["err_code"] == 10052 and '"mirror"' in answer["error"]["description"], answer
    answer = await api(nc, "$JS.API.STREAM.INFO.MIR", {})
    assert answer["error"]["err_code"] == 10059, "a refused stream is not created"

    # Options at their defaults ask for nothing and are accepted.
    answer = await api(nc, "$JS.API.STREAM.CREATE.DEF", {
        "name": "DEF", "subjects": ["def.>"], "allow_direct": False, "mirror_direct": False,
        "placement": {"cluster": "", "tags": []}, "sources": [], "metadata": {}, "first_seq": 0,
    })
    assert answer.get("error") is None and answer["config"]["name"] == "DEF", answer

    await js.add_stream(name="CONS", subjects=["cons.>"], storage=StorageType.FILE)
    for config, option in (
        ({"durable_name": "orig", "replay_policy": "original"}, "replay_policy"),
        ({"durable_name": "rate", "rate_limit_bps": 1000}, '"rate_limit_bps"'),
        ({"durable_name": "mem", "mem_storage": True}, "mem_storage"),
        ({"durable_name": "reps", "num_replicas": 3}, "num_replicas"),
    ):
        answer = await api(nc, f"$JS.API.CONSUMER.DURABLE.CREATE.CONS.{config['durable_name']}",
                           {"stream_name": "CONS", "config": config})
        assert answer["error"]["err_code"] == 10012 and option in answer["error"]["description"], answer
    assert await js.consumers_info("CONS") == []
