//! Rooms: the REST API (PRODUCT.md §10: rooms and participants as the SFU sees them, a removed
//! user's RTMP encoder disconnected, a dismissed room's sessions and tasks ended with the spec's
//! codes, in the order a webhook receiver sees them) and room signaling over WebSocket (§7,
//! `signaling`).

mod admin;
mod dataplane;
mod meeting;
mod removal;
mod signaling;

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera_tests::*;

/// A server on a test host's network (WebRTC clients need an address that is not loopback),
/// with its temporary data dir and admin API key.
struct Hall {
    dir: TempDir,
    data: std::path::PathBuf,
    net: TestNet,
    server: Server,
    key: String,
}

fn hall(tag: &str) -> Hall {
    let dir = TempDir::new(tag);
    let data = dir.path().join("data");
    let net = TestNet::new();
    let http = format!("{}:0", net.host_ip);
    let server = Server::start(&data, &["--http-addr", &http, "--rtc-udp-addr", &http]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    Hall { dir, data, net, server, key }
}

/// An RTMP publisher (OBS-like: H.264 without B-frames, AAC) of 60 s.
fn publisher(url: &str) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=60"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=60"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0", "-g", "25", "-c:a", "aac", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg")
}

/// Waits until `f` gives `Some`.
fn until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the process ended within `limit`.
fn ends_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn users(server: &Server, key: &str, room: &str) -> Vec<Value> {
    let r = get(&server.url(&format!("/v1/rooms/{room}/users")), Some(key));
    if r.status != 200 {
        return Vec::new();
    }
    r.json()["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn rooms_show_their_participants_and_a_removed_user_or_dismissed_room_ends_every_session() {
    let _turn = serial();
    let dir = TempDir::new("rooms");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let hooks = WebhookReceiver::start(dir.path(), "r00mKey", &[]);
    hooks.subscribe(&server, &key, "r00mKey");
    let port = rtmp_port(&server);
    let push = |user: &str| publisher(&format!("rtmp://127.0.0.1:{port}/push/meet/{user}?token={}", token(&data, "meet", user)));

    // Nothing yet; then alice and bob publish over RTMP and a mix job joins the room.
    let r = get(&server.url("/v1/rooms"), Some(&key));
    assert_eq!(r.json(), json!({"items": [], "next_cursor": null}));
    get(&server.url("/v1/rooms/meet"), Some(&key)).expect_error(404, "room_not_found");
    let mut alice = push("alice");
    let mut bob = push("bob");
    until(Duration::from_secs(20), "alice and bob never published", || (users(&server, &key, "meet").len() == 2).then_some(()));
    let r = post_json(&server.url("/v1/mix-jobs"), Some(&key), &json!({"room": "meet", "encode": {"template": "360p"}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json()["id"].as_str().unwrap().to_owned();

    let room = until(Duration::from_secs(10), "the mix never joined the room", || {
        let v = get(&server.url("/v1/rooms"), Some(&key)).json();
        let room = v["items"].as_array()?.iter().find(|r| r["room"] == "meet")?.clone();
        (room["participants"] == 3).then_some(room)
    });
    assert_eq!(room["publishers"], 3, "{room}");
    assert_eq!(room["tasks"], json!({"mix_jobs": 1, "relays": 0, "recordings": 0, "ingests": 0}));
    let created = room["created_at"].as_i64().unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((now_ms - 60_000..=now_ms).contains(&created), "{room}");
    let list = users(&server, &key, "meet");
    let alice_v = list.iter().find(|u| u["user"] == "alice").unwrap();
    assert_eq!((alice_v["role"].as_u64(), alice_v["user_type"].as_u64()), (Some(20), Some(12)), "{alice_v}");
    assert_eq!((alice_v["sessions"].clone(), alice_v["streams"].clone()), (json!(["rtmp"]), json!(["main"])));
    let mix_v = list.iter().find(|u| u["user"] == format!("mix_{job}")).unwrap();
    assert_eq!((mix_v["user_type"].as_u64(), mix_v["sessions"].clone()), (Some(14), json!(["mix"])));
    // Users are listed by id, a page at a time.
    let page = get(&server.url("/v1/rooms/meet/users?limit=1"), Some(&key)).json();
    assert_eq!((page["items"][0]["user"].clone(), page["next_cursor"].clone()), (json!("alice"), json!("alice")));
    let page = get(&server.url("/v1/rooms/meet/users?limit=1&cursor=alice"), Some(&key)).json();
    assert_eq!(page["items"][0]["user"], "bob");
    let one = get(&server.url("/v1/rooms/meet/users/bob"), Some(&key)).json();
    assert_eq!(one["user"], "bob");
    let detail = get(&server.url("/v1/rooms/meet"), Some(&key)).json();
    assert_eq!(detail["users"].as_array().map(|u| u.len()), Some(3), "{detail}");

    // Bad requests say what is wrong; a read-only key may look but not remove.
    get(&server.url("/v1/rooms/meet/users/nobody"), Some(&key)).expect_error(404, "user_not_found");
    request("DELETE", &server.url("/v1/rooms/meet/users/nobody"), Some(&key), None, &[]).expect_error(404, "user_not_found");
    get(&server.url("/v1/rooms/no%20such/users"), Some(&key)).expect_error(400, "invalid_parameter");
    get(&server.url("/v1/rooms?limit=0"), Some(&key)).expect_error(400, "invalid_parameter");
    let r = post_json(&server.url("/v1/api-keys"), Some(&key), &json!({"name": "viewer", "preset": "read-only"}));
    let read_only = r.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(get(&server.url("/v1/rooms/meet/users"), Some(&read_only)).status, 200);
    request("DELETE", &server.url("/v1/rooms/meet/users/bob"), Some(&read_only), None, &[]).expect_error(403, "action_denied");
    request("DELETE", &server.url("/v1/rooms/meet"), Some(&read_only), None, &[]).expect_error(403, "action_denied");

    // Removing bob ends his RTMP publish within 2 s (the encoder is told why); alice stays.
    let r = request("DELETE", &server.url("/v1/rooms/meet/users/bob"), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.json()["room"].clone(), r.json()["user"].clone()), (json!("meet"), json!("bob")));
    assert!(ends_within(&mut bob, Duration::from_secs(3)), "bob's encoder was not disconnected");
    let names: Vec<Value> = users(&server, &key, "meet").iter().map(|u| u["user"].clone()).collect();
    assert!(!names.contains(&json!("bob")) && names.contains(&json!("alice")), "{names:?}");
    assert!(server.logs().iter().any(|l| l.contains("removed: the user was removed from the room")), "no removal status was sent");
    let bob_left = |e: &[Value]| e.iter().any(|e| e["EventType"] == 104 && e["EventInfo"]["UserId"] == "bob");
    let events = hooks.wait_for(Duration::from_secs(10), "104 for bob", bob_left);
    let exit = events.iter().find(|e| e["EventType"] == 104 && e["EventInfo"]["UserId"] == "bob").unwrap();
    assert_eq!(exit["EventInfo"]["Reason"], 3, "{exit}");

    // Dismissing the room: alice is disconnected, the mix job stops with LeaveCode 2, 102 last.
    let r = request("DELETE", &server.url("/v1/rooms/meet"), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["dismissed_at"].as_i64().is_some());
    assert!(ends_within(&mut alice, Duration::from_secs(3)), "alice's encoder was not disconnected");
    get(&server.url("/v1/rooms/meet"), Some(&key)).expect_error(404, "room_not_found");
    let job_v = until(Duration::from_secs(5), "the mix job never stopped", || {
        let v = get(&server.url(&format!("/v1/mix-jobs/{job}")), Some(&key)).json();
        (v["state"] == "STOPPED").then_some(v)
    });
    assert_eq!(job_v["leave_code"], 2, "{job_v}");
    let events = hooks.wait_for(Duration::from_secs(10), "802 and 102", |e| e.iter().any(|e| e["EventType"] == 102) && e.iter().any(|e| e["EventType"] == 802));
    let alice_exit = events.iter().find(|e| e["EventType"] == 104 && e["EventInfo"]["UserId"] == "alice").expect("104 for alice");
    assert_eq!(alice_exit["EventInfo"]["Reason"], 3);
    let stop = events.iter().find(|e| e["EventType"] == 802).unwrap();
    assert_eq!(stop["EventInfo"]["Payload"]["LeaveCode"], 2, "{stop}");
    let codes: Vec<u64> = events.iter().filter_map(|e| e["EventType"].as_u64()).collect();
    let pos = |c: u64| codes.iter().rposition(|x| *x == c).unwrap();
    assert!(pos(104) < pos(102) && codes.iter().filter(|c| **c == 102).count() == 1, "{codes:?}");
    request("DELETE", &server.url("/v1/rooms/meet"), Some(&key), None, &[]).expect_error(404, "room_not_found");
}
