#!/usr/bin/env python3
"""An RTMP server that understands Enhanced RTMP (FFmpeg 8, PyAV's bundled libraries): listens
on --url (rtmp://host:port/app/key), takes one publish, decodes its video and counts its
audio, until the publisher disconnects or --seconds pass.

Debian's ffmpeg 5.1 (`ffmpeg -listen 1`) only reads legacy FLV (H.264); this is the CDN a relay
sends HEVC or AV1 to as they came.

Prints {"video_codec", "audio_codec", "video_packets", "keyframes", "frames", "width", "height",
"mean_rgb"}, or {"error": ...} and exits 1.
"""
import argparse
import json
import sys
import time

import av


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--seconds", type=float, default=60)
    a = p.parse_args()
    out = {"video_codec": None, "audio_codec": None, "video_packets": 0, "keyframes": 0, "frames": 0, "width": 0, "height": 0, "mean_rgb": None}
    try:
        container = av.open(a.url, mode="r", format="flv", options={"listen": "1", "timeout": str(int(a.seconds))})
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        out["video_codec"] = video.codec_context.codec.canonical_name if video else None
        out["audio_codec"] = audio.codec_context.codec.canonical_name if audio else None
        deadline = time.monotonic() + a.seconds
        last = None
        try:
            for packet in container.demux():
                if time.monotonic() > deadline:
                    break
                if packet.stream.type != "video" or packet.size == 0:
                    continue
                out["video_packets"] += 1
                out["keyframes"] += 1 if packet.is_keyframe else 0
                for frame in packet.decode():
                    out["frames"] += 1
                    last = frame
        except (av.error.EOFError, av.error.OSError):
            pass  # the publisher went away
        if last is not None:
            out["width"], out["height"] = last.width, last.height
            rgb = last.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            centre = rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
            out["mean_rgb"] = [int(round(float(centre[:, :, c].mean()))) for c in range(3)]
        container.close()
    except Exception as e:  # noqa: BLE001 - the test reads the message
        print(json.dumps({"error": repr(e), **out}), flush=True)
        return 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
