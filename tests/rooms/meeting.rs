//! Meeting over room signaling with an independent WebRTC stack (aiortc, its own minimal
//! signaling code in `tests/clients/aiortc_client.py`): participants publish on their `pub`
//! connection and receive everyone else on the server-offered `sub` connection.

use super::signaling::{join, next_within};
use super::*;

/// Two aiortc participants each publish a colour and a tone and decode the other's; a third,
/// a plain WebSocket client, sees them publish and one of them mute.
#[test]
fn aiortc_participants_publish_and_subscribe_to_each_other() {
    let _turn = serial();
    let Hall { dir: _dir, data, net, server, key } = hall("rtc-meet");
    let (mut carol, _) = join(&server, &data, "meet", "carol");
    let ws_url = server.url("/v1/rtc").replace("http://", "ws://");
    let alice = Client::start(
        &net,
        "aiortc_client.py",
        &["ws-meet", "--url", &ws_url, "--token", &token(&data, "meet", "alice"), "--rgb", "255,0,0", "--seconds", "20", "--mute-after", "15"],
    );
    let bob =
        Client::start(&net, "aiortc_client.py", &["ws-meet", "--url", &ws_url, "--token", &token(&data, "meet", "bob"), "--rgb", "0,255,0", "--seconds", "18", "--delay", "2"]);
    // Alice mutes 15 s after she starts; her start (aiortc, two peer connections) takes a while.
    let muted = next_within(&mut carol, "track_muted", Duration::from_secs(45));
    assert_eq!((muted["user"].as_str(), muted["kind"].as_str(), muted["muted"].as_bool()), (Some("alice"), Some("video"), Some(true)), "{muted}");
    // users.get shows what alice publishes (video muted) and receives from bob, with rates.
    let alice_v = get(&server.url("/v1/rooms/meet/users/alice"), Some(&key)).json();
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
    let Hall { dir, data, net, server, key } = hall("rtc-room-page");
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
    // (A 104 may end her list: the browsers close their tabs when the script ends, and that is
    // a leave.)
    let cat = codes("cat");
    let enters = cat.iter().filter(|c| **c == 103).count();
    let left_at = cat.iter().position(|c| *c == 104);
    assert!(enters == 1 && left_at.is_none_or(|p| p + 1 == cat.len()), "a resume is no 104/103 pair: {cat:?}");
}

/// room.html in Firefox (Debian's ESR through WebDriver BiDi): two Firefox tabs and a Chromium
/// tab meet. Each sees the others' colours; a Firefox tab's screen share and camera mute reach
/// both browsers; a Firefox tab leaving is seen by both.
#[test]
fn firefox_and_chromium_meet_in_the_room_page() {
    let _turn = serial();
    let Hall { dir: _dir, data, net, server, .. } = hall("rtc-firefox");
    let base = server.base.clone();
    let spec = |user: &str, colour: &str, tone: &str| format!("{user},{},{colour},{tone}", token(&data, "foxes", user));
    let (fox, fay, cro) = (spec("fox", "#ff0000", "300"), spec("fay", "#0000ff", "500"), spec("cro", "#00ff00", "700"));
    let chromium = Client::start(&net, "browser.py", &["meet", "--base", &base, "--seconds", "36", "--participant", &cro]);
    let firefox = Client::start_node(&net, "firefox.mjs", &["--base", &base, "--seconds", "12", "--screen-color", "#ff00ff", "--participant", &fox, "--participant", &fay]);
    let f = firefox.finish(Duration::from_secs(150));
    let c = chromium.finish(Duration::from_secs(150));
    eprintln!("Firefox: {}", f["userAgent"]);
    let close = |rgb: &Value, want: [i64; 3]| rgb.as_array().is_some_and(|v| v.iter().zip(want).all(|(x, w)| (x.as_i64().unwrap() - w).abs() < 60));
    let tile = |tiles: &Value, user: &str, stream: &str| -> Value {
        tiles.as_array().and_then(|t| t.iter().find(|t| t["user"] == user && t["stream"] == stream).cloned()).unwrap_or(Value::Null)
    };
    // Firefox decodes Chromium and the other Firefox tab; their colours are right.
    for (me, others) in [("fox", [("fay", [0, 0, 255]), ("cro", [0, 255, 0])]), ("fay", [("fox", [255, 0, 0]), ("cro", [0, 255, 0])])] {
        for (other, rgb) in others {
            let t = tile(&f["meeting"][me], other, "main");
            assert!(t["frames"].as_u64().unwrap_or(0) >= 60 && close(&t["rgb"], rgb), "{me} sees {other}: {t}\n{f}");
        }
    }
    // fay's screen (magenta) reached fox as her aux stream; fox's camera is shown muted to fay.
    let screen = tile(&f["shared"]["fox"], "fay", "aux");
    assert!(screen["frames"].as_u64().unwrap_or(0) >= 30 && close(&screen["rgb"], [255, 0, 255]), "fox sees fay's screen: {screen}\n{f}");
    assert_eq!(tile(&f["shared"]["fay"], "fox", "main")["videoMuted"], true, "{f}");
    // fay left: fox dropped her tiles.
    assert!(!f["after_leave"]["fox"].as_array().unwrap().iter().any(|t| t["user"] == "fay"), "fox still shows fay: {f}");
    // Chromium decoded Firefox's video in its colour, and saw the mute and the leave.
    let seen: Vec<Value> = c["snapshots"].as_array().unwrap().iter().map(|s| tile(&s["cro"], "fox", "main")).collect();
    assert!(seen.iter().any(|t| t["frames"].as_u64().unwrap_or(0) >= 60 && close(&t["rgb"], [255, 0, 0])), "cro sees fox: {seen:?}\n{c}");
    assert!(seen.iter().any(|t| t["videoMuted"] == true), "cro sees fox muted: {seen:?}");
    let events = c["events"]["cro"].as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "track_muted" && e["user"] == "fox" && e["kind"] == "video" && e["muted"] == true), "{events:?}");
    assert!(events.iter().any(|e| e["type"] == "participant_left" && e["user"] == "fay"), "{events:?}");
    assert_eq!(f["states"]["fox"][0], "publishing", "{f}");
}

/// Scenario 5 (PRODUCT.md §14): four browsers join `class1` over `/v1/rtc`, each with a solid
/// colour and a tone; a nine-grid mix at 1280x720 15 fps 1.5 Mbit/s goes to an RTMP receiver
/// (`ffmpeg -listen 1`). A WHEP viewer of the mix sees the four colours in their 2x2 tiles and
/// hears the four tones; the receiver has H.264 1280x720 and AAC; event 401 reports 1, then 2.
#[test]
fn four_browsers_and_a_nine_grid_mix_to_rtmp() {
    let _turn = serial();
    let Hall { dir, data, net, server, key } = hall("rtc-scenario5");
    let hooks = WebhookReceiver::start(dir.path(), "cl4ssKey", &[]);
    hooks.subscribe(&server, &key, "cl4ssKey");
    let people = [("ann", "#ff0000", "300", [255, 0, 0]), ("ben", "#00ff00", "500", [0, 255, 0]), ("cat", "#0000ff", "700", [0, 0, 255]), ("dan", "#ffff00", "900", [255, 255, 0])];
    let specs: Vec<String> = people.iter().map(|(u, c, t, _)| format!("{u},{},{c},{t}", token(&data, "class1", u))).collect();
    let base = server.base.clone();
    let mut args = vec!["room", "--base", &base, "--seconds", "22"];
    for s in &specs {
        args.extend(["--participant", s.as_str()]);
    }
    let browsers = Client::start(&net, "browser.py", &args);
    until(Duration::from_secs(40), "the four browsers never published", || {
        (users(&server, &key, "class1").iter().filter(|u| u["streams"] == json!(["main"])).count() == 4).then_some(())
    });

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let received = dir.path().join("cdn.flv");
    let cdn = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-listen", "1", "-i", &format!("rtmp://127.0.0.1:{port}/live/class1"), "-c", "copy", "-f", "flv"])
        .arg(&received)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let body = json!({"room": "class1", "layout": {"template": "nine_grid"}, "encode": {"template": "1280x720_15_1500"}, "outputs": {"rtmp_urls": [format!("rtmp://127.0.0.1:{port}/live/class1")]}});
    let r = post_json(&server.url("/v1/mix-jobs"), Some(&key), &body);
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let relay = r.json()["outputs"]["relay_id"].as_str().unwrap().to_owned();
    let job = until(Duration::from_secs(20), "the mix never laid out four tiles", || {
        let v = get(&server.url(&format!("/v1/mix-jobs/{id}")), Some(&key)).json();
        (v["state"] == "RUNNING" && v["inputs"].as_array().is_some_and(|i| i.iter().filter(|i| !i["tile"].is_null()).count() == 4)).then_some(v)
    });
    // Each tile's centre, by user.
    let centres: Vec<(String, (u64, u64))> = job["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| !i["tile"].is_null())
        .map(|i| {
            let t = &i["tile"];
            let c = |a: &str, b: &str| t[a].as_u64().unwrap() + t[b].as_u64().unwrap() / 2;
            (i["user"].as_str().unwrap().to_owned(), (c("x", "width"), c("y", "height")))
        })
        .collect();
    let points = centres.iter().map(|(_, (x, y))| format!("{x},{y}")).collect::<Vec<_>>().join(";");
    let viewer = Client::start(
        &net,
        "aiortc_client.py",
        &[
            "play",
            "--url",
            &server.url(&format!("/whep/class1/mix_{id}/main")),
            "--token",
            &token(&data, "class1", "viewer"),
            "--seconds",
            "8",
            "--sample",
            &points,
            "--tones",
            "300,500,700,900",
        ],
    );
    let v = viewer.finish(Duration::from_secs(60));
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(1280), Some(720)), "{v}");
    let last = v["samples"].as_array().and_then(|s| s.last()).unwrap_or_else(|| panic!("no samples: {v}"));
    for ((user, _), rgb) in centres.iter().zip(last[1].as_array().unwrap()) {
        let want = people.iter().find(|p| p.0 == user).unwrap().3;
        let got: Vec<i64> = rgb.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 60), "{user}'s tile shows {got:?}, not {want:?}: {v}");
    }
    let tones = &v["tones"];
    assert!(["300", "500", "700", "900"].iter().all(|f| tones[*f].as_f64().unwrap_or(0.0) > 30.0), "all four tones in the mix: {tones}");

    let r = request("DELETE", &server.url(&format!("/v1/mix-jobs/{id}")), Some(&key), None, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_secs(2));
    interrupt(cdn);
    let out = Command::new("ffprobe").args(["-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "json"]).arg(&received).output().unwrap();
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let streams = probe["streams"].as_array().cloned().unwrap_or_default();
    assert!(streams.iter().any(|s| s["codec_name"] == "h264" && s["width"] == 1280 && s["height"] == 720), "{probe}");
    assert!(streams.iter().any(|s| s["codec_name"] == "aac"), "{probe}");
    let events = hooks.wait_for(Duration::from_secs(10), "the relay's 401s", |e| {
        e.iter().filter(|e| e["EventType"] == 401 && e["EventInfo"]["TaskId"] == relay.as_str()).any(|e| e["EventInfo"]["Payload"]["Status"] == 2)
    });
    let mut statuses: Vec<u64> =
        events.iter().filter(|e| e["EventType"] == 401 && e["EventInfo"]["TaskId"] == relay.as_str()).map(|e| e["EventInfo"]["Payload"]["Status"].as_u64().unwrap()).collect();
    statuses.dedup(); // CONNECTING is reported again every 5 s until it connects
    assert_eq!(statuses[..2], [1, 2], "{statuses:?}");
    browsers.vanish();
}

/// Simulcast published over room signaling: Chromium sends its layers on the `pub` connection
/// (`a=simulcast` with rids), the SFU sees each layer's rate, and the other participant decodes
/// the picture on its `sub` connection, forwarded from one of the layers.
#[test]
fn simulcast_published_over_the_socket() {
    let _turn = serial();
    let Hall { dir: _dir, data, net, server, key } = hall("rtc-simulcast");
    let specs = [format!("ann,{},#ff0000,300,simulcast", token(&data, "sim", "ann")), format!("ben,{},#00ff00,500", token(&data, "sim", "ben"))];
    let base = server.base.clone();
    let args = ["room", "--base", &base, "--seconds", "14", "--size", "1280x720", "--participant", &specs[0], "--participant", &specs[1]];
    let browsers = Client::start(&net, "browser.py", &args);
    let layers = until(Duration::from_secs(40), "ann's video never showed two layers", || {
        let v = get(&server.url("/v1/rooms/sim/users/ann"), Some(&key)).json();
        let video = v["tracks"].as_array()?.iter().find(|t| t["direction"] == "publish" && t["kind"] == "video")?.clone();
        let rids: Vec<String> =
            video["layers"].as_array()?.iter().filter(|l| l["kbps"].as_f64().unwrap_or(0.0) > 0.0).filter_map(|l| l["rid"].as_str().map(str::to_owned)).collect();
        (rids.len() >= 2).then_some(rids)
    });
    assert!(layers.iter().all(|r| ["h", "m", "l"].contains(&r.as_str())), "{layers:?}");
    let received = until(Duration::from_secs(20), "ben never received ann's video", || {
        let v = get(&server.url("/v1/rooms/sim/users/ben"), Some(&key)).json();
        let t = v["tracks"].as_array()?.iter().find(|t| t["direction"] == "receive" && t["kind"] == "video" && t["user"] == "ann")?.clone();
        (t["kbps"].as_f64().unwrap_or(0.0) > 0.0).then_some(t)
    });
    // Forwarded from a simulcast layer (a rid; a single encoding has none). Which one depends on
    // the estimate at that moment, and the layers' rates ramp up at different times.
    assert!(received["layers"][0]["rid"].as_str().is_some_and(|r| ["h", "m", "l"].contains(&r)), "forwarded from one of ann's layers: {received}");
    let r = browsers.finish(Duration::from_secs(90));
    let tiles = r["meeting"]["ben"].as_array().unwrap_or_else(|| panic!("{r}"));
    let ann = tiles.iter().find(|t| t["user"] == "ann" && t["stream"] == "main").unwrap_or_else(|| panic!("{r}"));
    assert!(ann["frames"].as_u64().unwrap() >= 60, "{ann}");
    let rgb: Vec<i64> = ann["rgb"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    assert!(rgb[0] > 200 && rgb[1] < 60 && rgb[2] < 60, "ben sees ann red: {ann}");
}

/// HTTPS on `http_addr` (issue 15): a server with `--tls-self-signed` on a test-host address,
/// two Chromium tabs from another network namespace — a non-localhost origin, where cameras need
/// a secure context — trust its key (as a user trusts it once) and meet on room.html: the page,
/// the signaling WebSocket (wss), the API and the media all go through it. curl checks the
/// certificate names the address, HTTP/2 by ALPN, and the plain-HTTP redirect.
#[test]
fn chromium_meets_over_https_from_another_machine() {
    let _turn = serial();
    let dir = TempDir::new("rtc-https");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let http = format!("{}:0", net.host_ip);
    let redirect = format!("{}:0", net.host_ip);
    let server = Server::start(&data, &["--http-addr", &http, "--rtc-udp-addr", &http, "--tls-self-signed", "--http-redirect-addr", &redirect]);
    let base = server.base.clone();
    assert!(base.starts_with(&format!("https://{}:", net.host_ip)), "{}", server.banner);
    let spki = server.banner.split("public key sha256/").nth(1).and_then(|s| s.split(')').next()).expect("the banner prints the key's pin").to_owned();
    // The certificate names this address: curl trusts it with the file the server left.
    let cacert = data.join("tls/self-signed.crt");
    let curl = |args: &[&str]| {
        let out = Command::new("curl").args(["-sS", "--max-time", "10", "--cacert", cacert.to_str().unwrap()]).args(args).output().expect("curl");
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&["--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", &format!("{base}/healthz")]), "2 200");
    assert_eq!(curl(&["--http1.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", &format!("{base}/room.html")]), "1.1 200");
    let redirect_port =
        server.banner.lines().find_map(|l| l.trim().strip_prefix("HTTP redirect")).and_then(|l| l.split_whitespace().next()).expect("the banner names the redirect").to_owned();
    let moved = curl(&["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", &format!("http://{redirect_port}/room.html?x=1")]);
    assert_eq!(moved, format!("308 {base}/room.html?x=1"));

    let spec = |user: &str, colour: &str, tone: &str| format!("{user},{},{colour},{tone}", token(&data, "tls", user));
    let (red, blue) = (spec("red", "#ff0000", "300"), spec("blue", "#0000ff", "500"));
    let r = Client::start(&net, "browser.py", &["meet", "--base", &base, "--trust-spki", &spki, "--seconds", "12", "--participant", &red, "--participant", &blue])
        .finish(Duration::from_secs(120));
    for user in ["red", "blue"] {
        let origin = &r["origins"][user];
        assert_eq!(origin["protocol"], "https:", "{r}");
        assert_eq!(origin["secure"], true, "a secure context: cameras allowed: {r}");
        assert_eq!(r["states"][user][0], "publishing", "{r}");
    }
    let close = |rgb: &Value, want: [i64; 3]| rgb.as_array().is_some_and(|v| v.iter().zip(want).all(|(x, w)| (x.as_i64().unwrap() - w).abs() < 60));
    let last = r["snapshots"].as_array().and_then(|s| s.last()).cloned().unwrap_or(Value::Null);
    for (me, other, rgb) in [("red", "blue", [0, 0, 255]), ("blue", "red", [255, 0, 0])] {
        let seen = last[me].as_array().and_then(|t| t.iter().find(|t| t["user"] == other && t["stream"] == "main").cloned()).unwrap_or(Value::Null);
        assert!(seen["frames"].as_u64().unwrap_or(0) >= 60 && close(&seen["rgb"], rgb), "{me} sees {other} over HTTPS: {seen}\n{r}");
    }
    drop(server);
}
