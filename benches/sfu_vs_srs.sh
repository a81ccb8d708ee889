#!/usr/bin/env bash
# SFU fan-out side by side with SRS (issue 14): the same tessera-load (1 publisher, synthetic
# 720p-sized H.264 at 1.5 Mbit/s + Opus, N WHEP subscribers) drives Tessera and SRS in turn,
# interleaved, each server pinned to core 1 and the load tool to core 0, in a loopback-only
# network namespace (SRS binds its UDP port on every address and advertises what it is told:
# `candidate 127.0.0.1`).
#
#   benches/sfu_vs_srs.sh SRS_SRC [N ...]     (default N: 100 300 500 700; two rounds each)
#   ROUNDS=4 benches/sfu_vs_srs.sh …          (more rounds per N: at 100 subscribers each server
#                                             uses a fifth of its core and the ratio moves
#                                             1.1-1.8 from round to round on a shared VM)
#
# SRS_SRC is a checkout of https://github.com/ossrs/srs (v7; its dependencies ship inside it).
# It is built here once, into SRS_SRC/trunk/objs/srs, with Debian's automake, autoconf, libtool
# (installed when missing):
#   ./configure --rtc=on --ffmpeg-fit=on --srt=off --sanitizer=off --extra-flags=-O2 && make
# SRS 7 builds its bundled openssl-1.1-fit, so a checkout without the legacy
# trunk/3rdparty/openssl-OpenSSL_1_0_2u.tar.gz (large files left out of a snapshot) builds too.
# SRS's source is never copied into this repository.
#
# What the comparison means: SRS negotiates only SRTP_AES128_CM_SHA1_80 (Tessera, as browsers,
# AEAD-AES-128-GCM: about the same cost per packet on AES-NI) and neither paces nor runs
# congestion control per viewer; Tessera does both (TWCC, a pacer per viewer), which costs it
# CPU SRS does not spend. Rows report what each delivered and at what CPU, so the ratio is per
# delivered packet.
set -euo pipefail
cd "$(dirname "$0")/.."
srs_src=${1:?usage: benches/sfu_vs_srs.sh SRS_SRC [N ...]}
shift
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(100 300 500 700)
srs_src=$(cd "$srs_src" && pwd)
trunk="$srs_src/trunk"

if [ ! -x "$trunk/objs/srs" ]; then
  need=()
  for p in automake autoconf libtool pkg-config make g++ unzip patch tclsh; do command -v "$p" >/dev/null || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get install -y -q automake autoconf libtool pkg-config make g++ unzip patch tcl >&2
  fi
  (cd "$trunk" && ./configure --rtc=on --ffmpeg-fit=on --srt=off --sanitizer=off --extra-flags=-O2 && make -j"$(nproc)") >&2
fi
./scripts/retry.sh cargo build --release --locked --bin tessera --bin tessera-load >&2

ns=tessera-srs-bench
. benches/srs_lib.sh
srs_conf off

run_tessera() { # n round
  local n=$1 data="$dir/tessera-data"
  rm -rf "$data"
  inns taskset -c 1 env RUST_LOG=warn target/release/tessera serve --data-dir "$data" --http-addr 127.0.0.1:18080 --rtc-udp-addr 127.0.0.1:18443 --rtmp-addr 127.0.0.1:11935 >"$dir/t.out" 2>"$dir/t.err" &
  local pid=$!
  for _ in $(seq 50); do [ -f "$data/admin.key" ] && grep -q "HTTP API" "$dir/t.out" && break; sleep 0.2; done
  local server_pid; server_pid=$(pgrep -f "tessera serve --data-dir $data" | head -1)
  inns taskset -c 0 target/release/tessera-load --server http://127.0.0.1:18080 --api-key "$(cat "$data/admin.key")" --room "b$n" \
    --subscribers "$n" --duration 15 --server-pid "$server_pid" --json
  stop_pid "$server_pid"; wait "$pid" 2>/dev/null || true
}

run_srs() { # n round
  local n=$1
  (cd "$trunk" && inns taskset -c 1 ./objs/srs -c "$dir/srs.conf" >"$dir/s.out" 2>&1) &
  sleep 2
  local server_pid; server_pid=$(pgrep -f "objs/srs -c $dir/srs.conf" | head -1)
  inns taskset -c 0 target/release/tessera-load --server http://127.0.0.1:1985 --no-token --room live \
    --whip-url '{server}/rtc/v1/whip/?app={room}&stream={user}' --whep-url '{server}/rtc/v1/whep/?app={room}&stream={source}' \
    --subscribers "$n" --duration 15 --server-pid "$server_pid" --json
  stop_pid "$server_pid"
}

echo "| server | round | subscribers | delivered pkt/s | server CPU (cores) | pkt/s per core | loss % (max) | latency p50 / p99 ms | at the socket p50 / p99 ms |"
echo "|---|---|---|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
  for round in $(seq "${ROUNDS:-2}"); do
    for server in tessera srs; do
      j=$(run_$server "$n")
      python3 - "$server" "$round" "$n" "$j" <<'PY'
import json, sys
server, rnd, n, j = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
a = j.get('arrival_latency_ms') or {}
f = lambda x, d=0: "-" if x is None else f"{x:,.{d}f}"
print(f"| {server} | {rnd} | {n} | {f(j['forwarded_pps'])} | {f(j['server_cpu_cores'], 3)} | {f(j['server_pps_per_core'])} | {f(j['loss_pct']['max'], 2)} | {f(j['latency_ms']['p50'], 1)} / {f(j['latency_ms']['p99'], 1)} | {f(a.get('p50'), 1)} / {f(a.get('p99'), 1)} |", flush=True)
PY
    done
  done
done
