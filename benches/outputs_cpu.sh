#!/usr/bin/env bash
# Output benchmark: server CPU for one RTMP publisher (640x360 25 fps H.264 + AAC) alone, then
# with a relay to a local CDN (ffmpeg -listen 1), then with a single-stream HLS recording, then
# with a 720p nine-grid-less mix job (one input, OpenH264). Prints one markdown row per case.
#
#   benches/outputs_cpu.sh [seconds per case, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
cargo build --release --locked --bin tessera >&2
dir=$(mktemp -d)
trap 'kill $server $pub $cdn 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
http=127.0.0.1:$((20000 + RANDOM % 10000)); rtmp=$((30000 + RANDOM % 10000)); cdnport=$((40000 + RANDOM % 10000))
udp=127.0.0.1:$((50000 + RANDOM % 10000))
RUST_LOG=warn target/release/tessera serve --data-dir "$dir/data" --http-addr "$http" --rtmp-addr 127.0.0.1:$rtmp --rtc-udp-addr "$udp" >"$dir/out" 2>"$dir/err" &
server=$!
for _ in $(seq 50); do [ -f "$dir/data/admin.key" ] && grep -q "HTTP API" "$dir/out" && break; sleep 0.2; done
key=$(cat "$dir/data/admin.key")
tok=$(target/release/tessera token --data-dir "$dir/data" --room bench --user cam)
ffmpeg -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=640x360:rate=25 -f lavfi -i sine=frequency=440 \
  -c:v libx264 -preset ultrafast -tune zerolatency -bf 0 -g 50 -c:a aac -f flv "rtmp://127.0.0.1:$rtmp/push/bench/cam?token=$tok" &
pub=$!
ffmpeg -hide_banner -loglevel error -y -listen 1 -i "rtmp://127.0.0.1:$cdnport/live/key" -c copy -f flv "$dir/cdn.flv" &
cdn=$!
sleep 3
cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
measure() {
  local a b; a=$(cpu); sleep "$secs"; b=$(cpu)
  awk -v a="$a" -v b="$b" -v s="$secs" 'BEGIN { printf "%.3f", (b - a) / 100 / s }' 
}
api() { curl -s -H "Authorization: Bearer $key" -H 'Content-Type: application/json' "$@"; }
echo "| case | server CPU (cores) |"
echo "|---|---|"
echo "| RTMP publisher only (ingest, AAC→Opus) | $(measure) |"
api -d "{\"room\":\"bench\",\"source\":{\"user\":\"cam\"},\"urls\":[\"rtmp://127.0.0.1:$cdnport/live/key\"]}" "http://$http/v1/relays" >/dev/null
sleep 3
echo "| + relay to a CDN (H.264 pass-through, Opus→AAC, FLV) | $(measure) |"
api -d '{"room":"bench","format":"hls"}' "http://$http/v1/recordings" >/dev/null
sleep 3
echo "| + single-stream HLS recording (split audio/video TS) | $(measure) |"
api -d '{"room":"bench","encode":{"template":"720p"}}' "http://$http/v1/mix-jobs" >/dev/null
sleep 3
echo "| + mix job, 1 input, 720p15 OpenH264 | $(measure) |"
