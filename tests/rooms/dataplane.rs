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
    assert!(video["fps"].as_f64().unwrap() > 5.0 && video["bitrate_kbps"].as_f64().unwrap() > 10.0, "{video}");
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
