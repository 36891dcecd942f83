"""Stork only: resource lifecycle events reach NATS clients on stork.resources.>."""

import asyncio
import json
import urllib.request

import pytest

from conftest import COMPAT_SERVER, close_quietly, connect, spread_skip, wait_for

pytestmark = [
    pytest.mark.skipif(COMPAT_SERVER != "stork", reason="Stork's own subjects"),
    spread_skip(
        "Stork's resource events of one server (its /v1/resources API, its node name 'compat' in the "
        "subject), not message delivery between clients"
    ),
]


def post_json(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def delete(url):
    request = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


async def test_resource_lifecycle_events_are_published(server):
    nc = await connect(server.url)
    events = []

    async def on_event(msg):
        events.append((msg.subject, json.loads(msg.data)))

    try:
        await nc.subscribe("stork.resources.>", cb=on_event)
        await nc.flush()
        status, body = await asyncio.to_thread(post_json, server.monitor_url + "/v1/resources", {"id": "acct-42"})
        assert status == 200 and body["outcome"] == "handled", body
        await wait_for(
            lambda: any(e[1].get("id") == "acct-42" and e[1].get("event") == "handled" for e in events),
            timeout=5,
            msg=f"handled event, got {events}",
        )
        subject, document = next(e for e in events if e[1].get("event") == "handled")
        assert subject == "stork.resources.compat.handled"
        assert document["node"] == "compat" and document["type"] == "resource"

        status = await asyncio.to_thread(delete, server.monitor_url + "/v1/resources/acct-42")
        assert status == 200
        await wait_for(
            lambda: any(e[1].get("id") == "acct-42" and e[1].get("event") == "terminated" for e in events),
            timeout=5,
            msg=f"terminated event, got {events}",
        )
    finally:
        await close_quietly(nc)
