#!/usr/bin/env bash
# Soak (issue 10): everything at once for MINUTES, watching the server's RSS, open fds and
# threads once a minute; fails if any grows past its bound after the warm-up.
#
#   benches/soak.sh [MINUTES, default 30]
#
# Running at once: an RTMP publisher into room `bench` that reconnects every 45 s; WHEP
# viewers (tessera-load) joining and leaving in rounds of 40 s, half of them vanishing without
# a DELETE (the liveness timeout must clean them up); an HLS recording; a relay to a local CDN
# (ffmpeg -listen, restarted when it ends); and a mix job. Bounds after the warm-up (the first
# sample at or after minute 3, or a third of the run): RSS +64 MiB, fds +32, threads +8.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
cargo build --release --locked --bin tessera-load >&2
source benches/lib.sh
api() { curl -s -H "Authorization: Bearer $key" -H 'Content-Type: application/json' "$@"; }

# The publisher, reconnecting: 45 s pushes back to back.
( while :; do
    tok=$(target/release/tessera token --data-dir "$dir/data" --room bench --user cam)
    ffmpeg -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=640x360:rate=25:duration=45 -f lavfi -i sine=frequency=440:duration=45 \
      -c:v libx264 -preset ultrafast -tune zerolatency -bf 0 -g 50 -c:a aac -f flv "rtmp://127.0.0.1:$rtmp/push/bench/cam?token=$tok" || true
  done ) &
cleanup_pids="$cleanup_pids $!"
# The CDN a relay pushes to, listening again after each session.
cdnport=$((40000 + RANDOM % 10000))
( while :; do ffmpeg -hide_banner -loglevel error -y -listen 1 -i "rtmp://127.0.0.1:$cdnport/live/key" -c copy -f null - || sleep 1; done ) &
cleanup_pids="$cleanup_pids $!"
# WebRTC rounds in room `soak`: tessera-load connects a WHIP publisher and 10 WHEP viewers for
# 40 s and exits; every other round
# it is killed instead, so its sessions vanish without a DELETE.
( n=0; while :; do
    n=$((n + 1))
    target/release/tessera-load --server "http://$http" --api-key "$key" --room soak --publishers 1 --subscribers 10 --duration 40 --json >/dev/null 2>&1 &
    lp=$!
    if [ $((n % 2)) = 0 ]; then sleep 30; kill -9 $lp 2>/dev/null || true; fi
    wait $lp 2>/dev/null || true
    sleep 5
  done ) &
cleanup_pids="$cleanup_pids $!"
sleep 5
# Each task must start: the soak is about all of them at once.
started() { local out; out=$(api -w '\n%{http_code}' "$@"); [ "${out##*$'\n'}" = 201 ] || { echo "task not started: $out" >&2; exit 1; }; }
started -d '{"room":"bench","format":"hls","max_idle_time":120}' "http://$http/v1/recordings"
started -d "{\"room\":\"bench\",\"source\":{\"user\":\"cam\"},\"urls\":[\"rtmp://127.0.0.1:$cdnport/live/key\"],\"max_idle_time\":120}" "http://$http/v1/relays"
started -d '{"room":"bench","layout":{"template":"float"},"encode":{"template":"640x360_15_800"},"max_idle_time":120}' "http://$http/v1/mix-jobs"

sample() {
  local rss fds threads
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$server/status")
  fds=$(ls "/proc/$server/fd" | wc -l)
  echo "$rss $fds $threads"
}
warm=$(( minutes / 3 > 3 ? 3 : (minutes / 3 > 0 ? minutes / 3 : 1) ))
echo "| minute | RSS (MiB) | fds | threads |"
echo "|---|---|---|---|"
base=""
worst_rss=0; worst_fds=0; worst_threads=0
for m in $(seq 1 "$minutes"); do
  sleep 60
  kill -0 "$server" 2>/dev/null || { echo "the server died at minute $m" >&2; exit 1; }
  read -r rss fds threads < <(sample)
  printf '| %d | %.1f | %d | %d |\n' "$m" "$(echo "$rss / 1024" | bc -l)" "$fds" "$threads"
  if [ "$m" -eq "$warm" ]; then base="$rss $fds $threads"; fi
  if [ -n "$base" ]; then
    read -r b_rss b_fds b_threads <<<"$base"
    worst_rss=$(( rss - b_rss > worst_rss ? rss - b_rss : worst_rss ))
    worst_fds=$(( fds - b_fds > worst_fds ? fds - b_fds : worst_fds ))
    worst_threads=$(( threads - b_threads > worst_threads ? threads - b_threads : worst_threads ))
  fi
done
echo
echo "growth after minute $warm: RSS +$((worst_rss / 1024)) MiB (bound 64), fds +$worst_fds (bound 32), threads +$worst_threads (bound 8)"
echo "tasks at the end: $(api "http://$http/v1/recordings" | head -c 300)"
if [ $((worst_rss / 1024)) -gt 64 ] || [ "$worst_fds" -gt 32 ] || [ "$worst_threads" -gt 8 ]; then
  echo "FAIL: a resource grew past its bound" >&2
  exit 1
fi
echo "PASS"
