#!/usr/bin/env python3
"""Time from kill -9 of the node that serves a stream to the next acknowledged publish.

Side by side, same load generator (nats-py), same run:

* Stork: three `stork serve` nodes whose streams live on PostgreSQL (placed as resources, taken over when their
  node dies); the killed node is the one serving the stream.
* nats-server: three nodes of a JetStream cluster (`-js`, routes), the stream R3 on file storage; the killed node is
  the stream's leader.

Each round connects a publisher to a node that survives, publishes continuously (`js.publish`, 0.5 s timeout, retried
at once), kills the serving node, and records the time from the kill to the first ack of a publish sent after it.
The killed node is restarted and the cluster settles before the next round.

    Benchmarks/takeover/takeover.py --stork .build/release/stork --postgres postgres://stork:stork@127.0.0.1:55432/stork_test

Prints one line per round and a JSON summary (p50 and max per server) with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import List

import nats
import nats.errors
import nats.js.errors
from nats.js.api import StorageType

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchkit import HOST, ServerProcess  # noqa: E402


class Node(ServerProcess):
    def __init__(self, name: str, workdir: str):
        super().__init__(workdir)
        self.name = name

class StorkNode(Node):
    def __init__(self, name: str, workdir: str, binary: str, postgres: str, peers: List["StorkNode"]):
        super().__init__(name, workdir)
        self.binary, self.postgres, self.peers = binary, postgres, peers

    def command(self) -> List[str]:
        config = os.path.join(self.workdir, "stork.yaml")
        seeds = ",".join(f"{HOST}:{p.cluster_port}" for p in self.peers)
        with open(config, "w") as f:
            f.write(f"cluster:\n  name: takeover-bench\nstreaming:\n  store: postgres\n  postgres: {json.dumps(self.postgres)}\n")
        return [
            self.binary, "serve", "--config", config, "--name", self.name,
            "--bind", f"{HOST}:{self.cluster_port}", "--http", f"{HOST}:{self.http_port}",
            "--nats", f"{HOST}:{self.nats_port}", "--seeds", seeds, "--data", os.path.join(self.workdir, "data"),
            "--log-level", "warning",
        ]

    def get(self, path: str):
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}{path}", timeout=2) as r:
            return json.loads(r.read())

    def ready(self, members: int) -> bool:
        try:
            doc = self.get("/v1/cluster")
            return doc.get("ready") is True and len(doc.get("view") or []) == members
        except OSError:
            return False

    def serves(self, resource: str) -> bool:
        try:
            return resource in [r["id"] for r in self.get("/v1/resources")["resources"]]
        except OSError:
            return False


class NatsNode(Node):
    def __init__(self, name: str, workdir: str, binary: str, peers: List["NatsNode"]):
        super().__init__(name, workdir)
        self.binary, self.peers = binary, peers

    def command(self) -> List[str]:
        config = os.path.join(self.workdir, "nats.conf")
        routes = ", ".join(f"nats://{HOST}:{p.cluster_port}" for p in self.peers)
        with open(config, "w") as f:
            f.write(
                f"server_name: {self.name}\nlisten: {HOST}:{self.nats_port}\nhttp: {HOST}:{self.http_port}\n"
                f"jetstream {{ store_dir: {json.dumps(os.path.join(self.workdir, 'js'))} }}\n"
                f"cluster {{ name: takeover, listen: {HOST}:{self.cluster_port}, routes: [{routes}] }}\n"
            )
        return [self.binary, "-c", config]


async def wait_until(what: str, timeout: float, condition) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        await asyncio.sleep(0.1)


async def publish_until(js, subject: str, killed_at: List[float], stop: asyncio.Event, result: List[float]) -> None:
    """Publishes without pause; once `killed_at` holds the kill time, the first ack of a publish sent after it ends
    the round (its delay goes to `result`)."""
    n = 0
    while not stop.is_set():
        sent = time.monotonic()
        n += 1
        try:
            await js.publish("bench.takeover", str(n).encode(), timeout=0.5)
        except Exception:  # noqa: BLE001 - no responders, no stream response, timeouts, reconnects: publish again
            await asyncio.sleep(0.01)
            continue
        if killed_at and sent > killed_at[0]:
            result.append(time.monotonic() - killed_at[0])
            stop.set()


async def round_trip(publisher_url: str, stream: str, kill) -> float:
    nc = await nats.connect(publisher_url, connect_timeout=5, allow_reconnect=True, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream(timeout=2)
        stop, killed_at, result = asyncio.Event(), [], []
        task = asyncio.create_task(publish_until(js, stream, killed_at, stop, result))
        await asyncio.sleep(1.0)  # publishing steadily
        killed_at.append(time.monotonic())
        await asyncio.to_thread(kill)
        await asyncio.wait_for(stop.wait(), 60)
        await task
        return result[0]
    finally:
        await nc.close()


async def bench_stork(binary: str, postgres: str, rounds: int, workdir: str) -> List[float]:
    nodes: List[StorkNode] = []
    for i in range(3):
        nodes.append(StorkNode(f"s{i + 1}", os.path.join(workdir, f"s{i + 1}"), binary, postgres, nodes))
    try:
        for n in nodes:
            n.start()
        await wait_until("stork cluster ready", 60, lambda: all(n.ready(3) for n in nodes))
        stream = f"TAKEOVER{uuid.uuid4().hex[:6].upper()}"
        resource = f"$js.stream.{stream}"
        nc = await nats.connect(nodes[0].url)
        js = nc.jetstream(timeout=10)
        # Streams of an earlier run that stopped half-way are still in PostgreSQL (placed again at start): gone.
        for info in await js.streams_info():
            await js.delete_stream(info.config.name)
        await js.add_stream(name=stream, subjects=["bench.takeover"])
        await nc.close()
        delays = []
        for r in range(rounds):
            owner = None

            def find_owner() -> bool:
                nonlocal owner
                owner = next((n for n in nodes if n.proc.poll() is None and n.serves(resource)), None)
                return owner is not None

            await wait_until("a node serves the stream", 60, find_owner)
            survivor = next(n for n in nodes if n is not owner)
            delay = await round_trip(survivor.url, stream, owner.kill9)
            delays.append(delay)
            print(f"stork round {r + 1}: killed {owner.name}, next ack after {delay * 1000:.0f} ms", flush=True)
            owner.start()
            await wait_until("stork cluster ready again", 60, lambda: all(n.ready(3) for n in nodes))
            await asyncio.sleep(2)
        nc = await nats.connect(nodes[0].url)
        await nc.jetstream(timeout=10).delete_stream(stream)
        await nc.close()
        return delays
    finally:
        for n in nodes:
            n.stop()


async def bench_nats(binary: str, rounds: int, workdir: str) -> List[float]:
    nodes: List[NatsNode] = []
    for i in range(3):
        nodes.append(NatsNode(f"n{i + 1}", os.path.join(workdir, f"n{i + 1}"), binary, nodes))
    try:
        for n in nodes:
            n.start()
        nc = None

        async def connected() -> bool:
            nonlocal nc
            try:
                nc = await nats.connect(nodes[0].url, connect_timeout=2, allow_reconnect=False)
                js = nc.jetstream(timeout=5)
                await js.add_stream(name="TAKEOVER", subjects=["bench.takeover"], num_replicas=3,
                                    storage=StorageType.FILE)
                return True
            except Exception:  # noqa: BLE001 - the cluster is still forming
                if nc is not None:
                    await nc.close()
                return False

        await wait_until("nats-server JetStream cluster ready", 60, connected)
        await nc.close()
        delays = []
        for r in range(rounds):
            leader = None

            async def find_leader() -> bool:
                nonlocal leader
                for n in nodes:
                    if n.proc.poll() is not None:
                        continue
                    try:
                        c = await nats.connect(n.url, connect_timeout=2, allow_reconnect=False)
                        info = await c.jetstream(timeout=2).stream_info("TAKEOVER")
                        await c.close()
                        name = info.cluster.leader if info.cluster else None
                        leader = next((x for x in nodes if x.name == name), None)
                        return leader is not None and all(x.proc.poll() is None for x in nodes) and \
                            len([p for p in (info.cluster.replicas or []) if p.current]) == 2
                    except Exception:  # noqa: BLE001
                        continue
                return False

            await wait_until("the stream has a leader and current replicas", 60, find_leader)
            survivor = next(n for n in nodes if n is not leader)
            delay = await round_trip(survivor.url, "TAKEOVER", leader.kill9)
            delays.append(delay)
            print(f"nats-server round {r + 1}: killed leader {leader.name}, next ack after {delay * 1000:.0f} ms", flush=True)
            leader.start()
            await asyncio.sleep(2)
        return delays
    finally:
        for n in nodes:
            n.stop()


def summary(delays: List[float]) -> dict:
    ms = sorted(d * 1000 for d in delays)
    return {"rounds": len(ms), "p50_ms": round(statistics.median(ms)), "max_ms": round(ms[-1]),
            "all_ms": [round(x) for x in ms]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stork", required=True, help="the stork binary (a release build)")
    parser.add_argument("--postgres", required=True, help="PostgreSQL URL for Stork's streams")
    parser.add_argument("--nats-server", default=shutil.which("nats-server") or "/usr/sbin/nats-server")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="stork-takeover-")
    try:
        load = os.getloadavg()
        stork = await bench_stork(args.stork, args.postgres, args.rounds, os.path.join(workdir, "stork"))
        peer = await bench_nats(args.nats_server, args.rounds, os.path.join(workdir, "nats"))
        print(json.dumps({
            "loadavg_before": [round(x, 2) for x in load],
            "stork_postgres_stream": summary(stork),
            "nats_server_r3_file_stream": summary(peer),
        }, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
