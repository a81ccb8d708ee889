//! HTTP: streamed files, idle connections, the privilege matrix, error bodies.

use super::*;

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
