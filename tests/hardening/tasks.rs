//! Tasks: unsaveable, bad task files, relay errors and caps, a full disk.

use super::*;

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
