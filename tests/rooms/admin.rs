//! The admin dashboard (`admin.html`, issue 15) in Chromium against a busy server.

use super::*;

/// A WHIP publisher (aiortc), an RTMP push (ffmpeg), a mix job, a relay and a recording run in
/// one room: the dashboard shows each with live figures (tracks with their bitrates, the
/// server's packet rate and participants, every task with its state and a relay's per-URL
/// state), and its Stop button stops the recording.
#[test]
fn the_dashboard_shows_a_busy_room_and_stops_a_task() {
    let _turn = serial();
    let Hall { dir, data, net, server, key } = hall("admin");
    let cam = token(&data, "dash", "cam");
    let whip = Client::start(&net, "aiortc_client.py", &["publish", "--url", &server.url("/whip/dash"), "--token", &cam, "--seconds", "40"]);
    let obs = token(&data, "dash", "obs");
    // A WHEP viewer of the RTMP push: packets forwarded.
    let viewer = token(&data, "dash", "viewer");
    let play = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url("/whep/dash/obs/main"), "--token", &viewer, "--seconds", "40"]);
    let mut rtmp = publisher(&format!("rtmp://127.0.0.1:{}/push/dash/obs?token={obs}", rtmp_port(&server)));
    until(Duration::from_secs(20), "both publish", || {
        let r = get(&server.url("/v1/rooms/dash"), Some(&key));
        (r.status == 200 && r.json()["publishers"].as_u64() == Some(2)).then_some(())
    });
    let id = |r: Reply| -> String {
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_owned()
    };
    let mix = id(post_json(&server.url("/v1/mix-jobs"), Some(&key), &json!({"room": "dash", "encode": {"template": "360p"}})));
    let relay = id(post_json(&server.url("/v1/relays"), Some(&key), &json!({"room": "dash", "source": {"user": "obs"}, "urls": ["rtmp://127.0.0.1:9/live/key"]})));
    let recording = id(post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "dash", "format": "hls", "hls": {"segment_s": 2}})));
    std::thread::sleep(Duration::from_secs(3));
    let shot = dir.path().join("admin.png");
    let r = Client::start(
        &net,
        "browser.py",
        &["admin", "--base", &server.base, "--api-key", &key, "--seconds", "8", "--screenshot", shot.to_str().unwrap(), "--stop-task", &recording],
    )
    .finish(Duration::from_secs(90));
    let seen = &r["seen"];
    assert_eq!(seen["state"], "live", "{r}");
    assert_eq!(seen["error"], "", "{r}");
    assert_eq!(seen["rooms"], json!(["dash"]), "{r}");
    let users: Vec<&str> = seen["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    for who in ["dash/cam", "dash/obs", "dash/viewer", &format!("dash/mix_{mix}")] {
        assert!(users.contains(&who), "{who} listed: {users:?}");
    }
    // Tracks with live bitrates: each publisher's video going up.
    let kbps = |prefix: &str| -> u64 {
        let t = seen["tracks"].as_array().unwrap().iter().find(|t| t["id"].as_str().unwrap().starts_with(prefix)).unwrap_or_else(|| panic!("no track {prefix}: {r}"));
        t["kbps"].as_str().unwrap().split_whitespace().next().unwrap().parse().unwrap_or(0)
    };
    assert!(kbps("cam/publish/cam/main/video") > 0, "{r}");
    assert!(kbps("viewer/receive/obs/main/video") > 50, "{r}");
    assert!(kbps("obs/publish/obs/main/video") > 50, "{r}");
    // Server graphs with figures.
    let number = |g: &str| seen["graphs"][g].as_str().unwrap().replace(',', "").split_whitespace().next().unwrap().parse::<f64>().unwrap_or(-1.0);
    assert!(number("pps") > 50.0, "packets forwarded per second: {r}");
    assert!(number("participants") >= 4.0, "{r}");
    assert!(number("cpu") > 0.0 && number("mbps") > 0.0, "{r}");
    // Every task, with its state; the relay's URL with its own.
    let task = |id: &str| seen["tasks"].as_array().unwrap().iter().find(|t| t["id"] == id).cloned().unwrap_or_else(|| panic!("task {id} listed: {r}"));
    assert!(task(&mix)["text"].as_str().unwrap().contains("RUNNING"), "{r}");
    let relay_row = task(&relay)["text"].as_str().unwrap().to_owned();
    assert!(relay_row.contains("rtmp://127.0.0.1:9/live/key") && ["connecting", "recovering", "failure"].iter().any(|s| relay_row.contains(s)), "{relay_row}");
    assert!(task(&recording)["text"].as_str().unwrap().contains("RECORDING"), "{r}");
    assert!(seen["webhooks"].as_str().unwrap().contains("no webhook target"), "{r}");
    let png = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(png > 20_000, "a screenshot of the populated page ({png} bytes)");
    // Stop pressed on the recording.
    assert_eq!(r["actions"][0]["ok"], true, "{r}");
    let after = r["after_stop"].as_str().unwrap();
    assert!(after.contains("STOPPED") || after.contains("FINISHED"), "the page shows it stopped: {after}");
    let state = get(&server.url(&format!("/v1/recordings/{recording}")), Some(&key)).json()["state"].clone();
    assert!(state == "STOPPED" || state == "FINISHED", "{state}");
    let _ = rtmp.kill();
    let _ = rtmp.wait();
    let _ = whip.finish(Duration::from_secs(60));
    let _ = play.finish(Duration::from_secs(60));
}
