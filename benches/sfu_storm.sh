#!/usr/bin/env bash
# A connect storm past capacity: N WHEP viewers of one publisher (synthetic 720p-sized H.264 at
# 1.5 Mbit/s + Opus) negotiate PARALLEL at a time against a fresh release server on loopback,
# both cores; prints tessera-load's figures (admitted/refused, delivered pkt/s, loss, latency,
# seconds until every admitted viewer received media).
#
#   benches/sfu_storm.sh [BIN] [N] [PARALLEL]      (defaults: target/release/tessera 700 50)
#   WORKERS=1 benches/sfu_storm.sh …               (--media-workers; default one per core)
#   LOAD=/path/to/tessera-load benches/sfu_storm.sh …   (another build of the load tool)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/tessera}; n=${2:-700}; par=${3:-50}
./scripts/retry.sh cargo build --release --locked --bin tessera-load >&2
[ "$bin" = target/release/tessera ] && ./scripts/retry.sh cargo build --release --locked --bin tessera >&2
dir=$(mktemp -d)
http=127.0.0.1:$((20000 + RANDOM % 10000)) udp=127.0.0.1:$((30000 + RANDOM % 10000))
workers=(); [ -n "${WORKERS:-}" ] && workers=(--media-workers "$WORKERS")
RUST_LOG=warn "$bin" serve "${workers[@]}" --data-dir "$dir" --http-addr "$http" --rtc-udp-addr "$udp" --rtmp-addr 127.0.0.1:0 >"$dir/out" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do [ -f "$dir/admin.key" ] && grep -q "HTTP API" "$dir/out" && break; sleep 0.2; done
"${LOAD:-target/release/tessera-load}" --server "http://$http" --api-key "$(cat "$dir/admin.key")" --room storm --subscribers "$n" \
  --connect-parallel "$par" --duration 10 --server-pid "$pid" --json 2>/dev/null |
  python3 -c 'import json, sys; j = json.load(sys.stdin); print(json.dumps({k: j.get(k) for k in ["subscribers", "refused", "forwarded_pps", "server_cpu_cores", "connect_s", "loss_pct", "latency_ms"]}))'
