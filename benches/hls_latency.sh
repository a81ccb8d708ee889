#!/usr/bin/env bash
# HLS live latency of a single-stream recording: how long after a sample is published does a
# player find it listed in the playlist? One RTMP publisher (640x360 25 fps, keyframe every
# second, H.264 + AAC); for each segment length a recording is started and its video playlist
# is polled over HTTP (GET /files/..., every 20 ms) like a player would. A segment's start time
# is in its name (the server's arrival time of its first sample), its length in #EXTINF, so:
#   first-sample latency = listed_at - begin       (the oldest sample in the segment)
#   last-sample latency  = listed_at - (begin+dur) (the newest: what the server adds)
# A player adds its own buffer (typically 3 segments) on top.
#
#   benches/hls_latency.sh [seconds per segment length, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
source benches/lib.sh
publish 25
sleep 3
echo "| segment length | segments | first-sample latency p50 / max (s) | last-sample latency p50 / max (s) |"
echo "|---|---|---|---|"
for seg in 2 6; do
  python3 - "$http" "$key" "$seg" "$secs" <<'EOF'
import json, sys, time, urllib.request, datetime, statistics
http, key, seg, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def call(method, path, body=None):
    req = urllib.request.Request(f"http://{http}{path}", method=method, data=body and json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.read()
rec = json.loads(call("POST", "/v1/recordings", {"room": "bench", "format": "hls", "hls": {"segment_s": seg}}))
playlist = None
seen = {}
end = time.time() + secs
while time.time() < end:
    if playlist is None:
        # While recording, `files` lists segments; a segment's playlist is its name without
        # the `_<UTC stamp>` (RECORDING.md §4).
        files = json.loads(call("GET", f"/v1/recordings/{rec['id']}"))["files"]
        video = [f for f in files if f["track_type"] == "video"]
        if video:
            playlist = video[0]["url"].rsplit("_", 1)[0] + ".m3u8"
    else:
        text = call("GET", playlist).decode()
        now = time.time()
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("#EXTINF:") and i + 1 < len(lines):
                name = lines[i + 1].split("?")[0].rsplit("/", 1)[-1]
                if name not in seen:
                    stamp = name.rsplit("_", 1)[1][:17]
                    begin = datetime.datetime.strptime(stamp[:14], "%Y%m%d%H%M%S").replace(tzinfo=datetime.timezone.utc).timestamp() + int(stamp[14:]) / 1000
                    seen[name] = (now - begin, now - begin - float(line[8:].rstrip(",")))
    time.sleep(0.02)
call("DELETE", f"/v1/recordings/{rec['id']}")
# The first segment was listed before polling began for it: leave it out.
values = list(seen.values())[1:]
first = [v[0] for v in values]
last = [v[1] for v in values]
print(f"| {seg} s | {len(values)} | {statistics.median(first):.2f} / {max(first):.2f} | {statistics.median(last):.2f} / {max(last):.2f} |")
EOF
done
