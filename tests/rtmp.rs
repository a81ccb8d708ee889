//! RTMP ingest end to end: ffmpeg pushes (libx264, AAC, FLV) into a room and aiortc watches over
//! WHEP (video passed through, AAC transcoded to Opus); B-frames and bad tokens are refused with their messages while the first stream goes on;
//! a publisher that reconnects is picked up by the waiting viewer.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_tests::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn token(data: &Path, room: &str, user: &str) -> String {
    let (status, out, err) = run_cli(&["token", "--data-dir", data.to_str().unwrap(), "--room", room, "--user", user]);
    assert!(status.success(), "{err}");
    out.trim().to_owned()
}

fn rtmp_port(server: &Server) -> u16 {
    server
        .banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("RTMP (OBS)"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.strip_prefix("rtmp://"))
        .and_then(|u| u.split('/').next())
        .and_then(|hp| hp.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no RTMP line in the banner:\n{}", server.banner))
}

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
    let viewer = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url("/whep/live/obs/main"), "--token", &obs, "--seconds", "20"]);
    std::thread::sleep(Duration::from_secs(4));

    // B-frames: refused with the message, within 5 s, while the first push goes on.
    let other = token(&data, "live", "cam2");
    let (code, err, took) = wait(push(&format!("rtmp://127.0.0.1:{port}/push/live/cam2?token={other}"), 3, 20), Duration::from_secs(10));
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("b_frames_unsupported") && err.contains("bframes=0"), "{err}");
    assert!(took < Duration::from_secs(5), "ffmpeg took {took:?} to give up");
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
    let second = push(&url, 0, 5);
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
