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

/// Defects 1 and 2: a `connect` nesting objects 5,000 deep aborted the process (stack
/// overflow); a command of two values panicked. Now each connection is dropped and the server
/// goes on serving.
#[test]
fn hostile_rtmp_messages_close_the_connection_not_the_server() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("hostile-rtmp");
    let mut server = Server::start(dir.path(), &[]);
    let port = rtmp_port(&server);
    let mut deep = amf0_string("connect");
    deep.extend_from_slice(&[0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
    for _ in 0..5000 {
        deep.extend_from_slice(&[0x03, 0, 1, b'a']);
    }
    deep.push(0x05);
    for _ in 0..5000 {
        deep.extend_from_slice(&[0, 0, 0x09]);
    }
    let mut two_values = amf0_string("connect");
    two_values.extend_from_slice(&[0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
    let mut metadata_only_name = amf0_string("@setDataFrame");
    metadata_only_name.truncate(metadata_only_name.len());
    for (what, message) in [
        ("5,000-deep connect", chunks(20, 0, &deep)),
        ("two-value command", chunks(20, 0, &two_values)),
        ("16 MiB message header", vec![0x03, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0]),
    ] {
        let mut s = rtmp_handshake(port);
        s.write_all(&message).unwrap();
        assert!(closed_by_server(&mut s), "{what}: the server closes the connection");
        std::thread::sleep(Duration::from_millis(200));
        assert!(server.alive(), "{what}: the server process is still running");
        assert_eq!(get(&server.url("/healthz"), None).status, 200, "{what}: and still answers");
    }
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

/// Defect 12: a second RTMP publish of the same user and stream takes over, and the first
/// connection is closed (its ffmpeg ends long before its 60 s of input would).
#[test]
fn a_replaced_rtmp_publisher_is_disconnected() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("replaced-rtmp");
    let server = Server::start(dir.path(), &[]);
    let port = rtmp_port(&server);
    let token = token(dir.path(), "r1", "alice");
    let url = format!("rtmp://127.0.0.1:{port}/push/r1/alice?token={token}");
    let mut first = push(&url, 60);
    std::thread::sleep(Duration::from_secs(4));
    assert!(first.try_wait().unwrap().is_none(), "the first publish is running");
    let mut second = push(&url, 60);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the replaced publisher was not disconnected within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success() || started.elapsed() < Duration::from_secs(20));
    assert!(second.try_wait().unwrap().is_none(), "the newer publish goes on");
    let logs = server.logs().join("\n");
    assert!(logs.contains("replaced by a newer one"), "{logs}");
    let _ = second.kill();
    let _ = second.wait();
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

/// Defects 3 and 11: `/files` read whole files into memory per request (6 concurrent 1-byte
/// ranges of a 300 MB file: +1.3 GB RSS) and followed symlinks out of the storage root.
#[test]
fn files_are_streamed_and_symlinks_are_not_followed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("files");
    let server = Server::start(dir.path(), &[]);
    let key = admin_key(dir.path());
    let root = dir.path().join("recordings/default");
    std::fs::create_dir_all(root.join("task1")).unwrap();
    // 200 MiB of a known pattern.
    {
        let mut f = std::fs::File::create(root.join("task1/big.ts")).unwrap();
        let block: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        for _ in 0..200 {
            f.write_all(&block).unwrap();
        }
    }
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("task1/passwd.ts")).unwrap();
    let before = rss_kib(server.pid());
    let url = server.url("/files/default/task1/big.ts");
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (url, key) = (url.clone(), key.clone());
            std::thread::spawn(move || {
                let start = 100 * 1024 * 1024 + i * 1000;
                let (status, body) = get_bytes(&url, &key, &[("Range", &format!("bytes={start}-{start}"))]);
                (status, body, start)
            })
        })
        .collect();
    for t in threads {
        let (status, body, start) = t.join().unwrap();
        assert_eq!(status, 206);
        assert_eq!(body, vec![(start % (1024 * 1024) % 251) as u8]);
    }
    // A whole-file download is streamed too: read 200 MiB and check the size.
    let (status, body) = get_bytes(&url, &key, &[]);
    assert_eq!((status, body.len()), (200, 200 * 1024 * 1024));
    assert_eq!(body[123_456_789], (123_456_789 % (1024 * 1024) % 251) as u8);
    drop(body);
    let grown = rss_kib(server.pid()).saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB serving 6 ranges and one 200 MiB file");
    for path in ["etc/passwd", "task1/passwd.ts", "etc/hostname"] {
        request("GET", &server.url(&format!("/files/default/{path}")), Some(&key), None, &[]).expect_error(404, "file_not_found");
    }
}

/// Defect 4: idle and half-sent HTTP connections were held forever.
#[test]
fn idle_and_half_sent_http_connections_are_closed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("http-timeouts");
    let config = dir.path().join("tessera.toml");
    std::fs::write(&config, "[limits]\nhttp_idle_timeout_s = 3\nhttp_request_timeout_s = 2\nhttp_max_connections = 20\n").unwrap();
    let server = Server::start(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let addr = server.base.trim_start_matches("http://").to_string();
    let open = |bytes: &[u8]| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(bytes).unwrap();
        s
    };
    let started = Instant::now();
    let mut idle = open(b"");
    let mut half_headers = open(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
    let mut half_body = open(b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"room\":");
    for (what, s, within) in [("half-sent headers", &mut half_headers, 6), ("half-sent body", &mut half_body, 6), ("idle", &mut idle, 8)] {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let t = started.elapsed();
        assert!(t < Duration::from_secs(within), "{what}: closed after {t:?}");
    }
    // Past the cap of 20 connections, held ones make the next wait; freed ones let it in.
    let held: Vec<_> = (0..20).map(|_| open(b"")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut waiting = open(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    waiting.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    let mut buf = [0u8; 64];
    assert!(waiting.read(&mut buf).is_err(), "no answer while 20 connections are held");
    drop(held);
    waiting.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = waiting.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
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

/// Defect 7: with `tasks/` on a full disk, starting a recording or relay answered 201 and the
/// task vanished at the next restart, leaving 0-byte `.tmp` files. Now: 507 and nothing left.
#[test]
fn tasks_that_cannot_be_saved_are_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("disk-full");
    let server = Server::start(dir.path(), &[]);
    let key = admin_key(dir.path());
    let tasks = dir.path().join("tasks");
    let full = FullDisk::over(&tasks);
    let r = post_json(&server.url("/v1/recordings"), Some(&key), &serde_json::json!({"room": "full"}));
    r.expect_error(507, "storage_full");
    let r = post_json(&server.url("/v1/relays"), Some(&key), &serde_json::json!({"room": "full", "source": {"user": "cam"}, "urls": ["rtmp://127.0.0.1:9/live/x"]}));
    r.expect_error(507, "storage_full");
    let left: Vec<_> = std::fs::read_dir(&tasks).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n != "filler").collect();
    assert!(left.is_empty(), "nothing is left in tasks/: {left:?}");
    assert_eq!(get(&server.url("/v1/recordings"), Some(&key)).json()["items"].as_array().map(|a| a.len()), Some(0));
    assert_eq!(get(&server.url("/v1/relays"), Some(&key)).json()["items"].as_array().map(|a| a.len()), Some(0));
    drop(full);
    // With space again, the same request succeeds.
    let r = post_json(&server.url("/v1/recordings"), Some(&key), &serde_json::json!({"room": "full"}));
    assert_eq!(r.status, 201, "{}", r.body);
}

/// Defect 10: an id of `../../x` in a task file made the server write outside the data dir.
#[test]
fn task_files_with_bad_ids_are_not_resumed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("task-ids");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("tasks")).unwrap();
    let escape = dir.path().join("escaped");
    let bad = [
        (
            "0000000000000001",
            serde_json::json!({"kind": "relay", "id": "../../escaped", "app": "default", "room": "r", "source": {"user": "u", "stream": "main"}, "state": "RUNNING", "urls": ["rtmp://127.0.0.1:9/a/b"], "created_at": 0}),
        ),
        (
            "0000000000000002",
            serde_json::json!({"kind": "recording", "id": "0000000000000002", "app": "default", "room": "r", "mode": "single", "streams": [], "prefix": "../../../escaped", "state": "RUNNING", "format": "hls"}),
        ),
        (
            "0000000000000003",
            serde_json::json!({"kind": "ingest", "id": "../escaped", "app": "default", "room": "r", "user": "u", "stream": "main", "url": "rtmp://127.0.0.1:9/a/b", "state": "RUNNING"}),
        ),
        ("0000000000000004", serde_json::json!({"kind": "mix_job", "id": "0000000000000004/../../../escaped", "app": "default", "state": "RUNNING", "request": {}})),
    ];
    for (name, v) in &bad {
        std::fs::write(data.join("tasks").join(format!("{name}.json")), v.to_string()).unwrap();
    }
    let server = Server::start(&data, &[]);
    let key = admin_key(&data);
    std::thread::sleep(Duration::from_secs(2));
    for path in ["/v1/recordings", "/v1/relays", "/v1/ingests"] {
        let r = get(&server.url(path), Some(&key));
        assert_eq!(r.json()["items"].as_array().map(|a| a.len()), Some(0), "{path}: {}", r.body);
    }
    let outside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("escaped")).collect();
    assert!(outside.is_empty() && !escape.exists(), "nothing was written outside the data dir: {outside:?}");
    let logs = server.logs().join("\n");
    assert!(logs.contains("task file skipped"), "{logs}");
}

/// Defects 18 and 19: a relay stopped for idleness said "stopped by request"; a closed port and
/// a link-local target must read alike ("cannot connect to host:port"), and link-local
/// (cloud metadata) targets are never dialled.
#[test]
fn relay_errors_say_what_happened_and_no_more() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("relay-errors");
    let server = Server::start(dir.path(), &[]);
    let key = admin_key(dir.path());
    let token = token(dir.path(), "idle", "cam");
    let mut source = push(&format!("rtmp://127.0.0.1:{}/push/idle/cam?token={token}", rtmp_port(&server)), 5);
    std::thread::sleep(Duration::from_secs(1));
    let r = post_json(
        &server.url("/v1/relays"),
        Some(&key),
        &serde_json::json!({"room": "idle", "source": {"user": "cam"}, "urls": ["rtmp://127.0.0.1:1/live/a", "rtmp://169.254.169.254:1935/live/b"], "max_idle_time": 2}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let path = format!("/v1/relays/{}", r.json()["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen_connect_errors = Vec::new();
    let last = loop {
        let v = get(&server.url(&path), Some(&key)).json();
        for u in v["urls"].as_array().unwrap() {
            let msg = u["error_msg"].as_str().unwrap_or("").to_string();
            if msg.starts_with("cannot") && !seen_connect_errors.contains(&msg) {
                seen_connect_errors.push(msg);
            }
        }
        if v["state"] == "STOPPED" {
            break v;
        }
        assert!(Instant::now() < deadline, "the relay did not stop for idleness: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = source.wait();
    seen_connect_errors.sort();
    assert_eq!(seen_connect_errors, ["cannot connect to 127.0.0.1:1", "cannot connect to 169.254.169.254:1935"], "{last}");
    for u in last["urls"].as_array().unwrap() {
        assert_eq!(u["error_msg"], "stopped: the source sent no media for max_idle_time", "{u}");
    }
    let logs = server.logs().join("\n");
    assert!(logs.contains("refused by the [security] outbound policy"), "{logs}");
}

/// Defect 15: relays had no cap (600 relays, 700 threads). Like every task kind they are capped
/// per app (`[limits] concurrent_relays_per_app`), with 429 `limit_exceeded`.
#[test]
fn relays_are_capped_per_app() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("relay-cap");
    let config = dir.path().join("tessera.toml");
    std::fs::write(&config, "[limits]\nconcurrent_relays_per_app = 40\n").unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--config", config.to_str().unwrap()]);
    let key = admin_key(&data);
    let threads = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse::<usize>().unwrap()
    };
    let before = threads();
    let start =
        |n: u32| post_json(&server.url("/v1/relays"), Some(&key), &serde_json::json!({"room": "cap", "source": {"user": "cam"}, "urls": [format!("rtmp://127.0.0.1:9/live/{n}")]}));
    for n in 1..=40 {
        assert_eq!(start(n).status, 201);
    }
    let refused = start(41).expect_error(429, "limit_exceeded");
    assert_eq!(refused["details"]["limit"], 40, "{refused}");
    // Waiting relays (their source does not publish) hold no thread each.
    std::thread::sleep(Duration::from_millis(500));
    let after = threads();
    assert!(after < before + 5, "40 waiting relays took the server from {before} to {after} threads");
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

/// The issue's privilege matrix: every privilege bit taken away, one at a time, at every entry
/// point (WHIP main/aux, WHEP main/aux, RTMP main/aux, `/files` video and audio-only), against
/// PRODUCT.md §4.2: 404 `room_not_found` without 1 for a new room, 403 `privilege_missing` with
/// `details.required`, WHEP sections rejected in the answer and 403 only when none is left,
/// RTMP refused with the code in its onStatus.
#[test]
fn privilege_matrix() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("privileges");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = admin_key(&data);
    let port = rtmp_port(&server);
    // A room that exists (a publisher in it) with a recording whose files /files serves.
    let host = token(&data, "m", "host");
    let mut host_push = push(&format!("rtmp://127.0.0.1:{port}/push/m/host?token={host}"), 120);
    std::thread::sleep(Duration::from_secs(2));
    let rec = post_json(&server.url("/v1/recordings"), Some(&key), &serde_json::json!({"room": "m"}));
    assert_eq!(rec.status, 201, "{}", rec.body);
    let rec_id = rec.json()["id"].as_str().unwrap().to_owned();
    let rec_dir = data.join("recordings/default").join(&rec_id);
    std::fs::create_dir_all(&rec_dir).unwrap();
    // Names as RECORDING.md §4 makes them; contents do not matter to the check.
    let stem = "default_bQ..__UserId_s_aG9zdA..__UserId_e_main";
    let (video_file, audio_file) = (format!("{stem}_audio_video_20260101000000000.ts"), format!("{stem}_audio_20260101000000000.ts"));
    std::fs::write(rec_dir.join(&video_file), b"video").unwrap();
    std::fs::write(rec_dir.join(&audio_file), b"audio").unwrap();
    let (send_offer, recv_offer) = (str0m_offer(true), str0m_offer(false));

    let mut failures = Vec::new();
    for bit in [1u32, 2, 4, 8, 16, 32, 64, 128] {
        let privileges = (255 & !bit).to_string();
        // Bit 1 matters for rooms that do not exist yet: those entry points use a new room.
        let room = if bit == 1 { format!("new{bit}") } else { "m".to_string() };
        let tok = |user: &str, room: &str| {
            let (status, out, err) = run_cli(&["token", "--data-dir", data.to_str().unwrap(), "--room", room, "--user", user, "--privileges", &privileges]);
            assert!(status.success(), "{err}");
            out.trim().to_owned()
        };
        let expect = |what: &str, got: (u16, String), want: (u16, &str)| -> Option<String> {
            (got.0 != want.0 || !got.1.contains(want.1)).then(|| format!("bit {bit} {what}: got {} {}, want {} {}", got.0, got.1, want.0, want.1))
        };
        let status_code =
            |r: &Reply| (r.status, if r.status >= 400 { format!("{} {}", r.json()["code"].as_str().unwrap_or(""), r.json()["details"]["required"]) } else { String::new() });
        let missing = |b: u32| (403u16, format!("privilege_missing {b}"));
        let entry_refusal = match bit {
            1 => Some((404u16, "room_not_found".to_string())),
            2 => Some(missing(2)),
            _ => None,
        };
        // WHIP main and aux.
        for (stream, needs) in [("main", vec![4, 16]), ("aux", vec![64])] {
            let user = format!("w{bit}{stream}");
            let r = request("POST", &server.url(&format!("/whip/{room}?stream={stream}")), Some(&tok(&user, &room)), Some(("application/sdp", send_offer.as_bytes())), &[]);
            let want = entry_refusal.clone().or_else(|| needs.contains(&bit).then(|| missing(bit))).unwrap_or((201, String::new()));
            failures.extend(expect(&format!("WHIP {stream}"), status_code(&r), (want.0, &want.1)));
            if let Some(loc) = r.header("location") {
                request("DELETE", &server.url(loc), Some(&tok(&user, &room)), None, &[]);
            }
        }
        // WHEP main (a section per privilege) and aux (both sections need 128).
        for stream in ["main", "aux"] {
            let r = request(
                "POST",
                &server.url(&format!("/whep/{room}/host/{stream}")),
                Some(&tok(&format!("v{bit}{stream}"), &room)),
                Some(("application/sdp", recv_offer.as_bytes())),
                &[],
            );
            let want = entry_refusal.clone().unwrap_or(match (stream, bit) {
                ("aux", 128) => missing(128),
                _ => (201, String::new()),
            });
            failures.extend(expect(&format!("WHEP {stream}"), status_code(&r), (want.0, &want.1)));
            if r.status == 201 {
                let want_rejected: Vec<&str> = match (stream, bit) {
                    ("main", 8) => vec!["audio"],
                    ("main", 32) => vec!["video"],
                    _ => vec![],
                };
                let got = rejected_kinds(&r.body);
                if got != want_rejected {
                    failures.push(format!("bit {bit} WHEP {stream}: rejected sections {got:?}, want {want_rejected:?}"));
                }
                if let Some(loc) = r.header("location") {
                    request("DELETE", &server.url(loc), Some(&tok(&format!("v{bit}{stream}"), &room)), None, &[]);
                }
            }
        }
        // RTMP main and aux: refusals name the code in the onStatus description.
        for (stream, needs) in [("main", vec![4, 16]), ("aux", vec![64])] {
            let user = format!("r{bit}{stream}");
            let url = format!("rtmp://127.0.0.1:{port}/push/{room}/{user}?token={}&stream={stream}", tok(&user, &room));
            let mut child = Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10:duration=4", "-f", "lavfi", "-i", "sine=duration=4"])
                .args(["-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", "10", "-c:a", "aac", "-f", "flv", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break child.wait().unwrap();
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            let want: Option<String> = match bit {
                1 => Some("room_not_found".into()),
                2 => Some("privilege_missing".into()),
                b if needs.contains(&b) => Some("privilege_missing".into()),
                _ => None,
            };
            match want {
                Some(code) if status.success() || !err.contains(&code) => failures.push(format!("bit {bit} RTMP {stream}: want refusal {code}, got {status}: {err}")),
                None if !status.success() => failures.push(format!("bit {bit} RTMP {stream}: want success, got {status}: {err}")),
                _ => {}
            }
        }
        // /files with ?token= of the recording's room: 32 for video, 8 for audio-only files.
        if bit != 1 {
            for (file, need) in [(&video_file, 32), (&audio_file, 8)] {
                let r = get(&server.url(&format!("/files/default/{rec_id}/{file}?token={}", tok("f", "m"))), None);
                let want = if bit == need { missing(need) } else { (200, String::new()) };
                failures.extend(expect(&format!("/files {file}"), status_code(&r), (want.0, &want.1)));
            }
        }
    }
    let _ = host_push.kill();
    let _ = host_push.wait();
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// A tmpfs of `size` mounted at `dir` (empty) while the guard lives.
fn tmpfs(dir: &std::path::Path, size: &str) -> FullDisk {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().unwrap().success();
    assert!(ok, "mounting a tmpfs needs root");
    FullDisk(dir.to_owned())
}

/// Defect 13: a disk-full episode ended a recording at once (302/104). Now the storage failure
/// is reported (308), the segments meanwhile are skipped and counted, and the recording goes on
/// when space returns, with a discontinuity in its playlist.
#[test]
fn a_full_disk_pauses_a_recording_instead_of_ending_it() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("rec-disk-full");
    let data = dir.path().join("data");
    let _disk = tmpfs(&data, "6m");
    let server = Server::start(&data, &[]);
    let key = admin_key(&data);
    let cam = token(&data, "full", "cam");
    let mut source = push(&format!("rtmp://127.0.0.1:{}/push/full/cam?token={cam}", rtmp_port(&server)), 60);
    std::thread::sleep(Duration::from_secs(2));
    let r = post_json(&server.url("/v1/recordings"), Some(&key), &serde_json::json!({"room": "full", "format": "hls", "hls": {"segment_s": 1}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let path = format!("/v1/recordings/{}", r.json()["id"].as_str().unwrap());
    let files = |v: &serde_json::Value| v["files"].as_array().map_or(0, |f| f.len());
    let wait = |what: &str, limit: u64, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(limit);
        loop {
            let v = get(&server.url(&path), Some(&key)).json();
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: {v}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait("segments before the disk fills", 20, &|v| files(v) >= 4);
    // Fill the disk to the last byte.
    {
        let mut filler = std::fs::File::create(data.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.write_all(&[0u8; 1]);
    }
    let during = wait("a segment skipped while the disk is full", 20, &|v| v["skipped_segments"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(during["state"], "RECORDING", "{during}");
    std::thread::sleep(Duration::from_secs(3));
    let still = get(&server.url(&path), Some(&key)).json();
    assert_eq!(still["state"], "RECORDING", "the recording goes on through the failure: {still}");
    let listed_when_full = files(&still);
    std::fs::remove_file(data.join("filler")).unwrap();
    wait("new segments once space is back", 20, &|v| files(v) >= listed_when_full + 3);
    assert_eq!(request("DELETE", &server.url(&path), Some(&key), None, &[]).status, 200);
    let done = wait("the recording finishes", 30, &|v| v["state"] == "FINISHED");
    let result = get(&server.url(&format!("{path}/result")), Some(&key)).json();
    assert_eq!(result["Status"], "ok", "{result}");
    let playlist = done["files"].as_array().unwrap().iter().find_map(|f| f["file_name"].as_str().filter(|n| n.ends_with(".m3u8"))).unwrap().to_owned();
    let rec_dir = data.join("recordings/default").join(path.rsplit('/').next().unwrap());
    let text = std::fs::read_to_string(rec_dir.join(&playlist)).unwrap();
    assert!(text.contains("#EXT-X-DISCONTINUITY"), "{text}");
    assert!(server.logs().iter().any(|l| l.contains("storage refused a segment")));
    let _ = source.kill();
    let _ = source.wait();
    drop(server);
}

/// Defect 18: errors that misled. RTMP without a token named `Authorization: Bearer` (RTMP takes
/// `?token=`); a pull ingest whose host does not resolve said only "Input/output error"; a too
/// large `POST /v1/app/secrets` body got a plain-text 413.
#[test]
fn errors_say_what_is_wrong() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("clear-errors");
    let server = Server::start(dir.path(), &[]);
    let key = admin_key(dir.path());
    let mut child = push(&format!("rtmp://127.0.0.1:{}/push/r/cam", rtmp_port(&server)), 10);
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ffmpeg without a token was not refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("token_missing") && err.contains("?token=") && !err.contains("Bearer"), "{err}");

    let r = post_json(&server.url("/v1/ingests"), Some(&key), &serde_json::json!({"room": "r", "user": "pulled", "url": "rtmp://no-such-host.invalid/live/x"}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let v = get(&server.url(&format!("/v1/ingests/{id}")), Some(&key)).json();
        if v["error"].as_str().is_some_and(|e| !e.is_empty()) {
            break v;
        }
        assert!(Instant::now() < deadline, "no error for an unresolvable host: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("cannot resolve host 'no-such-host.invalid'"), "{v}");

    let big = vec![b' '; 300 * 1024];
    let r = request("POST", &server.url("/v1/app/secrets"), Some(&key), Some(("application/json", &big)), &[]);
    r.expect_error(413, "payload_too_large");
}
