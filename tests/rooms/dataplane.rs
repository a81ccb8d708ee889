//! The room's data plane (PRODUCT.md §7–§9): active speakers from audio levels, network quality
//! and live stats, with real clients — Chromium tabs on `room.html` (a synthetic tone as the
//! microphone, or silence) and an RTMP encoder (ffmpeg) whose AAC the server decodes.

use super::signaling::{join, next, send};
use super::*;

/// Three Chromium participants, one playing a tone and two silent: the silent ones are told
/// exactly the one with the tone speaks; when the speaker changes, the third tab learns it
/// within a second. Meanwhile every tab gets `quality` (a clean link: scores 1–2) and `stats`
/// (codec, picture size, frame rate, round trip). Then an RTMP publisher's tone is listed too.
#[test]
fn active_speakers_quality_and_stats_in_a_browser_meeting() {
    let _turn = serial();
    let Hall { dir: _dir, data, net, server, key: _key } = hall("rtc-speakers");
    let people = [("ann", "#ff0000", "440"), ("ben", "#00ff00", "0"), ("cat", "#0000ff", "0")];
    let specs: Vec<String> = people.iter().map(|(u, c, t)| format!("{u},{},{c},{t}", token(&data, "talk", u))).collect();
    let base = server.base.clone();
    let mut args = vec!["speakers", "--base", &base, "--seconds", "5"];
    for s in &specs {
        args.extend(["--participant", s.as_str()]);
    }
    let r = Client::start(&net, "browser.py", &args).finish(Duration::from_secs(120));
    assert_eq!(r["first"], json!(["ann"]), "a silent tab hears that ann speaks: {r}");
    assert_eq!(r["steady"], json!(["ann"]), "{r}");
    let switch_ms = r["switch_ms"].as_u64().unwrap_or_else(|| panic!("the speaker change never reached cat: {r}"));
    assert!(switch_ms <= 1000, "cat is told ben speaks within 1 s: {switch_ms} ms");
    assert_eq!(r["switched"], json!(["ben"]), "{r}");
    assert!(r["silent_ms"].is_u64(), "when everyone is silent the list empties: {r}");
    // The silent ones were never listed (cat never spoke at all).
    for (u, ..) in people {
        for e in r["speaker_events"][u].as_array().unwrap() {
            assert!(!e["users"].as_array().unwrap().contains(&json!("cat")), "{u} saw cat listed: {e}");
        }
    }
    // Quality on a clean host link: known and good both ways, and each sees the others' uplink.
    for (u, ..) in people {
        let q = &r["quality"][u];
        for dir in ["uplink", "downlink"] {
            let s = q["local"][dir].as_u64().unwrap_or_else(|| panic!("{u} got no quality: {r}"));
            assert!((1..=2).contains(&s), "{u} {dir} {s}: {q}");
        }
        assert!(q["local"]["downlink_rtt"].as_f64().is_some_and(|x| x < 100.0), "{u}: {q}");
        let remote = q["remote"].as_array().unwrap();
        assert_eq!(remote.len(), 2, "{u}: {q}");
        assert!(remote.iter().all(|x| (1..=2).contains(&x["uplink"].as_u64().unwrap())), "{u}: {q}");
    }
    // Live stats: what ben publishes and receives from ann.
    let stats = r["stats"]["ben"].as_array().unwrap_or_else(|| panic!("ben got no stats: {r}"));
    let find = |dir: &str, user: &str, kind: &str| {
        stats.iter().find(|t| t["direction"] == dir && t["user"] == user && t["kind"] == kind).unwrap_or_else(|| panic!("no {dir} {user} {kind}: {stats:?}"))
    };
    let video = find("receive", "ann", "video");
    assert!(["H264", "VP8"].contains(&video["codec"].as_str().unwrap_or("")), "{video}");
    assert_eq!((video["width"].as_u64(), video["height"].as_u64()), (Some(320), Some(180)), "{video}");
    // A solid colour encodes to ~10 kbit/s: the rate is measured, not large.
    assert!(video["fps"].as_f64().unwrap() > 5.0 && video["bitrate_kbps"].as_f64().unwrap() > 3.0, "{video}");
    assert!(video["rtt_ms"].as_f64().is_some() && video["loss_pct"].as_f64().is_some(), "{video}");
    let mic = find("publish", "ben", "audio");
    assert_eq!((mic["codec"].as_str(), mic["sample_rate"].as_u64(), mic["channels"].as_u64()), (Some("opus"), Some(48000), Some(2)), "{mic}");
    let cam = find("publish", "ben", "video");
    assert_eq!((cam["width"].as_u64(), cam["height"].as_u64()), (Some(320), Some(180)), "{cam}");

    // An RTMP publisher's tone: levels measured from its decoded AAC.
    let (mut watcher, _) = join(&server, &data, "talk", "wes");
    let port = rtmp_port(&server);
    let mut rita = publisher(&format!("rtmp://127.0.0.1:{port}/push/talk/rita?token={}", token(&data, "talk", "rita")));
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        assert!(Instant::now() < deadline, "the RTMP publisher was never listed");
        // The socket's liveness: a client speaks at least every 15 s.
        send(&mut watcher, &json!({"type": "ping"}));
        let m = next(&mut watcher);
        if m["type"] == "active_speakers" && m["speakers"].as_array().unwrap().iter().any(|s| s["user"] == "rita") {
            break m;
        }
    };
    let level = listed["speakers"].as_array().unwrap().iter().find(|s| s["user"] == "rita").unwrap()["level"].as_u64().unwrap();
    assert!(level > 60, "a full-scale sine is loud: {listed}");
    let _ = rita.kill();
    let _ = rita.wait();
}

/// A viewer behind a lossy, capped link (10 % of the server's datagrams dropped, 400 kbit/s)
/// is told its downlink is poor (≥ 3) within 6 s, and good again (≤ 2) within 6 s of the
/// link's repair. The publisher, an RTMP encoder at 150 kbit/s (~290 kbit/s on the wire with
/// Opus, RED and headers), fits the link, so the score comes from loss and delay, not from
/// paused video. 10 %, not 5 %: the viewer gets ~70 packets a second, and over the score's 2 s
/// window 5 % loss reads below 3 % about one time in eight (binomial noise, measured: 1 s
/// samples of 0–9 %), which a single report would show as good.
#[test]
fn a_viewers_downlink_quality_follows_its_link() {
    let _turn = serial();
    let Hall { dir: _dir, data, net: _net, server, key: _key } = hall("rtc-quality");
    let view_net = TestNet::new();
    let port = rtmp_port(&server);
    let url = format!("rtmp://127.0.0.1:{port}/push/net/cam?token={}", token(&data, "net", "cam"));
    let mut cam = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15:duration=60", "-f", "lavfi", "-i", "sine=frequency=440:duration=60"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0", "-g", "30", "-b:v", "150k", "-maxrate", "150k", "-bufsize", "150k"])
        .args(["-c:a", "aac", "-b:a", "32k", "-f", "flv", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    std::thread::sleep(Duration::from_secs(2));
    let viewer = token_with(&data, "net", "vic", &["--role", "audience"]);
    let base = server.base.clone();
    let watch = Client::start(&view_net, "browser.py", &["quality", "--base", &base, "--token", &viewer, "--seconds", "34"]);
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    std::thread::sleep(Duration::from_secs(10));
    let impaired = now_ms();
    view_net.drop_incoming_udp(rtc_udp_port(&server), 10);
    view_net.shape_downlink(&["tbf", "rate", "400kbit", "burst", "16kb", "latency", "100ms"]);
    std::thread::sleep(Duration::from_secs(12));
    let repaired = now_ms();
    view_net.clear_impairments();
    let r = watch.finish(Duration::from_secs(90));
    let _ = cam.kill();
    let _ = cam.wait();
    let samples: Vec<(i64, Option<u64>)> = r["samples"].as_array().unwrap().iter().map(|s| (s[0].as_i64().unwrap(), s[1].as_u64())).collect();
    let first = |from: i64, ok: &dyn Fn(u64) -> bool| samples.iter().find(|(t, s)| *t >= from && s.is_some_and(ok)).map(|(t, _)| t - from);
    assert!(samples.iter().any(|(t, s)| *t < impaired && s.is_some_and(|s| (1..=2).contains(&s))), "a clean link scores 1–2 first: {r}");
    let poor = first(impaired, &|s| s >= 3).unwrap_or_else(|| panic!("never reported poor: {r}"));
    assert!(poor <= 6000, "poor after {poor} ms: {r}");
    let good = first(repaired, &|s| (1..=2).contains(&s)).unwrap_or_else(|| panic!("never good again: {r}"));
    assert!(good <= 6000, "good again after {good} ms: {r}");
    eprintln!("downlink quality: poor {poor} ms after the impairment, good {good} ms after the repair");
    let tile = r["tiles"].as_array().unwrap().iter().find(|t| t["user"] == "cam").unwrap_or_else(|| panic!("{r}"));
    assert!(tile["frames"].as_u64().unwrap() > 100, "the picture kept coming: {tile}");
}

/// Acceptance scenario 12 on data channels (PRODUCT.md §8): Chromium's `ann` sends on her
/// `pub` connection's `tessera-reliable` channel: 40 messages within a second reach `bob` on
/// his reliable channel, and `cy` (who opened no channels) and an audience member over their
/// sockets — 30 of them, seq 1–30, and `ann` is told `custom_rate_limited` once. A 1001-byte
/// message, cmd_id 0 and 11 and an empty frame are refused over her socket. Lossy-channel
/// messages reach bob on his lossy channel and the others over the socket. Latency sender →
/// receiver is printed for the data channel and the socket.
#[test]
fn custom_messages_on_data_channels() {
    let _turn = serial();
    let Hall { dir: _dir, data, net, server, key: _key } = hall("rtc-datachannels");
    let spec = |u: &str, color: &str, opts: &str, extra: &[&str]| format!("{u},{},{color},0{opts}", token_with(&data, "dc", u, extra));
    let specs = [spec("ann", "#ff0000", "", &[]), spec("bob", "#00ff00", "", &[]), spec("cy", "#0000ff", ",nodc", &[]), spec("aud", "#000000", ",watch", &["--role", "audience"])];
    let base = server.base.clone();
    let mut args = vec!["custom", "--base", &base];
    for s in &specs {
        args.extend(["--participant", s.as_str()]);
    }
    let r = Client::start(&net, "browser.py", &args).finish(Duration::from_secs(150));
    let got = |u: &str, cmd: u64| -> Vec<(u64, String)> {
        r["customs"][u]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .filter(|m| m["cmd_id"] == cmd && m["from"] == "ann")
            .map(|m| (m["seq"].as_u64().unwrap(), m["channel"].as_str().unwrap().to_owned()))
            .collect()
    };
    let seqs = |v: &[(u64, String)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
    for (u, channel) in [("bob", "reliable"), ("cy", "ws"), ("aud", "ws")] {
        let burst = got(u, 1);
        assert_eq!(seqs(&burst), (1..=30).collect::<Vec<u64>>(), "{u}: {burst:?}");
        assert!(burst.iter().all(|x| x.1 == channel), "{u} receives on {channel}: {burst:?}");
        let lossy = got(u, 3);
        assert_eq!(seqs(&lossy), (31..=35).collect::<Vec<u64>>(), "{u}: {lossy:?}");
        let lossy_channel = if channel == "reliable" { "lossy" } else { "ws" };
        assert!(lossy.iter().all(|x| x.1 == lossy_channel), "{u} receives lossy ones on {lossy_channel}: {lossy:?}");
    }
    assert!(got("ann", 1).is_empty(), "the sender does not get its own messages");
    let errors: Vec<&str> = r["errors"]["ann"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
    eprintln!("ann was told: {errors:?}");
    let count = |code: &str| errors.iter().filter(|c| **c == code).count();
    assert_eq!(count("custom_rate_limited"), 1, "{errors:?}");
    assert_eq!(count("custom_too_large"), 1, "{errors:?}");
    assert_eq!(count("custom_bad_cmd_id"), 2, "{errors:?}");
    assert_eq!(count("bad_message"), 1, "the empty frame: {errors:?}");
    // Latency, sender → receiver (one machine, one clock).
    let latency = |u: &str, cmd: u64| -> Vec<f64> {
        let mut v: Vec<f64> = r["customs"][u]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["cmd_id"] == cmd)
            .map(|m| {
                use base64::Engine;
                let sent: f64 = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(m["data"].as_str().unwrap()).unwrap()).unwrap().parse().unwrap();
                m["at"].as_f64().unwrap() - sent
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    for (what, u, cmd) in [("data channel", "bob", 4), ("socket (from a data channel)", "cy", 4), ("socket", "cy", 5), ("socket → data channel", "bob", 5)] {
        let l = latency(u, cmd);
        assert_eq!(l.len(), 60, "{what}: {l:?}");
        let (p50, p99) = (l[l.len() / 2], l[(l.len() * 99) / 100]);
        eprintln!("custom message latency, {what}: p50 {p50:.1} ms, p99 {p99:.1} ms");
        assert!(p99 < 1000.0, "{what}: {l:?}");
    }
}

/// A UDP relay on this side that delays each datagram `ms` each way; killed on drop.
struct DelayRelay(Child);

impl DelayRelay {
    fn start(listen: &str, target: &str, ms: u32) -> DelayRelay {
        use std::io::BufRead;
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/clients/udp_delay.py"))
            .args(["--listen", listen, "--target", target, "--delay-ms", &ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("udp_delay.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("ready"), "relay: {line}");
        DelayRelay(child)
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The network test from Chromium (`speedtest.html`) over a link shaped to 2 Mbit/s up and
/// 4 Mbit/s down (tbf on the test host's veth) with 50 ms each way (a relay: this kernel has no
/// netem): the round trip within 20 ms of 100 ms, the uplink within 25 % of its shaping. The
/// downlink is measured but reads low: str0m's SCTP sender (sctp-proto 0.10.8) takes one
/// retransmission timeout early in the phase and then grows its window by one packet a round
/// trip, so it carries about 1 Mbit/s of the 4 (docs/decisions.md); the test holds it to
/// "some, and never more than the link". Rates outside 10–5000 fail the test; a 21st
/// concurrent test of an app is refused.
#[test]
fn speed_test_measures_a_shaped_link() {
    let _turn = serial();
    let dir = TempDir::new("rtc-speedtest");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let relay_ip = net.add_host_address(3);
    let http = format!("{}:0", net.host_ip);
    // Clients are told the relay's address; it forwards to the server's socket.
    let server = Server::start(&data, &["--http-addr", &http, "--rtc-udp-addr", &http, "--public-ip", &relay_ip]);
    let port = rtc_udp_port(&server);
    let _relay = DelayRelay::start(&format!("{relay_ip}:{port}"), &format!("{}:{port}", net.host_ip), 50);
    net.shape_uplink(&["tbf", "rate", "2mbit", "burst", "32kb", "latency", "400ms"]);
    net.shape_downlink(&["tbf", "rate", "4mbit", "burst", "32kb", "latency", "400ms"]);
    let tester = token(&data, "any", "tester");
    // The banner's base URL names the public address; HTTP is not relayed.
    let base = server.base.replace(&relay_ip, &net.host_ip);
    let r = Client::start(&net, "browser.py", &["speedtest", "--base", &base, "--token", &tester, "--up-kbps", "5000", "--down-kbps", "5000"]).finish(Duration::from_secs(60));
    assert_eq!(r["state"], "done", "{r}");
    let res = &r["result"];
    eprintln!("speed test over 2 / 4 Mbit/s and 2 x 50 ms: {res}");
    let (up, down, rtt) = (res["available_up_bandwidth"].as_f64().unwrap(), res["available_down_bandwidth"].as_f64().unwrap(), res["rtt"].as_f64().unwrap());
    assert!((1500.0..=2500.0).contains(&up), "uplink {up} kbit/s vs 2000: {res}");
    assert!((3000.0..=5000.0).contains(&down), "downlink {down} kbit/s vs 4000: {res}");
    assert!((80.0..=120.0).contains(&rtt), "round trip {rtt} ms vs 100: {res}");
    assert_eq!(res["ip"], relay_ip.as_str(), "{res}");
    assert!((1..=5).contains(&res["quality"].as_u64().unwrap()), "{res}");
    net.clear_impairments();
    // A rate outside 10–5000: the test fails and says why.
    let bad = Client::start(&net, "browser.py", &["speedtest", "--base", &base, "--token", &tester, "--up-kbps", "5001", "--down-kbps", "100"]).finish(Duration::from_secs(60));
    assert_eq!((bad["state"].as_str(), bad["result"]["success"].as_bool()), (Some("failed"), Some(false)), "{bad}");
    assert!(bad["page_error"].as_str().unwrap().contains("10 to 5000"), "{bad}");
    // Twenty tests that never connect hold their places; the 21st is refused.
    let offer = || {
        let mut rtc = tessera_rtc::str0m::Rtc::builder().build(std::time::Instant::now());
        let mut change = rtc.sdp_api();
        change.add_channel("speedtest-ctl".into());
        change.apply().expect("an offer").0.to_sdp_string()
    };
    let url = format!("{base}/v1/speedtest");
    let post = |sdp: &str| request("POST", &url, Some(&tester), Some(("application/sdp", sdp.as_bytes())), &[]);
    for i in 0..20 {
        assert_eq!(post(&offer()).status, 201, "test {i}");
    }
    post(&offer()).expect_error(429, "limit_exceeded");
    // Bad offers: media sections, or no data channel section.
    let media = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n";
    post(media).expect_error(400, "sdp_invalid");
    // Without a token.
    let anon = request("POST", &url, None, Some(("application/sdp", offer().as_bytes())), &[]);
    assert_eq!(anon.status, 401, "{}", anon.body);
}
