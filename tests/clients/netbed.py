#!/usr/bin/env python3
"""The network test bed's browsers: a Chromium publisher and a Chromium viewer whose link is
emulated (tests/linkem), and a collector of the viewer's getStats() over time.

sfu:    the publisher sends publish.html's three simulcast layers (h, m, l: 1500/500/150 kbit/s)
        to Tessera; the viewer watches with play.html (quality auto).
direct: the anchor: the same two browsers in a direct peer-to-peer call (one encoding capped at
        the top layer's 1500 kbit/s, Chromium's own congestion control end to end), SDP handed
        over by this script.

The publisher's Chromium runs in this process's namespace, the viewer's in --viewer-ns (the
emulated link's far side). Every --interval seconds for --seconds the viewer's stats are
sampled: wall-clock time, received picture size, fps, frames decoded, freezes (count and
total duration), video kbit/s, packets lost/received, jitter-buffer delay, concealed audio
samples, RTT of the selected candidate pair. Prints one JSON line: {"samples": [...],
"publisher": {...}}; exits 1 with {"error": ...} on failure.

--publishers N (N > 1, a meeting): N publishers (one --token each) in the publisher's browser,
the first one speaking, the others' microphones muted (silence, so the first is the active
speaker); the viewer joins the room with room.html (--viewer-token: an audience token) and each
sample has "tracks": per publisher ("user/main", or "cam<i>" in a direct call, where the viewer
holds one peer connection per publisher) its picture size, fps, frames, freezes and bytes.
"""
import argparse
import json
import os
import stat
import sys
import tempfile
import time
from urllib.parse import urlencode

from playwright.sync_api import sync_playwright

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser import CHROMIUM_ARGS, close_like_a_user, goto  # noqa: E402

# The viewer loads its page through the emulated link: over TCP, 10 % loss in bursts both ways
# can cost a load several retransmission timeouts (1 s, 2 s, 4 s ... each), and Playwright's
# 30 s default failed one run in eight of burst-10. The page's load is not what is measured.
VIEW_LOAD_MS = 90_000

COLLECT = """async (pc) => {
  // play.html starts a lost connection over: between two sessions it has none.
  const s = {t: Date.now() / 1000, restarts: (window.tessera && window.tessera.restarts) || 0};
  if (!pc) return s;
  const r = await pc.getStats();
  r.forEach(x => {
    if (x.type === 'inbound-rtp' && x.kind === 'video') {
      Object.assign(s, {width: x.frameWidth || 0, height: x.frameHeight || 0, fps: x.framesPerSecond || 0,
        framesDecoded: x.framesDecoded || 0, freezeCount: x.freezeCount || 0, freezeSeconds: x.totalFreezesDuration || 0,
        videoBytes: x.bytesReceived || 0, videoLost: x.packetsLost || 0, videoReceived: x.packetsReceived || 0,
        nacks: x.nackCount || 0, plis: x.pliCount || 0, jitterMs: (x.jitter || 0) * 1000,
        keyframes: x.keyFramesDecoded || 0, framesDropped: x.framesDropped || 0, jbDelay: x.jitterBufferDelay || 0, jbTarget: x.jitterBufferTargetDelay || 0, jbMin: x.jitterBufferMinimumDelay || 0, jbCount: x.jitterBufferEmittedCount || 0, fecReceived: x.fecPacketsReceived || 0, rtxReceived: x.retransmittedPacketsReceived || 0, videoCodec: (r.get(x.codecId) || {}).mimeType || '',
        jitterBufferMs: x.jitterBufferEmittedCount ? 1000 * x.jitterBufferDelay / x.jitterBufferEmittedCount : 0});
    }
    if (x.type === 'inbound-rtp' && x.kind === 'audio') {
      Object.assign(s, {audioSamples: x.totalSamplesReceived || 0, concealedSamples: x.concealedSamples || 0,
        audioLost: x.packetsLost || 0, audioReceived: x.packetsReceived || 0, audioCodec: (r.get(x.codecId) || {}).mimeType || ''});
    }
    if (x.type === 'candidate-pair' && x.nominated && x.state === 'succeeded' && x.currentRoundTripTime !== undefined) s.rttMs = x.currentRoundTripTime * 1000;
  });
  return s;
}"""

# Per received video track (labelled by `label(trackIdentifier)`), and audio and loss summed
# over all of them: a viewer of several publishers.
COLLECT_TRACKS = """async ([pcs, owners]) => {
  const s = {t: Date.now() / 1000, tracks: {}, videoBytes: 0, videoLost: 0, videoReceived: 0, freezeSeconds: 0,
             audioSamples: 0, concealedSamples: 0};
  for (const [label, pc] of pcs) {
    if (!pc) continue;
    const r = await pc.getStats();
    r.forEach(x => {
      if (x.type === 'inbound-rtp' && x.kind === 'video') {
        const key = label || owners[x.trackIdentifier] || ('mid' + x.mid);
        s.tracks[key] = {width: x.frameWidth || 0, height: x.frameHeight || 0, fps: x.framesPerSecond || 0,
          framesDecoded: x.framesDecoded || 0, freezeSeconds: x.totalFreezesDuration || 0, videoBytes: x.bytesReceived || 0};
        s.videoBytes += x.bytesReceived || 0; s.videoLost += x.packetsLost || 0; s.videoReceived += x.packetsReceived || 0;
        s.freezeSeconds += x.totalFreezesDuration || 0;
      }
      if (x.type === 'inbound-rtp' && x.kind === 'audio') {
        // A muted microphone sends silence with DTX: its comfort noise counts as concealed.
        s.audioSamples += x.totalSamplesReceived || 0; s.concealedSamples += (x.concealedSamples || 0) - (x.silentConcealedSamples || 0);
        s.audioCodec = (r.get(x.codecId) || {}).mimeType || '';
      }
      if (x.type === 'candidate-pair' && x.nominated && x.state === 'succeeded' && x.currentRoundTripTime !== undefined) s.rttMs = x.currentRoundTripTime * 1000;
    });
  }
  return s;
}"""

# room.html's tiles: which user's stream each received track is.
ROOM_VIEWER = """() => {
  const owners = {};
  document.querySelectorAll('#grid .tile').forEach(t => {
    const v = t.querySelector('video');
    (v && v.srcObject ? v.srcObject.getTracks() : []).forEach(tr => { owners[tr.id] = t.dataset.key; });
  });
  return owners;
}"""

MUTE_MIC = "(pc) => pc.getSenders().forEach(s => { if (s.track && s.track.kind === 'audio') s.track.enabled = false; })"

PUBLISH_STATS = """async (pc) => {
  const r = await pc.getStats(); const out = [];
  r.forEach(x => { if (x.type === 'outbound-rtp' && x.kind === 'video') out.push({rid: x.rid || null, width: x.frameWidth || 0,
    height: x.frameHeight || 0, bytesSent: x.bytesSent || 0, limitation: x.qualityLimitationReason || '',
    fps: x.framesPerSecond || 0, plis: x.pliCount || 0, nacks: x.nackCount || 0, keyframes: x.keyFramesEncoded || 0,
    rtxBytes: x.retransmittedBytesSent || 0, mode: x.scalabilityMode || ''});
    if (x.type === 'outbound-rtp' && x.kind === 'audio') out.push({rid: 'audio', codec: (r.get(x.codecId) || {}).mimeType || '', bytesSent: x.bytesSent || 0}); });
  return out;
}"""

DIRECT_PUBLISHER = """async ([fps, codec]) => {
  const media = await navigator.mediaDevices.getUserMedia({audio: true, video: {width: 1280, height: 720, frameRate: {max: fps}}});
  const pc = new RTCPeerConnection();
  pc.addTransceiver(media.getAudioTracks()[0], {direction: 'sendonly', streams: [media]});
  const video = pc.addTransceiver(media.getVideoTracks()[0], {direction: 'sendonly', streams: [media], sendEncodings: [{maxBitrate: 1500000}]});
  // The codec the SFU run's publisher sends: the codec's loss handling is compared too.
  const codecs = RTCRtpSender.getCapabilities('video').codecs;
  video.setCodecPreferences(codecs.filter(c => c.mimeType === `video/${codec}`).concat(codecs.filter(c => c.mimeType !== `video/${codec}`)));
  window.__pc = pc;
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => { if (pc.iceGatheringState === 'complete') r(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
  return pc.localDescription.sdp;
}"""

DIRECT_VIEWER = """async (offer) => {
  const pc = new RTCPeerConnection();
  window.__pc = pc;
  (window.__pcs = window.__pcs || []).push(pc);
  const ms = new MediaStream();
  const v = document.createElement('video'); v.autoplay = true; v.muted = true; v.srcObject = ms; document.body.appendChild(v);
  pc.ontrack = e => ms.addTrack(e.track);
  await pc.setRemoteDescription({type: 'offer', sdp: offer});
  await pc.setLocalDescription(await pc.createAnswer());
  await new Promise(r => { if (pc.iceGatheringState === 'complete') r(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
  return pc.localDescription.sdp;
}"""


WRAPPERS = []


def launch(pw, a, ns):
    args = CHROMIUM_ARGS + [f"--unsafely-treat-insecure-origin-as-secure={a.base}"]
    if a.fake_video:
        args.append(f"--use-file-for-fake-video-capture={a.fake_video}")
    if a.fake_audio:
        args.append(f"--use-file-for-fake-audio-capture={a.fake_audio}")
    exe = a.chromium
    if ns:
        # Playwright talks to Chromium over pipes, so Chromium may live in another namespace.
        fd, exe = tempfile.mkstemp(prefix="netbed-chromium-", suffix=".sh")
        os.write(fd, f'#!/bin/sh\nexec ip netns exec {ns} {a.chromium} "$@"\n'.encode())
        os.close(fd)
        os.chmod(exe, stat.S_IRWXU)
        WRAPPERS.append(exe)
    return pw.chromium.launch(executable_path=exe, headless=True, args=args)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["sfu", "direct"])
    p.add_argument("--base", required=True, help="the server, as the viewer reaches it: http://host:port")
    p.add_argument("--viewer-ns", required=True, help="the shaped namespace (the viewer's, unless --shaped publisher)")
    p.add_argument("--shaped", choices=["viewer", "publisher"], default="viewer", help="whose browser sits behind the shaped link")
    p.add_argument("--room", default="net")
    p.add_argument("--user", default="cam")
    p.add_argument("--token", action="append", default=[], help="sfu: a publisher's token (one per --publishers)")
    p.add_argument("--publishers", type=int, default=1)
    p.add_argument("--fps", type=int, default=30, help="the publishers' camera frame rate")
    p.add_argument("--viewer-token", default="")
    p.add_argument("--fake-video", default="")
    p.add_argument("--fake-audio", default="", help="a WAV file the fake microphone plays in a loop (Chromium's own beeps too briefly to count as speech)")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--codec", default="H264", help="the publishers' video codec: H264 (one temporal layer) or VP8 (Chrome: three per simulcast layer)")
    p.add_argument("--single-layer", action="store_true", help="sfu: the publishers send one encoding (no simulcast), as OBS over WHIP does")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--warmup", type=float, default=4, help="publisher alone before the viewer joins")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    a = p.parse_args()
    out = {"mode": a.mode}
    meeting = a.publishers > 1
    with sync_playwright() as pw:
        shaped_publisher = a.shaped == "publisher"
        pub_browser = launch(pw, a, a.viewer_ns if shaped_publisher else None)
        view_browser = launch(pw, a, None if shaped_publisher else a.viewer_ns)
        try:
            pub_context = pub_browser.new_context()
            pubs = [pub_context.new_page() for _ in range(a.publishers)]
            view = view_browser.new_context().new_page()
            if a.mode == "sfu":
                for i, pub in enumerate(pubs):
                    q = {"room": a.room, "token": a.token[i], "codec": a.codec, "autostart": "1", "degradation": "maintain-resolution", "fps": a.fps}
                    if not a.single_layer:
                        q["simulcast"] = "1"
                    goto(pub, f"{a.base}/publish.html?{urlencode(q)}")
                for pub in pubs:
                    pub.wait_for_function("window.tessera && (window.tessera.state === 'connected' || window.tessera.state === 'failed')", timeout=20000)
                    if pub.evaluate("window.tessera.state") == "failed":
                        raise RuntimeError(f"publish failed: {pub.evaluate('window.tessera.error')}")
                pub_pc = "pc"
                for pub in pubs[1:]:
                    pub.evaluate(f"({MUTE_MIC})(pc)")
                time.sleep(a.warmup)
                if meeting:
                    q = {"token": a.viewer_token, "autojoin": "1"}
                    goto(view, f"{a.base}/room.html?{urlencode(q)}", timeout=VIEW_LOAD_MS)
                    view.wait_for_function("window.tessera && ['joined', 'failed'].includes(window.tessera.state)", timeout=20000)
                    if view.evaluate("window.tessera.state") == "failed":
                        raise RuntimeError(f"join failed: {view.evaluate('window.tessera.error')}")
                    view_pcs = "[['', window.tessera.room && window.tessera.room.sub]]"
                else:
                    q = {"room": a.room, "user": a.user, "token": a.viewer_token or a.token[0], "quality": "auto", "autostart": "1"}
                    goto(view, f"{a.base}/play.html?{urlencode(q)}", wait_until="domcontentloaded", timeout=VIEW_LOAD_MS)
                    view.wait_for_function("typeof pc !== 'undefined' && pc !== null", timeout=15000)
                    view_pc = "pc"
            else:
                goto(view, f"{a.base}/play.html")
                offers = []
                for pub in pubs:
                    goto(pub, f"{a.base}/play.html")
                    offers.append(pub.evaluate(DIRECT_PUBLISHER, [a.fps, a.codec]))
                for pub in pubs[1:]:
                    pub.evaluate(f"({MUTE_MIC})(window.__pc)")
                time.sleep(a.warmup)
                for pub, offer in zip(pubs, offers):
                    answer = view.evaluate(DIRECT_VIEWER, offer)
                    pub.evaluate("async (sdp) => window.__pc.setRemoteDescription({type: 'answer', sdp})", answer)
                pub_pc, view_pc = "window.__pc", "window.__pc"
                view_pcs = "(window.__pcs || []).map((pc, i) => ['cam' + i, pc])"
            layers_before = [pub.evaluate(f"({PUBLISH_STATS})({pub_pc})") for pub in pubs]
            out["start"] = time.time()
            # The harness times the link's steps from this line.
            print(json.dumps({"sampling": out["start"]}), flush=True)
            samples = []
            end = time.time() + a.seconds
            while time.time() < end:
                t0 = time.time()
                if meeting:
                    samples.append(view.evaluate(f"({COLLECT_TRACKS})([{view_pcs}, ({ROOM_VIEWER})()])"))
                else:
                    samples.append(view.evaluate(f"({COLLECT})({view_pc})"))
                time.sleep(max(0.0, a.interval - (time.time() - t0)))
            out["samples"] = samples
            took = time.time() - out["start"]
            publishers = []
            for pub, before_all in zip(pubs, layers_before):
                layers = pub.evaluate(f"({PUBLISH_STATS})({pub_pc})")
                for l in layers:
                    before = next((x for x in before_all if x["rid"] == l["rid"]), {"bytesSent": 0})
                    l["kbps"] = round((l["bytesSent"] - before["bytesSent"]) * 8 / 1000 / took)
                publishers.append(layers)
            out["publisher"] = publishers[0] if not meeting else publishers
            if a.mode == "sfu":
                out["publisher_restarts"] = sum(pub.evaluate("window.tessera.restarts || 0") for pub in pubs)
        finally:
            close_like_a_user(pub_browser)
            close_like_a_user(view_browser)
            for w in WRAPPERS:
                os.unlink(w)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one JSON line either way
        print(json.dumps({"error": str(e)}), flush=True)
        sys.exit(1)
