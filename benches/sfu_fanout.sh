#!/usr/bin/env bash
# SFU fan-out benchmark: 1 publisher (synthetic 720p-sized H.264 at 1.5 Mbit/s + Opus) to N
# WHEP subscribers on loopback, N growing to saturation. Starts its own release server on free
# ports with a temporary data dir, runs tessera-load for each N, prints one markdown row per N.
#
#   benches/sfu_fanout.sh [N ...]        (default: 10 50 100 200 300 500 700)
#   BIN=/tmp/tessera-before benches/sfu_fanout.sh 100 300   (another server binary, side by side)
set -euo pipefail
bin=${BIN:+$(realpath "$BIN")}
cd "$(dirname "$0")/.."
bin=${bin:-$PWD/target/release/tessera}
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(10 50 100 200 300 500 700)
cargo build --release --locked --bin tessera-load >&2
[ -n "${BIN:-}" ] || cargo build --release --locked --bin tessera >&2
dir=$(mktemp -d)
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
http=127.0.0.1:$((20000 + RANDOM % 10000))
udp=127.0.0.1:$((30000 + RANDOM % 10000))
RUST_LOG=warn "$bin" serve --data-dir "$dir" --http-addr "$http" --rtc-udp-addr "$udp" >"$dir/out" 2>"$dir/err" &
server=$!
for _ in $(seq 50); do [ -f "$dir/admin.key" ] && grep -q "HTTP API" "$dir/out" && break; sleep 0.2; done
key=$(cat "$dir/admin.key")
echo "| subscribers | forwarded pkt/s | server CPU (cores) | pkt/s per server core | loss % (max) | kbit/s per sub (min) | latency p50 / p99 ms | load tool CPU (cores) |"
echo "|---|---|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
  j=$(target/release/tessera-load --server "http://$http" --api-key "$key" --room "bench$n" --subscribers "$n" --duration 15 --server-pid "$server" --json)
  python3 - "$n" "$j" <<'PY'
import json, sys
n, j = sys.argv[1], json.loads(sys.argv[2])
f = lambda x, d=0: "-" if x is None else f"{x:,.{d}f}"
print(f"| {n} | {f(j['forwarded_pps'])} | {f(j['server_cpu_cores'], 3)} | {f(j['server_pps_per_core'])} | {f(j['loss_pct']['max'], 2)} | {f(j['kbps']['min'])} | {f(j['latency_ms']['p50'], 1)} / {f(j['latency_ms']['p99'], 1)} | {f(j['load_tool_cpu_cores'], 3)} |")
PY
  sleep 12 # the previous room's sessions end and the room is dismissed
done
