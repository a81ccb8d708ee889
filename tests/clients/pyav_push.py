#!/usr/bin/env python3
"""Publishes over RTMP with FFmpeg 8 (PyAV's bundled libraries): a flat colour encoded with
--codec (libx265 gives HEVC, sent as Enhanced RTMP `hvc1`; libsvtav1/libaom-av1 give AV1 `av01`)
and a 440 Hz AAC tone, in real time, for --seconds. Debian's ffmpeg 5.1 cannot send Enhanced
RTMP; this is FFmpeg's own FLV muxer and RTMP client all the same.

With --stamp, each picture carries its capture time (wall clock, ms mod 2^32) as 32 blocks of
16x16 pixels along its top edge (white = 1, most significant first): a viewer that samples them
measures glass-to-glass latency (benches/glass_to_glass.sh). --bframes sets libx264's B-frames.

Prints {"sent": frames} when done, or {"error": ...} and exits 1.
"""
import argparse
import json
import math
import sys
import time

import av
import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--codec", default="libx265")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rgb", default="32,128,224")
    p.add_argument("--size", default="640x360")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--stamp", action="store_true")
    p.add_argument("--bframes", type=int, default=None)
    p.add_argument("--preset", default=None)
    a = p.parse_args()
    w, h = (int(x) for x in a.size.split("x"))
    r, g, b = (int(x) for x in a.rgb.split(","))
    try:
        out = av.open(a.url, mode="w", format="flv")
        video = out.add_stream(a.codec, rate=a.fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.bit_rate = 1_000_000
        if a.codec == "libx265":
            # x265's defaults (B-frames and all), a keyframe every 2 s, quiet.
            video.options = {"x265-params": f"keyint={a.fps * 2}:log-level=error"}
        else:
            video.options = {"g": str(a.fps * 2)}
            if a.bframes is not None:
                video.options["bf"] = str(a.bframes)
            if a.preset:
                video.options["preset"] = a.preset
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        picture = np.zeros((h, w, 3), dtype=np.uint8)
        picture[:, :] = (r, g, b)
        start = time.monotonic()
        frames = 0
        samples = 0
        while frames < a.seconds * a.fps:
            due = start + frames / a.fps
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            # A small bar moves over the colour, so the encoder has something to do.
            pic = picture.copy()
            x = (frames * 8) % (w - 16)
            pic[: h // 8, x : x + 16] = (255, 255, 255)
            if a.stamp:
                stamp = int(time.time() * 1000) & 0xFFFFFFFF
                pic[:24, : 32 * 16] = (0, 0, 0)
                for bit in range(32):
                    if stamp >> (31 - bit) & 1:
                        pic[4:20, bit * 16 + 2 : bit * 16 + 14] = (255, 255, 255)
            frame = av.VideoFrame.from_ndarray(pic, format="rgb24")
            frame.pts = frames
            for packet in video.encode(frame):
                out.mux(packet)
            # 1024 samples of the tone per AAC frame, kept up with the video.
            while samples < (frames + 1) * 48000 / a.fps:
                t = (np.arange(1024) + samples) / 48000
                tone = (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                af.sample_rate = 48000
                af.pts = samples
                for packet in audio.encode(af):
                    out.mux(packet)
                samples += 1024
            frames += 1
        for packet in video.encode(None):
            out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
        out.close()
    except Exception as e:  # the server's refusal comes as an error here
        print(json.dumps({"error": str(e)}), flush=True)
        sys.exit(1)
    print(json.dumps({"sent": frames}), flush=True)


if __name__ == "__main__":
    main()
