//! RTMP publishes with B-frames: ffmpeg with libx264's defaults, and real OBS Studio with its
//! default Simple-mode settings (under Xvfb). A WebRTC viewer (aiortc over WHEP) decodes the
//! re-encoded picture in its colour; relays and recordings keep the original, B-frames and
//! composition times included.

use super::*;

/// These tests transcode in real time (and run OBS, or x265 in Python): one at a time, so two of
/// them never share the two cores CI has.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// ffmpeg with libx264's defaults (`-preset medium`: 3 B-frames, B-pyramid, a keyframe every
/// 250 frames) pushing a flat colour and a tone.
fn default_x264_publisher(url: &str, seconds: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", &format!("color=c=0x2080e0:size=640x360:rate=30:duration={seconds}")])
        .args(["-f", "lavfi", "-i", &format!("sine=frequency=440:duration={seconds}")])
        .args(["-c:v", "libx264", "-preset", "medium", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg")
}

/// (has_b_frames of the video stream, video packets, packets shown at another time than decoded,
/// frames that decode).
fn b_frame_facts(file: &str) -> (u64, usize, usize, usize) {
    let out =
        Command::new("ffprobe").args(["-v", "error", "-select_streams", "v:0", "-show_entries", "stream=has_b_frames:packet=pts,dts", "-of", "json"]).arg(file).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let has_b = v["streams"][0]["has_b_frames"].as_u64().unwrap_or(0);
    let packets = v["packets"].as_array().cloned().unwrap_or_default();
    let reordered = packets.iter().filter(|p| p["pts"] != p["dts"]).count();
    let decode = Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(file).args(["-map", "0:v:0", "-f", "framemd5", "-"]).output().unwrap();
    assert!(decode.status.success(), "{file:?} decodes: {}", String::from_utf8_lossy(&decode.stderr));
    let frames = String::from_utf8_lossy(&decode.stdout).lines().filter(|l| !l.starts_with('#')).count();
    (has_b, packets.len(), reordered, frames)
}

#[test]
fn a_b_frame_publish_is_transcoded_for_viewers_and_kept_whole_by_relays_and_recordings() {
    let _turn = one_at_a_time();
    let dir = TempDir::new("bframes");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let server = Server::start(&data, &["--http-addr", &format!("{}:0", net.host_ip), "--rtc-udp-addr", &format!("{}:0", net.host_ip), "--rtmp-addr", "127.0.0.1:0"]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let cam = token(&data, "bf", "cam");
    let mut source = default_x264_publisher(&format!("rtmp://127.0.0.1:{}/push/bf/cam?token={cam}", rtmp_port(&server)), 22);
    let cdn_port = free_port();
    let relayed = dir.path().join("relayed.flv");
    let receiver = cdn(cdn_port, &relayed);
    std::thread::sleep(Duration::from_secs(3));

    let relay = post_json(&server.url("/v1/relays"), Some(&key), &json!({"room": "bf", "source": {"user": "cam"}, "urls": [format!("rtmp://127.0.0.1:{cdn_port}/live/key")]}));
    assert_eq!(relay.status, 201, "{}", relay.body);
    let rec = post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "bf", "format": "hls+mp4", "hls": {"segment_s": 4}}));
    assert_eq!(rec.status, 201, "{}", rec.body);
    let rec_id = rec.json()["id"].as_str().unwrap().to_owned();
    let metrics = get(&server.url("/metrics"), None).body;
    assert!(metrics.lines().any(|l| l == "tessera_rtmp_transcodes 1"), "{metrics}");
    // A mix job takes the transcoder's pictures instead of decoding the stream again.
    let job = post_json(&server.url("/v1/mix-jobs"), Some(&key), &json!({"room": "bf", "encode": {"template": "360p"}}));
    assert_eq!(job.status, 201, "{}", job.body);
    let job_id = job.json()["id"].as_str().unwrap().to_owned();
    let mix_viewer = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url(&format!("/whep/bf/mix_{job_id}/main")), "--token", &cam, "--seconds", "8"]);
    // The viewer joins mid-GOP (keyframes are 8 s apart): its keyframe request gets an IDR from
    // the re-encoder at once.
    let viewer = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url("/whep/bf/cam/main"), "--token", &cam, "--seconds", "8"]);
    let r = viewer.finish(Duration::from_secs(40));
    eprintln!("viewer: {} frames {}x{}, mean rgb {}", r["frames"], r["width"], r["height"], r["mean_rgb"]);
    assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(640), Some(360)), "{r}");
    assert!(r["frames"].as_u64().unwrap() >= 60, "frames decoded: {r}");
    let rgb: Vec<i64> = r["mean_rgb"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    for (got, want) in rgb.iter().zip([0x20, 0x80, 0xe0]) {
        assert!((got - want).abs() <= 24, "the colour: {rgb:?} vs {:?}", [0x20, 0x80, 0xe0]);
    }
    assert!(r["audio_frames"].as_u64().unwrap() >= 200, "{r}");
    let m = mix_viewer.finish(Duration::from_secs(40));
    eprintln!("mix viewer: {} frames, mean rgb {}", m["frames"], m["mean_rgb"]);
    assert!(m["frames"].as_u64().unwrap() >= 60, "mix frames decoded: {m}");
    let stats = get(&server.url(&format!("/v1/mix-jobs/{job_id}")), Some(&key)).json()["stats"].clone();
    let mixed: Vec<i64> = m["mean_rgb"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    for (got, want) in mixed.iter().zip([0x20, 0x80, 0xe0]) {
        assert!((got - want).abs() <= 24, "the mix's colour: {mixed:?}; {stats}");
    }
    assert!(stats["shared_pictures"].as_u64().unwrap() >= 100, "the mix composed the transcoder's pictures: {stats}");
    let r = request("DELETE", &server.url(&format!("/v1/mix-jobs/{job_id}")), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);

    let _ = source.wait();
    let mut err = String::new();
    use std::io::Read;
    source.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.is_empty(), "the publish ran to its end: {err}");
    std::thread::sleep(Duration::from_secs(1));
    let r = request("DELETE", &server.url(&format!("/v1/recordings/{rec_id}")), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let relay_id = relay.json()["id"].as_str().unwrap().to_owned();
    let r = request("DELETE", &server.url(&format!("/v1/relays/{relay_id}")), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    interrupt(receiver);

    // The relay got the original: B-frames in the SPS and in the composition times.
    let (has_b, packets, reordered, frames) = b_frame_facts(relayed.to_str().unwrap());
    eprintln!("relayed: has_b_frames {has_b}, {reordered} of {packets} packets reordered, {frames} frames decode");
    assert!(has_b >= 1 && reordered * 3 >= packets && packets >= 200, "relayed: has_b_frames {has_b}, {reordered} of {packets} packets reordered");
    assert!(frames >= 200, "relayed frames that decode: {frames}");
    // So did the recording, and its MP4 plays.
    let result = poll(&server, &key, &format!("/v1/recordings/{rec_id}/result"), Duration::from_secs(30), |v| {
        v["Files"].as_array().is_some_and(|f| f.iter().any(|f| f["FileName"].as_str().is_some_and(|n| n.ends_with(".mp4"))))
    });
    let mp4 = result["Files"].as_array().unwrap().iter().find(|f| f["FileName"].as_str().unwrap().ends_with(".mp4")).unwrap()["Url"].as_str().unwrap().to_owned();
    let (has_b, packets, reordered, frames) = b_frame_facts(&format!("{}?token={cam}", server.url(&mp4)));
    eprintln!("recorded: has_b_frames {has_b}, {reordered} of {packets} packets reordered, {frames} frames decode");
    assert!(has_b >= 1 && reordered * 3 >= packets && packets >= 200, "recorded: has_b_frames {has_b}, {reordered} of {packets} packets reordered");
    assert!(frames >= 200, "recorded frames that decode: {frames}");
}

/// OBS Studio (Debian's) under its own Xvfb, configured from files as a user would set it up:
/// Settings → Stream → Custom (server, stream key), a colour source filling a 640x360 canvas,
/// and nothing else changed — Simple output mode, x264 veryfast with OBS's B-frames.
struct Obs {
    xvfb: Child,
    obs: Option<Child>,
}

impl Obs {
    fn start(home: &Path, server: &str, key: &str, rgb: [u8; 3]) -> Obs {
        let config = home.join(".config/obs-studio");
        std::fs::create_dir_all(config.join("basic/profiles/Tessera")).unwrap();
        std::fs::create_dir_all(config.join("basic/scenes")).unwrap();
        // FirstRun=true: OBS has run before (no auto-configuration wizard).
        std::fs::write(
            config.join("global.ini"),
            "[General]\nFirstRun=true\nEnableAutoUpdates=false\n[Basic]\nProfile=Tessera\nProfileDir=Tessera\nSceneCollection=Tessera\nSceneCollectionFile=Tessera\n",
        )
        .unwrap();
        std::fs::write(
            config.join("basic/profiles/Tessera/basic.ini"),
            "[General]\nName=Tessera\n[Output]\nMode=Simple\n[Video]\nBaseCX=640\nBaseCY=360\nOutputCX=640\nOutputCY=360\nFPSType=0\nFPSCommon=30\n",
        )
        .unwrap();
        let service = json!({"type": "rtmp_custom", "settings": {"server": server, "key": key, "use_auth": false}});
        std::fs::write(config.join("basic/profiles/Tessera/service.json"), service.to_string()).unwrap();
        // OBS colours are 0xAABBGGRR.
        let colour = 0xff00_0000u32 | (rgb[2] as u32) << 16 | (rgb[1] as u32) << 8 | rgb[0] as u32;
        let item = json!({"name": "Colour", "id": 1, "visible": true, "locked": false, "pos": {"x": 0.0, "y": 0.0}, "scale": {"x": 1.0, "y": 1.0}, "rot": 0.0,
            "align": 5, "bounds_type": 0, "bounds": {"x": 0.0, "y": 0.0}, "bounds_align": 0, "crop_left": 0, "crop_top": 0, "crop_right": 0, "crop_bottom": 0});
        let scenes = json!({"name": "Tessera", "current_scene": "Scene", "current_program_scene": "Scene", "scene_order": [{"name": "Scene"}],
            "sources": [
                {"id": "scene", "versioned_id": "scene", "name": "Scene", "settings": {"id_counter": 1, "items": [item]}},
                {"id": "color_source", "versioned_id": "color_source_v3", "name": "Colour", "settings": {"color": colour, "width": 640, "height": 360}}
            ],
            "transitions": [], "current_transition": "Fade", "transition_duration": 300});
        std::fs::write(config.join("basic/scenes/Tessera.json"), scenes.to_string()).unwrap();
        // A display of its own.
        let display = (90..400).find(|n| !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() && !Path::new(&format!("/tmp/.X{n}-lock")).exists()).expect("a free X display");
        let xvfb = Command::new("Xvfb")
            .args([&format!(":{display}"), "-screen", "0", "1280x800x24", "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(&format!("/tmp/.X11-unix/X{display}")).exists() {
            assert!(Instant::now() < deadline, "Xvfb did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let obs = Command::new("obs")
            .args(["--startstreaming", "--multi", "--collection", "Tessera", "--profile", "Tessera"])
            .current_dir(home)
            .env("HOME", home)
            .env_remove("XDG_CONFIG_HOME")
            .env("DISPLAY", format!(":{display}"))
            .env("LIBGL_ALWAYS_SOFTWARE", "1")
            .stdout(std::fs::File::create(home.join("obs.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("obs (scripts/setup.sh installs obs-studio)");
        Obs { xvfb, obs: Some(obs) }
    }
}

impl Drop for Obs {
    fn drop(&mut self) {
        // OBS, like ffmpeg, stops cleanly on SIGINT.
        if let Some(obs) = self.obs.take() {
            interrupt(obs);
        }
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
    }
}

#[test]
fn obs_with_its_default_settings_is_watched_over_whep_and_recorded_with_its_b_frames() {
    let _turn = one_at_a_time();
    let dir = TempDir::new("obs");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let server = Server::start(&data, &["--http-addr", &format!("{}:0", net.host_ip), "--rtc-udp-addr", &format!("{}:0", net.host_ip), "--rtmp-addr", "127.0.0.1:0"]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let user = token(&data, "studio", "obs");
    // The recording waits for the room's first publisher.
    let rec = post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "studio", "format": "hls+mp4", "hls": {"segment_s": 4}}));
    assert_eq!(rec.status, 201, "{}", rec.body);
    let rec_id = rec.json()["id"].as_str().unwrap().to_owned();
    let rtmp_server = format!("rtmp://127.0.0.1:{}/push/studio", rtmp_port(&server));
    // A stream key without its token: OBS's log says why the publish was refused.
    let refused_home = dir.path().join("obs-refused");
    let refused = Obs::start(&refused_home, &rtmp_server, "obs", [0, 0, 0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(refused_home.join("obs.log")).unwrap_or_default();
        if log.contains("NetStream.Publish.Rejected (token_missing: ") {
            break;
        }
        assert!(Instant::now() < deadline, "OBS's log lacks the refusal:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(refused);
    let home = dir.path().join("obs-home");
    let rgb = [0xd0, 0x40, 0x60];
    let obs = Obs::start(&home, &rtmp_server, &format!("obs?token={user}"), rgb);
    // OBS is live once the room has its stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let users = get(&server.url("/v1/rooms/studio"), Some(&key));
        if users.status == 200 && users.body.contains("\"obs\"") {
            break;
        }
        let log = std::fs::read_to_string(home.join("obs.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "OBS never published; its log:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let viewer = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url("/whep/studio/obs/main"), "--token", &user, "--seconds", "8"]);
    let r = viewer.finish(Duration::from_secs(40));
    eprintln!("OBS viewer: {} frames {}x{}, mean rgb {}", r["frames"], r["width"], r["height"], r["mean_rgb"]);
    assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(640), Some(360)), "{r}");
    assert!(r["frames"].as_u64().unwrap() >= 60, "frames decoded: {r}");
    let got: Vec<i64> = r["mean_rgb"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    for (g, want) in got.iter().zip(rgb) {
        assert!((g - want as i64).abs() <= 24, "the colour: {got:?} vs {rgb:?}");
    }
    let log = std::fs::read_to_string(home.join("obs.log")).unwrap_or_default();
    assert!(log.contains("x264 encoder") && log.contains("Streaming Start"), "OBS's own encoder streamed:\n{log}");
    drop(obs);
    std::thread::sleep(Duration::from_secs(1));
    let r = request("DELETE", &server.url(&format!("/v1/recordings/{rec_id}")), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let result = poll(&server, &key, &format!("/v1/recordings/{rec_id}/result"), Duration::from_secs(30), |v| {
        v["Files"].as_array().is_some_and(|f| f.iter().any(|f| f["FileName"].as_str().is_some_and(|n| n.ends_with(".mp4"))))
    });
    let mp4 = result["Files"].as_array().unwrap().iter().find(|f| f["FileName"].as_str().unwrap().ends_with(".mp4")).unwrap()["Url"].as_str().unwrap().to_owned();
    let (has_b, packets, reordered, frames) = b_frame_facts(&format!("{}?token={user}", server.url(&mp4)));
    eprintln!("OBS recorded: has_b_frames {has_b}, {reordered} of {packets} packets reordered, {frames} frames decode");
    assert!(has_b >= 1 && reordered > 0 && packets >= 150, "recorded: has_b_frames {has_b}, {reordered} of {packets} packets reordered");
    assert!(frames >= 150, "recorded frames that decode: {frames}");
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let path = e.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if e.file_name().to_string_lossy() == name {
            return Some(path);
        }
    }
    None
}

/// A CDN that takes Enhanced RTMP: FFmpeg 8 (PyAV's) listening, decoding what it gets.
fn enhanced_receiver(port: u16) -> EnhancedReceiver {
    let child = Command::new(python())
        .arg(repo_root().join("tests/clients/pyav_listen.py"))
        .args(["--url", &format!("rtmp://127.0.0.1:{port}/live/key"), "--seconds", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test venv's python (scripts/setup.sh)");
    EnhancedReceiver(Some(child))
}

struct EnhancedReceiver(Option<Child>);

impl EnhancedReceiver {
    /// Its one JSON line, once the relay has gone (at most `limit`).
    fn finish(mut self, limit: Duration) -> Value {
        let mut child = self.0.take().expect("once");
        let deadline = Instant::now() + limit;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

impl Drop for EnhancedReceiver {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// FFmpeg 8 (PyAV's) publishing over Enhanced RTMP: `libx265` gives HEVC (`hvc1`), `libsvtav1`
/// AV1 (`av01`).
fn enhanced_publisher(url: &str, codec: &str, seconds: u32, rgb: [u8; 3]) -> Child {
    Command::new(python())
        .arg(repo_root().join("tests/clients/pyav_push.py"))
        .args(["--url", url, "--codec", codec, "--seconds", &seconds.to_string(), "--rgb", &format!("{},{},{}", rgb[0], rgb[1], rgb[2])])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test venv's python (scripts/setup.sh)")
}

#[test]
fn hevc_and_av1_over_enhanced_rtmp_reach_webrtc_viewers_and_are_recorded_as_they_came() {
    let _turn = one_at_a_time();
    let dir = TempDir::new("ertmp");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let server = Server::start(&data, &["--http-addr", &format!("{}:0", net.host_ip), "--rtc-udp-addr", &format!("{}:0", net.host_ip), "--rtmp-addr", "127.0.0.1:0"]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let port = rtmp_port(&server);
    // A recording of the room (each publisher its own files), and a relay of each publisher: the
    // HEVC one to a CDN that speaks legacy FLV only (Debian's ffmpeg 5.1) and to one that takes
    // Enhanced RTMP (FFmpeg 8), the AV1 one to an Enhanced RTMP CDN.
    let rec = post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "ertmp", "format": "hls+mp4", "hls": {"segment_s": 4}}));
    assert_eq!(rec.status, 201, "{}", rec.body);
    let rec_id = rec.json()["id"].as_str().unwrap().to_owned();
    let cdn_port = free_port();
    let relayed = dir.path().join("relayed.flv");
    let mut receiver = Some(cdn(cdn_port, &relayed));
    let mut enhanced_results: Vec<(&str, Value)> = Vec::new();
    for (user, codec, rgb) in [("hevc", "libx265", [0x30, 0xa0, 0x50]), ("av1", "libsvtav1", [0xc0, 0x60, 0x20])] {
        let tok = token(&data, "ertmp", user);
        let mut source = enhanced_publisher(&format!("rtmp://127.0.0.1:{port}/push/ertmp/{user}?token={tok}"), codec, if user == "av1" { 30 } else { 14 }, rgb);
        std::thread::sleep(Duration::from_secs(3));
        let enhanced_port = free_port();
        let enhanced_cdn = enhanced_receiver(enhanced_port);
        std::thread::sleep(Duration::from_millis(500));
        let enhanced_url = json!({"url": format!("rtmp://127.0.0.1:{enhanced_port}/live/key"), "enhanced_rtmp": true});
        let urls = if user == "hevc" { json!([format!("rtmp://127.0.0.1:{cdn_port}/live/key"), enhanced_url]) } else { json!([enhanced_url]) };
        let relay = post_json(&server.url("/v1/relays"), Some(&key), &json!({"room": "ertmp", "source": {"user": user}, "urls": urls}));
        assert_eq!(relay.status, 201, "{}", relay.body);
        let flags: Vec<bool> = relay.json()["urls"].as_array().unwrap().iter().map(|u| u["enhanced_rtmp"].as_bool().unwrap()).collect();
        assert_eq!(flags, if user == "hevc" { vec![false, true] } else { vec![true] });
        let relay_id = relay.json()["id"].as_str().unwrap().to_owned();
        let viewer = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url(&format!("/whep/ertmp/{user}/main")), "--token", &tok, "--seconds", "7"]);
        let r = viewer.finish(Duration::from_secs(40));
        eprintln!("{codec} viewer: {} frames {}x{}, mean rgb {}", r["frames"], r["width"], r["height"], r["mean_rgb"]);
        assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(640), Some(360)), "{codec}: {r}");
        assert!(r["frames"].as_u64().unwrap() >= 60, "{codec}: frames decoded: {r}");
        let got: Vec<i64> = r["mean_rgb"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        for (g, want) in got.iter().zip(rgb) {
            assert!((g - want as i64).abs() <= 24, "{codec}: the colour {got:?} vs {rgb:?}");
        }
        assert!(r["audio_frames"].as_u64().unwrap() >= 150, "{codec}: {r}");
        if user == "av1" {
            // Chromium negotiates AV1: it gets the original, not the H.264 aiortc got.
            let chromium = Client::start(&net, "browser.py", &["play", "--base", &server.url(""), "--room", "ertmp", "--user", "av1", "--token", &tok, "--seconds", "8"]);
            let c = chromium.finish(Duration::from_secs(40));
            let stats = &c["stats"];
            eprintln!("Chromium AV1 viewer: {stats}");
            assert_eq!(stats["codec"], "video/AV1", "{c}");
            assert!(stats["framesDecoded"].as_u64().unwrap_or(0) >= 60, "{c}");
            assert_eq!((stats["width"].as_u64(), stats["height"].as_u64()), (Some(640), Some(360)), "{c}");
        }
        let _ = source.wait();
        let mut out = String::new();
        use std::io::Read;
        source.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(out.contains("\"sent\""), "{codec} publisher: {out}");
        let logs = server.logs().join("\n");
        assert!(logs.contains(&format!("RTMP publish of {}", if user == "hevc" { "HEVC (hvc1)" } else { "AV1 (av01)" })), "{codec}: {logs}");
        // The relay ends its connections, and the CDNs their files.
        let r = request("DELETE", &server.url(&format!("/v1/relays/{relay_id}")), Some(&key), None, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        if user == "hevc" {
            if let Some(cdn) = receiver.take() {
                interrupt(cdn);
            }
        }
        enhanced_results.push((user, enhanced_cdn.finish(Duration::from_secs(20))));
    }
    // The legacy CDN got the HEVC publisher as H.264 (legacy FLV has no HEVC); the Enhanced RTMP
    // CDNs got HEVC and AV1 as they came, decodable, in the publishers' colours.
    let (codecs, duration) = probe(&relayed);
    assert_eq!(codecs, vec!["aac".to_string(), "h264".to_string()], "relayed {relayed:?}");
    assert!(duration > 5.0, "relayed {duration} s");
    for ((user, r), rgb) in enhanced_results.iter().zip([[0x30, 0xa0, 0x50], [0xc0, 0x60, 0x20]]) {
        eprintln!("Enhanced RTMP CDN of {user}: {r}");
        assert_eq!(r["video_codec"], if *user == "hevc" { "hevc" } else { "av1" }, "{user}: {r}");
        assert_eq!(r["audio_codec"], "aac", "{user}: {r}");
        assert!(r["frames"].as_u64().unwrap() >= 100 && r["keyframes"].as_u64().unwrap() >= 1, "{user}: {r}");
        assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(640), Some(360)), "{user}: {r}");
        let got: Vec<i64> = r["mean_rgb"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        for (g, want) in got.iter().zip(rgb) {
            assert!((g - want as i64).abs() <= 24, "{user}: the colour {got:?} vs {rgb:?}");
        }
    }
    // The recording kept HEVC and AV1 as they came (AV1 in fragmented MP4 segments that name
    // their init sections).
    let r = request("DELETE", &server.url(&format!("/v1/recordings/{rec_id}")), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let result = poll(&server, &key, &format!("/v1/recordings/{rec_id}/result"), Duration::from_secs(30), |v| {
        v["Files"].as_array().is_some_and(|f| f.iter().filter(|f| f["FileName"].as_str().is_some_and(|n| n.ends_with(".mp4"))).count() == 2)
    });
    let viewer_token = token(&data, "ertmp", "checker");
    let mut video_codecs: Vec<String> = result["Files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["FileName"].as_str().unwrap().ends_with(".mp4"))
        .map(|f| {
            let url = format!("{}?token={viewer_token}", server.url(f["Url"].as_str().unwrap()));
            let (codecs, duration) = probe_url(&url);
            assert!(duration > 8.0, "{}: {duration} s", f["FileName"]);
            codecs.into_iter().find(|c| c != "aac").unwrap_or_default()
        })
        .collect();
    video_codecs.sort();
    assert_eq!(video_codecs, vec!["av1".to_string(), "hevc".to_string()], "{result}");
    let av1_playlist = result["Files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["FileName"].as_str().unwrap().ends_with(".m3u8") && f["UserId"] == "av1" && f["TrackType"].as_str().unwrap().contains("video"))
        .unwrap_or_else(|| panic!("{result}"));
    let text = get(&format!("{}?token={viewer_token}", server.url(av1_playlist["Url"].as_str().unwrap())), None).body;
    assert!(text.contains("#EXT-X-VERSION:6") && text.contains("#EXT-X-MAP:URI=") && text.contains(".m4s"), "{text}");
    // As a player reads it from the recording's directory: segment after segment.
    let on_disk = find_file(&data, av1_playlist["FileName"].as_str().unwrap()).expect("the playlist on disk");
    let (codecs, duration) = probe(&on_disk);
    assert!(codecs.contains(&"av1".to_string()) && duration > 8.0, "the AV1 playlist plays: {codecs:?} {duration} s");
}
