#!/usr/bin/env bash
# Custom messages in a meeting (PRODUCT.md §8): 16 participants over room signaling
# (tessera-load --meeting 16, light media: 100 kbit/s 5 fps video each), each sending 30
# custom messages of 100 bytes a second over its socket to the room — 480 in, 7,200 delivered
# a second — against the same meeting without messages, interleaved, one release server on
# loopback. One markdown row per run: server CPU, messages delivered of those due, latency
# sender → receiver (p50/p99).
#
#   benches/custom_messages.sh [ROUNDS]        (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
cargo build --release --locked --bin tessera-load >&2
source benches/lib.sh
echo "| messages/s per participant | server CPU (cores) | delivered / due | latency p50 / p99 (ms) | forwarded media pkt/s |"
echo "|---|---|---|---|---|"
i=0
for r in $(seq "$rounds"); do
  for rate in 0 30; do
    i=$((i + 1))
    j=$(target/release/tessera-load --server "http://$http" --api-key "$key" --room "chat$i" --meeting 16 --video-kbps 100 --fps 5 --duration 15 --custom-per-s "$rate" --server-pid "$server" --json)
    python3 - "$rate" "$j" <<'PY'
import json, sys
rate, j = int(sys.argv[1]), json.loads(sys.argv[2])
c = j["custom"]
due = c["sent"] * 15
f = lambda x, d=1: "-" if x is None else f"{x:,.{d}f}"
lat = c["latency_ms"]
print(f"| {rate} | {f(j['server_cpu_cores'], 3)} | {c['received']:,} / {due:,} | {f(lat['p50'])} / {f(lat['p99'])} | {f(j['forwarded_pps'], 0)} |")
PY
    sleep 20 # the previous room's sockets time out and it is dismissed
  done
done
