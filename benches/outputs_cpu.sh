#!/usr/bin/env bash
# Output benchmark: server CPU for one RTMP publisher (640x360 25 fps H.264 + AAC) alone, then
# with a relay to a local CDN (ffmpeg -listen 1), then with a single-stream HLS recording, then
# with a 720p nine-grid-less mix job (one input, OpenH264). Prints one markdown row per case.
#
#   benches/outputs_cpu.sh [seconds per case, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
source benches/lib.sh
publish 50
cdnport=$((40000 + RANDOM % 10000))
ffmpeg -hide_banner -loglevel error -y -listen 1 -i "rtmp://127.0.0.1:$cdnport/live/key" -c copy -f flv "$dir/cdn.flv" &
cleanup_pids=$!
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
