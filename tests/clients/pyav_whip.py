#!/usr/bin/env python3
"""FFmpeg's own WHIP muxer (FFmpeg 8, as PyAV's wheels bundle it) publishing to Tessera.

Encodes --seconds of a solid colour (H.264, libx264 baseline, no B-frames) and a 440 Hz tone
(Opus) and writes them to the WHIP URL. Prints one JSON line: frames and audio frames written,
or {"error": ...} and exit 1 (FFmpeg's own message, e.g. a DTLS handshake that never finished).
"""
import argparse
import json
import sys
import time
from fractions import Fraction

import av
import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--flags", default="", help="whip_flags, e.g. dtls_active")
    p.add_argument("--cert", default="", help="PEM certificate for DTLS (cert_file)")
    p.add_argument("--key", default="", help="PEM private key for DTLS (key_file)")
    a = p.parse_args()
    options = {"authorization": a.token, "handshake_timeout": "8000"}
    if a.flags:
        options["whip_flags"] = a.flags
    if a.cert:
        options["cert_file"], options["key_file"] = a.cert, a.key
    out = av.open(a.url, "w", format="whip", options=options)
    fps = 25
    video = out.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
    video.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "bf": "0", "g": str(fps)}
    audio = out.add_stream("libopus", rate=48000)
    audio.layout = "stereo"
    frames = audio_frames = 0
    start = time.time()
    rgb = np.zeros((240, 320, 3), dtype=np.uint8)
    rgb[:, :] = (0, 200, 0)
    t_audio = 0
    while time.time() - start < a.seconds:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = frames
        frame.time_base = Fraction(1, fps)
        for packet in video.encode(frame):
            out.mux(packet)
        frames += 1
        # 40 ms of tone per video frame, in 20 ms Opus-sized chunks.
        for _ in range(2):
            n = 960
            t = (np.arange(n) + t_audio) / 48000.0
            samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
            af = av.AudioFrame.from_ndarray(np.vstack([samples, samples]).reshape(1, -1), format="s16", layout="stereo")
            af.sample_rate = 48000
            af.pts = t_audio
            af.time_base = Fraction(1, 48000)
            t_audio += n
            for packet in audio.encode(af):
                out.mux(packet)
                audio_frames += 1
        time.sleep(max(0.0, start + frames / fps - time.time()))
    for s in (video, audio):
        for packet in s.encode(None):
            out.mux(packet)
    out.close()
    print(json.dumps({"frames": frames, "audio_frames": audio_frames}), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        sys.exit(1)
