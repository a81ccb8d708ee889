//! Webhooks: signed, retried and kept across a crash; room and media events in causal order.

use super::*;

#[test]
fn webhooks_are_signed_retried_at_once_and_survive_a_crash() {
    let dir = TempDir::new("hooks");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let refuse = dir.path().join("refuse");
    let hooks = WebhookReceiver::start(dir.path(), "k3yA", &["--fail-first", "801", "--status-file", refuse.to_str().unwrap()]);
    // A key is required with a URL.
    let r = request("PATCH", &server.url("/v1/app"), Some(&key), Some(("application/merge-patch+json", format!(r#"{{"webhook":{{"url":"{}"}}}}"#, hooks.url()).as_bytes())), &[]);
    r.expect_error(400, "invalid_parameter");
    // Only group 8 (mix): the job's own room events (101, 103, 201 …) are not sent.
    let body = json!({"webhook": {"url": hooks.url(), "key": "k3yA", "groups": [8]}}).to_string();
    let r = request("PATCH", &server.url("/v1/app"), Some(&key), Some(("application/merge-patch+json", body.as_bytes())), &[]);
    assert_eq!(r.status, 200, "{}", r.body);

    // 801: the first attempt is answered 500, the second follows at once with the same id.
    let r = post_json(&server.url("/v1/mix-jobs"), Some(&key), &json!({"room": "hooks", "encode": {"template": "360p"}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json()["id"].as_str().unwrap().to_owned();
    let events = hooks.wait_for(Duration::from_secs(10), "801", |e| codes_of(e, &job) == [801]);
    let start = &events[0];
    assert_eq!(start["EventGroupId"], 8);
    assert_eq!(start["EventInfo"]["UserId"], format!("mix_{job}"));
    assert_eq!(start["EventInfo"]["RoomId"], "hooks");
    assert_eq!(start["EventInfo"]["RoomType"], 1);
    assert_eq!(start["EventInfo"]["Payload"]["Status"], 0);
    let ms = start["EventInfo"]["EventMsTs"].as_i64().unwrap();
    assert_eq!(start["EventInfo"]["EventTs"].as_i64().unwrap(), ms / 1000);
    assert!(start["CallbackTs"].as_i64().unwrap() >= ms);
    let attempts: Vec<Value> = hooks.requests().into_iter().filter(|r| r["body"]["EventType"] == 801).collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!((attempts[0]["status"].as_u64(), attempts[0]["attempt"].as_u64()), (Some(500), Some(1)));
    assert_eq!((attempts[1]["status"].as_u64(), attempts[1]["attempt"].as_u64()), (Some(200), Some(2)));
    assert_eq!(attempts[0]["event_id"], attempts[1]["event_id"]);
    let gap = attempts[1]["t"].as_f64().unwrap() - attempts[0]["t"].as_f64().unwrap();
    assert!(gap < 1.0, "the second attempt came {gap:.2} s after the first");
    assert_eq!(attempts[0]["app"], "default");
    assert_eq!(attempts[0]["content_type"], "application/json; charset=utf-8");

    // The backend is down while the job stops: 802 waits in the outbox, through a kill -9.
    std::fs::write(&refuse, "503").unwrap();
    let r = request("DELETE", &server.url(&format!("/v1/mix-jobs/{job}")), Some(&key), None, &[]);
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hooks.requests().iter().any(|r| r["body"]["EventType"] == 802) {
        assert!(Instant::now() < deadline, "802 was never attempted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused_id = hooks.requests().iter().find(|r| r["body"]["EventType"] == 802).unwrap()["event_id"].clone();
    // Let the refused attempts be counted in the outbox.
    std::thread::sleep(Duration::from_millis(500));
    let metrics = get(&server.url("/metrics"), None).body;
    assert!(metrics.contains("tessera_webhook_deliveries_total{result=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("tessera_webhook_deliveries_total{result=\"retry\"}"), "{metrics}");
    assert_eq!(std::fs::read_dir(data.join("outbox")).unwrap().count(), 1, "the pending 802 is in the outbox");
    server.crash();
    std::fs::remove_file(&refuse).unwrap();
    let server = Server::start(&data, &[]);
    let events = hooks.wait_for(Duration::from_secs(10), "802 after the restart", |e| codes_of(e, &job) == [801, 802]);
    assert_eq!(events[1]["EventInfo"]["Payload"]["LeaveCode"], 0);
    let delivered = hooks.requests().into_iter().find(|r| r["status"] == 200 && r["body"]["EventType"] == 802).unwrap();
    assert_eq!(delivered["event_id"], refused_id, "the same event, not a new one");
    let refused = hooks.requests().iter().filter(|r| r["body"]["EventType"] == 802 && r["status"] != 200).count() as u64;
    assert_eq!(delivered["attempt"].as_u64(), Some(refused + 1), "Tessera-Attempt goes on counting across the crash");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(data.join("outbox")).unwrap().count() > 0 {
        assert!(Instant::now() < deadline, "the outbox was not emptied");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(hooks.requests().iter().all(|r| r["sign_ok"] == true), "a Sign did not verify");
    assert!(hooks.requests().iter().all(|r| r["body"]["EventGroupId"] == 8), "only the subscribed group is sent");
    drop(server);
}

#[test]
fn room_and_media_events_follow_a_participant_in_causal_order() {
    let dir = TempDir::new("room-events");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let hooks = WebhookReceiver::start(dir.path(), "k3yA", &[]);
    hooks.subscribe(&server, &key, "k3yA");
    // A task on a room nobody is in makes the room (101 in the task's name); the room goes
    // 10 s after the task stops (102).
    let r = post_json(&server.url("/v1/recordings"), Some(&key), &json!({"room": "tasked"}));
    assert_eq!(r.status, 201, "{}", r.body);
    let rec = r.json()["id"].as_str().unwrap().to_owned();
    hooks.wait_for(Duration::from_secs(5), "101 of room tasked", |e| e.iter().any(|e| e["EventType"] == 101 && e["EventInfo"]["RoomId"] == "tasked"));
    assert_eq!(request("DELETE", &server.url(&format!("/v1/recordings/{rec}")), Some(&key), None, &[]).status, 200);
    let port = rtmp_port(&server);
    let cam = token(&data, "life", "cam");
    let url = format!("rtmp://127.0.0.1:{port}/push/life/cam?token={cam}");
    // A push, replaced 3 s later by a second push of the same user (OBS reconnecting), which
    // ends 4 s after that: one participant throughout.
    let mut first = publisher(&url, 20);
    std::thread::sleep(Duration::from_secs(3));
    let metrics = get(&server.url("/metrics"), None).body;
    assert!(metrics.lines().any(|l| l == "tessera_participants{user_type=\"12\"} 1"), "one RTMP participant: {metrics}");
    let mut second = publisher(&url, 4);
    let _ = second.wait();
    let _ = first.kill();
    let _ = first.wait();
    let in_room = |events: &[Value]| -> Vec<Value> { events.iter().filter(|e| e["EventInfo"]["RoomId"] == "life").cloned().collect() };
    let events = hooks.wait_for(Duration::from_secs(20), "102", |e| in_room(e).iter().any(|e| e["EventType"] == 102));
    let events = in_room(&events);
    let mut codes: Vec<u64> = events.iter().map(|e| e["EventType"].as_u64().unwrap()).collect();
    // 201 and 203 may come in either order.
    codes[2..4].sort();
    assert_eq!(codes, [101, 103, 201, 203, 104, 102], "{events:?}");
    assert!(events.iter().all(|e| e["EventInfo"]["RoomType"] == 1));
    let info = |code: u64| events.iter().find(|e| e["EventType"] == code).unwrap()["EventInfo"].clone();
    assert_eq!(info(101)["UserId"], "cam");
    let enter = info(103);
    assert_eq!((enter["UserId"].as_str(), enter["Role"].as_u64(), enter["UserType"].as_u64(), enter["Reason"].as_u64()), (Some("cam"), Some(20), Some(12), Some(1)), "{enter}");
    assert!(enter["TerminalType"].is_u64());
    let exit = info(104);
    assert_eq!((exit["Role"].as_u64(), exit["Reason"].as_u64()), (Some(20), Some(1)), "{exit}");
    assert!(info(102).get("UserId").is_none());
    // EventMsTs is strictly increasing, and the room outlived its last participant by 10 s.
    let stamps: Vec<i64> = events.iter().map(|e| e["EventInfo"]["EventMsTs"].as_i64().unwrap()).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    let empty_for = info(102)["EventMsTs"].as_i64().unwrap() - exit["EventMsTs"].as_i64().unwrap();
    assert!((9_500..=12_000).contains(&empty_for), "dismissed {empty_for} ms after the last exit");
    let tasked: Vec<Value> = hooks.events().into_iter().filter(|e| e["EventInfo"]["RoomId"] == "tasked" && e["EventGroupId"] == 1).collect();
    assert_eq!(tasked.iter().map(|e| e["EventType"].as_u64().unwrap()).collect::<Vec<_>>(), [101, 102], "{tasked:?}");
    assert_eq!(tasked[0]["EventInfo"]["UserId"], format!("rec_{rec}"));
    assert!(hooks.requests().iter().all(|r| r["sign_ok"] == true));
}
