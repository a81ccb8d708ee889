//! Meeting over room signaling with an independent WebRTC stack (aiortc, its own minimal
//! signaling code in `tests/clients/aiortc_client.py`): participants publish on their `pub`
//! connection and receive everyone else on the server-offered `sub` connection.

use super::signaling::{join, next_of};
use super::*;

/// Two aiortc participants each publish a colour and a tone and decode the other's; a third,
/// a plain WebSocket client, sees them publish and one of them mute.
#[test]
fn aiortc_participants_publish_and_subscribe_to_each_other() {
    let _turn = serial();
    let dir = TempDir::new("rtc-meet");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let http = format!("{}:0", net.host_ip);
    let server = Server::start(&data, &["--http-addr", &http, "--rtc-udp-addr", &http]);
    let (mut carol, _) = join(&server, &data, "meet", "carol");
    let ws_url = server.url("/v1/rtc").replace("http://", "ws://");
    let alice = Client::start(
        &net,
        "aiortc_client.py",
        &["ws-meet", "--url", &ws_url, "--token", &token(&data, "meet", "alice"), "--rgb", "255,0,0", "--seconds", "20", "--mute-after", "15"],
    );
    let bob =
        Client::start(&net, "aiortc_client.py", &["ws-meet", "--url", &ws_url, "--token", &token(&data, "meet", "bob"), "--rgb", "0,255,0", "--seconds", "18", "--delay", "2"]);
    let muted = next_of(&mut carol, "track_muted");
    assert_eq!((muted["user"].as_str(), muted["kind"].as_str(), muted["muted"].as_bool()), (Some("alice"), Some("video"), Some(true)), "{muted}");
    // users.get shows what alice publishes (video muted) and receives from bob, with rates.
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap();
    let alice_v = get(&server.url("/v1/rooms/meet/users/alice"), Some(key.trim())).json();
    let tracks = alice_v["tracks"].as_array().unwrap_or_else(|| panic!("{alice_v}"));
    let find = |dir: &str, kind: &str| tracks.iter().find(|t| t["direction"] == dir && t["kind"] == kind).unwrap_or_else(|| panic!("no {dir} {kind}: {alice_v}"));
    assert_eq!(find("publish", "video")["muted"], true, "{alice_v}");
    assert!(find("publish", "audio")["kbps"].as_f64().unwrap() > 5.0, "{alice_v}");
    let from_bob = find("receive", "video");
    assert!(from_bob["user"] == "bob" && from_bob["kbps"].as_f64().unwrap() > 1.0, "{alice_v}");
    let a = alice.finish(Duration::from_secs(60));
    let b = bob.finish(Duration::from_secs(60));
    let colour = |r: &Value, user: &str| -> Vec<u64> { r["received"][user]["mean_rgb"].as_array().unwrap_or(&vec![]).iter().map(|v| v.as_u64().unwrap()).collect() };
    assert!(a["received"]["bob"]["frames"].as_u64().unwrap_or(0) >= 60, "{a}");
    assert!(b["received"]["alice"]["frames"].as_u64().unwrap_or(0) >= 60, "{b}");
    let (ab, ba) = (colour(&a, "bob"), colour(&b, "alice"));
    assert!(ab.len() == 3 && ab[1] > 200 && ab[0] < 60 && ab[2] < 60, "alice sees bob green: {a}");
    assert!(ba.len() == 3 && ba[0] > 200 && ba[1] < 60 && ba[2] < 60, "bob sees alice red: {b}");
    assert!(a["received"]["bob"]["audio_frames"].as_u64().unwrap_or(0) >= 100, "{a}");
    assert!(b["received"]["alice"]["audio_frames"].as_u64().unwrap_or(0) >= 100, "{b}");
    for (r, other) in [(&a, "bob"), (&b, "alice")] {
        let fm = r["first_media"].as_array().unwrap();
        assert!(fm.contains(&json!([other, "video"])) && fm.contains(&json!([other, "audio"])), "first_media of both kinds: {r}");
    }
}

/// Four headless Chromium participants meet through `room.html` and `tessera.js`, each with a
/// distinct colour and tone: each decodes the other three; one mutes its video, one shares a
/// screen-like canvas as aux, one leaves — and a webhook receiver sees it all in causal order.
#[test]
fn four_browsers_meet_in_the_room_page() {
    let _turn = serial();
    let dir = TempDir::new("rtc-room-page");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let http = format!("{}:0", net.host_ip);
    let server = Server::start(&data, &["--http-addr", &http, "--rtc-udp-addr", &http]);
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap().trim().to_owned();
    let hooks = WebhookReceiver::start(dir.path(), "m33tKey", &[]);
    hooks.subscribe(&server, &key, "m33tKey");
    let people = [("ann", "#ff0000", "300"), ("ben", "#00ff00", "500"), ("cat", "#0000ff", "700"), ("dan", "#ffff00", "900")];
    let specs: Vec<String> = people.iter().map(|(u, c, t)| format!("{u},{},{c},{t}", token(&data, "party", u))).collect();
    let base = server.base.clone();
    let mut args = vec!["room", "--base", &base, "--seconds", "12", "--screen-color", "#ff00ff"];
    for s in &specs {
        args.extend(["--participant", s.as_str()]);
    }
    let r = Client::start(&net, "browser.py", &args).finish(Duration::from_secs(150));
    let expected = |user: &str| -> [u8; 3] {
        let c = people.iter().find(|p| p.0 == user).unwrap().1;
        let hex = |i: usize| u8::from_str_radix(&c[i..i + 2], 16).unwrap();
        [hex(1), hex(3), hex(5)]
    };
    let close = |rgb: &Value, want: [u8; 3]| rgb.as_array().is_some_and(|v| v.iter().zip(want).all(|(x, w)| (x.as_i64().unwrap() - w as i64).abs() < 60));
    // Everyone decodes everyone else's colour.
    for (me, ..) in people {
        let tiles = r["meeting"][me].as_array().unwrap_or_else(|| panic!("{r}"));
        for (other, ..) in people.iter().filter(|p| p.0 != me) {
            let t = tiles.iter().find(|t| t["user"] == *other && t["stream"] == "main").unwrap_or_else(|| panic!("{me} has no tile of {other}: {r}"));
            assert!(t["frames"].as_u64().unwrap() >= 60, "{me} sees {other}: {t}");
            assert!(close(&t["rgb"], expected(other)), "{me} sees {other}'s colour: {t}");
        }
    }
    // ben's screen (magenta) reached the others as his aux stream; ann's video is shown muted.
    for me in ["ann", "cat", "dan"] {
        let tiles = r["shared"][me].as_array().unwrap_or_else(|| panic!("{r}"));
        let screen = tiles.iter().find(|t| t["user"] == "ben" && t["stream"] == "aux").unwrap_or_else(|| panic!("{me} has no screen tile: {r}"));
        assert!(screen["frames"].as_u64().unwrap() >= 30 && close(&screen["rgb"], [255, 0, 255]), "{me}: {screen}");
        if me == "ann" {
            continue;
        }
        let ann = tiles.iter().find(|t| t["user"] == "ann" && t["stream"] == "main").unwrap_or_else(|| panic!("{me} lost ann: {r}"));
        assert_eq!(ann["videoMuted"], true, "{me}: {ann}");
        let events = r["events"][me].as_array().unwrap();
        assert!(events.iter().any(|e| e["type"] == "track_muted" && e["user"] == "ann" && e["kind"] == "video" && e["muted"] == true), "{me}: {events:?}");
    }
    // cat's socket dropped and tessera.js resumed the session: her media kept flowing both ways.
    let cat_events = r["events"]["cat"].as_array().unwrap();
    assert!(cat_events.iter().any(|e| e["type"] == "reconnected" && e["resumed"] == true), "cat resumed: {cat_events:?}");
    let frames =
        |phase: &str, me: &str, of: &str| r[phase][me].as_array().unwrap().iter().find(|t| t["user"] == of && t["stream"] == "main").map_or(0, |t| t["frames"].as_u64().unwrap());
    assert!(frames("shared", "cat", "dan") >= frames("meeting", "cat", "dan") + 100, "cat kept receiving: {r}");
    assert!(frames("shared", "dan", "cat") >= frames("meeting", "dan", "cat") + 100, "cat kept sending: {r}");
    // dan left: everyone else was told and dropped his tile.
    for me in ["ann", "ben", "cat"] {
        let events = r["events"][me].as_array().unwrap();
        assert!(events.iter().any(|e| e["type"] == "participant_left" && e["user"] == "dan"), "{me}: {events:?}");
        assert!(!r["after_leave"][me].as_array().unwrap().iter().any(|t| t["user"] == "dan"), "{me} still shows dan: {r}");
    }
    // The webhooks, in causal order: each enters (103) before its video starts (201); ann's
    // video mute (202) follows its start; ben's aux (205) follows his video; dan's exit (104)
    // comes last of his.
    let events = hooks.wait_for(Duration::from_secs(10), "dan's exit", |e| e.iter().any(|e| e["EventType"] == 104 && e["EventInfo"]["UserId"] == "dan"));
    let at = |code: u64, user: &str| events.iter().position(|e| e["EventType"] == code && e["EventInfo"]["UserId"] == user);
    for (u, ..) in people {
        let (enter, video) = (at(103, u), at(201, u));
        assert!(enter.is_some() && video.is_some() && enter < video, "{u}: 103 then 201 in {events:?}");
    }
    let (ann_video, ann_mute) = (at(201, "ann").unwrap(), events.iter().rposition(|e| e["EventType"] == 202 && e["EventInfo"]["UserId"] == "ann"));
    let codes = |u: &str| -> Vec<u64> { events.iter().filter(|e| e["EventInfo"]["UserId"] == u).filter_map(|e| e["EventType"].as_u64()).collect() };
    assert!(ann_mute.is_some_and(|m| m > ann_video), "ann's mute (202) after her video started: {:?}", codes("ann"));
    assert!(at(205, "ben").is_some_and(|s| s > at(201, "ben").unwrap()), "ben's screen (205): {:?}", codes("ben"));
    assert!(at(104, "dan").is_some_and(|x| x > at(201, "dan").unwrap()), "dan leaves (104) last: {:?}", codes("dan"));
    assert_eq!(codes("cat").iter().filter(|c| [103, 104].contains(c)).count(), 1, "a resume is no 104/103 pair: {:?}", codes("cat"));
}
