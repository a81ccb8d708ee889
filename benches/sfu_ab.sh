#!/usr/bin/env bash
# Two Tessera builds side by side on the SFU fan-out (1 publisher, synthetic 720p-sized H.264 at
# 1.5 Mbit/s + Opus, N WHEP subscribers on loopback), interleaved: A, B, A, B for each N.
#
#   benches/sfu_ab.sh BIN_A BIN_B [N ...]       (default N: 100 300 500)
#   CORES=1 benches/sfu_ab.sh ...               (server pinned to core 1, load tool to core 0)
#   PARALLEL=50 benches/sfu_ab.sh ...           (subscribers negotiate 50 at a time: a connect storm)
#   LOAD_ARGS=--browser-packets benches/sfu_ab.sh ...   (more tessera-load options, e.g. browser-like packet sizes)
#
# Build the "before" binary from a worktree (git worktree add /tmp/before REV; cargo build
# --release there) and copy it out; BIN_B is usually target/release/tessera. One markdown row
# per run.
set -euo pipefail
cd "$(dirname "$0")/.."
a=${1:?usage: benches/sfu_ab.sh BIN_A BIN_B [N ...]}
b=${2:?usage: benches/sfu_ab.sh BIN_A BIN_B [N ...]}
shift 2
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(100 300 500)
./scripts/retry.sh cargo build --release --locked --bin tessera-load >&2
server_cpu=(); load_cpu=()
if [ "${CORES:-}" = 1 ]; then server_cpu=(taskset -c 1); load_cpu=(taskset -c 0); fi

run() { # label bin n
  local label=$1 bin=$2 n=$3 dir
  dir=$(mktemp -d)
  local http=127.0.0.1:$((20000 + RANDOM % 10000)) udp=127.0.0.1:$((30000 + RANDOM % 10000))
  RUST_LOG=warn "${server_cpu[@]}" "$bin" serve --data-dir "$dir" --http-addr "$http" --rtc-udp-addr "$udp" --rtmp-addr 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
  local pid=$!
  for _ in $(seq 50); do [ -f "$dir/admin.key" ] && grep -q "HTTP API" "$dir/out" && break; sleep 0.2; done
  local j
  j=$("${load_cpu[@]}" target/release/tessera-load --server "http://$http" --api-key "$(cat "$dir/admin.key")" --room "ab$n" \
    --subscribers "$n" --connect-parallel "${PARALLEL:-1}" --duration 15 --server-pid "$pid" --json ${LOAD_ARGS:-}) || j='{}'
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  python3 benches/sfu_row.py "$label" "$n" "$j" connect
}

echo "| build | subscribers | delivered pkt/s | server CPU (cores) | pkt/s per core | loss % (max) | latency p50 / p99 ms | at the socket p50 / p99 ms | connect s | load tool CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
  for round in 1 2; do
    run "A$round" "$a" "$n"
    run "B$round" "$b" "$n"
  done
done
