//! RTMP and pull ingest end to end.
//! - ffmpeg pushes (libx264, AAC, FLV) into a room and aiortc watches over WHEP (video passed
//!   through, AAC transcoded to Opus); B-frames where the app refuses them (or its transcodes are
//!   used up) and bad tokens are refused with their messages while the first stream goes on; a publisher that reconnects is picked up by the viewer.
//! - `POST /v1/ingests` pulls an RTMP stream served by `ffmpeg -listen 1` (passed through) and an
//!   HLS playlist with B-frames served over HTTP (transcoded) into a room; aiortc viewers decode
//!   both; a bad URL retries and fails with its reason; PATCH, DELETE and the spec's errors.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_tests::*;

static SERIAL: Mutex<()> = Mutex::new(());

/// `ffmpeg -re` pushing test video (and a 440 Hz tone as AAC) for `seconds`.
fn push(url: &str, bframes: u32, seconds: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", &format!("testsrc2=size=640x360:rate=30:duration={seconds}")])
        .args(["-f", "lavfi", "-i", &format!("sine=frequency=440:duration={seconds}")])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "30", "-bf", &bframes.to_string()])
        .args(["-c:a", "aac", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg (scripts/setup.sh installs it)")
}

fn wait(mut child: Child, limit: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code(), err, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("ffmpeg still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ffmpeg_push_reaches_a_webrtc_viewer_and_bad_pushes_are_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("rtmp");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let server = Server::start(&data, &["--http-addr", &format!("{}:0", net.host_ip), "--rtc-udp-addr", &format!("{}:0", net.host_ip), "--rtmp-addr", "127.0.0.1:0"]);
    let port = rtmp_port(&server);
    let obs = token(&data, "live", "obs");
    // OBS form: server rtmp://host/push/{room}, key {user}?token=…; ffmpeg sends it as one URL.
    let url = format!("rtmp://127.0.0.1:{port}/push/live/obs?token={obs}");
    let first = push(&url, 0, 15);
    std::thread::sleep(Duration::from_secs(1));
    let viewer = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url("/whep/live/obs/main"), "--token", &obs, "--seconds", "24"]);
    std::thread::sleep(Duration::from_secs(4));

    // B-frames where the app refuses them (`rtmp.b_frames = "refuse"`): refused with the
    // message, within 5 s, while the first push goes on.
    let key = admin_key(&data);
    let set = |rtmp: &str| {
        let body = format!(r#"{{"rtmp":{rtmp}}}"#);
        let r = request("PATCH", &server.url("/v1/app"), Some(&key), Some(("application/merge-patch+json", body.as_bytes())), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    assert_eq!(set(r#"{"b_frames":"refuse"}"#)["rtmp"]["b_frames"], "refuse");
    let other = token(&data, "live", "cam2");
    let (code, err, took) = wait(push(&format!("rtmp://127.0.0.1:{port}/push/live/cam2?token={other}"), 3, 20), Duration::from_secs(10));
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("b_frames_unsupported") && err.contains("bframes=0"), "{err}");
    assert!(took < Duration::from_secs(5), "ffmpeg took {took:?} to give up");
    // Transcoded (the default), but the app's transcodes are used up: refused, saying so.
    let v = set(r#"{"b_frames":"transcode","max_transcodes":0}"#);
    assert_eq!((v["rtmp"]["b_frames"].as_str(), v["rtmp"]["max_transcodes"].as_u64()), (Some("transcode"), Some(0)), "{v}");
    let (code, err, _) = wait(push(&format!("rtmp://127.0.0.1:{port}/push/live/cam2?token={other}"), 3, 20), Duration::from_secs(10));
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("limit_exceeded") && err.contains("rtmp.max_transcodes"), "{err}");
    let r = request("PATCH", &server.url("/v1/app"), Some(&key), Some(("application/merge-patch+json", br#"{"rtmp":{"b_frames":"sometimes"}}"#)), &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    // A wrong token (another user's) and no token at all.
    let (code, err, _) = wait(push(&format!("rtmp://127.0.0.1:{port}/push/live/cam3?token={other}"), 0, 20), Duration::from_secs(10));
    assert_ne!(code, Some(0));
    assert!(err.contains("token_user_mismatch"), "{err}");
    let (code, err, _) = wait(push(&format!("rtmp://127.0.0.1:{port}/push/live/cam3"), 0, 20), Duration::from_secs(10));
    assert_ne!(code, Some(0));
    assert!(err.contains("token_missing"), "{err}");
    // A video codec other than H.264 (FLV's Sorenson H.263).
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15:duration=20", "-c:v", "flv1", "-an", "-f", "flv"])
        .arg(format!("rtmp://127.0.0.1:{port}/push/live/cam2?token={other}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err, _) = wait(child, Duration::from_secs(10));
    assert_ne!(code, Some(0));
    assert!(err.contains("codec_unsupported"), "{err}");
    // Garbage on the RTMP port is dropped without harm.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = s.write_all(&[0x03; 4000]);
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
    }

    let (code, err, _) = wait(first, Duration::from_secs(20));
    assert_eq!(code, Some(0), "the first push ran to its end: {err}");
    // The publisher comes back (reconnect): the viewer, still there, gets its picture again.
    let reconnect_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let second = push(&url, 0, 8);
    let r = viewer.finish(Duration::from_secs(60));
    let _ = wait(second, Duration::from_secs(20));
    assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(640), Some(360)), "{r}");
    // The 440 Hz AAC tone arrives as Opus: about 50 frames a second, and not silence.
    assert!(r["audio_frames"].as_u64().unwrap() >= 300, "{}", r["audio_frames"]);
    assert!(r["audio_rms"].as_f64().unwrap() > 1000.0, "{}", r["audio_rms"]);
    let times: Vec<f64> = r["frame_times"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    let before = times.iter().filter(|t| **t < reconnect_at).count();
    let after = times.iter().filter(|t| **t >= reconnect_at).count();
    let gaps: Vec<String> = times.windows(2).filter(|w| w[1] - w[0] > 0.5).map(|w| format!("{:.1}..{:.1}", w[0] - times[0], w[1] - times[0])).collect();
    assert!(before >= 100, "frames of the first push: {before}; gaps {gaps:?}; reconnect at {:.1}", reconnect_at - times[0]);
    assert!(after >= 30, "frames after the publisher reconnected: {after}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn admin_key(data: &Path) -> String {
    std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned()
}

/// Polls an ingest until `done` holds for its record (or panics after `limit`); returns the
/// record and the states seen on the way.
fn poll_ingest(server: &Server, key: &str, id: &str, limit: Duration, done: impl Fn(&serde_json::Value) -> bool) -> (serde_json::Value, Vec<String>) {
    let deadline = Instant::now() + limit;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let r = get(&server.url(&format!("/v1/ingests/{id}")), Some(key));
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let state = v["state"].as_str().unwrap().to_owned();
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        if done(&v) {
            return (v, seen);
        }
        assert!(Instant::now() < deadline, "ingest {id} never got there: {v}; states {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pull_ingest_of_rtmp_and_hls_reaches_webrtc_viewers_and_bad_urls_fail() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("ingest");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let server = Server::start(&data, &["--http-addr", &format!("{}:0", net.host_ip), "--rtc-udp-addr", &format!("{}:0", net.host_ip)]);
    let key = admin_key(&data);
    let ingests = server.url("/v1/ingests");
    let hooks = WebhookReceiver::start(dir.path(), "k3yA", &[]);
    hooks.subscribe(&server, &key, "k3yA");

    // An HLS VOD playlist with B-frames (x264 defaults) and AAC, on disk, served over HTTP.
    let hls = dir.path().join("hls");
    std::fs::create_dir_all(&hls).unwrap();
    let made = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=480x270:rate=25:duration=14"])
        .args(["-f", "lavfi", "-i", "sine=frequency=660:duration=14", "-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "50"])
        .args(["-c:a", "aac", "-f", "hls", "-hls_time", "2", "-hls_list_size", "0", "-hls_playlist_type", "vod"])
        .arg(hls.join("index.m3u8"))
        .status()
        .unwrap();
    assert!(made.success());
    let http_port = free_port();
    let mut http_server = Command::new("python3")
        .args(["-m", "http.server", &http_port.to_string(), "--bind", "127.0.0.1", "--directory"])
        .arg(&hls)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // An RTMP source: ffmpeg as a one-client RTMP server, H.264 without B-frames + AAC.
    let rtmp_port = free_port();
    let source_url = format!("rtmp://127.0.0.1:{rtmp_port}/live/src");
    let mut rtmp_source = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=40"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=40", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-bf", "0", "-g", "30"])
        .args(["-c:a", "aac", "-f", "flv", "-listen", "1", &source_url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    // Requests the spec refuses.
    post_json(&ingests, Some(&key), &serde_json::json!({"room": "pull", "user": "x", "url": "file:///etc/passwd"})).expect_error(400, "invalid_parameter");
    post_json(&ingests, Some(&key), &serde_json::json!({"room": "pull", "user": "x", "url": &source_url, "repeat": 0})).expect_error(400, "invalid_parameter");
    post_json(&ingests, Some(&key), &serde_json::json!({"room": "pull", "user": "mix_1", "url": &source_url})).expect_error(403, "user_id_reserved");
    post_json(&ingests, Some(&key), &serde_json::json!({"room": "pull", "user": "x", "url": &source_url, "stream": "side"})).expect_error(400, "invalid_parameter");
    get(&server.url("/v1/ingests/0123456789abcdef"), Some(&key)).expect_error(404, "task_not_found");

    let r = post_json(&ingests, Some(&key), &serde_json::json!({"room": "pull", "user": "cam", "url": &source_url}));
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json();
    assert_eq!((created["state"].as_str(), created["user"].as_str(), created["stream"].as_str()), (Some("STARTING"), Some("cam"), Some("main")), "{created}");
    let rtmp_id = created["id"].as_str().unwrap().to_owned();
    let r = post_json(&ingests, Some(&key), &serde_json::json!({"room": "pull", "user": "movie", "url": format!("http://127.0.0.1:{http_port}/index.m3u8")}));
    assert_eq!(r.status, 201, "{}", r.body);
    let hls_id = r.json()["id"].as_str().unwrap().to_owned();
    // The same (user, stream) again: busy.
    post_json(&ingests, Some(&key), &serde_json::json!({"room": "pull", "user": "cam", "url": &source_url})).expect_error(409, "stream_busy");

    let (rtmp_rec, _) = poll_ingest(&server, &key, &rtmp_id, Duration::from_secs(15), |v| v["state"] == "RUNNING");
    assert_eq!(rtmp_rec["source"], "h264 passthrough, aac→opus", "{rtmp_rec}");
    let (hls_rec, _) = poll_ingest(&server, &key, &hls_id, Duration::from_secs(15), |v| v["state"] == "RUNNING");
    assert_eq!(hls_rec["source"], "h264 with b-frames→h264, aac→opus", "{hls_rec}");

    let viewer = token(&data, "pull", "viewer");
    let cam = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url("/whep/pull/cam/main"), "--token", &viewer, "--seconds", "8"]);
    let movie = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url("/whep/pull/movie/main"), "--token", &viewer, "--seconds", "8"]);
    let cam = cam.finish(Duration::from_secs(40));
    let movie = movie.finish(Duration::from_secs(40));
    assert_eq!((cam["width"].as_u64(), cam["height"].as_u64()), (Some(640), Some(360)), "{cam}");
    assert!(cam["frames"].as_u64().unwrap() >= 100, "RTMP pull at 30 fps for 8 s: {cam}");
    assert!(cam["audio_rms"].as_f64().unwrap() > 1000.0, "{cam}");
    assert_eq!((movie["width"].as_u64(), movie["height"].as_u64()), (Some(480), Some(270)), "{movie}");
    assert!(movie["frames"].as_u64().unwrap() >= 80, "HLS pull at 25 fps for 8 s: {movie}");
    assert!(movie["audio_rms"].as_f64().unwrap() > 1000.0, "{movie}");
    let running = get(&server.url(&format!("/v1/ingests/{rtmp_id}")), Some(&key)).json();
    assert!(running["bitrate_kbps"].as_f64().unwrap() > 50.0, "{running}");

    // The 14 s HLS file is played once (repeat 1), then the ingest stops by itself.
    let (done, _) = poll_ingest(&server, &key, &hls_id, Duration::from_secs(30), |v| v["state"] == "STOPPED");
    assert_eq!(done["plays_done"], 1, "{done}");
    assert!(done["error"].is_null(), "{done}");

    // A bad URL: RETRYING at 0, 1 and 3 s, then FAILED with the reason.
    let started = Instant::now();
    let r = post_json(&ingests, Some(&key), &serde_json::json!({"room": "pull", "user": "ghost", "url": "http://127.0.0.1:9/live.m3u8"}));
    assert_eq!(r.status, 201, "{}", r.body);
    let bad_id = r.json()["id"].as_str().unwrap().to_owned();
    let (failed, seen) = poll_ingest(&server, &key, &bad_id, Duration::from_secs(20), |v| v["state"] == "FAILED");
    let took = started.elapsed();
    assert!(seen.contains(&"RETRYING".to_string()), "{seen:?}");
    assert!(failed["error"].as_str().unwrap().contains("onnection refused"), "{failed}");
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(12), "failed after {took:?}");

    // List, then PATCH and DELETE the RTMP pull.
    let list = get(&format!("{ingests}?limit=2"), Some(&key)).json();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(list["next_cursor"].is_string(), "{list}");
    let r = request("PATCH", &server.url(&format!("/v1/ingests/{hls_id}")), Some(&key), Some(("application/json", br#"{"url":"http://127.0.0.1:9/x.mp4"}"#)), &[]);
    r.expect_error(409, "invalid_state");
    let r = request("DELETE", &server.url(&format!("/v1/ingests/{rtmp_id}")), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "STOPPED", "{}", r.body);
    // The virtual anchor has left: its stream is free again.
    let r = post_json(&ingests, Some(&key), &serde_json::json!({"room": "pull", "user": "cam", "url": "http://127.0.0.1:9/x.mp4"}));
    assert_eq!(r.status, 201, "{}", r.body);

    // Events (group 7): a clean start and end, the bad URL's 2 → 2 → 2 → 1, and why each stopped.
    let statuses = |events: &[serde_json::Value], id: &str| -> Vec<(u64, String)> {
        events
            .iter()
            .filter(|e| e["EventInfo"]["TaskId"] == id)
            .map(|e| {
                (
                    e["EventType"].as_u64().unwrap(),
                    if e["EventType"] == 701 { e["EventInfo"]["Status"].to_string() } else { e["EventInfo"]["Reason"].as_str().unwrap_or("").to_string() },
                )
            })
            .collect()
    };
    let pair = |c: u64, s: &str| (c, s.to_string());
    let events = hooks.wait_for(Duration::from_secs(10), "the ingests' 702s", |e| [&hls_id, &bad_id, &rtmp_id].iter().all(|id| codes_of(e, id).contains(&702)));
    assert_eq!(statuses(&events, &hls_id), vec![pair(701, "0"), pair(702, "source_ended")]);
    assert_eq!(statuses(&events, &bad_id), vec![pair(701, "2"), pair(701, "2"), pair(701, "2"), pair(701, "1"), pair(702, "source_failed")]);
    assert_eq!(statuses(&events, &rtmp_id), vec![pair(701, "0"), pair(702, "api")]);
    let start = events.iter().find(|e| e["EventInfo"]["TaskId"] == rtmp_id.as_str()).unwrap();
    assert_eq!((start["EventGroupId"].as_u64(), start["EventInfo"]["UserId"].as_str(), start["EventInfo"]["Url"].as_str()), (Some(7), Some("cam"), Some(source_url.as_str())));
    assert_eq!(start["CallbackMsTs"], start["CallbackTs"]);
    assert!(start["EventInfo"].get("EventTs").is_none(), "{start}");
    assert!(hooks.requests().iter().all(|r| r["sign_ok"] == true));

    // The task files keep every ingest's final state.
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("tasks").join(format!("{bad_id}.json"))).unwrap()).unwrap();
    assert_eq!(saved["state"], "FAILED");

    // A looping ingest survives a server restart: the next start resumes it.
    let r = post_json(&ingests, Some(&key), &serde_json::json!({"room": "pull", "user": "loop", "url": format!("http://127.0.0.1:{http_port}/index.m3u8"), "repeat": -1}));
    assert_eq!(r.status, 201, "{}", r.body);
    let loop_id = r.json()["id"].as_str().unwrap().to_owned();
    poll_ingest(&server, &key, &loop_id, Duration::from_secs(15), |v| v["state"] == "RUNNING");
    assert!(server.stop().success());
    let server = Server::start(&data, &["--http-addr", &format!("{}:0", net.host_ip), "--rtc-udp-addr", &format!("{}:0", net.host_ip)]);
    let (resumed, _) = poll_ingest(&server, &key, &loop_id, Duration::from_secs(15), |v| v["state"] == "RUNNING");
    assert_eq!(resumed["repeat"], -1, "{resumed}");
    let finished = get(&server.url(&format!("/v1/ingests/{bad_id}")), Some(&key)).json();
    assert_eq!(finished["state"], "FAILED", "finished tasks stay readable after a restart: {finished}");
    let r = request("DELETE", &server.url(&format!("/v1/ingests/{loop_id}")), Some(&key), None, &[]);
    assert_eq!(r.json()["state"], "STOPPED", "{}", r.body);
    let _ = rtmp_source.kill();
    let _ = http_server.kill();
    let _ = rtmp_source.wait();
    let _ = http_server.wait();
}
