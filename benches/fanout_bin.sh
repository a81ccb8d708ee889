#!/usr/bin/env bash
# The SFU fan-out rows of benches/sfu_fanout.sh for a given server binary (a before/after pair
# side by side): benches/fanout_bin.sh BIN N...  (needs target/release/tessera-load)
set -euo pipefail
bin=$1; shift
dir=$(mktemp -d)
http=127.0.0.1:$((20000 + RANDOM % 10000))
udp=127.0.0.1:$((30000 + RANDOM % 10000))
RUST_LOG=warn $bin serve --data-dir "$dir" --http-addr "$http" --rtc-udp-addr "$udp" >"$dir/out" 2>"$dir/err" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do [ -f "$dir/admin.key" ] && grep -q "HTTP API" "$dir/out" && break; sleep 0.2; done
key=$(cat "$dir/admin.key")
for n in "$@"; do
  j=$(target/release/tessera-load --server "http://$http" --api-key "$key" --room "bench$n" --subscribers "$n" --duration 15 --server-pid "$server" --json)
  python3 - "$n" "$j" "$bin" <<'PY'
import json, sys
n, j = sys.argv[1], json.loads(sys.argv[2])
f = lambda x, d=0: "-" if x is None else f"{x:,.{d}f}"
print(f"| {sys.argv[3]} | {n} | {f(j['forwarded_pps'])} | {f(j['server_cpu_cores'], 3)} | {f(j['server_pps_per_core'])} | {f(j['loss_pct']['max'], 2)} | {f(j['kbps']['min'])} | {f(j['latency_ms']['p50'], 1)} / {f(j['latency_ms']['p99'], 1)} |")
PY
  sleep 12
done
