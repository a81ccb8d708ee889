#!/usr/bin/env python3
"""Headless Chromium (Debian's, fake camera and microphone) driving Tessera's own pages.

publish: opens publish.html with autostart and keeps it open for --seconds; prints the page's
         state and the published video track's size.
play:    opens play.html with autostart, waits --seconds, prints window.tessera.stats.
both:    a publisher tab and a player tab in one browser.
room:    one tab per --participant "user,token,#rrggbb,tone_hz" on room.html (a synthetic colour
         and tone as the camera); then the script of the meeting test: after --seconds the first
         mutes its video, the second shares a screen-like canvas (--screen-color) as aux, the
         third's signaling socket is closed under it (tessera.js resumes), and after
         --seconds more the last leaves; prints per tab its remote tiles (frames, centre colour)
         at each step and the room events it saw.
speakers: tabs as in room (tone 0: a silent microphone); waits until a silent tab is told the
         first tab speaks, then the first falls silent and the second plays a tone, and times
         until the third is told only the second speaks; then everyone is silent. Prints the
         lists and times, and per tab its last `quality` and `stats` messages.
quality: one room.html tab (--token, an audience token: it only watches) for --seconds; its
         last `quality` report's downlink score, loss and RTT with the wall-clock time (polled
         every 50 ms, kept on a change or after a second), and at the end its remote tiles.
custom:  tabs as in room (options: `nodc` publishes without data channels, `watch` for an
         audience token); the first sends custom messages on its data channels: 40 within a
         second (reliable), refused ones (1001 bytes, cmd_id 0 and 11, an empty frame), 5 on the
         lossy channel, then 60 timestamped ones at 20/s on the reliable channel and 60 over the
         socket for latency. Prints per tab what it received and the errors it was told.
speedtest: speedtest.html with --token, --up-kbps and --down-kbps; prints its result.
meet:    tabs as in room, in the room for --seconds (the others' script runs elsewhere, e.g.
         firefox.mjs); prints per tab its remote tiles every 4 s and the room events it saw.
Prints one JSON line; exits 1 with {"error": ...} on failure.
"""
import argparse
import json
import sys
import time
from urllib.parse import urlencode

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]



def close_like_a_user(browser):
    """Closes the tabs, then the browser. A closed tab ends its peer connections (DTLS
    close_notify) and the server stops sending at once; a browser ended with its tabs open
    looks like a crash, and the server goes on sending to it until its liveness timeout, a
    load the next test on the same machine pays for."""
    for context in browser.contexts:
        for page in context.pages:
            try:
                page.close()
            except Exception:
                pass
    browser.close()


def goto(page, url, **kw):
    """page.goto, tried again when Chromium reports the network changed under it (a test
    host's fresh veth still settling: its IPv6 link-local address appears a moment later)."""
    for attempt in range(3):
        try:
            return page.goto(url, **kw)
        except Exception as e:  # playwright's Error
            if "ERR_NETWORK_CHANGED" not in str(e) or attempt == 2:
                raise
            time.sleep(1)

def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["publish", "play", "wait-play", "hls", "admin", "both", "room", "join-time", "speakers", "quality", "custom", "speedtest", "meet"])
    p.add_argument("--expect", type=int, default=1, help="join-time: remote streams to wait for")
    p.add_argument("--repeat", type=int, default=5, help="join-time: joins to time")
    p.add_argument("--base", required=True, help="http://host:port")
    p.add_argument("--room", default="")
    p.add_argument("--participant", action="append", default=[], help="room: user,token,#rrggbb,tone[,simulcast]")
    p.add_argument("--screen-color", default="#ffffff")
    p.add_argument("--size", default="320x180")
    p.add_argument("--user", default="")
    p.add_argument("--token", default="")
    p.add_argument("--viewer-token", default=None)
    p.add_argument("--codec", default="H264")
    p.add_argument("--simulcast", action="store_true")
    p.add_argument("--quality", default="auto")
    p.add_argument("--degradation", default="")
    p.add_argument("--ice-restart-after", type=float, default=0, help="publisher restarts ICE after this many seconds")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--up-kbps", type=int, default=2000)
    p.add_argument("--down-kbps", type=int, default=4000)
    p.add_argument("--close-tab", action="store_true", help="publish: close the tab (no Stop) after --seconds, then wait 3 s")
    p.add_argument("--fake-video", default="", help="Y4M/MJPEG file the fake camera plays in a loop")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--loopback", action="store_true", help="allow WebRTC on 127.0.0.1 (benchmarks on one host)")
    p.add_argument("--src", default="", help="hls: a playlist URL")
    p.add_argument("--recording", default="", help="hls: a recording id (with --api-key)")
    p.add_argument("--api-key", default="")
    p.add_argument("--screenshot", default="", help="admin: save a full-page screenshot here")
    p.add_argument("--stop-task", default="", help="admin: the task whose Stop button to press")
    p.add_argument("--sync", default="", help="hls: hls.js liveSyncDurationCount (player.html's default 1.5)")
    p.add_argument("--trust-spki", default="", help="an HTTPS --base: trust the certificate with this public key (base64 SHA-256)")
    a = p.parse_args()
    out = {}
    with sync_playwright() as pw:
        # getUserMedia needs a secure context: the test server is plain HTTP on a test-host
        # address, or HTTPS with a certificate this profile trusts by its public key.
        if a.trust_spki:
            args = CHROMIUM_ARGS + [f"--ignore-certificate-errors-spki-list={a.trust_spki}"]
        else:
            args = CHROMIUM_ARGS + [f"--unsafely-treat-insecure-origin-as-secure={a.base}"]
        if a.loopback:
            args.append("--allow-loopback-in-peer-connection")
        if a.fake_video:
            args.append(f"--use-file-for-fake-video-capture={a.fake_video}")
        browser = pw.chromium.launch(executable_path=a.chromium, headless=True, args=args)
        try:
            ctx = browser.new_context()
            if a.mode in PAGE_MODES:
                return print(json.dumps(PAGE_MODES[a.mode](ctx, a)), flush=True) or 0
            pub = None
            if a.mode in ("publish", "both"):
                q = {"room": a.room, "token": a.token, "codec": a.codec, "autostart": "1"}
                if a.simulcast:
                    q["simulcast"] = "1"
                if a.degradation:
                    q["degradation"] = a.degradation
                pub = ctx.new_page()
                goto(pub, f"{a.base}/publish.html?{urlencode(q)}")
                pub.wait_for_function("window.tessera && (window.tessera.state === 'connected' || window.tessera.state === 'failed')", timeout=15000)
                out["publish_state"] = pub.evaluate("window.tessera.state")
                out["publish_error"] = pub.evaluate("window.tessera.error")
                if out["publish_state"] == "failed":
                    raise RuntimeError(f"publish failed: {out['publish_error']}")
                settings = pub.evaluate("document.getElementById('preview').srcObject.getVideoTracks()[0].getSettings()")
                out["publish_width"], out["publish_height"] = settings.get("width"), settings.get("height")
            if a.mode in ("play", "both"):
                if a.ice_restart_after and pub is not None:
                    play_seconds = a.seconds
                q = {"room": a.room, "user": a.user, "token": a.viewer_token or a.token, "quality": a.quality, "autostart": "1"}
                play = ctx.new_page()
                # DOMContentLoaded is enough: autostart runs then, and on a loaded machine the
                # load event of a page whose video is already playing can lag by many seconds.
                goto(play, f"{a.base}/play.html?{urlencode(q)}", wait_until="domcontentloaded")
                if a.ice_restart_after and pub is not None:
                    time.sleep(a.ice_restart_after)
                    frames_before = play.evaluate("window.tessera.stats.framesDecoded || 0")
                    out["new_ufrag"] = pub.evaluate("window.tessera.iceRestart()")
                    time.sleep(max(0.0, a.seconds - a.ice_restart_after))
                    out["frames_before_restart"] = frames_before
                    out["publish_state_after_restart"] = pub.evaluate("window.tessera.state")
                    # A restart with a stale ETag must be refused with 412.
                    out["stale_etag_status"] = pub.evaluate("""async () => (await fetch(window.tessera.location, {method: 'PATCH',
                        body: 'a=ice-ufrag:abcd\\r\\na=ice-pwd:0123456789abcdef012345\\r\\n',
                        headers: {'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': '"stale"',
                                  'Authorization': 'Bearer ' + document.getElementById('token').value.trim()}})).status""")
                else:
                    time.sleep(a.seconds)
                out["play_state"] = play.evaluate("window.tessera.state")
                out["play_error"] = play.evaluate("window.tessera.error")
                out["stats"] = play.evaluate("window.tessera.stats")
            elif pub is not None:
                time.sleep(a.seconds)
            if pub is not None and a.close_tab:
                out["publish_stats"] = pub.evaluate("window.tessera.stats")
                out["closed_tab_at"] = time.time()
                pub.close()
                time.sleep(3)
            elif pub is not None:
                out["publish_stats"] = pub.evaluate("window.tessera.stats")
        finally:
            close_like_a_user(browser)
    print(json.dumps(out), flush=True)
    return 0


def join_time(ctx, a):
    """Joins room.html (an audience token: it only watches) --repeat times; each time, how long
    from Join to `joined` and to the first frame of the first and of the last of --expect
    remote streams (requestVideoFrameCallback: a frame presented, not just received)."""
    runs = []
    for _ in range(a.repeat):
        page = ctx.new_page()
        goto(page, f"{a.base}/room.html?{urlencode({'token': a.token, 'autojoin': '1'})}")
        page.wait_for_function(f"Object.keys(window.tessera.firstFrames || {{}}).length >= {a.expect}", timeout=30000)
        frames = sorted(page.evaluate("Object.values(window.tessera.firstFrames)"))
        runs.append({"joined_ms": page.evaluate("window.tessera.joinedMs"), "first_ms": frames[0], "all_ms": frames[a.expect - 1]})
        page.evaluate("window.tessera.leave()")
        time.sleep(1)
        page.close()
    med = lambda k: sorted(r[k] for r in runs)[len(runs) // 2]
    return {"streams": a.expect, "runs": runs, "median": {k: med(k) for k in ("joined_ms", "first_ms", "all_ms")}}


def open_participants(ctx, a):
    pages = []
    for spec in a.participant:
        user, token, color, tone, *opts = spec.split(",")
        q = {"token": token, "source": "synthetic", "color": color, "tone": tone, "size": a.size, "autojoin": "1"}
        if tone == "0":
            q["silent"] = "1"
        if "nodc" in opts:
            q["dc"] = "0"
        if "simulcast" in opts:
            q["simulcast"] = "1"
        page = ctx.new_page()
        # The page's console, kept to say where a tab stuck if it never gets ready.
        page._console = []
        page.on("console", lambda m, page=page: page._console.append(f"{m.type}: {m.text}"[:300]))
        page.on("pageerror", lambda e, page=page: page._console.append(f"pageerror: {e}"[:300]))
        goto(page, f"{a.base}/room.html?{urlencode(q)}")
        pages.append((user, page))
    watchers = {s.split(",")[0] for s in a.participant if "watch" in s.split(",")[4:]}
    for user, page in pages:
        ready = "'joined'" if user in watchers else "'publishing'"
        try:
            page.wait_for_function(f"window.tessera && [{ready}, 'failed'].includes(window.tessera.state)", timeout=20000)
        except Exception as e:
            where = {u: {"state": p.evaluate("window.tessera && [window.tessera.state, window.tessera.error, window.tessera.joinedMs]"), "console": p._console[-10:]} for u, p in pages}
            raise RuntimeError(f"{user} not {ready} in 20 s ({e}); the tabs: {json.dumps(where)}") from e
        if page.evaluate("window.tessera.state") == "failed":
            raise RuntimeError(f"{user}: {page.evaluate('window.tessera.error')}")
    return pages


def speedtest(ctx, a):
    page = ctx.new_page()
    goto(page, f"{a.base}/speedtest.html?{urlencode({'token': a.token, 'up': a.up_kbps, 'down': a.down_kbps, 'autostart': '1'})}")
    page.wait_for_function("window.tessera && ['done', 'failed'].includes(window.tessera.state)", timeout=40000)
    return {"state": page.evaluate("window.tessera.state"), "page_error": page.evaluate("window.tessera.error"), "result": page.evaluate("window.tessera.result")}


def custom(ctx, a):
    pages = open_participants(ctx, a)
    users = [u for u, _ in pages]
    sender = pages[0][1]
    for _, p in [pages[0], pages[1]]:
        p.wait_for_function("window.tessera.room.channelOpen('reliable') && window.tessera.room.channelOpen('lossy')", timeout=20000)
    time.sleep(1)
    # Scenario 12 on the reliable channel: 40 messages within a second (in one burst: timers on
    # a busy machine can stretch 40 short waits past the second).
    sender.evaluate("""() => {
        for (let i = 0; i < 40; i++) window.tessera.room.sendOnChannel('reliable', 1, 'm' + i);
    }""")
    time.sleep(1.2)
    # Refused: too large, cmd_id 0 and 11, an empty frame.
    sender.evaluate("""() => {
        const room = window.tessera.room;
        room.sendOnChannel('reliable', 2, new Uint8Array(1001));
        room.channels.reliable.send(new Uint8Array([0, 1]));
        room.channels.reliable.send(new Uint8Array([11, 1]));
        room.channels.reliable.send(new Uint8Array(0));
    }""")
    time.sleep(1.2)
    sender.evaluate("""async () => {
        for (let i = 0; i < 5; i++) { window.tessera.room.sendOnChannel('lossy', 3, 'l' + i); await new Promise((r) => setTimeout(r, 50)); }
    }""")
    time.sleep(1.2)
    # Latency: 60 timestamped messages at 20/s on the reliable channel, then 60 over the socket.
    sender.evaluate("""async () => {
        const now = () => String(performance.timeOrigin + performance.now());
        for (let i = 0; i < 60; i++) { window.tessera.room.sendOnChannel('reliable', 4, now()); await new Promise((r) => setTimeout(r, 50)); }
        await new Promise((r) => setTimeout(r, 1100));
        for (let i = 0; i < 60; i++) { window.tessera.room.sendCustom(5, now()).catch(() => {}); await new Promise((r) => setTimeout(r, 50)); }
    }""")
    time.sleep(1.5)
    return {
        "users": users,
        "customs": {u: p.evaluate("window.tessera.customs") for u, p in pages},
        "errors": {u: p.evaluate("window.tessera.errors") for u, p in pages},
    }


def quality(ctx, a):
    page = ctx.new_page()
    goto(page, f"{a.base}/room.html?{urlencode({'token': a.token, 'autojoin': '1'})}")
    page.wait_for_function("window.tessera && ['joined', 'failed'].includes(window.tessera.state)", timeout=20000)
    # Polled every 50 ms (a report's time is known to within that), kept when it changes or
    # a second after the last kept.
    samples = []
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        s = page.evaluate("(() => { const q = window.tessera.quality; return q ? [Date.now(), q.local.downlink, q.local.downlink_loss, q.local.downlink_rtt] : [Date.now(), null, null, null]; })()")
        if not samples or samples[-1][1:] != s[1:] or s[0] - samples[-1][0] >= 1000:
            samples.append(s)
        time.sleep(0.05)
    return {"samples": samples, "tiles": page.evaluate("window.tessera.tiles()")}


def speakers(ctx, a):
    pages = open_participants(ctx, a)
    users = [u for u, _ in pages]
    listed = lambda page: page.evaluate("(window.tessera.speakers || []).map((s) => s.user)")

    def until(page, want, limit):
        start = time.monotonic()
        while time.monotonic() - start < limit:
            if listed(page) == want:
                return round((time.monotonic() - start) * 1000)
            time.sleep(0.02)
        return None

    out = {"users": users}
    # The first tab's tone plays from the start: a silent tab hears of it.
    out["first_ms"] = until(pages[1][1], [users[0]], 15)
    out["first"] = listed(pages[1][1])
    time.sleep(a.seconds)
    out["steady"] = listed(pages[2][1])
    # The speaker changes.
    pages[0][1].evaluate("window.tessera.tone(0)")
    pages[1][1].evaluate("window.tessera.tone(660)")
    out["switch_ms"] = until(pages[2][1], [users[1]], 5)
    out["switched"] = listed(pages[2][1])
    pages[1][1].evaluate("window.tessera.tone(0)")
    out["silent_ms"] = until(pages[2][1], [], 5)
    out["speaker_events"] = {u: [e for e in p.evaluate("window.tessera.events") if e["type"] == "active_speakers"] for u, p in pages}
    out["quality"] = {u: p.evaluate("window.tessera.quality || null") for u, p in pages}
    out["stats"] = {u: p.evaluate("window.tessera.stats || null") for u, p in pages}
    return out


def room(ctx, a):
    pages = open_participants(ctx, a)
    out = {"users": [u for u, _ in pages]}
    tiles = lambda: {u: p.evaluate("window.tessera.tiles()") for u, p in pages}
    time.sleep(a.seconds)
    out["meeting"] = tiles()
    pages[0][1].evaluate("document.getElementById('cam').click()")
    pages[1][1].evaluate(f"window.tessera.share('{a.screen_color}')")
    if len(pages) > 2:
        # The third tab's signaling socket drops (as on a network change): tessera.js resumes.
        pages[2][1].evaluate("window.tessera.room.ws.close()")
    time.sleep(a.seconds)
    out["shared"] = tiles()
    pages[-1][1].evaluate("window.tessera.leave()")
    time.sleep(3)
    out["after_leave"] = tiles()
    out["events"] = {u: p.evaluate("window.tessera.events") for u, p in pages}
    out["states"] = {u: [p.evaluate("window.tessera.state"), p.evaluate("window.tessera.error")] for u, p in pages}
    return out


def meet(ctx, a):
    pages = open_participants(ctx, a)
    # Every 4 s, each tab's remote tiles: the others come and go on their own script.
    snapshots = []
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        time.sleep(min(4.0, max(0.0, end - time.monotonic())))
        snapshots.append({u: p.evaluate("window.tessera.tiles()") for u, p in pages})
    return {
        "snapshots": snapshots,
        "events": {u: p.evaluate("window.tessera.events") for u, p in pages},
        "states": {u: [p.evaluate("window.tessera.state"), p.evaluate("window.tessera.error")] for u, p in pages},
        "origins": {u: p.evaluate("({protocol: location.protocol, host: location.host, secure: window.isSecureContext})") for u, p in pages},
    }


def wait_play(ctx, a):
    """play.html for a stream nobody publishes yet: every 0.5 s for --seconds, what the page
    shows (state line, overlay), the server's word on the publisher and frames decoded."""
    q = {"room": a.room, "user": a.user, "token": a.token, "autostart": "1"}
    page = ctx.new_page()
    goto(page, f"{a.base}/play.html?{urlencode(q)}", wait_until="domcontentloaded")
    samples = []
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        time.sleep(0.5)
        samples.append(page.evaluate("""() => ({t: Date.now() / 1000, state: document.getElementById('state').textContent,
            overlay: document.getElementById('overlay').textContent, publisher: window.tessera.publisher,
            frames: window.tessera.stats.framesDecoded || 0})"""))
    return {"samples": samples, "page_error": page.evaluate("window.tessera.error")}


def hls(ctx, a):
    """player.html (hls.js) on --src with --token, or on --recording with --api-key, for
    --seconds: its stats every second."""
    q = {"autostart": "1"}
    for k, v in (("src", a.src), ("token", a.token), ("recording", a.recording), ("key", a.api_key), ("sync", a.sync)):
        if v:
            q[k] = v
    page = ctx.new_page()
    goto(page, f"{a.base}/player.html?{urlencode(q)}", wait_until="domcontentloaded")
    samples = []
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        time.sleep(1.0)
        samples.append(page.evaluate("({...window.tessera.stats, state: window.tessera.state})"))
    return {"samples": samples, "state": page.evaluate("window.tessera.state"), "page_error": page.evaluate("window.tessera.error"),
            "src": page.evaluate("document.getElementById('src').value")}


def admin(ctx, a):
    """admin.html with --api-key pasted: after --seconds of live figures, what the page shows
    (rooms, participants, tracks, tasks, graphs; a screenshot to --screenshot), then a click on
    Stop of the task --stop-task and the state the page shows for it afterwards."""
    page = ctx.new_page()
    page.set_viewport_size({"width": 1280, "height": 1000})
    goto(page, f"{a.base}/admin.html", wait_until="domcontentloaded")
    page.fill("#key", a.api_key)
    page.click("#connect")
    page.wait_for_function("window.tessera && (window.tessera.state === 'live' || window.tessera.state === 'failed')", timeout=20000)
    time.sleep(a.seconds)
    seen = page.evaluate("""() => ({
        rooms: [...document.querySelectorAll('tr.room')].map(r => r.dataset.room),
        users: [...document.querySelectorAll('tr[data-user]')].map(r => r.dataset.user),
        tracks: [...document.querySelectorAll('tr[data-track]')].map(r => ({id: r.dataset.track, kbps: r.querySelector('.kbps').textContent})),
        tasks: [...document.querySelectorAll('tr[data-task]')].map(r => ({id: r.dataset.task, kind: r.dataset.kind, text: r.innerText})),
        graphs: Object.fromEntries([...document.querySelectorAll('.graph')].map(g => [g.dataset.graph, g.querySelector('.value').textContent])),
        webhooks: document.getElementById('webhook-status').innerText,
        error: document.getElementById('error').textContent,
        state: window.tessera.state,
    })""")
    if a.screenshot:
        page.screenshot(path=a.screenshot, full_page=True)
    out = {"seen": seen}
    if a.stop_task:
        page.on("dialog", lambda d: d.accept())
        page.click(f"tr[data-task='{a.stop_task}'] button[data-act='stop']")
        page.wait_for_function(f"window.tessera.actions.some(x => x.act === 'stop' && x.id === '{a.stop_task}')", timeout=10000)
        time.sleep(2.5)
        out["actions"] = page.evaluate("window.tessera.actions")
        out["after_stop"] = page.evaluate(f"document.querySelector(\"tr[data-task='{a.stop_task}']\")?.innerText || ''")
    return out


# The modes that drive room.html, speedtest.html or several tabs: each returns what to print.
PAGE_MODES = {"admin": admin, "hls": hls, "wait-play": wait_play, "meet": meet, "room": room, "join-time": join_time, "speakers": speakers, "quality": quality, "custom": custom, "speedtest": speedtest}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        print(json.dumps({"error": repr(e)}), flush=True)
        sys.exit(1)
