#!/usr/bin/env bash
# The mix against the FFmpeg CLI doing the same job, side by side: nine 30 fps H.264 inputs
# (the same bitstreams: the MCU bench writes them) decoded, scaled (bilinear) into a nine-grid,
# encoded as 1280x720@30 H.264 at 2.5 Mbit/s with x264 at `PRESET`, for `SECONDS` of output, as
# fast as each runs. The figure is CPU seconds per second of output: the cores a real-time job
# of this shape keeps busy. Interleaved, `ROUNDS` times, two jobs:
#   - 360p inputs: both decode nine 640x360 streams (the issue's job);
#   - simulcast inputs: nine publishers sending 1280x720 with a 640x360 layer. FFmpeg gets the
#     1280x720 streams (a stream per publisher, as an RTMP/CDN mixer does); the mix takes the
#     640x360 layer its 426x240 tiles need (`sfu/tap_layers.rs`), so its side is the 360p job.
#
#   benches/mcu_vs_ffmpeg.sh [PRESET=superfast] [SECONDS=10] [ROUNDS=2]
#
# Ours is `cargo bench --bench mcu_pipeline` (decode → compose → encode, no network, no audio);
# FFmpeg's is `ffmpeg -filter_complex scale…,xstack -c:v libx264 -f null`, once encoding as the
# mix does (baseline, no B-frames, zerolatency) and once with x264's defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-superfast}
seconds=${2:-10}
rounds=${3:-2}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
./scripts/retry.sh cargo bench -p tessera-engine --bench mcu_pipeline --no-run >&2
frames=$((seconds * 30))

ours() { # input WxH, job label
  mkdir -p "$dir/$1"
  MCU_DUMP_INPUTS="$dir/$1" cargo bench -q -p tessera-engine --bench mcu_pipeline -- 9 1280x720 30 "$seconds" "$preset" "$1" 2>/dev/null | grep '^|' |
    awk -F'|' -v p="$preset" -v job="$2" -v input="$1" '{ gsub(/ /, "", $3); split($5, ms, "/"); printf "| %s | Tessera mix (decodes %s) | x264 %s, baseline, no B-frames | %s |\n", job, input, p, $3 }'
}

theirs() { # input WxH, job label
  local inputs=() scales="" stack=""
  for i in $(seq 0 8); do
    # Looped from MP4: the raw H.264 demuxer cannot seek back, so `-stream_loop` on it would
    # stop each input after its 2 s (and the job would decode a fifth of its frames).
    [ -f "$dir/$1/in$i.mp4" ] || ffmpeg -nostdin -v error -framerate 30 -f h264 -i "$dir/$1/in$i.h264" -c copy "$dir/$1/in$i.mp4"
    inputs+=(-stream_loop -1 -i "$dir/$1/in$i.mp4")
    scales+="[$i:v]scale=426:240:flags=bilinear[v$i];"
    stack+="[v$i]"
  done
  local layout="0_0|w0_0|w0+w1_0|0_h0|w0_h0|w0+w1_h0|0_h0+h1|w0_h0+h1|w0+w1_h0+h1"
  python3 - "$preset" "$seconds" "$frames" "$2" "$1" "${inputs[@]}" -filter_complex "${scales}${stack}xstack=inputs=9:layout=$layout,pad=1280:720" <<'PY'
import resource, subprocess, sys
preset, seconds, frames, job, size, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
# As the mix encodes for WebRTC (constrained baseline, no B-frames, no lookahead), and with
# x264's defaults (B-frames and lookahead: another output, which WebRTC cannot take).
for label, extra in [("baseline, no B-frames", ["-tune", "zerolatency", "-profile:v", "baseline", "-bf", "0"]), ("defaults", [])]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", *args, "-frames:v", frames, "-c:v", "libx264", "-preset", preset, *extra, "-b:v", "2500k", "-g", "90", "-f", "null", "-"]
    subprocess.run(cmd, check=True)
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r.ru_utime + r.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"| {job} | FFmpeg CLI (decodes {size}) | x264 {preset}, {label} | {cpu / seconds:.2f} |")
PY
}

echo "| job (9 inputs → 1280x720@30 nine-grid) | mixer | encoder | CPU per output second (cores) |"
echo "|---|---|---|---|"
# The 1280x720 bitstreams are written once, for FFmpeg's side of the simulcast job.
ours 1280x720 "(writes the 720p inputs)" >/dev/null
for _ in $(seq "$rounds"); do
  ours 640x360 "360p inputs"
  theirs 640x360 "360p inputs"
  ours 640x360 "simulcast inputs (720p + 360p layer)"
  theirs 1280x720 "simulcast inputs (720p + 360p layer)"
done
