#!/usr/bin/env bash
# Media quality on emulated networks (issue 17): each scenario of tests/network/main.rs
# (capped-600, capped-700, rate-step, uplink-step, clean, loss-5, burst-10, meeting-1200, outage,
# publisher-outage) with Chromium publishers (three
# simulcast layers) and a Chromium viewer behind linkem, through Tessera and then as a direct
# peer-to-peer call of the same two browsers under the same shaping (the anchor). Prints per
# run the viewer's picture height each second, frames, freezes, loss, concealed audio, RTT and
# the link's counters; the raw getStats samples go to $NET_DUMP (default target/net-quality).
#
#   benches/net_quality.sh                      (every scenario, SFU then direct)
#   NET_SCENARIO=rate-step,loss-5 benches/net_quality.sh
#
# Needs what `make test` sets up (scripts/setup.sh --test: Chromium, the Python venv) and root
# (network namespaces). Debug builds: the browsers, not the server, take the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export NET_DUMP=${NET_DUMP:-$PWD/target/net-quality}
mkdir -p "$NET_DUMP"
./scripts/retry.sh cargo build --locked --bin tessera --bin linkem >&2
cargo test --locked --test network -- --ignored --nocapture bench_scenarios_side_by_side_with_a_direct_call 2>&1 |
  grep -E '^(capped-600|capped-700|rate-step|uplink-step|clean|loss-5|burst-10|meeting-1200|outage|publisher-outage) ' || { echo "net_quality: no results" >&2; exit 1; }
