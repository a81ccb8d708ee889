#!/usr/bin/env bash
# Join-to-first-frame: how long a participant joining a room through room.html (headless
# Chromium, tessera.js, loopback) waits for `joined`, for the first remote picture and for the
# last one, with 1, 4 and 16 publishers already in the room (ffmpeg RTMP pushers, 320x180
# 25 fps H.264 with a keyframe every 2 s + AAC). Five joins per count; prints medians as
# markdown rows. Needs scripts/setup.sh --test (Chromium and the Python venv).
#
#   benches/join_time.sh [N ...]        (default: 1 4 16)
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1 4 16)
source benches/lib.sh
py=target/test-venv/bin/python
echo "| publishers in the room | joined (ms) | first picture (ms) | all pictures (ms) | joins |"
echo "|---|---|---|---|---|"
for n in "${counts[@]}"; do
  pushers=""
  for i in $(seq "$n"); do
    tok=$(target/release/tessera token --data-dir "$dir/data" --room "join$n" --user "p$i")
    ffmpeg -hide_banner -loglevel error -re -f lavfi -i "testsrc2=size=320x180:rate=25" -f lavfi -i "sine=frequency=$((200 + 50 * i))" \
      -c:v libx264 -preset ultrafast -tune zerolatency -bf 0 -g 50 -c:a aac -f flv "rtmp://127.0.0.1:$rtmp/push/join$n/p$i?token=$tok" &
    pushers="$pushers $!"
  done
  cleanup_pids="$cleanup_pids $pushers"
  sleep 4
  viewer=$(target/release/tessera token --data-dir "$dir/data" --room "join$n" --user viewer --role audience)
  j=$("$py" tests/clients/browser.py join-time --loopback --base "http://$http" --token "$viewer" --expect "$n" --repeat 5)
  python3 - "$n" "$j" <<'PY'
import json, sys
n, j = sys.argv[1], json.loads(sys.argv[2])
if "error" in j:
    sys.exit(f"join-time failed: {j['error']}")
m = j["median"]
print(f"| {n} | {m['joined_ms']} | {m['first_ms']} | {m['all_ms']} | {len(j['runs'])} |")
PY
  kill $pushers 2>/dev/null || true
  wait $pushers 2>/dev/null || true
done
