//! A kick and a dismissal end every kind of session (PRODUCT.md §10): room signaling (WS),
//! WHIP and WHEP (aiortc), an RTMP encoder (ffmpeg) and a pull ingest, each within 2 s.

use super::signaling::{close_code, connect, next, next_of, send};
use super::*;
use tungstenite::protocol::frame::coding::CloseCode;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_kick_and_a_dismissal_end_every_kind_of_session() {
    let _turn = serial();
    let Hall { dir, data, net, server, key } = hall("rooms-removal");
    let hooks = WebhookReceiver::start(dir.path(), "g0neKey", &[]);
    hooks.subscribe(&server, &key, "g0neKey");
    let port = rtmp_port(&server);

    // pat is there three ways: signaling, a WHIP publication and a WHEP player of rita.
    let mut pat_ws = connect(&server);
    send(&mut pat_ws, &json!({"type": "join", "id": "j", "auto_subscribe": false, "token": token(&data, "hall", "pat")}));
    assert_eq!(next(&mut pat_ws)["type"], "joined");
    let mut rita = publisher(&format!("rtmp://127.0.0.1:{port}/push/hall/rita?token={}", token(&data, "hall", "rita")));
    let pat_whip = Client::start(&net, "aiortc_client.py", &["publish", "--url", &server.url("/whip/hall"), "--token", &token(&data, "hall", "pat"), "--seconds", "40"]);
    until(Duration::from_secs(20), "rita and pat never published", || {
        (users(&server, &key, "hall").iter().filter(|u| !u["streams"].as_array().unwrap().is_empty()).count() == 2).then_some(())
    });
    let pat_whep = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url("/whep/hall/rita/main"), "--token", &token(&data, "hall", "pat"), "--seconds", "40"]);
    // A pull ingest (an RTMP source served by ffmpeg) and a WHEP viewer of it.
    let source = format!("rtmp://127.0.0.1:{}/live/src", free_port());
    let mut src = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=60", "-f", "lavfi", "-i", "sine=duration=60"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", "25", "-c:a", "aac", "-f", "flv", "-listen", "1", &source])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let r = post_json(&server.url("/v1/ingests"), Some(&key), &json!({"room": "hall", "user": "movie", "url": source}));
    assert_eq!(r.status, 201, "{}", r.body);
    let ingest = r.json()["id"].as_str().unwrap().to_owned();
    let vic = Client::start(
        &net,
        "aiortc_client.py",
        &["play", "--url", &server.url("/whep/hall/movie/main"), "--token", &token(&data, "hall", "vic"), "--seconds", "40", "--delay", "3"],
    );
    let sessions = |user: &str| users(&server, &key, "hall").iter().find(|u| u["user"] == user).map(|u| u["sessions"].clone());
    until(Duration::from_secs(25), "pat's three sessions and vic's never showed", || {
        (sessions("pat").is_some_and(|s| s.as_array().unwrap().len() == 3) && sessions("vic").is_some() && sessions("movie").is_some()).then_some(())
    });
    assert_eq!(sessions("pat"), Some(json!(["ws", "whip", "whep"])));

    // Kicking pat ends all three at once: the socket is told, WHIP and WHEP are closed.
    let kicked_at = Instant::now();
    assert_eq!(request("DELETE", &server.url("/v1/rooms/hall/users/pat"), Some(&key), None, &[]).status, 200);
    assert_eq!(next_of(&mut pat_ws, "kicked")["reason"], "removed");
    assert_eq!(close_code(&mut pat_ws), Some(CloseCode::Library(4003)));
    until(Duration::from_secs(2), "pat's sessions outlived the kick by 2 s", || sessions("pat").is_none().then_some(()));
    assert!(kicked_at.elapsed() < Duration::from_secs(2), "{:?}", kicked_at.elapsed());

    // Dismissing the room ends the rest: the encoder, the ingest and vic's player.
    let dismissed_at = Instant::now();
    assert_eq!(request("DELETE", &server.url("/v1/rooms/hall"), Some(&key), None, &[]).status, 200);
    assert!(ends_within(&mut rita, Duration::from_secs(2)), "rita's encoder was not disconnected within 2 s");
    let state = until(Duration::from_secs(2), "the ingest did not stop within 2 s", || {
        let v = get(&server.url(&format!("/v1/ingests/{ingest}")), Some(&key)).json();
        (v["state"] != "RUNNING" && v["state"] != "STARTING").then_some(v)
    });
    assert!(dismissed_at.elapsed() < Duration::from_secs(2), "{:?} {state}", dismissed_at.elapsed());
    get(&server.url("/v1/rooms/hall"), Some(&key)).expect_error(404, "room_not_found");
    let events = hooks.wait_for(Duration::from_secs(10), "702 and 102", |e| e.iter().any(|e| e["EventType"] == 702) && e.iter().any(|e| e["EventType"] == 102));
    let exit = |u: &str| events.iter().find(|e| e["EventType"] == 104 && e["EventInfo"]["UserId"] == u).map(|e| e["EventInfo"]["Reason"].clone());
    for u in ["pat", "rita", "movie", "vic"] {
        assert_eq!(exit(u), Some(json!(3)), "{u} left as removed: {events:?}");
    }
    for c in [pat_whip, pat_whep, vic] {
        c.vanish();
    }
    let _ = src.kill();
    let _ = src.wait();
}
