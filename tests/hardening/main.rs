//! Issue 10: hostile input and exhausted resources. Each test names the defect it guards; each
//! failed on the main branch before the fix (a crash, a leak, a file served that must not be).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_tests::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn admin_key(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned()
}

/// A plain RTMP client: handshake by hand, then raw chunks.
fn rtmp_handshake(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c0c1 = vec![3u8];
    c0c1.extend((0..1536).map(|i| (i * 7) as u8));
    c0c1[1..9].fill(0); // time and zero fields: the simple (not digest) handshake
    s.write_all(&c0c1).unwrap();
    let mut s0s1s2 = vec![0u8; 1 + 1536 * 2];
    s.read_exact(&mut s0s1s2).unwrap();
    s.write_all(&s0s1s2[1..1537]).unwrap(); // C2 echoes S1
    s
}

/// One message in 128-byte chunks on chunk stream 3 (type 0 header, then type 3 headers).
fn chunks(type_id: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x03, 0, 0, 0];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    for (i, piece) in payload.chunks(128).enumerate() {
        if i > 0 {
            out.push(0xc3);
        }
        out.extend_from_slice(piece);
    }
    out
}

fn amf0_string(s: &str) -> Vec<u8> {
    let mut v = vec![0x02];
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

/// The connection is closed by the server (EOF or reset) within 10 s.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
    false
}

fn push(url: &str, seconds: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", &format!("testsrc2=size=320x180:rate=15:duration={seconds}")])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "15", "-bf", "0", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg (scripts/setup.sh installs it)")
}

/// GET with an API key and headers; (status, body bytes).
fn get_bytes(url: &str, key: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut req = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build().get(url).set("Authorization", &format!("Bearer {key}"));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = resp.status();
    let mut body = Vec::new();
    resp.into_reader().take(1 << 30).read_to_end(&mut body).unwrap();
    (status, body)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap()
}

/// A full tmpfs mounted over `dir` while the guard lives (root only, as tests and CI run).
struct FullDisk(std::path::PathBuf);

impl FullDisk {
    fn over(dir: &std::path::Path) -> FullDisk {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(dir).status().unwrap().success();
        assert!(ok, "mounting a tmpfs needs root");
        let _ = std::fs::write(dir.join("filler"), vec![0u8; 128 * 1024]);
        FullDisk(dir.to_owned())
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An offer from an independent stack (str0m), audio + video, sending or receiving.
fn str0m_offer(send: bool) -> String {
    use tessera_rtc::str0m::media::{Direction, MediaKind};
    let mut rtc = tessera_rtc::str0m::Rtc::builder().build(std::time::Instant::now());
    let mut change = rtc.sdp_api();
    let dir = if send { Direction::SendOnly } else { Direction::RecvOnly };
    change.add_media(MediaKind::Audio, dir, None, None, None);
    change.add_media(MediaKind::Video, dir, None, None, None);
    change.apply().expect("an offer").0.to_sdp_string()
}

/// The mids the answer rejected (port 0).
fn rejected_kinds(answer: &str) -> Vec<&'static str> {
    answer.lines().filter(|l| l.starts_with("m=") && l.split_whitespace().nth(1) == Some("0")).map(|l| if l.starts_with("m=audio") { "audio" } else { "video" }).collect()
}

/// A tmpfs of `size` mounted at `dir` (empty) while the guard lives.
fn tmpfs(dir: &std::path::Path, size: &str) -> FullDisk {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().unwrap().success();
    assert!(ok, "mounting a tmpfs needs root");
    FullDisk(dir.to_owned())
}

mod http;
mod rtmp;
mod tasks;
