#!/usr/bin/env bash
# RTMP publishes with B-frames (issue 18), side by side with the ffmpeg CLI doing the same
# transcode. Sources: 720p30 and 1080p30 moving test pictures encoded once as ffmpeg's libx264
# defaults would (-preset medium: 3 B-frames, B-pyramid; a keyframe every 2 s) plus AAC, and the
# same without B-frames (-bf 0). Each is pushed in real time (-re -c copy) into a release server;
# per case the server's CPU over SECS seconds:
#   - the B-frame-free source (passed through: the baseline of an RTMP publish, AAC→Opus included),
#   - the B-frame source transcoded with OpenH264, then with x264 (rtmp.encoder),
# and, on the same machine right after, the ffmpeg CLI re-encoding the B-frame source in real time
# to baseline H.264 without B-frames (libx264 veryfast zerolatency, the source's bitrate; the
# system FFmpeg has no OpenH264 encoder), its CPU over the same SECS. ROUNDS rounds, interleaved.
#
#   benches/bframe_transcode.sh [ROUNDS=2] [SECS=15]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
secs=${2:-15}
source benches/lib.sh
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # measure PID: cores used over $secs
  local a b; a=$(cpu_of "$1"); sleep "$secs"; b=$(cpu_of "$1")
  awk -v a="$a" -v b="$b" -v s="$secs" 'BEGIN { printf "%.3f", (b - a) / 100 / s }'
}
api() { curl -s -H "Authorization: Bearer $key" -H 'Content-Type: application/merge-patch+json' "$@"; }
declare -A kbps=([720]=2500 [1080]=4500)
declare -A size=([720]=1280x720 [1080]=1920x1080)
for h in 720 1080; do
  for bf in 3 0; do
    ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=size=${size[$h]}:rate=30:duration=30" -f lavfi -i sine=frequency=440:duration=30 \
      -c:v libx264 -preset medium -bf "$bf" -g 60 -b:v "${kbps[$h]}k" -pix_fmt yuv420p -c:a aac -f flv "$dir/src${h}_bf$bf.flv"
  done
done
push() { # push FILE: real-time copy of FILE, looped, into room bench as cam
  local tok
  tok=$(target/release/tessera token --data-dir "$dir/data" --room bench --user cam)
  ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$1" -c copy -t $((secs + 6)) -f flv "rtmp://127.0.0.1:$rtmp/push/bench/cam?token=$tok" &
  pub=$!
}
echo "| source | path | Tessera server CPU (cores) | ffmpeg CLI (cores) |"
echo "|---|---|---|---|"
for r in $(seq "$rounds"); do
  for h in 720 1080; do
    push "$dir/src${h}_bf0.flv"; sleep 4
    echo "| ${h}p30, no B-frames | passed through | $(measure "$server") | - |"
    wait "$pub" || true
    for enc in openh264 x264; do
      api -X PATCH -d "{\"rtmp\":{\"encoder\":\"$enc\"}}" "http://$http/v1/app" >/dev/null
      push "$dir/src${h}_bf3.flv"; sleep 4
      echo "| ${h}p30, x264 medium (3 B-frames) | transcoded, $enc | $(measure "$server") | - |"
      wait "$pub" || true
    done
    ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i "$dir/src${h}_bf3.flv" -t $((secs + 6)) -an \
      -c:v libx264 -preset veryfast -tune zerolatency -profile:v baseline -bf 0 -b:v "${kbps[$h]}k" -f null - &
    cli=$!
    sleep 4
    echo "| ${h}p30, x264 medium (3 B-frames) | ffmpeg CLI: decode + libx264 veryfast baseline | - | $(measure "$cli") |"
    wait "$cli" || true
  done
done
