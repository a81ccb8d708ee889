//! Relays: a CDN (`ffmpeg -listen 1`) through an outage, RTMPS with certificate checks.

use super::*;

#[test]
fn relay_reaches_the_cdn_survives_an_outage_and_stops() {
    let dir = TempDir::new("relay");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let port = rtmp_port(&server);
    let relays = server.url("/v1/relays");
    let cdn_port = free_port();
    let cdn_url = format!("rtmp://127.0.0.1:{cdn_port}/live/key");
    let hooks = WebhookReceiver::start(dir.path(), "k3yA", &["--fail-first", "401"]);
    hooks.subscribe(&server, &key, "k3yA");

    // Refusals.
    post_json(&relays, Some(&key), &json!({"room": "out", "source": {"user": "cam"}, "urls": ["http://x/a/b"]})).expect_error(400, "invalid_parameter");
    post_json(&relays, Some(&key), &json!({"room": "out", "source": {"user": "cam"}, "urls": []})).expect_error(400, "invalid_parameter");
    // A URL with options names them right (`enhanced_rtmp`), or is refused.
    let e =
        post_json(&relays, Some(&key), &json!({"room": "out", "source": {"user": "cam"}, "urls": [{"url": &cdn_url, "enhanced": true}]})).expect_error(400, "invalid_parameter");
    assert_eq!(e["details"]["field"], "urls[0]", "{e}");
    post_json(&relays, Some(&key), &json!({"room": "out", "source": {"user": "cam"}, "media": "both", "urls": [&cdn_url]})).expect_error(400, "invalid_parameter");

    let cam = token(&data, "out", "cam");
    let mut source = publisher(&format!("rtmp://127.0.0.1:{port}/push/out/cam?token={cam}"), 60);
    let first = dir.path().join("first.flv");
    let receiver = cdn(cdn_port, &first);
    std::thread::sleep(Duration::from_millis(800));

    let r = post_json(&relays, Some(&key), &json!({"room": "out", "source": {"user": "cam", "stream": "main"}, "urls": [&cdn_url]}));
    assert_eq!(r.status, 201, "{}", r.body);
    let relay = r.json();
    let id = relay["id"].as_str().unwrap().to_owned();
    assert_eq!(relay["urls"][0]["status"], 0, "{relay}");
    post_json(&relays, Some(&key), &json!({"room": "out", "source": {"user": "other"}, "urls": [&cdn_url]})).expect_error(409, "url_in_use");

    let path = format!("/v1/relays/{id}");
    poll(&server, &key, &path, Duration::from_secs(15), |v| v["urls"][0]["status"] == 2 && v["state"] == "ACTIVE");
    let running_at = Instant::now();
    let metrics = get(&server.url("/metrics"), None).body;
    assert!(metrics.lines().any(|l| l == "tessera_relay_urls{state=\"2\"} 1"), "{metrics}");
    std::thread::sleep(Duration::from_secs(8));
    // The CDN goes away: RECOVERING; it comes back: RUNNING again.
    interrupt(receiver);
    let relayed = running_at.elapsed().as_secs_f64();
    poll(&server, &key, &path, Duration::from_secs(15), |v| v["urls"][0]["status"] == 3);
    // Long enough for event 401 to repeat the RECOVERING report.
    std::thread::sleep(Duration::from_secs(6));
    let second = dir.path().join("second.flv");
    let receiver = cdn(cdn_port, &second);
    poll(&server, &key, &path, Duration::from_secs(20), |v| v["urls"][0]["status"] == 2);
    std::thread::sleep(Duration::from_secs(3));
    // Stop: DISCONNECTING then IDLE.
    let r = request("DELETE", &server.url(&path), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let stopped = r.json();
    assert_eq!(stopped["state"], "STOPPED", "{stopped}");
    let history: Vec<u64> = stopped["urls"][0]["history"].as_array().unwrap().iter().map(|h| h[0].as_u64().unwrap()).collect();
    assert_eq!(history, vec![0, 1, 2, 3, 2, 5, 0], "URL states: {stopped}");
    assert_eq!(stopped["urls"][0]["error_code"], 6, "{stopped}");
    interrupt(receiver);
    // Event 401 told the backend the same story, signed, in EventMsTs order, with the
    // RECOVERING state repeated every 5 s (first attempts were refused and retried).
    let changes = |events: &[Value], task: &str| {
        let mut s: Vec<u64> = events.iter().filter(|e| e["EventInfo"]["TaskId"] == task).map(|e| e["EventInfo"]["Payload"]["Status"].as_u64().unwrap()).collect();
        s.dedup();
        s
    };
    let events = hooks.wait_for(Duration::from_secs(10), "the relay's 401s", |e| changes(e, &id) == [1, 2, 3, 2, 5, 0]);
    let mine: Vec<&Value> = events.iter().filter(|e| e["EventInfo"]["TaskId"] == id.as_str()).collect();
    assert!(mine
        .iter()
        .all(|e| e["EventType"] == 401 && e["EventGroupId"] == 4 && e["EventInfo"]["UserId"] == format!("relay_{id}") && e["EventInfo"]["Payload"]["Url"] == cdn_url.as_str()));
    let recovering: Vec<i64> = mine.iter().filter(|e| e["EventInfo"]["Payload"]["Status"] == 3).map(|e| e["EventInfo"]["EventMsTs"].as_i64().unwrap()).collect();
    assert!(recovering.len() >= 2 && recovering.windows(2).all(|w| (4_500..=6_500).contains(&(w[1] - w[0]))), "RECOVERING reports at {recovering:?}");
    assert_ne!(mine.iter().find(|e| e["EventInfo"]["Payload"]["Status"] == 3).unwrap()["EventInfo"]["Payload"]["ErrorCode"], 0);
    assert_eq!(mine.last().unwrap()["EventInfo"]["Payload"]["ErrorCode"], 6);
    let requests = hooks.requests();
    assert!(requests.iter().all(|r| r["sign_ok"] == true), "a Sign did not verify");
    assert!(requests.iter().any(|r| r["status"] == 500) && requests.iter().any(|r| r["attempt"] == 2), "no retried attempt");

    // What the CDN got: H.264 + AAC, as long as it was relayed (within 10 %).
    let (codecs, duration) = probe(&first);
    assert_eq!(codecs, vec!["aac".to_string(), "h264".to_string()], "{first:?}");
    assert!((duration - relayed).abs() <= relayed * 0.1 + 0.5, "relayed {relayed:.1} s, the CDN has {duration:.1} s");
    let (codecs, duration) = probe(&second);
    assert_eq!(codecs, vec!["aac".to_string(), "h264".to_string()]);
    assert!(duration >= 2.0, "{duration}");

    // A mix job's own relay (outputs.rtmp_urls) arrives the same way.
    let third = dir.path().join("mix.flv");
    let receiver = cdn(cdn_port, &third);
    std::thread::sleep(Duration::from_millis(500));
    let r = post_json(&server.url("/v1/mix-jobs"), Some(&key), &json!({"room": "out", "encode": {"template": "360p"}, "outputs": {"rtmp_urls": [&cdn_url]}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json();
    let relay_id = job["outputs"]["relay_id"].as_str().expect("the job owns a relay").to_owned();
    poll(&server, &key, &format!("/v1/relays/{relay_id}"), Duration::from_secs(20), |v| v["urls"][0]["status"] == 2);
    std::thread::sleep(Duration::from_secs(5));
    let r = request("DELETE", &server.url(&format!("/v1/mix-jobs/{}", job["id"].as_str().unwrap())), Some(&key), None, &[]);
    assert_eq!(r.status, 200);
    poll(&server, &key, &format!("/v1/relays/{relay_id}"), Duration::from_secs(10), |v| v["state"] == "STOPPED");
    interrupt(receiver);
    let (codecs, duration) = probe(&third);
    assert_eq!(codecs, vec!["aac".to_string(), "h264".to_string()], "the mixed relay carries H.264 + AAC");
    assert!(duration >= 3.0, "{duration}");
    // Mix frames are stamped on the output clock (issue 14): every gap is one frame period
    // (FLV rounds to whole ms) or, where a tick was skipped, whole periods.
    let out = Command::new("ffprobe").args(["-v", "error", "-select_streams", "v", "-show_entries", "packet=pts_time", "-of", "csv=p=0"]).arg(&third).output().unwrap();
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().trim_end_matches(',').parse().ok()).collect();
    let mut gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect();
    assert!(gaps.len() >= 30, "{} frames", times.len());
    gaps.sort_by(f64::total_cmp);
    let period = gaps[gaps.len() / 2];
    let on_grid = |g: f64| {
        let k = (g / period).round().max(1.0);
        (g - k * period).abs() <= 1.5
    };
    let regular = gaps.iter().filter(|g| (**g - period).abs() <= 1.5).count();
    assert!(gaps.iter().all(|g| on_grid(*g)), "frame gaps off the {period} ms grid: {gaps:?}");
    assert!(regular * 100 >= gaps.len() * 95, "{regular} of {} gaps are one period: {gaps:?}", gaps.len());
    // The mix's mono Opus reaches the CDN as AAC-LC 48 kHz 64 kbit/s mono (RECORDING.md §1).
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a", "-show_entries", "stream=channels,sample_rate:packet=size,pts_time", "-of", "json"])
        .arg(&third)
        .output()
        .unwrap();
    let audio: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((audio["streams"][0]["channels"].as_u64(), audio["streams"][0]["sample_rate"].as_str()), (Some(1), Some("48000")), "{}", audio["streams"]);
    let packets = audio["packets"].as_array().unwrap();
    let bytes: u64 = packets.iter().map(|p| p["size"].as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)).sum();
    let span = packets.last().and_then(|p| p["pts_time"].as_str()).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0)
        - packets[0]["pts_time"].as_str().and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
    let kbps = bytes as f64 * 8.0 / span / 1000.0;
    // FFmpeg's AAC encoder holds its average rate loosely: 68 kbit/s over this ~5 s run alone,
    // 72.3 in two runs of the whole suite (a loaded mix's glitches cost bits). Stereo would be
    // twice it.
    assert!((40.0..=80.0).contains(&kbps), "mono AAC at about 64 kbit/s: {kbps:.1}");
    let job_id = job["id"].as_str().unwrap();
    let events = hooks.wait_for(Duration::from_secs(10), "the mixed relay's 401s and 801/802", |e| changes(e, &relay_id) == [1, 2, 5, 0] && codes_of(e, job_id) == [801, 802]);
    assert_eq!(events.iter().find(|e| e["EventType"] == 802).unwrap()["EventInfo"]["Payload"]["LeaveCode"], 0);
    let _ = source.kill();
    let _ = source.wait();
}

#[test]
fn an_rtmps_relay_reaches_a_tls_cdn_and_checks_its_certificate() {
    let dir = TempDir::new("rtmps");
    // A test CA, and the CDN's certificate from it for 127.0.0.1 only; the CA is trusted
    // through `outbound_ca_file`.
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(p("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    for args in [
        vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=tessera test CA", "-keyout", &p("ca.key"), "-out", &p("ca.pem")],
        vec!["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=cdn.test", "-keyout", &p("cdn.key"), "-out", &p("cdn.csr")],
        vec!["x509", "-req", "-in", &p("cdn.csr"), "-CA", &p("ca.pem"), "-CAkey", &p("ca.key"), "-CAcreateserial", "-days", "1", "-extfile", &p("leaf.ext"), "-out", &p("cdn.pem")],
    ] {
        let ok = Command::new("openssl").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success();
        assert!(ok, "openssl {args:?}");
    }
    let (ca, cert, key_pem) = (dir.path().join("ca.pem"), dir.path().join("cdn.pem"), dir.path().join("cdn.key"));
    let config = dir.path().join("tessera.toml");
    std::fs::write(&config, format!("outbound_ca_file = {:?}\n", ca.to_str().unwrap())).unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--config", config.to_str().unwrap()]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let cam = token(&data, "tls", "cam");
    let mut source = publisher(&format!("rtmp://127.0.0.1:{}/push/tls/cam?token={cam}", rtmp_port(&server)), 60);
    // The CDN: ffmpeg behind a TLS edge (Python's ssl), as rtmps CDNs are.
    let (cdn_port, edge_port) = (free_port(), free_port());
    let out = dir.path().join("cdn.flv");
    let receiver = cdn(cdn_port, &out);
    let mut edge = Command::new("python3")
        .arg(repo_root().join("tests/clients/tls_proxy.py"))
        .args([&edge_port.to_string(), &cdn_port.to_string(), cert.to_str().unwrap(), key_pem.to_str().unwrap()])
        .spawn()
        .unwrap();
    // The app's webhook backend is https too: the receiver behind another TLS edge.
    let hooks = WebhookReceiver::start(dir.path(), "k3yA", &[]);
    let hook_edge_port = free_port();
    let mut hook_edge = Command::new("python3")
        .arg(repo_root().join("tests/clients/tls_proxy.py"))
        .args([&hook_edge_port.to_string(), &hooks.port.to_string(), cert.to_str().unwrap(), key_pem.to_str().unwrap()])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let body = json!({"webhook": {"url": format!("https://127.0.0.1:{hook_edge_port}/hook"), "key": "k3yA"}}).to_string();
    let r = request("PATCH", &server.url("/v1/app"), Some(&key), Some(("application/merge-patch+json", body.as_bytes())), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let relays = server.url("/v1/relays");
    let good = format!("rtmps://127.0.0.1:{edge_port}/live/key");
    // Same edge, but by a name the certificate does not cover: the handshake must fail.
    let wrong_name = format!("rtmps://localhost:{edge_port}/live/other");
    let r = post_json(&relays, Some(&key), &json!({"room": "tls", "source": {"user": "cam"}, "urls": [&good, &wrong_name]}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/relays/{id}");
    let started = poll(&server, &key, &path, Duration::from_secs(15), |v| v["urls"][0]["status"] == 2 && v["urls"][1]["error_code"] == 2);
    let refused = &started["urls"][1];
    assert_eq!(refused["status"], 1, "{started}");
    assert!(refused["error_msg"].as_str().unwrap().contains("TLS handshake failed") && refused["error_msg"].as_str().unwrap().to_lowercase().contains("certificate"), "{started}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(request("DELETE", &server.url(&path), Some(&key), None, &[]).status, 200);
    interrupt(receiver);
    // Event 401 reached the https backend: the good URL ran and was stopped.
    hooks.wait_for(Duration::from_secs(10), "401s over https", |e| {
        let s: Vec<u64> = e
            .iter()
            .filter(|e| e["EventInfo"]["TaskId"] == id.as_str() && e["EventInfo"]["Payload"]["Url"] == good.as_str())
            .map(|e| e["EventInfo"]["Payload"]["Status"].as_u64().unwrap())
            .collect();
        s.contains(&2) && s.last() == Some(&0)
    });
    assert!(hooks.requests().iter().all(|r| r["sign_ok"] == true));
    let _ = hook_edge.kill();
    let _ = hook_edge.wait();
    let (codecs, duration) = probe(&out);
    assert_eq!(codecs, vec!["aac".to_string(), "h264".to_string()], "the rtmps relay carries H.264 + AAC");
    assert!(duration >= 4.0, "{duration}");
    // A CA file that is not one stops the server at start with a clear line.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "outbound_ca_file = \"/nonexistent/ca.pem\"\n").unwrap();
    let (status, _, err) = run_cli(&[
        "serve",
        "--config",
        bad.to_str().unwrap(),
        "--data-dir",
        dir.path().join("d2").to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--rtmp-addr",
        "127.0.0.1:0",
        "--rtc-udp-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("outbound_ca_file"), "{err}");
    let _ = edge.kill();
    let _ = edge.wait();
    let _ = source.kill();
    let _ = source.wait();
}
