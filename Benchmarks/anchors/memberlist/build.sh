#!/usr/bin/env bash
# Builds the memberlist anchor for `stork bench failover --memberlist-anchor PATH`, from Debian's packaged sources
# (no module download). Usage: Benchmarks/anchors/memberlist/build.sh [OUTPUT]   (default /tmp/memberlist-anchor)
set -euo pipefail
output="${1:-/tmp/memberlist-anchor}"
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/hashicorp/memberlist ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq golang-go golang-github-hashicorp-memberlist-dev >/dev/null
fi
cd "$(dirname "$0")"
GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$output" .
echo "built $output"
