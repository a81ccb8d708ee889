#!/usr/bin/env bash
# All-to-all meetings through room signaling: N participants (tessera-load --meeting N), each
# publishing synthetic 500 kbit/s 15 fps video + Opus-sized audio on its `pub` connection and
# subscribing to the N−1 others on its server-offered `sub` connection, so the server forwards
# N·(N−1) streams. Loopback, a release server on free ports; one markdown row per N: forwarded
# packets per second, server CPU, packets per server core, worst loss.
#
#   benches/meeting_load.sh [N ...]        (default: 2 4 8 12 16 20)
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(2 4 8 12 16 20)
cargo build --release --locked --bin tessera-load >&2
source benches/lib.sh
echo "| participants | streams forwarded | forwarded pkt/s | server CPU (cores) | pkt/s per server core | loss % (max) | kbit/s per participant (min) | load tool CPU (cores) |"
echo "|---|---|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
  j=$(target/release/tessera-load --server "http://$http" --api-key "$key" --room "meet$n" --meeting "$n" --video-kbps 500 --fps 15 --duration 15 --server-pid "$server" --json)
  python3 - "$n" "$j" <<'PY'
import json, sys
n, j = int(sys.argv[1]), json.loads(sys.argv[2])
f = lambda x, d=0: "-" if x is None else f"{x:,.{d}f}"
print(f"| {n} | {n * (n - 1)} | {f(j['forwarded_pps'])} | {f(j['server_cpu_cores'], 3)} | {f(j['server_pps_per_core'])} | {f(j['loss_pct']['max'], 2)} | {f(j['kbps']['min'])} | {f(j['load_tool_cpu_cores'], 3)} |")
PY
  sleep 20 # the previous room's sessions end (the signaling sockets time out) and it is dismissed
done
