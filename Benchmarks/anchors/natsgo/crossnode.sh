#!/usr/bin/env bash
# Compares stork binaries across nodes with the nats.go load generator: for each binary in turn, starts three
# `stork serve` nodes on loopback (cluster 41001-41003, NATS 42001-42003, admin 43001-43003), runs N messages of SIZE
# bytes from a publisher on n1 to a subscriber on n2 three times, then 10,000 request/reply round trips, and stops them.
# Usage: crossnode.sh N SIZE LOADGEN BINARY...   (LOADGEN: built by build.sh)
set -euo pipefail
N=$1; SIZE=$2; LOAD=$3; shift 3
work=$(mktemp -d)
trap 'for p in "$work"/pid*; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done; rm -rf "$work"' EXIT
for bin in "$@"; do
    for i in 1 2 3; do
        "$bin" serve --name "n$i" --bind "127.0.0.1:4100$i" --http "127.0.0.1:4300$i" --nats "127.0.0.1:4200$i" \
            --seeds 127.0.0.1:41001,127.0.0.1:41002,127.0.0.1:41003 --data "$work/d$i" --log-level warning \
            >"$work/n$i.log" 2>&1 &
        echo $! >"$work/pid$i"
    done
    for i in 1 2 3; do
        for _ in $(seq 1 100); do
            curl -s "127.0.0.1:4300$i/v1/cluster" 2>/dev/null | grep -q '"ready":true' && break
            sleep 0.2
        done
    done
    for _ in 1 2 3; do
        echo "$bin pubsub $("$LOAD" -mode pubsub -pub nats://127.0.0.1:42001 -sub nats://127.0.0.1:42002 -n "$N" -size "$SIZE")"
    done
    echo "$bin reqrep $("$LOAD" -mode reqrep -pub nats://127.0.0.1:42001 -sub nats://127.0.0.1:42002 -n 10000)"
    for i in 1 2 3; do kill "$(cat "$work/pid$i")" 2>/dev/null || true; rm -f "$work/pid$i"; done
    sleep 2
done
