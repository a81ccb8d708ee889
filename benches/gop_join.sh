#!/usr/bin/env bash
# A Chromium viewer that joins an RTMP publish mid-GOP (WHEP, play.html, loopback): what it
# decodes, drops and freezes in its first seconds, for two server binaries side by side. The
# publisher is ffmpeg, 1280x720 30 fps x264 veryfast (OBS's default preset), no B-frames, a
# keyframe every 4 s (a viewer joins up to 4 s after the last one and is sent the cached GOP),
# plus AAC. Each round starts each binary in turn (interleaved), and JOINS viewers join one
# after the other (at different points of the GOP), each watching SECONDS.
#
#   benches/gop_join.sh BIN_A BIN_B [ROUNDS=2] [JOINS=4] [SECONDS=6]
set -euo pipefail
cd "$(dirname "$0")/.."
bins=("$1" "$2")
rounds=${3:-2}
joins=${4:-4}
secs=${5:-6}
py=target/test-venv/bin/python
[ -x "$py" ] || scripts/setup.sh --test >&2
work=$(mktemp -d); [ -n "${KEEP:-}" ] && echo "logs: $work" >&2
server="" pub=""
trap 'kill $server $pub 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
echo "| binary | round | joins | frames received | decoded | dropped | freezes | frozen (ms), per join | fps at the end, per join |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in $(seq "$rounds"); do
  for b in "${bins[@]}"; do
    dir="$work/$r-$(basename "$b")"
    http=127.0.0.1:$((20000 + RANDOM % 10000)); rtmp=$((30000 + RANDOM % 10000)); udp=127.0.0.1:$((50000 + RANDOM % 10000))
    RUST_LOG=${RUST_LOG:-warn} "$b" serve --data-dir "$dir/data" --http-addr "$http" --rtmp-addr 127.0.0.1:$rtmp --rtc-udp-addr "$udp" >"$dir.out" 2>"$dir.err" &
    server=$!
    for _ in $(seq 50); do [ -f "$dir/data/admin.key" ] && grep -q "HTTP API" "$dir.out" && break; sleep 0.2; done
    tok=$("$b" token --data-dir "$dir/data" --room bench --user cam)
    ffmpeg -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440 \
      -c:v libx264 -preset veryfast -bf 0 -g 120 -b:v 2500k -c:a aac -f flv "rtmp://127.0.0.1:$rtmp/push/bench/cam?token=$tok" &
    pub=$!
    sleep 3
    : >"$dir.views"
    for j in $(seq "$joins"); do
      # Joins land at different points of the 4 s GOP.
      sleep "0.$((RANDOM % 10))"
      "$py" tests/clients/browser.py play --loopback --base "http://$http" --room bench --user cam --token "$tok" --seconds "$secs" >>"$dir.views" || true
    done
    kill "$pub" "$server" 2>/dev/null || true
    wait "$pub" "$server" 2>/dev/null || true
    python3 - "$(basename "$b")" "$r" "$dir.views" <<'PY'
import json, sys
name, r, path = sys.argv[1], sys.argv[2], sys.argv[3]
views = [json.loads(l)["stats"] for l in open(path) if l.startswith("{")]
tot = lambda k: sum(v.get(k, 0) for v in views)
print(f"| {name} | {r} | {len(views)} | {tot('framesReceived')} | {tot('framesDecoded')} | {tot('framesDropped')} | {tot('freezeCount')} | "
      f"{', '.join(str(v.get('freezeMs', 0)) for v in views)} | {', '.join(str(v.get('fps', 0)) for v in views)} |")
PY
  done
done
