#!/usr/bin/env bash
# The mix against the FFmpeg CLI doing the same job, side by side: nine 640x360 30 fps H.264
# inputs (the same bitstreams: the MCU bench writes them) decoded, scaled (bilinear) into a
# nine-grid, encoded as 1280x720@30 H.264 at 2.5 Mbit/s with x264 at `PRESET`, for `SECONDS` of
# output, as fast as each runs. The figure is CPU seconds per second of output: the cores a
# real-time job of this shape keeps busy. Interleaved, `ROUNDS` times.
#
#   benches/mcu_vs_ffmpeg.sh [PRESET=superfast] [SECONDS=10] [ROUNDS=2]
#
# Ours is `cargo bench --bench mcu_pipeline` (decode → compose → encode, no network, no audio);
# FFmpeg's is `ffmpeg -filter_complex scale…,xstack -c:v libx264 -f null`.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-superfast}
seconds=${2:-10}
rounds=${3:-2}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
./scripts/retry.sh cargo bench -p tessera-engine --bench mcu_pipeline --no-run >&2
frames=$((seconds * 30))

ours() {
  MCU_DUMP_INPUTS="$dir" cargo bench -q -p tessera-engine --bench mcu_pipeline -- 9 1280x720 30 "$seconds" "$preset" 2>/dev/null | grep '^|' |
    awk -F'|' -v p="$preset" '{ gsub(/ /, "", $3); printf "| Tessera mix | x264 %s | %s |\n", p, $3 }'
}

theirs() {
  local inputs=() scales="" stack=""
  for i in $(seq 0 8); do
    inputs+=(-stream_loop -1 -framerate 30 -f h264 -i "$dir/in$i.h264")
    scales+="[$i:v]scale=426:240:flags=bilinear[v$i];"
    stack+="[v$i]"
  done
  local layout="0_0|w0_0|w0+w1_0|0_h0|w0_h0|w0+w1_h0|0_h0+h1|w0_h0+h1|w0+w1_h0+h1"
  python3 - "$preset" "$seconds" "$frames" "${inputs[@]}" -filter_complex "${scales}${stack}xstack=inputs=9:layout=$layout,pad=1280:720" <<'PY'
import resource, subprocess, sys
preset, seconds, frames, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
cmd = ["ffmpeg", "-nostdin", "-v", "error", *args, "-frames:v", frames, "-c:v", "libx264", "-preset", preset, "-b:v", "2500k", "-g", "90", "-f", "null", "-"]
subprocess.run(cmd, check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"| FFmpeg CLI | x264 {preset} | {(r.ru_utime + r.ru_stime) / seconds:.2f} |")
PY
}

echo "| job (9 × 640x360 → 1280x720@30, nine-grid) | encoder | CPU per output second (cores) |"
echo "|---|---|---|"
for _ in $(seq "$rounds"); do
  ours
  theirs
done
