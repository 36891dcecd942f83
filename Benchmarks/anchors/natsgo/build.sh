#!/usr/bin/env bash
# Builds the nats.go load generator for `stork bench nats --natsgo PATH`, from Debian's packaged sources (no module
# download). Usage: Benchmarks/anchors/natsgo/build.sh [OUTPUT]   (default /tmp/natsgo-load)
set -euo pipefail
output="${1:-/tmp/natsgo-load}"
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/nats-io/nats.go ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-github-nats-io-go-nats-dev >/dev/null
fi
cd "$(dirname "$0")"
GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$output" .
echo "built $output"
