//! MCU mix jobs end to end: ffmpeg publishers with known solid colours and distinct tones push
//! into a room over RTMP, and headless Chromium publishes a magenta fake camera over WHIP (VP8);
//! a mix job composites them; an aiortc WHEP viewer decodes the mix and
//! the test samples each tile's centre colour and looks for the tones in the mixed audio.
//! PATCH switches layouts live; a publisher leaving frees its tile by the slot rule.

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tessera_tests::*;

/// A solid-colour 320x180 picture and a sine tone, H.264 (no B-frames) + AAC over RTMP.
fn publisher(url: &str, colour: &str, tone: u32, seconds: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", &format!("color=c={colour}:s=320x180:r=15:d={seconds}")])
        .args(["-f", "lavfi", "-i", &format!("sine=frequency={tone}:duration={seconds}")])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0", "-g", "15", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg")
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn near(rgb: &Value, want: (i64, i64, i64)) -> bool {
    let c: Vec<i64> = rgb.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    (c[0] - want.0).abs() <= 60 && (c[1] - want.1).abs() <= 60 && (c[2] - want.2).abs() <= 60
}

const RED: (i64, i64, i64) = (255, 0, 0);
const GREEN: (i64, i64, i64) = (0, 255, 0);
const BLUE: (i64, i64, i64) = (0, 0, 255);
const YELLOW: (i64, i64, i64) = (255, 255, 0);
const MAGENTA: (i64, i64, i64) = (255, 0, 255);

/// The first sample time at or after `from` where each (point index, colour) matches, if any.
fn first_match(samples: &[Value], from: f64, want: &[(usize, (i64, i64, i64))]) -> Option<f64> {
    samples.iter().find_map(|s| {
        let t = s[0].as_f64().unwrap();
        let cols = s[1].as_array().unwrap();
        (t >= from && want.iter().all(|(i, w)| near(&cols[*i], *w))).then_some(t)
    })
}

fn poll(server: &Server, key: &str, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = get(&server.url(&format!("/v1/mix-jobs/{id}")), Some(key)).json();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "mix job never got there: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tiles(job: &Value) -> Vec<(String, Vec<u64>)> {
    let mut t: Vec<(String, Vec<u64>)> = job["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| !i["tile"].is_null())
        .map(|i| (i["user"].as_str().unwrap().to_owned(), ["x", "y", "width", "height"].iter().map(|k| i["tile"][*k].as_u64().unwrap()).collect()))
        .collect();
    t.sort();
    t
}

#[test]
fn mix_job_composites_four_publishers_switches_layouts_and_frees_tiles() {
    let _turn = serial();
    let dir = TempDir::new("mcu");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let server = Server::start(&data, &["--http-addr", &format!("{}:0", net.host_ip), "--rtc-udp-addr", &format!("{}:0", net.host_ip)]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let port = rtmp_port(&server);
    let jobs = server.url("/v1/mix-jobs");

    // Refusals first: nothing is started by a bad request.
    post_json(&jobs, Some(&key), &json!({"room": "mix", "layout": {"template": "grid"}})).expect_error(400, "invalid_parameter");
    let e = post_json(&jobs, Some(&key), &json!({"room": "mix", "encode": {"template": "1280x720_15"}})).expect_error(400, "invalid_parameter");
    assert_eq!(e["details"]["field"], "encode.template");
    let e = post_json(&jobs, Some(&key), &json!({"room": "mix", "layout": {"template": "custom", "regions": [{"x": 1200, "y": 0, "width": 200, "height": 100}]}}))
        .expect_error(400, "invalid_parameter");
    assert_eq!(e["details"]["field"], "layout.regions[0]");
    post_json(&jobs, Some(&key), &json!({"room": "mix", "layout": {"background_color": "red"}})).expect_error(400, "invalid_parameter");
    let e = post_json(&jobs, Some(&key), &json!({"room": "mix", "layout": {"watermarks": [{"image": "ftp://x/y.png", "x": 0, "y": 0, "width": 10, "height": 10}]}}))
        .expect_error(400, "invalid_parameter");
    assert_eq!(e["details"]["field"], "layout.watermarks[0].image");
    let e = post_json(&jobs, Some(&key), &json!({"room": "mix", "layout": {"watermarks": [{"image": "https://x/y.png", "x": 1200, "y": 0, "width": 100, "height": 10}]}}))
        .expect_error(400, "invalid_parameter");
    assert_eq!(e["details"]["field"], "layout.watermarks[0]");
    assert_eq!(get(&jobs, Some(&key)).json()["items"].as_array().unwrap().len(), 0);

    // Four RTMP publishers, joined in this order, then Chromium (VP8) as the fifth.
    let mut pubs = Vec::new();
    for (user, colour, tone) in [("red", "0xFF0000", 300), ("green", "0x00FF00", 500), ("blue", "0x0000FF", 700), ("yellow", "0xFFFF00", 900)] {
        let t = token(&data, "mix", user);
        pubs.push(publisher(&format!("rtmp://127.0.0.1:{port}/push/mix/{user}?token={t}"), colour, tone, 60));
        std::thread::sleep(Duration::from_millis(700));
    }
    let camera = dir.path().join("magenta.mjpeg");
    let made =
        Command::new("ffmpeg").args(["-v", "error", "-y", "-f", "lavfi", "-i", "color=c=0xFF00FF:s=640x360:r=30:d=1", "-q:v", "2", "-f", "mjpeg"]).arg(&camera).status().unwrap();
    assert!(made.success());
    let chromium_token = token(&data, "mix", "chromium");
    let base = server.base.clone();
    let chromium = Client::start(
        &net,
        "browser.py",
        &["publish", "--base", &base, "--room", "mix", "--token", &chromium_token, "--codec", "VP8", "--seconds", "45", "--fake-video", camera.to_str().unwrap()],
    );

    let r = post_json(&jobs, Some(&key), &json!({"room": "mix", "encode": {"template": "640x360_15_800", "gop_s": 1}, "max_idle_time": 5}));
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["user"], format!("mix_{id}"));
    assert_eq!(job["layout"]["template"], "nine_grid");
    assert_eq!(job["encode"]["effective"]["width"], 640);
    assert_eq!(job["encode"]["effective"]["encoder"], "openh264", "OpenH264 is the default encoder");
    assert_eq!(job["whep_url"], format!("/whep/mix/mix_{id}/main"));
    let running = poll(&server, &key, &id, Duration::from_secs(30), |v| v["state"] == "RUNNING" && tiles(v).len() == 5);
    assert_eq!(
        tiles(&running),
        vec![
            ("blue".to_string(), vec![426, 0, 214, 120]),
            ("chromium".to_string(), vec![212, 120, 214, 120]),
            ("green".to_string(), vec![212, 0, 214, 120]),
            ("red".to_string(), vec![0, 0, 212, 120]),
            ("yellow".to_string(), vec![0, 120, 212, 120]),
        ],
        "nine_grid with 5 inputs in join order: {running}"
    );

    // One viewer through every phase, sampling the tile centres of the 2x2 grid, the float's
    // big picture and first small, and the screen share's main and first small.
    let viewer_token = token(&data, "mix", "viewer");
    // 0-4: the 3x3 grid's five tiles; 5: the float's first small; 6-8: screen share main, first
    // and fourth small; 9-12: the 2x2 grid after green left.
    // 13: the watermark's box.
    let points = "106,60;319,60;533,60;106,180;319,180;81,312;256,180;576,45;576,315;160,90;480,90;160,270;480,270;616,24";
    let viewer = Client::start(
        &net,
        "aiortc_client.py",
        &["play", "--url", &server.url(&format!("/whep/mix/mix_{id}/main")), "--token", &viewer_token, "--seconds", "22", "--sample", points, "--tones", "300,500,700,900,1700"],
    );
    // The grid must be on screen before the first PATCH: wait for the viewer's session (aiortc
    // takes seconds to start on a busy machine), then give it 3 s of pictures.
    let joined = std::time::Instant::now();
    while !get(&server.url("/metrics"), None).body.lines().any(|l| l.starts_with("tessera_participants{user_type=\"11\"}") && !l.ends_with(" 0")) {
        assert!(joined.elapsed() < Duration::from_secs(30), "the viewer never joined");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    // Float: the earliest (red) is the big picture, the others are smalls from the bottom left.
    let float_at = now_s();
    let r = request("PATCH", &server.url(&format!("/v1/mix-jobs/{id}")), Some(&key), Some(("application/json", br#"{"layout":{"template":"float"}}"#)), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let job = poll(&server, &key, &id, Duration::from_secs(3), |v| tiles(v).iter().any(|(u, t)| u == "red" && t == &vec![0, 0, 640, 360]));
    assert!(tiles(&job).contains(&("green".to_string(), vec![6, 270, 150, 84])), "{job}");
    assert!(tiles(&job).contains(&("chromium".to_string(), vec![480, 270, 150, 84])), "{job}");
    std::thread::sleep(Duration::from_secs(4));
    // Screen share, blue's stream as the main picture (it has no aux: its main is used).
    let share_at = now_s();
    let r = request(
        "PATCH",
        &server.url(&format!("/v1/mix-jobs/{id}")),
        Some(&key),
        Some(("application/json", br#"{"layout":{"template":"screen_share_left","main":{"user":"blue"}}}"#)),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_secs(4));
    // Back to the grid, with a white PNG watermark (a data: URI) and a background image that
    // cannot be fetched (reported; the job runs on). Then green leaves: its slot is removed and
    // later entries shift left.
    let png = dir.path().join("white.png");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "color=c=white:s=64x64", "-frames:v", "1", "-c:v", "png", "-f", "image2"])
        .arg(&png)
        .status()
        .unwrap();
    assert!(made.success());
    use base64::Engine as _;
    let data_uri = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(std::fs::read(&png).unwrap()));
    let patch = json!({"layout": {"template": "nine_grid", "background_image": "http://127.0.0.1:9/none.png", "watermarks": [{"image": data_uri, "x": 600, "y": 8, "width": 32, "height": 32}]}});
    let r = request("PATCH", &server.url(&format!("/v1/mix-jobs/{id}")), Some(&key), Some(("application/json", patch.to_string().as_bytes())), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let patched = r.json();
    assert_eq!(patched["image_errors"].as_array().map(|a| a.len()), Some(1), "{}", patched["image_errors"]);
    assert_eq!(patched["layout"]["watermarks"][0]["width"], 32);
    std::thread::sleep(Duration::from_secs(1));
    let leave_at = now_s();
    let _ = pubs[1].kill();
    let _ = pubs[1].wait();
    let after_leave = vec![
        ("blue".to_string(), vec![320, 0, 320, 180]),
        ("chromium".to_string(), vec![320, 180, 320, 180]),
        ("red".to_string(), vec![0, 0, 320, 180]),
        ("yellow".to_string(), vec![0, 180, 320, 180]),
    ];
    poll(&server, &key, &id, Duration::from_secs(5), |v| tiles(v) == after_leave);
    let v = viewer.finish(Duration::from_secs(60));
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(640), Some(360)), "{}", v["width"]);
    let samples = v["samples"].as_array().unwrap();
    let summary: Vec<String> = samples.iter().step_by(10).map(|s| format!("{:.1}: {}", s[0].as_f64().unwrap() - float_at, s[1])).collect();
    // Grid: the five colours at the five tile centres.
    let t = first_match(samples, 0.0, &[(0, RED), (1, GREEN), (2, BLUE), (3, YELLOW), (4, MAGENTA)]);
    assert!(t.is_some_and(|t| t < float_at), "grid colours before the PATCH: {summary:#?}");
    // Float within a second of its PATCH: red fills the picture, green is the first small.
    let t = first_match(samples, float_at, &[(0, RED), (2, RED), (5, GREEN)]).unwrap_or_else(|| panic!("float never showed: {summary:#?}"));
    assert!(t - float_at < 1.2, "float showed {:.2} s after the PATCH", t - float_at);
    // Screen share: blue's picture fitted on the left; red and Chromium among the smalls.
    let t = first_match(samples, share_at, &[(6, BLUE), (7, RED), (8, MAGENTA)]).unwrap_or_else(|| panic!("screen share never showed: {summary:#?}"));
    assert!(t - share_at < 1.2, "screen share showed {:.2} s after the PATCH", t - share_at);
    // After green left: its slot is removed and the later inputs shift left.
    let t = first_match(samples, leave_at, &[(9, RED), (10, BLUE), (11, YELLOW), (12, MAGENTA), (13, (255, 255, 255))]);
    assert!(t.is_some(), "tiles after green left: {summary:#?}");
    // All four tones are in the mix (green's until it left); a frequency nobody sent is not.
    let tones = &v["tones"];
    let sent: Vec<f64> = ["300", "700", "900"].iter().map(|f| tones[*f].as_f64().unwrap()).collect();
    assert!(sent.iter().all(|db| *db > 40.0), "the tones stand out of the mix: {tones}");
    let weakest = sent.iter().cloned().fold(f64::MAX, f64::min);
    assert!(tones["1700"].as_f64().unwrap() < weakest - 30.0, "no 1700 Hz tone was sent: {tones}");

    // The mix stats are filled in.
    let job = get(&server.url(&format!("/v1/mix-jobs/{id}")), Some(&key)).json();
    assert!(job["stats"]["fps"].as_f64().unwrap() >= 12.0, "{}", job["stats"]);
    assert!(job["stats"]["encode_ms_p50"].as_f64().unwrap() > 0.0, "{}", job["stats"]);
    assert!(job["stats"]["cpu_cores"].as_f64().unwrap() > 0.0, "{}", job["stats"]);
    // The encoding is fixed while running; DELETE stops with leave code 0.
    let r = request("PATCH", &server.url(&format!("/v1/mix-jobs/{id}")), Some(&key), Some(("application/json", br#"{"encode":{"template":"360p"}}"#)), &[]);
    r.expect_error(409, "encode_immutable");
    let r = request("DELETE", &server.url(&format!("/v1/mix-jobs/{id}")), Some(&key), None, &[]);
    assert_eq!((r.json()["state"].as_str(), r.json()["leave_code"].as_u64()), (Some("STOPPED"), Some(0)), "{}", r.body);

    // A job in a room without anchors stops by itself after max_idle_time (leave code 99).
    // It encodes its background meanwhile, here with libx264.
    let r = post_json(&jobs, Some(&key), &json!({"room": "empty", "max_idle_time": 2, "encode": {"template": "360p", "encoder": "x264"}}));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["encode"]["effective"]["encoder"], "x264");
    let idle_id = r.json()["id"].as_str().unwrap().to_owned();
    let stopped = poll(&server, &key, &idle_id, Duration::from_secs(10), |v| v["state"] == "STOPPED");
    assert_eq!(stopped["leave_code"], 99, "{stopped}");
    assert!(stopped["stats"]["frames"].as_u64().unwrap() >= 15, "{stopped}");
    for mut p in pubs {
        let _ = p.kill();
        let _ = p.wait();
    }
    let c = chromium.finish(Duration::from_secs(60));
    assert_eq!(c["publish_state"], "connected", "{c}");
}

/// A simulcast publisher in a mix: the mix decodes the smallest layer that covers its tile —
/// the 320x180 layer of Chromium's three (1280x720, 640x360, 320x180) for a 320x180 tile of a
/// four-input grid, the 640x360 one once it is the main tile of `screen_share_left` — and it
/// keeps mixing through the switches.
#[test]
fn a_mix_decodes_the_simulcast_layer_its_tile_needs() {
    let _turn = serial();
    let dir = TempDir::new("mcu-layers");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let server = Server::start(&data, &["--http-addr", &format!("{}:0", net.host_ip), "--rtc-udp-addr", &format!("{}:0", net.host_ip)]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let port = rtmp_port(&server);
    let mut pubs = Vec::new();
    for (user, colour, tone) in [("red", "0xFF0000", 300), ("green", "0x00FF00", 500), ("blue", "0x0000FF", 700)] {
        let t = token(&data, "layers", user);
        pubs.push(publisher(&format!("rtmp://127.0.0.1:{port}/push/layers/{user}?token={t}"), colour, tone, 50));
    }
    let camera = dir.path().join("magenta.mjpeg");
    let made =
        Command::new("ffmpeg").args(["-v", "error", "-y", "-f", "lavfi", "-i", "color=c=0xFF00FF:s=1280x720:r=30:d=1", "-q:v", "2", "-f", "mjpeg"]).arg(&camera).status().unwrap();
    assert!(made.success());
    let cam_token = token(&data, "layers", "cam");
    let chromium = Client::start(
        &net,
        "browser.py",
        &[
            "publish",
            "--base",
            &server.base,
            "--room",
            "layers",
            "--token",
            &cam_token,
            "--simulcast",
            "--degradation",
            "maintain-resolution",
            "--seconds",
            "40",
            "--fake-video",
            camera.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    let r = post_json(&server.url("/v1/mix-jobs"), Some(&key), &json!({"room": "layers", "encode": {"template": "640x360_15_800"}, "max_idle_time": 5}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let cam = |v: &Value| v["inputs"].as_array().unwrap().iter().find(|i| i["user"] == "cam").cloned().unwrap_or(Value::Null);
    let decoded = |v: &Value| (cam(v)["decoded"]["width"].as_u64(), cam(v)["decoded"]["height"].as_u64());
    // Four inputs in a 640x360 grid: 320x180 tiles, the 320x180 layer.
    let grid = poll(&server, &key, &id, Duration::from_secs(30), |v| decoded(v) == (Some(320), Some(180)));
    assert_eq!(cam(&grid)["tile"]["width"], 320, "{grid}");
    // The main tile of screen_share_left is larger: the 640x360 layer.
    let r = request(
        "PATCH",
        &server.url(&format!("/v1/mix-jobs/{id}")),
        Some(&key),
        Some(("application/json", br#"{"layout":{"template":"screen_share_left","main":{"user":"cam"}}}"#)),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let main = poll(&server, &key, &id, Duration::from_secs(20), |v| decoded(v) == (Some(640), Some(360)));
    let tile = &cam(&main)["tile"];
    assert!(tile["width"].as_u64().unwrap() > 320 && tile["width"].as_u64().unwrap() <= 640, "{main}");
    // It kept mixing through both switches.
    let before = main["stats"]["frames"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let after = poll(&server, &key, &id, Duration::from_secs(5), |_| true);
    assert!(after["stats"]["frames"].as_u64().unwrap() >= before + 20, "{after}");
    assert_eq!(decoded(&after), (Some(640), Some(360)), "it stays on the layer: {after}");
    // A custom layout that shows only red: the camera is not decoded at all; back in the grid,
    // it is again (from a keyframe the job asks for).
    let custom = br#"{"layout":{"template":"custom","regions":[{"x":0,"y":0,"width":640,"height":360,"user":"red"}]}}"#;
    let r = request("PATCH", &server.url(&format!("/v1/mix-jobs/{id}")), Some(&key), Some(("application/json", custom)), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let hidden = poll(&server, &key, &id, Duration::from_secs(10), |v| decoded(v) == (None, None));
    assert!(cam(&hidden)["tile"].is_null(), "{hidden}");
    let red = hidden["inputs"].as_array().unwrap().iter().find(|i| i["user"] == "red").cloned().unwrap();
    assert_eq!(red["decoded"]["width"], 320, "the shown input is decoded: {hidden}");
    let r = request("PATCH", &server.url(&format!("/v1/mix-jobs/{id}")), Some(&key), Some(("application/json", br#"{"layout":{"template":"nine_grid"}}"#)), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    poll(&server, &key, &id, Duration::from_secs(10), |v| decoded(v) == (Some(320), Some(180)));
    request("DELETE", &server.url(&format!("/v1/mix-jobs/{id}")), Some(&key), None, &[]);
    let _ = chromium.finish(Duration::from_secs(60));
    for mut p in pubs {
        let _ = p.kill();
        let _ = p.wait();
    }
}
