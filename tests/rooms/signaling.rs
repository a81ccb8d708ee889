//! Room signaling (`GET /v1/rtc`, PRODUCT.md §7) with an independent WebSocket client
//! (tungstenite): join, presence both ways with RTMP participants, ping, the spec's framing
//! errors and close codes, kick, a newer login, leave, a dismissed room.

use super::*;
use std::net::TcpStream;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

pub(crate) fn connect(server: &Server) -> Ws {
    let url = server.url("/v1/rtc").replace("http://", "ws://");
    let (ws, _) = tungstenite::connect(url).expect("a WebSocket");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    }
    ws
}

pub(crate) fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::Text(v.to_string().into())).unwrap();
}

/// The next JSON message; pings and pongs are skipped.
pub(crate) fn next(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// Reads until a message of `kind` arrives (others are skipped) and returns it.
pub(crate) fn next_of(ws: &mut Ws, kind: &str) -> Value {
    next_within(ws, kind, Duration::from_secs(15))
}

/// Reads until a message of `kind` arrives within `limit` (others, such as the `quality`
/// reports every 2 s, are skipped) and returns it.
pub(crate) fn next_within(ws: &mut Ws, kind: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        assert!(Instant::now() < deadline, "no {kind}");
        let v = next(ws);
        if v["type"] == kind {
            return v;
        }
    }
}

/// Sends `msg` (with an `id`) and returns the reply carrying that id; others are skipped.
fn ask(ws: &mut Ws, msg: Value) -> Value {
    send(ws, &msg);
    let id = msg["id"].clone();
    loop {
        let v = next(ws);
        if v["id"] == id {
            return v;
        }
    }
}

/// Reads until the server closes; returns its close code.
pub(crate) fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match ws.read() {
            Ok(Message::Close(c)) => return c.map(|c| c.code),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

pub(crate) fn join(server: &Server, data: &std::path::Path, room: &str, user: &str) -> (Ws, Value) {
    let mut ws = connect(server);
    send(&mut ws, &json!({"type": "join", "id": "j1", "token": token(data, room, user)}));
    let joined = next(&mut ws);
    assert_eq!((joined["type"].as_str(), joined["id"].as_str()), (Some("joined"), Some("j1")), "{joined}");
    (ws, joined)
}

#[test]
fn participants_meet_over_the_signaling_socket() {
    let dir = TempDir::new("rtc");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let hooks = WebhookReceiver::start(dir.path(), "rtcK3y", &[]);
    hooks.subscribe(&server, &key, "rtcK3y");

    // alice joins first (she makes the room), then bob: each learns of the other.
    let (mut alice, joined) = join(&server, &data, "talk", "alice");
    assert_eq!((joined["room"].as_str(), joined["user"].as_str(), joined["role"].as_u64()), (Some("talk"), Some("alice"), Some(20)));
    assert_eq!(joined["participants"], json!([]));
    assert!(joined["session_id"].as_str().is_some_and(|s| !s.is_empty()) && joined["server_time_ms"].as_i64().is_some());
    let (mut bob, joined) = join(&server, &data, "talk", "bob");
    assert_eq!(joined["participants"][0]["user"], "alice", "{joined}");
    let seen = next_of(&mut alice, "participant_joined");
    assert_eq!((seen["user"].as_str(), seen["user_type"].as_u64()), (Some("bob"), Some(1)));
    let users = get(&server.url("/v1/rooms/talk/users"), Some(&key)).json();
    assert_eq!(users["items"].as_array().unwrap().iter().map(|u| u["sessions"].clone()).collect::<Vec<_>>(), vec![json!(["ws"]), json!(["ws"])]);

    // An RTMP encoder joins as carol: the sockets see her arrive and her tracks start.
    let port = rtmp_port(&server);
    let mut carol = publisher(&format!("rtmp://127.0.0.1:{port}/push/talk/carol?token={}", token(&data, "talk", "carol")));
    let seen = next_of(&mut alice, "participant_joined");
    assert_eq!((seen["user"].as_str(), seen["user_type"].as_u64()), (Some("carol"), Some(12)));
    let track = next_of(&mut alice, "track_published");
    assert_eq!((track["user"].as_str(), track["stream"].as_str()), (Some("carol"), Some("main")), "{track}");
    let codec = if track["kind"] == "video" { "H264" } else { "opus" };
    assert_eq!((track["codec"].as_str(), track["layers"].clone()), (Some(codec), json!([])), "{track}");

    // bob subscribed to carol's stream by himself (auto_subscribe): the server offered the
    // `sub` connection with her audio and video; asking again changes nothing.
    let offer = next_of(&mut bob, "offer");
    assert_eq!(offer["pc"], "sub", "{offer}");
    let kinds: Vec<(Value, Value)> = offer["tracks"].as_array().unwrap().iter().map(|t| (t["user"].clone(), t["kind"].clone())).collect();
    assert_eq!(kinds, vec![(json!("carol"), json!("audio")), (json!("carol"), json!("video"))], "{offer}");
    assert!(offer["sdp"].as_str().unwrap().contains("a=sendonly"), "{offer}");
    // ping/pong with the correlation id; what is not JSON or not known gets `error`, and the
    // socket stays open.
    send(&mut bob, &json!({"type": "ping", "id": "p1"}));
    assert_eq!(next_of(&mut bob, "pong")["id"], "p1");
    bob.send(Message::Binary(vec![1, 2, 3].into())).unwrap();
    assert_eq!(next_of(&mut bob, "error")["code"], "bad_message");
    bob.send(Message::Text("{not json".into())).unwrap();
    assert_eq!(next_of(&mut bob, "error")["code"], "bad_message");
    send(&mut bob, &json!({"type": "dance", "id": "d"}));
    let e = next_of(&mut bob, "error");
    assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("bad_message"), Some("d")));
    send(&mut bob, &json!({"type": "subscribe", "id": "s", "user": "carol", "stream": "main"}));
    assert_eq!(next_of(&mut bob, "ok")["id"], "s");
    send(&mut bob, &json!({"type": "subscribe", "id": "s2", "user": "carol", "stream": "main", "quality": "best"}));
    let e = next_of(&mut bob, "error");
    assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("invalid_parameter"), Some("s2")), "{e}");
    send(&mut bob, &json!({"type": "publish", "id": "pb", "stream": "main", "sdp": "v=0\r\n"}));
    let e = next_of(&mut bob, "error");
    assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("sdp_invalid"), Some("pb")), "{e}");
    send(&mut bob, &json!({"type": "unpublish", "id": "u", "stream": "main"}));
    assert_eq!(next_of(&mut bob, "error")["code"], "not_published");
    send(&mut bob, &json!({"type": "ping", "id": "p2"}));
    assert_eq!(next_of(&mut bob, "pong")["id"], "p2");

    // Removing bob over REST: his socket is told and closed with 4003; alice sees him leave.
    assert_eq!(request("DELETE", &server.url("/v1/rooms/talk/users/bob"), Some(&key), None, &[]).status, 200);
    assert_eq!(next_of(&mut bob, "kicked")["reason"], "removed");
    assert_eq!(close_code(&mut bob), Some(CloseCode::Library(4003)));
    let left = next_of(&mut alice, "participant_left");
    assert_eq!((left["user"].as_str(), left["reason"].as_str()), (Some("bob"), Some("removed")));

    // alice logs in again elsewhere: the old socket is kicked (duplicate_login), she stays
    // present throughout (no 104 for her), and the new socket works.
    let (mut alice2, _) = join(&server, &data, "talk", "alice");
    assert_eq!(next_of(&mut alice, "kicked")["reason"], "duplicate_login");
    assert_eq!(close_code(&mut alice), Some(CloseCode::Library(4003)));
    send(&mut alice2, &json!({"type": "ping", "id": "p3"}));
    assert_eq!(next_of(&mut alice2, "pong")["id"], "p3");

    // Dismissing the room kicks the socket (room_dismissed) and ends carol's publish.
    assert_eq!(request("DELETE", &server.url("/v1/rooms/talk"), Some(&key), None, &[]).status, 200);
    assert_eq!(next_of(&mut alice2, "kicked")["reason"], "room_dismissed");
    assert_eq!(close_code(&mut alice2), Some(CloseCode::Library(4003)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while carol.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "carol's encoder was not disconnected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = hooks.wait_for(Duration::from_secs(10), "102", |e| e.iter().any(|e| e["EventType"] == 102));
    let alice_codes: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["EventInfo"]["UserId"] == "alice" && [103, 104].contains(&e["EventType"].as_u64().unwrap_or(0)))
        .map(|e| (e["EventType"].as_u64().unwrap(), e["EventInfo"]["Reason"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(alice_codes, vec![(103, 1), (104, 3)], "one presence for two logins, ended by the dismissal");
    assert!(events.iter().any(|e| e["EventType"] == 101 && e["EventInfo"]["UserId"] == "alice"), "alice made the room");
    let bob_enter = events.iter().find(|e| e["EventType"] == 103 && e["EventInfo"]["UserId"] == "bob").unwrap();
    assert_eq!(bob_enter["EventInfo"]["UserType"], 1);
}

#[test]
fn the_socket_keeps_the_spec_framing_and_join_rules() {
    let dir = TempDir::new("rtc-rules");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);

    // A bad token: `error`, then 4001.
    let mut ws = connect(&server);
    send(&mut ws, &json!({"type": "join", "id": "x", "token": "not.a.token"}));
    let e = next(&mut ws);
    assert_eq!((e["type"].as_str(), e["id"].as_str(), e["code"].as_str()), (Some("error"), Some("x"), Some("token_malformed")), "{e}");
    assert_eq!(close_code(&mut ws), Some(CloseCode::Library(4001)));
    // Something other than `join` first: 4002.
    let mut ws = connect(&server);
    send(&mut ws, &json!({"type": "subscribe", "user": "a", "stream": "main"}));
    assert_eq!(next(&mut ws)["code"], "join_first");
    assert_eq!(close_code(&mut ws), Some(CloseCode::Library(4002)));
    // More than 64 KiB: 1009.
    let (mut ws, _) = join(&server, &data, "rules", "dora");
    send(&mut ws, &json!({"type": "ping", "pad": "x".repeat(2 * 1024 * 1024)}));
    assert_eq!(close_code(&mut ws), Some(CloseCode::Size));
    // Nothing at all for 10 s: 4002.
    let mut ws = connect(&server);
    let started = Instant::now();
    assert_eq!(close_code(&mut ws), Some(CloseCode::Library(4002)));
    assert!((9..13).contains(&started.elapsed().as_secs()), "{:?}", started.elapsed());
    // `leave`: ok, then a normal close.
    let (mut ws, _) = join(&server, &data, "rules", "erin");
    send(&mut ws, &json!({"type": "leave", "id": "bye"}));
    assert_eq!(next(&mut ws)["id"], "bye");
    assert_eq!(close_code(&mut ws), Some(CloseCode::Normal));
}

/// aiortc publishes over the signaling socket (`publish` on the pub connection); another
/// socket sees the tracks start, and a WHEP player decodes the publisher's blue picture.
#[test]
fn aiortc_publishes_over_the_socket_and_whep_plays_it() {
    let _turn = serial();
    let Hall { dir: _dir, data, net, server, key } = hall("rtc-publish");
    let (mut bob, _) = join(&server, &data, "cast", "bob");
    let ws_url = server.url("/v1/rtc").replace("http://", "ws://");
    let alice = Client::start(&net, "aiortc_client.py", &["ws-publish", "--url", &ws_url, "--token", &token(&data, "cast", "alice"), "--seconds", "14"]);
    let seen = next_of(&mut bob, "participant_joined");
    assert_eq!((seen["user"].as_str(), seen["user_type"].as_u64()), (Some("alice"), Some(1)));
    let track = next_of(&mut bob, "track_published");
    assert_eq!((track["user"].as_str(), track["stream"].as_str()), (Some("alice"), Some("main")), "{track}");
    // Her socket and her publication are two sessions of one participant.
    let users = get(&server.url("/v1/rooms/cast/users/alice"), Some(&key)).json();
    assert_eq!((users["sessions"].clone(), users["streams"].clone()), (json!(["ws", "ws"]), json!(["main"])), "{users}");
    let play = Client::start(&net, "aiortc_client.py", &["play", "--url", &server.url("/whep/cast/alice/main"), "--token", &token(&data, "cast", "viewer"), "--seconds", "5"]);
    let r = play.finish(Duration::from_secs(40));
    assert!(r["frames"].as_u64().unwrap() >= 40, "{r}");
    let rgb: Vec<u64> = r["mean_rgb"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(rgb[2] > 200 && rgb[0] < 50 && rgb[1] < 50, "{r}");
    assert!(r["audio_frames"].as_u64().unwrap() >= 100, "{r}");
    let a = alice.finish(Duration::from_secs(40));
    assert_eq!(a["done"], true, "{a}");
    // alice's `leave` ends her publication with her: bob sees her go, having left.
    let left = loop {
        let left = next_of(&mut bob, "participant_left");
        if left["user"] == "alice" {
            break left;
        }
    };
    assert_eq!(left["reason"], "left", "{left}");
}

/// Scenario 11's room-signaling half (PRODUCT.md §4.4): an audience token cannot publish or
/// switch to anchor without a publish privilege; `update_token` with 255 lets it switch (others
/// see `role_changed`, the webhook 105); a token for someone else is `token_mismatch`; an
/// expired token at `switch_role` is kicked (`token_expired`, 4003, 104 Reason 3).
#[test]
fn roles_and_tokens_are_checked_again_inside_the_session() {
    let dir = TempDir::new("rtc-roles");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let hooks = WebhookReceiver::start(dir.path(), "r0leKey", &[]);
    hooks.subscribe(&server, &key, "r0leKey");
    let (mut bob, _) = join(&server, &data, "class", "bob");
    let mut ann = connect(&server);
    send(&mut ann, &json!({"type": "join", "id": "j", "token": token_with(&data, "class", "ann", &["--role", "audience"])}));
    let joined = next(&mut ann);
    assert_eq!((joined["role"].as_u64(), joined["privileges"].as_u64()), (Some(21), Some(171)), "{joined}");
    let r = ask(&mut ann, json!({"type": "publish", "id": "p", "stream": "main", "sdp": "v=0\r\n"}));
    assert_eq!(r["code"], "role_not_allowed", "{r}");
    let r = ask(&mut ann, json!({"type": "switch_role", "id": "s1", "role": 20}));
    assert_eq!((r["code"].as_str(), r["id"].as_str()), (Some("privilege_missing"), Some("s1")), "{r}");
    let r = ask(&mut ann, json!({"type": "update_token", "id": "u0", "token": token_with(&data, "class", "eve", &["--privileges", "255"])}));
    assert_eq!(r["code"], "token_mismatch", "{r}");
    let r = ask(&mut ann, json!({"type": "update_token", "id": "u1", "token": token_with(&data, "class", "ann", &["--role", "audience", "--privileges", "255"])}));
    assert_eq!(r["type"], "ok", "{r}");
    let r = ask(&mut ann, json!({"type": "switch_role", "id": "s2", "role": 20}));
    assert_eq!(r["type"], "ok", "{r}");
    let seen = next_of(&mut bob, "role_changed");
    assert_eq!((seen["user"].as_str(), seen["role"].as_u64()), (Some("ann"), Some(20)), "{seen}");
    // Out of order and unknown messages get errors; the session goes on.
    let r = ask(&mut ann, json!({"type": "answer", "id": "a", "pc": "sub", "sdp": "v=0\r\n"}));
    assert_eq!(r["code"], "no_offer_pending", "{r}");
    let r = ask(&mut ann, json!({"type": "unsubscribe", "id": "un", "user": "bob", "stream": "main"}));
    assert_eq!(r["code"], "not_subscribed", "{r}");
    let r = ask(&mut ann, json!({"type": "mute", "id": "m", "stream": "main", "kind": "video", "muted": true}));
    assert_eq!(r["code"], "not_published", "{r}");
    let r = ask(&mut ann, json!({"type": "dance", "id": "d"}));
    assert_eq!(r["code"], "bad_message", "{r}");
    assert_eq!(ask(&mut ann, json!({"type": "ping", "id": "still"}))["type"], "pong");

    // A token within the clock leeway joins; once past it, switching to anchor kicks.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let stale = forged(&data, |c| (c.room, c.user, c.role, c.privileges, c.exp) = ("class".into(), "cy".into(), Some(21), Some(255), now - 7), None);
    let mut cy = connect(&server);
    send(&mut cy, &json!({"type": "join", "id": "j", "token": stale}));
    assert_eq!(next(&mut cy)["type"], "joined");
    std::thread::sleep(Duration::from_secs(5));
    send(&mut cy, &json!({"type": "switch_role", "id": "s", "role": 20}));
    let kicked = next_of(&mut cy, "kicked");
    assert_eq!(kicked["reason"], "token_expired", "{kicked}");
    assert_eq!(close_code(&mut cy), Some(CloseCode::Library(4003)));
    let events = hooks.wait_for(Duration::from_secs(10), "cy's exit", |e| e.iter().any(|e| e["EventType"] == 104 && e["EventInfo"]["UserId"] == "cy"));
    let exit = events.iter().find(|e| e["EventType"] == 104 && e["EventInfo"]["UserId"] == "cy").unwrap();
    assert_eq!(exit["EventInfo"]["Reason"], 3, "{exit}");
    let switched = events.iter().find(|e| e["EventType"] == 105 && e["EventInfo"]["UserId"] == "ann").expect("105 for ann");
    assert_eq!(switched["EventInfo"]["Role"], 20, "{switched}");
}

/// Dev mode (`--dev`): `POST /dev/token` mints a token a room page can join with, for clients on
/// the server's machine only; without dev mode the route does not exist.
#[test]
fn dev_mode_mints_tokens_for_local_clients_only() {
    let dir = TempDir::new("rtc-dev");
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--dev"]);
    let r = post_json(&server.url("/dev/token"), None, &json!({"room": "demo", "user": "kim"}));
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let mut ws = connect(&server);
    send(&mut ws, &json!({"type": "join", "id": "j", "token": token}));
    let joined = next(&mut ws);
    assert_eq!((joined["type"].as_str(), joined["user"].as_str(), joined["role"].as_u64()), (Some("joined"), Some("kim"), Some(20)), "{joined}");
    post_json(&server.url("/dev/token"), None, &json!({"room": "demo", "user": "mix_1"})).expect_error(403, "user_id_reserved");
    post_json(&server.url("/dev/token"), None, &json!({"room": "demo"})).expect_error(400, "invalid_json");

    // A client from another address, and a server without dev mode.
    let net = TestNet::new();
    let remote = Server::start(&dir.path().join("data2"), &["--dev", "--http-addr", &format!("{}:0", net.host_ip)]);
    let from = remote.url("/dev/token");
    let out = net
        .command(std::path::Path::new("curl"))
        .args(["-s", "-X", "POST", "-H", "Content-Type: application/json", "-d", r#"{"room":"demo","user":"eve"}"#, &from])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(v["code"], "dev_only_local", "{v}");
    let plain = Server::start(&dir.path().join("data3"), &[]);
    post_json(&plain.url("/dev/token"), None, &json!({"room": "demo", "user": "kim"})).expect_error(404, "route_not_found");
}

/// Scenario 12 over the socket (PRODUCT.md §8): an anchor sends 40 small messages within a
/// second — 30 arrive with `seq` 1–30 and the sender gets one `custom_rate_limited`; `to` picks
/// receivers; 1001 bytes is `custom_too_large`, `cmd_id` 0 and 11 `custom_bad_cmd_id`, an
/// audience sender `not_anchor`.
#[test]
fn custom_messages_over_the_socket() {
    let dir = TempDir::new("rtc-custom");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let (mut ann, _) = join(&server, &data, "chat", "ann");
    let (mut bob, _) = join(&server, &data, "chat", "bob");
    let (mut cy, _) = join(&server, &data, "chat", "cy");
    let mut aud = connect(&server);
    send(&mut aud, &json!({"type": "join", "id": "j", "token": token_with(&data, "chat", "aud", &["--role", "audience"])}));
    assert_eq!(next(&mut aud)["type"], "joined");
    let started = Instant::now();
    for i in 0..40 {
        send(&mut ann, &json!({"type": "custom", "id": format!("c{i}"), "cmd_id": 1, "data": "aGVsbG8="}));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    // What ann heard back, up to a ping that follows everything.
    send(&mut ann, &json!({"type": "ping", "id": "end"}));
    let mut oks = Vec::new();
    let mut limited = 0;
    loop {
        let v = next(&mut ann);
        match v["type"].as_str() {
            Some("pong") if v["id"] == "end" => break,
            Some("ok") => oks.push(v["seq"].as_u64().unwrap()),
            Some("error") if v["code"] == "custom_rate_limited" => limited += 1,
            _ => {}
        }
    }
    assert_eq!(oks, (1..=30).collect::<Vec<u64>>());
    assert_eq!(limited, 1);
    for ws in [&mut bob, &mut cy] {
        let got: Vec<Value> = (0..30).map(|_| next_of(ws, "custom")).collect();
        assert!(got.iter().all(|m| m["from"] == "ann" && m["cmd_id"] == 1 && m["data"] == "aGVsbG8="), "{got:?}");
        assert_eq!(got.iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(), (1..=30).collect::<Vec<u64>>());
    }
    // After the window: a message to bob only; cy gets nothing (her next message is the pong).
    std::thread::sleep(Duration::from_millis(1100));
    send(&mut ann, &json!({"type": "custom", "id": "to", "cmd_id": 10, "data": "Ym9i", "to": ["bob"]}));
    let m = next_of(&mut bob, "custom");
    assert_eq!((m["seq"].as_u64(), m["cmd_id"].as_u64(), m["data"].as_str()), (Some(31), Some(10), Some("Ym9i")), "{m}");
    send(&mut cy, &json!({"type": "ping", "id": "cy"}));
    loop {
        let v = next(&mut cy);
        assert_ne!(v["type"], "custom", "cy got {v}");
        if v["type"] == "pong" && v["id"] == "cy" {
            break;
        }
    }
    // Bad ones.
    use base64::Engine;
    let big = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 1001]);
    assert_eq!(ask(&mut ann, json!({"type": "custom", "id": "big", "cmd_id": 2, "data": big}))["code"], "custom_too_large");
    assert_eq!(ask(&mut ann, json!({"type": "custom", "id": "z", "cmd_id": 0, "data": ""}))["code"], "custom_bad_cmd_id");
    assert_eq!(ask(&mut ann, json!({"type": "custom", "id": "e", "cmd_id": 11, "data": ""}))["code"], "custom_bad_cmd_id");
    assert_eq!(ask(&mut aud, json!({"type": "custom", "id": "a", "cmd_id": 1, "data": ""}))["code"], "not_anchor");
}
