//! An RTMP publish with B-frames (ffmpeg's libx264 defaults, as OBS's Simple mode): a WebRTC
//! viewer (aiortc over WHEP) decodes the re-encoded picture; a relay and a recording keep the
//! original, B-frames and composition times included.

use super::*;

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
    let dir = TempDir::new("bframes");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let server = Server::start(&data, &["--http-addr", &format!("{}:0", net.host_ip), "--rtc-udp-addr", &format!("{}:0", net.host_ip), "--rtmp-addr", "127.0.0.1:0"]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let cam = token(&data, "bf", "cam");
    let mut source = default_x264_publisher(&format!("rtmp://127.0.0.1:{}/push/bf/cam?token={cam}", rtmp_port(&server)), 16);
    let cdn_port = free_port();
    let relayed = dir.path().join("relayed.flv");
    let receiver = cdn(cdn_port, &relayed);
    std::thread::sleep(Duration::from_secs(3));

    let relay = post_json(&server.url("/v1/relays"), Some(&key), &json!({"room": "bf", "source": {"user": "cam"}, "urls": [format!("rtmp://127.0.0.1:{cdn_port}/live/key")]}));
    assert_eq!(relay.status, 201, "{}", relay.body);
    let rec = post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "bf", "format": "hls+mp4", "hls": {"segment_s": 4}}));
    assert_eq!(rec.status, 201, "{}", rec.body);
    let rec_id = rec.json()["id"].as_str().unwrap().to_owned();
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
