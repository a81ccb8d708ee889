#!/usr/bin/env bash
# RTMP ingest side by side with SRS (issue 14): P RTMP publishers (tessera-load's: FLV video
# tags shaped like 1.5 Mbit/s H.264 at 30 fps and a real AAC-LC 48 kHz stereo tone), one WHEP
# viewer each, so both servers parse FLV, packetize RTP, cache the GOP and transcode AAC→Opus.
# Each server pinned to core 1, the load tool to core 0, in a loopback-only network namespace;
# interleaved: Tessera at its default Opus settings (complexity 10, 64 kbit/s), at SRS's
# complexity (1: SRS opens its Opus encoder with compression_level 1), at SRS's complexity and
# bitrate (1, 48 kbit/s: SRS's `opus_bitrate` default), SRS. Two rounds per P.
#
#   benches/rtmp_vs_srs.sh SRS_SRC [P ...]     (default P: 10)
#
# SRS_SRC as in benches/sfu_vs_srs.sh (built there if missing). The figure that matters is the
# server's CPU per publisher. TESSERA_BIN runs another Tessera build (an A/B); SERVERS picks
# the rows of a round (default: "tessera 10 64,tessera 1 64,tessera 1 48,srs 1 48").
set -euo pipefail
cd "$(dirname "$0")/.."
srs_src=${1:?usage: benches/rtmp_vs_srs.sh SRS_SRC [P ...]}
shift
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(10)
trunk="$(cd "$srs_src" && pwd)/trunk"
[ -x "$trunk/objs/srs" ] || { echo "build SRS first: benches/sfu_vs_srs.sh $srs_src 1" >&2; exit 1; }
./scripts/retry.sh cargo build --release --locked --bin tessera --bin tessera-load >&2

ns=tessera-rtmp-bench
. benches/srs_lib.sh
srs_conf on

run_tessera() { # p complexity kbps
  local p=$1 data="$dir/tessera-data"
  rm -rf "$data"
  printf 'ingest_opus_complexity = %s\ningest_opus_kbps = %s\n' "$2" "$3" >"$dir/tessera.toml"
  inns taskset -c 1 env RUST_LOG=warn "${TESSERA_BIN:-target/release/tessera}" serve --config "$dir/tessera.toml" --data-dir "$data" --http-addr 127.0.0.1:18080 \
    --rtc-udp-addr 127.0.0.1:18443 --rtmp-addr 127.0.0.1:11935 >"$dir/t.out" 2>"$dir/t.err" &
  local pid=$!
  for _ in $(seq 50); do [ -f "$data/admin.key" ] && grep -q "HTTP API" "$dir/t.out" && break; sleep 0.2; done
  local server_pid; server_pid=$(pgrep -f "tessera serve --config $dir/tessera.toml" | head -1)
  inns taskset -c 0 target/release/tessera-load --server http://127.0.0.1:18080 --api-key "$(cat "$data/admin.key")" --room "r$p" \
    --rtmp 127.0.0.1:11935 --publishers "$p" --subscribers "$p" --duration 15 --server-pid "$server_pid" --json
  stop_pid "$server_pid"; wait "$pid" 2>/dev/null || true
}

run_srs() { # p
  local p=$1
  (cd "$trunk" && inns taskset -c 1 ./objs/srs -c "$dir/srs.conf" >"$dir/s.out" 2>&1) &
  sleep 2
  local server_pid; server_pid=$(pgrep -f "objs/srs -c $dir/srs.conf" | head -1)
  inns taskset -c 0 target/release/tessera-load --server http://127.0.0.1:1985 --no-token --room live \
    --rtmp 127.0.0.1:1935 --rtmp-app '{room}' --rtmp-stream '{user}' \
    --whep-url '{server}/rtc/v1/whep/?app={room}&stream={source}' \
    --publishers "$p" --subscribers "$p" --duration 15 --server-pid "$server_pid" --json
  stop_pid "$server_pid"
}

echo "| server | Opus complexity, kbit/s | round | publishers (+1 viewer each) | delivered pkt/s | server CPU (cores) | CPU per publisher | loss % (max) | latency p50 / p99 ms |"
echo "|---|---|---|---|---|---|---|---|---|"
for p in "${counts[@]}"; do
  for round in 1 2; do
    IFS=, read -r -a servers <<<"${SERVERS:-tessera 10 64,tessera 1 64,tessera 1 48,srs 1 48}"
    for server in "${servers[@]}"; do
      set -- $server
      if [ "$1" = srs ]; then j=$(run_srs "$p"); else j=$(run_tessera "$p" "$2" "$3"); fi
      python3 - "$1" "$2, $3" "$round" "$p" "$j" <<'PY'
import json, sys
server, cx, rnd, p, j = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5] or "{}")
f = lambda x, d=0: "-" if x is None else f"{x:,.{d}f}"
cpu = j.get("server_cpu_cores")
lat = j.get("latency_ms") or {}
print(f"| {server} | {cx} | {rnd} | {p} | {f(j.get('forwarded_pps'))} | {f(cpu, 3)} | {f(cpu / p if cpu else None, 4)} | {f((j.get('loss_pct') or {}).get('max'), 2)} | {f(lat.get('p50'), 1)} / {f(lat.get('p99'), 1)} |", flush=True)
PY
    done
  done
done
