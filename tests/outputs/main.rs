//! Outputs end to end: relays to a CDN played by `ffmpeg -listen 1` (the CDN), checked with
//! ffprobe; the per-URL state machine through a CDN outage; a mix job's own relay.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera_tests::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An RTMP publisher: moving test picture, H.264 without B-frames, AAC tone.
fn publisher(url: &str, seconds: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", &format!("testsrc2=size=640x360:rate=25:duration={seconds}")])
        .args(["-f", "lavfi", "-i", &format!("sine=frequency=440:duration={seconds}")])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0", "-g", "25", "-c:a", "aac", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg")
}

/// The CDN: ffmpeg waits for one RTMP publisher and copies what it gets into `out`.
fn cdn(port: u16, out: &Path) -> Child {
    rtmp_listener("127.0.0.1", port, out)
}

/// (codecs, duration s) of a media file.
fn probe(file: &PathBuf) -> (Vec<String>, f64) {
    let out = Command::new("ffprobe").args(["-v", "error", "-show_entries", "stream=codec_name:format=duration", "-of", "json"]).arg(file).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut codecs: Vec<String> = v["streams"].as_array().map(|a| a.iter().filter_map(|s| s["codec_name"].as_str().map(str::to_owned)).collect()).unwrap_or_default();
    codecs.sort();
    let duration = v["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0.0);
    (codecs, duration)
}

fn poll(server: &Server, key: &str, path: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = get(&server.url(path), Some(key)).json();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn probe_url(url: &str) -> (Vec<String>, f64) {
    let out = Command::new("ffprobe").args(["-v", "error", "-show_entries", "stream=codec_name:format=duration", "-of", "json", url]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut codecs: Vec<String> = v["streams"].as_array().map(|a| a.iter().filter_map(|s| s["codec_name"].as_str().map(str::to_owned)).collect()).unwrap_or_default();
    codecs.sort();
    codecs.dedup();
    (codecs, v["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0.0))
}

fn is_stamp(s: &str) -> bool {
    s.len() == 17 && s.bytes().all(|b| b.is_ascii_digit()) && s.starts_with("20")
}

mod bframes;
mod events;
mod recordings;
mod relays;
