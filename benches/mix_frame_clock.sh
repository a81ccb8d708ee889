#!/usr/bin/env bash
# Frame timing of a mix job's output (issue 14, "mixer output clock"): four RTMP publishers in a
# room, a nine-grid mix (TEMPLATE, default 640x360 at 30 fps) relayed to `ffmpeg -listen 1`
# (the CDN) for SECONDS; the received FLV's video timestamps give the frame gaps. Reported: gaps
# outside 30–37 ms (at 30 fps), the largest gap, and the job's own cpu_cores and dropped frames.
#
#   benches/mix_frame_clock.sh [BINARY] [SECONDS] [TEMPLATE]
# (defaults: target/release/tessera, 20, 640x360_30_800). Run it for two binaries to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/tessera}; secs=${2:-20}; template=${3:-640x360_30_800}
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
http=127.0.0.1:$((20000 + RANDOM % 10000)); rtmp=$((30000 + RANDOM % 10000)); cdn=$((40000 + RANDOM % 10000))
RUST_LOG=warn "$bin" serve --data-dir "$dir/data" --http-addr "$http" --rtmp-addr 127.0.0.1:$rtmp --rtc-udp-addr 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
pids+=($!)
for _ in $(seq 50); do [ -f "$dir/data/admin.key" ] && grep -q "HTTP API" "$dir/out" && break; sleep 0.2; done
key=$(cat "$dir/data/admin.key")
for c in red green blue yellow; do
  tok=$("$bin" token --data-dir "$dir/data" --room mix --user "$c")
  ffmpeg -hide_banner -loglevel error -re -f lavfi -i "color=c=$c:s=640x360:r=30" -f lavfi -i sine=frequency=440 \
    -c:v libx264 -preset ultrafast -tune zerolatency -bf 0 -g 60 -c:a aac -f flv "rtmp://127.0.0.1:$rtmp/push/mix/$c?token=$tok" &
  pids+=($!)
done
ffmpeg -hide_banner -loglevel error -y -listen 1 -i "rtmp://127.0.0.1:$cdn/live/key" -c copy -f flv "$dir/mix.flv" &
cdn_pid=$!
sleep 2
job=$(curl -s -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d "{\"room\":\"mix\",\"encode\":{\"template\":\"$template\"},\"outputs\":{\"rtmp_urls\":[\"rtmp://127.0.0.1:$cdn/live/key\"]}}" "http://$http/v1/mix-jobs")
id=$(echo "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
sleep "$secs"
stats=$(curl -s -H "Authorization: Bearer $key" "http://$http/v1/mix-jobs/$id" | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(s.get("cpu_cores"), s.get("dropped_frames"), s.get("fps"))')
relay=$(echo "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["outputs"]["relay_id"])')
curl -s -X DELETE -H "Authorization: Bearer $key" "http://$http/v1/mix-jobs/$id" >/dev/null
sleep 2
kill -INT $cdn_pid 2>/dev/null || true; wait $cdn_pid 2>/dev/null || true
ffprobe -v error -select_streams v -show_entries packet=pts_time -of csv=p=0 "$dir/mix.flv" | python3 -c "
import sys
t = [float(l.strip().rstrip(',')) for l in sys.stdin if l.strip()]
g = [(b - a) * 1000 for a, b in zip(t, t[1:])]
off = [x for x in g if not 30 <= x <= 37]
cpu, dropped, fps = '$stats'.split()
print(f'| $(basename "$bin") | {len(g)} | {len(off)} | {max(g):.0f} ms | {cpu} | {dropped} | {fps} |')
"
