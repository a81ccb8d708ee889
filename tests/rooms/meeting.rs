//! Meeting over room signaling with an independent WebRTC stack (aiortc, its own minimal
//! signaling code in `tests/clients/aiortc_client.py`): participants publish on their `pub`
//! connection and receive everyone else on the server-offered `sub` connection.

use super::signaling::{join, next_of};
use super::*;

/// Two aiortc participants each publish a colour and a tone and decode the other's; a third,
/// a plain WebSocket client, sees them publish and one of them mute.
#[test]
fn aiortc_participants_publish_and_subscribe_to_each_other() {
    let dir = TempDir::new("rtc-meet");
    let data = dir.path().join("data");
    let net = TestNet::new();
    let http = format!("{}:0", net.host_ip);
    let server = Server::start(&data, &["--http-addr", &http, "--rtc-udp-addr", &http]);
    let (mut carol, _) = join(&server, &data, "meet", "carol");
    let ws_url = server.url("/v1/rtc").replace("http://", "ws://");
    let alice = Client::start(&net, "aiortc_client.py", &["ws-meet", "--url", &ws_url, "--token", &token(&data, "meet", "alice"), "--rgb", "255,0,0", "--seconds", "16", "--mute-after", "11"]);
    let bob = Client::start(&net, "aiortc_client.py", &["ws-meet", "--url", &ws_url, "--token", &token(&data, "meet", "bob"), "--rgb", "0,255,0", "--seconds", "14", "--delay", "2"]);
    let muted = next_of(&mut carol, "track_muted");
    assert_eq!((muted["user"].as_str(), muted["kind"].as_str(), muted["muted"].as_bool()), (Some("alice"), Some("video"), Some(true)), "{muted}");
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
