#!/usr/bin/env bash
# Glass-to-glass latency of an RTMP publish watched over WHEP, B-frames against none (issue 18):
# FFmpeg 8 (PyAV, tests/clients/pyav_push.py --stamp) encodes pictures that carry their capture
# time (32 blocks along the top edge) with libx264 at --preset veryfast (OBS's default) and
# either 2 B-frames (OBS's x264 default: Tessera transcodes) or none (passed through), pushes
# them in real time into a release server, and aiortc watches over WHEP, sampling the blocks
# (tests/clients/aiortc_client.py play --sample). Latency = the viewer's clock when it decoded
# a picture minus the time in it (one machine, one clock), after the first 3 s of viewing.
# ROUNDS rounds, interleaved.
#
#   benches/glass_to_glass.sh [ROUNDS=2] [SECONDS=20]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
secs=${2:-20}
py=target/test-venv/bin/python
[ -x "$py" ] || scripts/setup.sh --test >&2
cargo build --release --locked --bin tessera >&2
# aiortc wants a non-loopback address: one end of a veth pair of our own (this kernel has no
# dummy interfaces).
ip link add g2g0 type veth peer name g2g1 2>/dev/null || true
ip addr add 10.231.0.1/24 dev g2g0 2>/dev/null || true
ip link set g2g0 up
ip link set g2g1 up
dir=$(mktemp -d)
trap 'kill $server 2>/dev/null; wait 2>/dev/null; ip link del g2g0 2>/dev/null; rm -rf "$dir"' EXIT
http=10.231.0.1:$((20000 + RANDOM % 10000)); rtmp=$((30000 + RANDOM % 10000)); udp=10.231.0.1:$((50000 + RANDOM % 10000))
RUST_LOG=warn target/release/tessera serve --data-dir "$dir/data" --http-addr "$http" --rtmp-addr 127.0.0.1:$rtmp --rtc-udp-addr "$udp" >"$dir/out" 2>"$dir/err" &
server=$!
for _ in $(seq 50); do [ -f "$dir/data/admin.key" ] && grep -q "HTTP API" "$dir/out" && break; sleep 0.2; done
points=$(python3 -c 'print(";".join(f"{b * 16 + 8},12" for b in range(32)))')
echo "| publish | path | glass-to-glass p50 / p95 (ms) | pictures read |"
echo "|---|---|---|---|"
for r in $(seq "$rounds"); do
  for bf in 2 0; do
    user=cam$r$bf
    tok=$(target/release/tessera token --data-dir "$dir/data" --room g2g --user "$user")
    "$py" tests/clients/pyav_push.py --url "rtmp://127.0.0.1:$rtmp/push/g2g/$user?token=$tok" --codec libx264 --preset veryfast \
      --bframes "$bf" --stamp --seconds $((secs + 6)) --size 1280x720 >/dev/null &
    pub=$!
    sleep 4
    "$py" tests/clients/aiortc_client.py play --url "http://$http/whep/g2g/$user/main" --token "$tok" --seconds "$secs" --sample "$points" >"$dir/view.json"
    wait "$pub" || true
    python3 - "$bf" "$dir/view.json" <<'PY'
import json, sys
bf, view = int(sys.argv[1]), json.load(open(sys.argv[2]))
lat = []
samples = view.get("samples", [])
# Steady state: the first 3 s are left out (a viewer that joins is sent the GOP so far, which is
# old by design).
start = samples[0][0] + 3 if samples else 0
for at, cols in samples:
    if at < start:
        continue
    bits = [1 if sum(c) / 3 > 128 else 0 for c in cols]
    stamp = int("".join(map(str, bits)), 2)
    ms = (int(at * 1000) - stamp) & 0xFFFFFFFF
    if ms < 10000:
        lat.append(ms)
lat.sort()
pick = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] if lat else float("nan")
path = "transcoded (OpenH264)" if bf else "passed through"
print(f"| x264 veryfast, {bf} B-frames | {path} | {pick(0.5):.0f} / {pick(0.95):.0f} | {len(lat)} |")
PY
  done
done
