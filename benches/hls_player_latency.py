#!/usr/bin/env python3
"""Where hls.js (player.html in headless Chromium) plays a live single-stream recording, before
and after the TARGETDURATION change of issue 15 (3 × segment_s → ceil(1.5 × segment_s)).

For each (server binary, hls.js liveSyncDurationCount): a server, an RTMP publisher (ffmpeg,
640x360 25 fps, keyframe every second, H.264 + AAC), a recording with the segment length, and
after 10 segments player.html for 20 s. player.html is served by a separate current server (the
old binary has no player page) and fetches the recording cross-origin with a user token.
Reported, median over the last 10 s of playing:
  behind newest segment: play position behind the end of the newest listed segment (s)
  behind real time:      now minus the wall-clock time of the picture shown (s): the segment's
                         first-sample time (its name) plus the offset into it

  target/test-venv/bin/python benches/hls_player_latency.py [BEFORE_BIN] [AFTER_BIN]
(defaults: none, target/release/tessera; `make test` builds the venv with Playwright.)
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
before = sys.argv[1] if len(sys.argv) > 1 else None
after = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "target/release/tessera")
py = os.path.join(root, "target/test-venv/bin/python")
procs = []


def serve(binary, tag):
    d = tempfile.mkdtemp(prefix=f"hlsbench-{tag}-")
    port = 20000 + int.from_bytes(os.urandom(2), "big") % 10000
    rtmp = port + 10000
    p = subprocess.Popen([binary, "serve", "--data-dir", f"{d}/data", "--http-addr", f"127.0.0.1:{port}", "--rtmp-addr", f"127.0.0.1:{rtmp}",
                          "--rtc-udp-addr", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    procs.append(p)
    for line in p.stdout:
        if line.startswith(b"    eyJ"):
            break
    key = open(f"{d}/data/admin.key").read().strip()
    return d, f"127.0.0.1:{port}", rtmp, key


def call(http, key, method, path, body=None):
    req = urllib.request.Request(f"http://{http}{path}", method=method, data=body and json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


def run(binary, sync, seg, host):
    d, http, rtmp, key = serve(binary, "rec")
    tok = lambda user: subprocess.check_output([binary, "token", "--data-dir", f"{d}/data", "--room", "bench", "--user", user]).decode().strip()
    pub = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                            "-f", "lavfi", "-i", "sine=frequency=440", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0",
                            "-g", "25", "-c:a", "aac", "-f", "flv", f"rtmp://127.0.0.1:{rtmp}/push/bench/cam?token={tok('cam')}"])
    procs.append(pub)
    time.sleep(3)
    rec = call(http, key, "POST", "/v1/recordings", {"room": "bench", "format": "hls", "hls": {"segment_s": seg}})
    # Long enough for three of the old target durations (9 segments): no clamp at the start.
    time.sleep(10 * seg + 2)
    files = call(http, key, "GET", f"/v1/recordings/{rec['id']}")["files"]
    video = [f for f in files if f["track_type"] == "video"][0]["url"].rsplit("_", 1)[0] + ".m3u8"
    out = subprocess.run([py, os.path.join(root, "tests/clients/browser.py"), "hls", "--base", f"http://{host}", "--src", f"http://{http}{video}",
                          "--token", tok("viewer"), "--sync", str(sync), "--seconds", "20"], capture_output=True, text=True, timeout=120)
    call(http, key, "DELETE", f"/v1/recordings/{rec['id']}")
    pub.kill()
    target = [l for l in open(f"{d}/data/recordings/default/{rec['id']}/{video.rsplit('/', 1)[1]}").read().splitlines() if l.startswith("#EXT-X-TARGETDURATION")][0]
    samples = json.loads(out.stdout.strip().splitlines()[-1])["samples"][-10:]
    edge = statistics.median(s["edgeDistanceS"] for s in samples if s.get("edgeDistanceS") is not None)
    real = statistics.median(s["liveLatencyS"] for s in samples if s.get("liveLatencyS") is not None)
    frames = samples[-1]["framesDecoded"]
    procs.remove(pub)
    return target.split(":")[1], edge, real, frames


try:
    _, host, _, _ = serve(after, "host")
    print("| server | segment | TARGETDURATION | hls.js liveSyncDurationCount | behind newest segment (s) | behind real time (s) | frames in 20 s |")
    print("|---|---|---|---|---|---|---|")
    cases = ([("before", before, 3)] if before else []) + [("after", after, 3), ("after", after, 1.5)]
    for seg in (2, 6):
        for label, binary, sync in cases:
            target, edge, real, frames = run(binary, sync, seg, host)
            print(f"| {label} | {seg} s | {target} | {sync} | {edge:.1f} | {real:.1f} | {frames} |", flush=True)
finally:
    for p in procs:
        p.kill()
