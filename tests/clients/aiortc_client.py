#!/usr/bin/env python3
"""An independent WebRTC stack (aiortc) as a WHIP publisher or a WHEP player.

publish: sends a synthetic video (solid colour, frame counter in the luma of the top-left
         block) and a 440 Hz tone for --seconds, then DELETEs the session.
ws-publish: joins a room over the signaling WebSocket (--url ws://…/v1/rtc), publishes the same
         video and tone on the pub connection (the `publish` message), pings every 2 s, leaves
         after --seconds and prints the server messages' types it saw.
ws-meet: joins a room over the signaling WebSocket with auto_subscribe, publishes a solid --rgb
         picture and a tone on the pub connection, answers the server's offers on the sub
         connection, and after --seconds prints per remote user the frames decoded, the mean
         colour and the audio frames, the server messages' types and the first_media it got.
play:    receives for --seconds and prints one JSON line: frames decoded, size, audio frames,
         the mean colour of the last frame; with --sample "x,y;x,y" the colour (3x3 mean) at
         those points every few frames as [time, [[r,g,b], ...]]; with --tones "f1,f2" how far
         each tone stands above the spectrum's median (dB) over the last 2 s of audio.
Errors print {"error": ...} and exit 1.
"""
import argparse
import asyncio
import fractions
import json
import math
import sys
import time

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription, RTCRtpSender
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
import av
import urllib.parse
import urllib.request


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http(method, url, token, body=None, content_type="application/sdp"):
    """One request; a 307/308 is followed with the same method, body and token, as RFC 9725
    asks of WHIP clients (a cluster node redirects to the room's node). The headers' "_url" is
    the URL that answered (session Locations are relative to it)."""
    opener = urllib.request.build_opener(NoRedirect)
    for _ in range(4):
        req = urllib.request.Request(url, data=body.encode() if body else None, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with opener.open(req, timeout=10) as r:
                status, headers, text = r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
        except urllib.error.HTTPError as e:
            status, headers, text = e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()
        if status in (307, 308) and "location" in headers:
            url = urllib.parse.urljoin(url, headers["location"])
            continue
        headers["_url"] = url
        return status, headers, text
    return status, headers, text


class ColourVideo(VideoStreamTrack):
    def __init__(self, width, height, rgb):
        super().__init__()
        self.width, self.height = width, height
        self.rgb = rgb

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        img = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        img[:, :] = self.rgb
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tone(AudioStreamTrack):
    def __init__(self, hz=440.0):
        super().__init__()
        self.hz = hz
        self.n = 0

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        rate, samples = 48000, 960
        if not hasattr(self, "_start"):
            self._start = time.time()
        wait = self._start + self.n / rate - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(samples) + self.n) / rate
        pcm = (np.sin(2 * math.pi * self.hz * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self.n
        frame.time_base = fractions.Fraction(1, rate)
        self.n += samples
        return frame


def prefer(transceiver, kind, codec):
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in caps if c.mimeType.lower() == f"{kind}/{codec.lower()}"]
    if chosen:
        transceiver.setCodecPreferences(chosen + [c for c in caps if c not in chosen])


async def publish(a):
    pc = RTCPeerConnection()
    video = pc.addTransceiver(ColourVideo(a.width, a.height, (0, 0, 255)), direction="sendonly")
    prefer(video, "video", a.codec)
    pc.addTransceiver(Tone(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, body = http("POST", a.url, a.token, pc.localDescription.sdp)
    if status != 201:
        print(json.dumps({"error": f"{status} {body}"}), flush=True)
        return 1
    location = headers.get("location")
    connected = asyncio.get_event_loop().create_future()

    @pc.on("connectionstatechange")
    def on_state():
        if pc.connectionState == "connected" and not connected.done():
            connected.set_result(time.time())

    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    connected_at = await asyncio.wait_for(connected, 10)
    print(json.dumps({"published": location, "connected_at": connected_at}), flush=True)
    await asyncio.sleep(a.seconds)
    http("DELETE", urllib.parse.urljoin(headers["_url"], location), a.token)
    await pc.close()
    return 0


async def ws_publish(a):
    import websockets

    async with websockets.connect(a.url, max_size=None) as ws:
        seen = []

        async def reply(kind):
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                seen.append(m["type"])
                if m["type"] == kind or m["type"] == "error":
                    return m

        await ws.send(json.dumps({"type": "join", "id": "j", "token": a.token}))
        joined = await reply("joined")
        if joined["type"] != "joined":
            print(json.dumps({"error": joined}), flush=True)
            return 1
        pc = RTCPeerConnection()
        video = pc.addTransceiver(ColourVideo(a.width, a.height, (0, 0, 255)), direction="sendonly")
        prefer(video, "video", a.codec)
        pc.addTransceiver(Tone(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        await ws.send(json.dumps({"type": "publish", "id": "p", "stream": "main", "sdp": pc.localDescription.sdp,
                                  "tracks": [{"mid": t.mid, "kind": t.kind} for t in pc.getTransceivers()]}))
        answer = await reply("answer")
        if answer["type"] != "answer" or answer.get("pc") != "pub":
            print(json.dumps({"error": answer}), flush=True)
            return 1
        connected = asyncio.get_event_loop().create_future()

        @pc.on("connectionstatechange")
        def on_state():
            if pc.connectionState == "connected" and not connected.done():
                connected.set_result(time.time())

        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        connected_at = await asyncio.wait_for(connected, 10)
        print(json.dumps({"published": True, "connected_at": connected_at}), flush=True)
        end = time.time() + a.seconds
        while time.time() < end:
            await ws.send(json.dumps({"type": "ping"}))
            await reply("pong")
            await asyncio.sleep(2)
        await ws.send(json.dumps({"type": "leave", "id": "bye"}))
        await reply("ok")
        await pc.close()
        print(json.dumps({"done": True, "seen": seen, "session_id": joined["session_id"]}), flush=True)
        return 0


async def ws_meet(a):
    import websockets

    rgb = tuple(int(v) for v in a.rgb.split(","))
    received = {}
    seen = []
    first_media = []
    mids = {}
    tasks = []
    async with websockets.connect(a.url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "join", "id": "j", "token": a.token}))
        joined = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if joined["type"] != "joined":
            print(json.dumps({"error": joined}), flush=True)
            return 1
        pub = RTCPeerConnection()
        video = pub.addTransceiver(ColourVideo(a.width, a.height, rgb), direction="sendonly")
        prefer(video, "video", a.codec)
        pub.addTransceiver(Tone(), direction="sendonly")
        await pub.setLocalDescription(await pub.createOffer())
        await ws.send(json.dumps({"type": "publish", "id": "p", "stream": "main", "sdp": pub.localDescription.sdp}))
        sub = RTCPeerConnection()

        async def consume(track, mid):
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                user = mids.get(mid, "?")
                r = received.setdefault(user, {"frames": 0, "audio_frames": 0, "mean_rgb": None})
                if track.kind == "video":
                    r["frames"] += 1
                    if r["frames"] % 10 == 0:
                        px = frame.to_ndarray(format="rgb24")
                        h, w = px.shape[0], px.shape[1]
                        r["mean_rgb"] = [int(x) for x in px[h // 4:3 * h // 4, w // 4:3 * w // 4].reshape(-1, 3).mean(axis=0)]
                else:
                    r["audio_frames"] += 1

        @sub.on("track")
        def on_track(track):
            mid = next((t.mid for t in sub.getTransceivers() if t.receiver.track is track), None)
            tasks.append(asyncio.ensure_future(consume(track, mid)))

        async def reader():
            while True:
                m = json.loads(await ws.recv())
                seen.append(m["type"])
                if m["type"] == "answer" and m.get("pc") == "pub":
                    await pub.setRemoteDescription(RTCSessionDescription(sdp=m["sdp"], type="answer"))
                elif m["type"] == "offer" and m.get("pc") == "sub":
                    for t in m["tracks"]:
                        mids[t["mid"]] = t["user"]
                    await sub.setRemoteDescription(RTCSessionDescription(sdp=m["sdp"], type="offer"))
                    await sub.setLocalDescription(await sub.createAnswer())
                    await ws.send(json.dumps({"type": "answer", "pc": "sub", "sdp": sub.localDescription.sdp}))
                elif m["type"] == "first_media":
                    first_media.append([m["user"], m["kind"]])
                elif m["type"] == "error":
                    print(json.dumps({"server_error": m}), file=sys.stderr, flush=True)

        read = asyncio.ensure_future(reader())
        start = time.time()
        end = start + a.seconds
        muted = False
        while time.time() < end and not read.done():
            await ws.send(json.dumps({"type": "ping"}))
            if a.mute_after and not muted and time.time() - start >= a.mute_after:
                await ws.send(json.dumps({"type": "mute", "id": "m", "stream": "main", "kind": "video", "muted": True}))
                muted = True
            await asyncio.sleep(1)
        if read.done() and read.exception():
            raise read.exception()
        read.cancel()
        await ws.send(json.dumps({"type": "leave", "id": "bye"}))
        await pub.close()
        await sub.close()
        for t in tasks:
            t.cancel()
    print(json.dumps({"received": received, "seen": seen, "first_media": first_media, "session_id": joined["session_id"]}), flush=True)
    return 0


async def play(a):
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    result = {"frames": 0, "width": 0, "height": 0, "audio_frames": 0, "audio_rms": 0.0, "mean_rgb": None, "frame_times": []}
    points = [tuple(int(v) for v in p.split(",")) for p in a.sample.split(";")] if a.sample else []
    if points:
        result["samples"] = []
    mono = []
    tasks = []

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                result["frames"] += 1
                result["frame_times"].append(round(time.time(), 3))
                result["width"], result["height"] = frame.width, frame.height
                if result["frames"] % 10 == 0 or (points and result["frames"] % 3 == 0):
                    rgb = frame.to_ndarray(format="rgb24")
                    result["mean_rgb"] = [int(x) for x in rgb.reshape(-1, 3).mean(axis=0)]
                    if points:
                        h, w = rgb.shape[0], rgb.shape[1]
                        cols = []
                        for (x, y) in points:
                            x, y = min(max(x, 1), w - 2), min(max(y, 1), h - 2)
                            cols.append([int(c) for c in rgb[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)])
                        result["samples"].append([round(time.time(), 3), cols])
            else:
                result["audio_frames"] += 1
                pcm = frame.to_ndarray().astype(np.float64)
                result["audio_rms"] = max(result["audio_rms"], float(np.sqrt((pcm ** 2).mean())))
                if a.tones:
                    channels = len(frame.layout.channels)
                    mono.extend(pcm.reshape(-1, channels).mean(axis=1).tolist())
                    del mono[:-96000]

    @pc.on("track")
    def on_track(track):
        tasks.append(asyncio.ensure_future(consume(track)))

    await pc.setLocalDescription(await pc.createOffer())
    status, headers, body = http("POST", a.url, a.token, pc.localDescription.sdp)
    if status != 201:
        print(json.dumps({"error": f"{status} {body}"}), flush=True)
        return 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    await asyncio.sleep(a.seconds)
    await pc.close()
    for t in tasks:
        t.cancel()
    if a.tones and len(mono) >= 48000:
        x = np.array(mono) * np.hanning(len(mono))
        spectrum = np.abs(np.fft.rfft(x))
        freqs = np.fft.rfftfreq(len(mono), 1 / 48000)
        floor = float(np.median(spectrum)) + 1e-9
        result["tones"] = {}
        for f in a.tones.split(","):
            band = spectrum[(freqs > float(f) - 10) & (freqs < float(f) + 10)]
            result["tones"][f] = round(20 * math.log10(float(band.max()) / floor), 1)
    print(json.dumps(result), flush=True)
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["publish", "play", "ws-publish", "ws-meet"])
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--codec", default="H264")
    p.add_argument("--rgb", default="0,0,255", help="ws-meet: the colour published")
    p.add_argument("--mute-after", type=float, default=0, help="ws-meet: mute the video after this many seconds")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--delay", type=float, default=0, help="seconds to wait before starting")
    p.add_argument("--sample", default="", help="play: points x,y;x,y whose colour is sampled")
    p.add_argument("--tones", default="", help="play: frequencies f1,f2 measured in the audio")
    a = p.parse_args()
    try:
        if a.delay:
            time.sleep(a.delay)
        modes = {"publish": publish, "play": play, "ws-publish": ws_publish, "ws-meet": ws_meet}
        return asyncio.run(modes[a.mode](a))
    except Exception as e:  # report, never hang
        print(json.dumps({"error": repr(e)}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
