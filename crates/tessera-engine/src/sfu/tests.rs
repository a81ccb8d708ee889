//! Unit tests of the SFU's sessions and rooms (forwarding is tested in `sfu_harness.rs`).

use super::*;
use crate::presence::{JoinInfo, RoomEvent};
use tessera_model::{AppId, RoomId};
use tessera_rtc::str0m::media::Direction;

fn offer(dir: Direction, now: Instant) -> String {
    let mut rtc = tessera_rtc::str0m::Rtc::builder().build(now);
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, dir, None, None, None);
    change.add_media(MediaKind::Video, dir, None, None, None);
    change.apply().expect("an offer").0.to_sdp_string()
}

fn key() -> RoomKey {
    RoomKey { app: AppId::default_app(), room: RoomId::parse("r1").unwrap() }
}

fn spec(sid: &str, role: PeerRole) -> SessionSpec {
    SessionSpec {
        sid: sid.into(),
        room: key(),
        user: UserId::parse("alice").unwrap(),
        role,
        stream: StreamKind::Main,
        source_user: (role == PeerRole::Play).then(|| UserId::parse("alice").unwrap()),
        rejected_mids: Vec::new(),
        quality: Quality::Auto,
        join: match role {
            PeerRole::Publish => JoinInfo::anchor(crate::presence::user_type::WHIP),
            PeerRole::Play => JoinInfo { user_type: crate::presence::user_type::WHEP, terminal_type: 4, role: tessera_model::Role::Audience, info: None },
        },
    }
}

fn sfu(now: Instant) -> Sfu {
    Sfu::new(vec!["127.0.0.1:9".parse().unwrap()], Duration::from_secs(10), now)
}

#[test]
fn rooms_live_while_sessions_do_and_are_dismissed_after_the_empty_timeout() {
    let t0 = Instant::now();
    let mut sfu = sfu(t0);
    let answer = sfu.add_session(spec("pub", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
    assert!(answer.contains("a=ice-lite") && answer.contains("a=candidate"), "{answer}");
    assert!(sfu.room_exists(&key()));
    assert_eq!(sfu.stats(), SfuStats { rooms: 1, publishers: 1, viewers: 0, speed_tests: 0, participants: vec![(crate::presence::user_type::WHIP, 1)] });
    // A second publisher of the same (user, stream) replaces the first.
    sfu.add_session(spec("pub2", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
    assert_eq!(sfu.stats().publishers, 1);
    assert!(sfu.session_info("pub").is_none());
    sfu.add_session(spec("view", PeerRole::Play), &offer(Direction::RecvOnly, t0), t0).unwrap();
    assert_eq!(sfu.stats().viewers, 1);
    assert!(sfu.remove_session("pub2", t0).is_some());
    assert!(sfu.remove_session("view", t0).is_some());
    assert!(sfu.remove_session("view", t0).is_none());
    // Empty now; dismissed once the empty timeout has passed (time is injected, no waiting).
    let mut t = t0;
    while t < t0 + Duration::from_secs(9) {
        t += Duration::from_millis(500);
        sfu.handle_timeout(t);
    }
    assert!(sfu.room_exists(&key()), "kept during the first 10 s");
    while t < t0 + Duration::from_secs(11) {
        t += Duration::from_millis(500);
        sfu.handle_timeout(t);
    }
    assert!(!sfu.room_exists(&key()));
    // One participant (alice: two publishers in turn and a viewer), one room: the
    // replacement and the overlapping sessions make no events of their own.
    let events: Vec<RoomEvent> = std::iter::from_fn(|| sfu.poll_output()).filter_map(|o| if let SfuOutput::Room(e) = o { Some(e) } else { None }).collect();
    assert!(
        matches!(
            &events[..],
            [
                RoomEvent::RoomCreated { .. },
                RoomEvent::Entered { reason: 1, .. },
                RoomEvent::Exited { reason: 1, role: tessera_model::Role::Anchor, .. },
                RoomEvent::RoomDismissed { .. }
            ]
        ),
        "{events:?}"
    );
}

#[test]
fn viewer_sessions_are_counted_per_user_and_room() {
    let t0 = Instant::now();
    let mut sfu = sfu(t0);
    for i in 0..3 {
        sfu.add_session(spec(&format!("v{i}"), PeerRole::Play), &offer(Direction::RecvOnly, t0), t0).unwrap();
    }
    sfu.add_session(spec("p", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
    let alice = UserId::parse("alice").unwrap();
    assert_eq!(sfu.viewer_sessions(&key(), &alice), 3);
    assert_eq!(sfu.viewer_sessions(&key(), &UserId::parse("bob").unwrap()), 0);
    sfu.remove_session("v1", t0);
    assert_eq!(sfu.viewer_sessions(&key(), &alice), 2);
}

#[test]
fn sessions_that_never_connect_are_dropped() {
    let t0 = Instant::now();
    let mut sfu = sfu(t0);
    sfu.add_session(spec("pub", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
    let mut t = t0;
    while t < t0 + CONNECT_TIMEOUT + Duration::from_secs(1) {
        t += Duration::from_millis(250);
        sfu.handle_timeout(t);
    }
    assert_eq!(sfu.stats().publishers, 0);
}

#[test]
fn garbage_datagrams_are_dropped_without_harm() {
    let t0 = Instant::now();
    let mut sfu = sfu(t0);
    sfu.add_session(spec("pub", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
    let mut seed = 0x9E3779B97F4A7C15u64;
    for i in 0..2000u32 {
        let mut buf = vec![0u8; (i % 300) as usize];
        for b in &mut buf {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        // Some look like STUN, RTP or DTLS by their first byte.
        if let Some(b) = buf.first_mut() {
            *b = [0u8, 1, 22, 128, 200][i as usize % 5];
        }
        let src: SocketAddr = format!("10.0.0.{}:{}", i % 250 + 1, 1000 + i).parse().unwrap();
        sfu.handle_datagram(t0, src, "127.0.0.1:9".parse().unwrap(), &buf);
    }
    sfu.flush(t0);
    assert_eq!(sfu.stats().publishers, 1, "the session is untouched");
    assert_eq!(sfu.counters.packets_forwarded.load(Ordering::Relaxed), 0);
}

#[test]
fn offers_that_cannot_be_negotiated_are_refused() {
    let t0 = Instant::now();
    let mut sfu = sfu(t0);
    for bad in ["v=0\r\n", "garbage", "v=0\r\nm=audio 9 RTP/AVP 0\r\n"] {
        let e = sfu.add_session(spec("x", PeerRole::Publish), bad, t0).unwrap_err();
        assert_eq!(e.code(), "sdp_invalid", "{bad}");
    }
    assert_eq!(sfu.stats(), SfuStats::default());
}

#[test]
fn watchers_hear_the_publishers_at_once_and_then_each_change_only() {
    let t0 = Instant::now();
    let mut sfu = sfu(t0);
    let lists = |sfu: &mut Sfu, watch: u64| -> Vec<Vec<String>> {
        std::iter::from_fn(|| sfu.poll_output())
            .filter_map(|o| match o {
                SfuOutput::Publishers(id, list) if id == watch => Some(list.iter().map(|p| p.user.to_string()).collect()),
                _ => None,
            })
            .collect()
    };
    // A room nobody is in yet: an empty list at once, and watching does not make the room.
    let watch = sfu.watch_publishers(key());
    assert_eq!(lists(&mut sfu, watch), vec![Vec::<String>::new()]);
    assert!(!sfu.room_exists(&key()));
    sfu.add_session(spec("pub", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
    let mut bob = spec("bob", PeerRole::Publish);
    bob.user = UserId::parse("bob").unwrap();
    sfu.add_internal_publisher(bob, t0);
    let mut t = t0 + Duration::from_millis(300);
    sfu.handle_timeout(t);
    // Both, in join order, once; nothing more while nothing changes.
    assert_eq!(lists(&mut sfu, watch), vec![vec!["alice".to_string(), "bob".to_string()]]);
    t += Duration::from_millis(300);
    sfu.handle_timeout(t);
    assert!(lists(&mut sfu, watch).is_empty());
    sfu.remove_session("pub", t);
    t += Duration::from_millis(300);
    sfu.handle_timeout(t);
    assert_eq!(lists(&mut sfu, watch), vec![vec!["bob".to_string()]]);
    // Unwatched: no more lists.
    sfu.unwatch_publishers(watch);
    sfu.remove_session("bob", t);
    t += Duration::from_millis(300);
    sfu.handle_timeout(t);
    assert!(lists(&mut sfu, watch).is_empty());
}

#[test]
fn a_removed_user_and_a_dismissed_room_end_every_session_as_removed() {
    let t0 = Instant::now();
    let mut sfu = sfu(t0);
    sfu.add_session(spec("pub", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
    let mut bob = spec("bob", PeerRole::Publish);
    bob.user = UserId::parse("bob").unwrap();
    bob.join = JoinInfo::anchor(crate::presence::user_type::RTMP);
    let (bob_id, _) = sfu.add_internal_publisher(bob, t0);
    let users: Vec<(String, Vec<u8>)> = sfu.room_users(&key()).unwrap().into_iter().map(|p| (p.user.to_string(), p.sessions)).collect();
    assert_eq!(users, vec![("alice".into(), vec![crate::presence::user_type::WHIP]), ("bob".into(), vec![crate::presence::user_type::RTMP])]);
    assert_eq!(sfu.rooms(&key().app).iter().map(|r| (r.participants, r.publishers)).collect::<Vec<_>>(), vec![(2, 2)]);
    let _ = std::iter::from_fn(|| sfu.poll_output()).count();

    // Bob is removed: his publisher's owner is told, he exits with Reason 3; alice stays.
    assert!(sfu.kick(&key(), &UserId::parse("bob").unwrap(), t0));
    assert!(!sfu.kick(&key(), &UserId::parse("bob").unwrap(), t0), "gone already");
    let out: Vec<SfuOutput> = std::iter::from_fn(|| sfu.poll_output()).collect();
    assert!(out.iter().any(|o| matches!(o, SfuOutput::PublisherEnded(id, PublisherEnd::Removed) if *id == bob_id)));
    assert!(out.iter().any(|o| matches!(o, SfuOutput::Room(RoomEvent::Exited { reason: 3, user, .. }) if user.as_str() == "bob")));
    assert_eq!(sfu.room_users(&key()).unwrap().len(), 1);

    // The room is dismissed: alice exits with Reason 3, then 102; the room is gone at once.
    assert!(sfu.dismiss(&key(), t0));
    let events: Vec<RoomEvent> = std::iter::from_fn(|| sfu.poll_output()).filter_map(|o| if let SfuOutput::Room(e) = o { Some(e) } else { None }).collect();
    assert!(matches!(&events[..], [RoomEvent::Exited { reason: 3, .. }, RoomEvent::RoomDismissed { .. }]), "{events:?}");
    assert!(!sfu.room_exists(&key()) && sfu.room_users(&key()).is_none());
    assert!(!sfu.dismiss(&key(), t0));
}

#[test]
fn custom_messages_go_to_the_others_sockets_numbered_per_sender() {
    let now = Instant::now();
    let mut sfu = sfu(now);
    let ws = JoinInfo { user_type: 1, terminal_type: 100, role: tessera_model::Role::Anchor, info: None };
    let user = |u: &str| UserId::parse(u).unwrap();
    let ids: Vec<u64> = ["ann", "bob", "cy"].iter().map(|u| sfu.join_signaling(&key(), &user(u), &ws, now)).collect();
    let _ = std::iter::from_fn(|| sfu.poll_output()).count();
    let msg = |cmd_id, payload, to| OutgoingCustom { cmd_id, payload, to, kind: ChannelKind::Reliable };
    assert_eq!(sfu.send_custom(&key(), &user("ann"), msg(1, b"hi", None), now), Ok(Some(1)));
    let bob = [user("bob")];
    assert_eq!(sfu.send_custom(&key(), &user("ann"), msg(2, b"psst", Some(&bob)), now), Ok(Some(2)));
    assert_eq!(sfu.send_custom(&key(), &user("bob"), msg(3, b"", None), now), Ok(Some(1)), "seq counts per sender");
    let delivered: Vec<(u64, String, u8, u32)> = std::iter::from_fn(|| sfu.poll_output())
        .filter_map(|o| match o {
            SfuOutput::ToMember(m, MemberMessage::Custom { from, cmd_id, seq, .. }) => Some((m, from.to_string(), cmd_id, seq)),
            _ => None,
        })
        .collect();
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    assert_eq!(delivered, vec![(b, "ann".into(), 1, 1), (c, "ann".into(), 1, 1), (b, "ann".into(), 2, 2), (a, "bob".into(), 3, 1), (c, "bob".into(), 3, 1)]);
    assert_eq!(sfu.send_custom(&key(), &user("ann"), msg(0, b"", None), now), Err(crate::custom::CustomError::BadCmdId));
    assert_eq!(sfu.send_custom(&key(), &user("ann"), msg(11, b"", None), now), Err(crate::custom::CustomError::BadCmdId));
    assert_eq!(sfu.send_custom(&key(), &user("ann"), msg(1, &[0; 1001], None), now), Err(crate::custom::CustomError::TooLarge(1001)));
}

/// A satellite copy of a room (viewers spread to a second worker) is no room of its own: no
/// 101 or 102 from it, its viewer's entry and exit are reported, it asks the room's worker for
/// the stream and lets go of it when its last viewer leaves; the room's worker counts the pipe
/// as a reason for the room to live.
#[test]
fn a_satellite_room_makes_no_room_events_and_closes_its_pipe_with_its_last_viewer() {
    let t0 = Instant::now();
    let mut room_sfu = sfu(t0);
    let mut satellite = sfu(t0).into_worker(1, Default::default(), Default::default());
    room_sfu.add_session(spec("pub", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
    satellite.add_spread_viewer(spec("view", PeerRole::Play), &offer(Direction::RecvOnly, t0), t0).unwrap();
    let outputs: Vec<SfuOutput> = std::iter::from_fn(|| satellite.poll_output()).collect();
    let pipe = outputs.iter().find_map(|o| if let SfuOutput::PipeWanted { pipe, room, source } = o { Some((*pipe, room.clone(), source.clone())) } else { None });
    let (pipe, room, source) = pipe.expect("the satellite asks for the stream");
    assert_eq!((room.clone(), source.clone()), (key(), (UserId::parse("alice").unwrap(), StreamKind::Main)));
    assert_eq!(crate::sfu::worker_of_id(pipe), 1, "the pipe is named by the satellite's id");
    assert!(outputs.iter().any(|o| matches!(o, SfuOutput::Room(RoomEvent::Entered { .. }))));
    assert!(!outputs.iter().any(|o| matches!(o, SfuOutput::Room(RoomEvent::RoomCreated { .. }))), "no 101 from a satellite");
    assert_eq!(satellite.stats().rooms, 0, "a satellite is counted with its room");
    assert_eq!(satellite.stats().publishers, 0, "a piped stream is no publisher");
    let rooms = satellite.rooms(&AppId::default_app());
    assert!(rooms.len() == 1 && rooms[0].satellite && rooms[0].participants == 1, "{rooms:?}");
    room_sfu.open_pipe(&room, source.clone(), pipe, t0);
    assert!(room_sfu.holds_room(&room));
    // The publisher leaves; the room lives on while the pipe is open (a viewer elsewhere).
    room_sfu.remove_session("pub", t0);
    let mut t = t0;
    while t < t0 + Duration::from_secs(12) {
        t += Duration::from_millis(500);
        room_sfu.handle_timeout(t);
        satellite.handle_timeout(t);
    }
    assert!(room_sfu.room_exists(&room), "a room with viewers on another worker stays");
    std::iter::from_fn(|| satellite.poll_output()).for_each(drop);
    satellite.remove_session("view", t);
    satellite.handle_timeout(t + Duration::from_millis(300));
    let outputs: Vec<SfuOutput> = std::iter::from_fn(|| satellite.poll_output()).collect();
    assert!(outputs.iter().any(|o| matches!(o, SfuOutput::PipeClosed { pipe: p, .. } if *p == pipe)), "{outputs:?}");
    assert!(outputs.iter().any(|o| matches!(o, SfuOutput::Room(RoomEvent::Exited { .. }))));
    assert!(!outputs.iter().any(|o| matches!(o, SfuOutput::Room(RoomEvent::RoomDismissed { .. }))), "no 102 from a satellite");
    assert!(!satellite.holds_room(&room));
    room_sfu.close_pipe(&room, pipe);
    let mut t2 = t;
    while t2 < t + Duration::from_secs(11) {
        t2 += Duration::from_millis(500);
        room_sfu.handle_timeout(t2);
    }
    assert!(!room_sfu.room_exists(&room), "dismissed once empty for the timeout");
}

#[test]
fn a_lossy_viewer_is_asked_for_a_playout_delay_held_and_moved_only_by_20_ms() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(playout_delay(None, None, Some(ms(50)), t0), None, "a clean link adds no latency");
    assert_eq!(playout_delay(None, Some(t0), None, t0), None, "no RTT yet");
    assert_eq!(playout_delay(None, Some(t0), Some(ms(50)), t0), Some(ms(170)), "an RTT and the browser's NACK retry");
    assert_eq!(playout_delay(Some(ms(170)), Some(t0), Some(ms(65)), t0), Some(ms(170)), "a small move is ignored");
    assert_eq!(playout_delay(Some(ms(170)), Some(t0), Some(ms(80)), t0), Some(ms(200)));
    assert_eq!(playout_delay(None, Some(t0), Some(ms(900)), t0), Some(ms(400)), "at most 400 ms");
    assert_eq!(playout_delay(Some(ms(170)), Some(t0), Some(ms(50)), t0 + PLAYOUT_HOLD), None, "10 s without loss");
}

#[test]
fn resends_go_twice_only_on_a_link_losing_at_random_and_not_too_much() {
    let t0 = Instant::now();
    assert_eq!(resend_copies(None, 0.0, false, t0), 1, "a clean link");
    assert_eq!(resend_copies(Some(t0), 0.05, false, t0), 2, "5 % loss, no queue");
    assert_eq!(resend_copies(Some(t0), 0.0, false, t0 + Duration::from_secs(3)), 2, "held through a second without loss");
    assert_eq!(resend_copies(Some(t0), 0.05, true, t0), 1, "a link that queues loses from congestion");
    assert_eq!(resend_copies(Some(t0), 0.2, false, t0), 1, "too costly at 20 %");
    assert_eq!(resend_copies(Some(t0), 0.0, false, t0 + PLAYOUT_HOLD), 1, "10 s without loss");
}

#[test]
fn a_lossy_link_without_a_queue_is_paced_no_slower_than_its_media() {
    assert_eq!(pacing_floor(230_000.0, true, true), 299_000.0, "burst loss, no queue: the media and room for resends");
    assert_eq!(pacing_floor(230_000.0, false, true), 0.0, "no loss: the estimate paces (near a rate cap a floor filled the queue)");
    assert_eq!(pacing_floor(230_000.0, true, false), 0.0, "a link that queued lately loses from congestion");
}

#[test]
fn a_viewer_without_feedback_is_paced_after_its_media_not_the_start_estimate() {
    assert_eq!(unmeasured_pacing(None, 0.0), Some(UNMEASURED_PACING_MIN), "never below the start");
    assert_eq!(unmeasured_pacing(None, 1_500_000.0), Some(4_500_000.0), "a 1.5 Mbit/s stream paced at three times its rate");
    assert_eq!(unmeasured_pacing(Some(4_500_000.0), 1_400_000.0), None, "small moves leave the pacer alone");
    assert_eq!(unmeasured_pacing(Some(4_500_000.0), 500_000.0), Some(1_500_000.0), "a big one resets it");
}

#[test]
fn resends_are_held_to_the_least_on_a_full_link() {
    assert_eq!(rtx_ratio_cap(false), RTX_RATIO_CAP, "a link with room, lossy or not: bursts are repaired");
    assert_eq!(rtx_ratio_cap(true), RTX_RATIO_MIN, "a queueing link: the least");
}

#[test]
fn a_restarts_gop_replay_is_made_only_where_it_catches_up_within_a_second() {
    let t0 = Instant::now();
    // 1.5 s of a 150 kbit/s stream since its keyframe: 100 packets of ~280 bytes (~225 kbit).
    let gop: Vec<FwdPacket> = (0..100u64)
        .map(|i| FwdPacket {
            ssrc: 7,
            seq: i,
            ts: i as u32 * 1350,
            marker: true,
            keyframe: i == 0,
            payload: std::sync::Arc::from(vec![0u8; 221]),
            codec: tessera_media::Codec::H264,
            kind: MediaKind::Video,
            mid: "v".into(),
            rid: None,
            ext: Default::default(),
            arrival: t0 + Duration::from_millis(i * 15),
            route: crate::PacketRoute::All,
            vp8: None,
            temporal: None,
        })
        .collect();
    let now = t0 + Duration::from_millis(1500);
    assert!(replay_fits(&gop, None, now), "no estimate: as before");
    assert!(replay_fits(&gop, Some(2_000_000.0), now), "a link with room catches up in ~0.13 s");
    assert!(!replay_fits(&gop, Some(250_000.0), now), "100 kbit/s to spare: 2.2 s");
    assert!(!replay_fits(&gop, Some(120_000.0), now), "the link does not carry the stream itself");
}

/// An ingest that sends simulcast layers (a cluster relay's mirror of a publisher on another
/// node) has those layers, not the single encoding it was made with, and is asked for a
/// keyframe per layer (throttled per layer), as a satellite worker's pipe asks it.
#[test]
fn a_layered_ingest_is_asked_for_each_layers_keyframe() {
    let t0 = Instant::now();
    let mut sfu = sfu(t0);
    let (id, _) = sfu.add_internal_publisher(spec("mirror", PeerRole::Publish), t0);
    let packet = |rid: &str, seq: u64| IngestPacket {
        ssrc: 9,
        seq,
        ts: 0,
        marker: true,
        keyframe: true,
        codec: tessera_media::Codec::H264,
        payload: vec![0x65u8, 0x88].into(),
        audio_level: None,
        route: PacketRoute::All,
        composition_ms: 0,
        picture: None,
        rid: Some(Rid::from(rid)),
    };
    sfu.push_packet(id, packet("h", 1), t0);
    sfu.push_packet(id, packet("l", 1), t0);
    let rids: Vec<Option<String>> =
        sfu.internal[&id].producers.iter().find(|p| p.kind == MediaKind::Video).unwrap().layers.iter().map(|l| l.rid.as_deref().map(str::to_owned)).collect();
    assert_eq!(rids, [Some("h".to_owned()), Some("l".to_owned())], "the layers it sends, not a silent single encoding");
    std::iter::from_fn(|| sfu.poll_output()).for_each(drop);
    let source = (UserId::parse("alice").unwrap(), StreamKind::Main);
    let asked = |sfu: &mut Sfu| -> Vec<Option<String>> {
        std::iter::from_fn(|| sfu.poll_output())
            .filter_map(|o| if let SfuOutput::KeyframeWanted(p, rid) = o { (p == id).then(|| rid.as_deref().map(str::to_owned)) } else { None })
            .collect()
    };
    sfu.request_layer_keyframe(&key(), &source, Some(Rid::from("l")), t0);
    assert_eq!(asked(&mut sfu), [Some("l".to_owned())]);
    sfu.request_layer_keyframe(&key(), &source, Some(Rid::from("l")), t0 + Duration::from_millis(100));
    sfu.request_layer_keyframe(&key(), &source, Some(Rid::from("h")), t0 + Duration::from_millis(100));
    assert_eq!(asked(&mut sfu), [Some("h".to_owned())], "each layer throttled on its own");
    sfu.request_layer_keyframe(&key(), &source, None, t0 + Duration::from_millis(200));
    assert_eq!(asked(&mut sfu), [None], "the whole stream, as for any ingest");
}
