#!/usr/bin/env bash
# One build, one media worker against one per core, side by side on the SFU fan-out: R rooms of
# one publisher each (synthetic 720p-sized H.264 at 1.5 Mbit/s + Opus), N WHEP subscribers
# spread over them, on loopback; interleaved W1, W2, W1, W2 for each N.
#
#   benches/sfu_workers.sh [BIN] [ROOMS] [N ...]     (defaults: target/release/tessera, 8, 300 600)
#   SPREAD=0.3 benches/sfu_workers.sh …              (spread_viewers_above; default the server's)
#
# Nothing is pinned: the server's workers and the load tool share this machine's cores, so on a
# 2-core machine the load tool's own CPU (in the last column) caps what either run can show.
# Rooms are placed on the least loaded worker, a busy room's viewers spread; the per-worker
# busy ratios during each run (the highest of GET /v1/server's samples every 2 s) show the spread. One markdown row per run.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/tessera}
rooms=${2:-8}
shift $(( $# > 2 ? 2 : $# ))
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(300 600)
./scripts/retry.sh cargo build --release --locked --bin tessera-load >&2

run() { # workers n
  local workers=$1 n=$2 dir
  dir=$(mktemp -d)
  local http=127.0.0.1:$((20000 + RANDOM % 10000)) udp=127.0.0.1:$((30000 + RANDOM % 10000))
  local config=()
  if [ -n "${SPREAD:-}" ]; then
    echo "spread_viewers_above = $SPREAD" >"$dir/tessera.toml"
    config=(--config "$dir/tessera.toml")
  fi
  RUST_LOG=warn "$bin" serve "${config[@]}" --data-dir "$dir" --http-addr "$http" --rtc-udp-addr "$udp" --rtmp-addr 127.0.0.1:0 --media-workers "$workers" >"$dir/out" 2>"$dir/err" &
  local pid=$!
  for _ in $(seq 50); do [ -f "$dir/admin.key" ] && grep -q "HTTP API" "$dir/out" && break; sleep 0.2; done
  local key j busy
  key=$(cat "$dir/admin.key")
  # The workers' busy ratios while the load runs: sampled every 2 s, the highest kept.
  ( while kill -0 "$pid" 2>/dev/null; do
      curl -s -H "Authorization: Bearer $key" "http://$http/v1/server" >>"$dir/server.jsonl" 2>/dev/null && echo >>"$dir/server.jsonl"
      sleep 2
    done ) &
  local sampler=$!
  j=$(target/release/tessera-load --server "http://$http" --api-key "$key" --room "w$n" --rooms "$rooms" --publishers "$rooms" \
    --subscribers "$n" --connect-parallel "${PARALLEL:-10}" --duration 15 --server-pid "$pid" --json) || j='{}'
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  busy=$(python3 -c '
import json, sys
rows = [json.loads(l).get("media_workers", []) for l in open(sys.argv[1]) if l.strip()]
print(" / ".join(f"{max(c):.2f}" for c in zip(*rows)) if rows else "-")' "$dir/server.jsonl" 2>/dev/null || echo -)
  rm -rf "$dir"
  python3 benches/sfu_row.py "$workers" "$n" "$j" "$busy"
}

echo "| workers | subscribers | delivered pkt/s | server CPU (cores) | pkt/s per core | loss % (max) | latency p50 / p99 ms | at the socket p50 / p99 ms | worker busy | load tool CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
  for round in 1 2; do
    run 1 "$n"
    run 2 "$n"
  done
done
