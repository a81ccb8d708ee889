//! Forwarding: producer packets to consumers and taps, layer allocation, keyframe requests, and
//! internal publishers (RTMP, pull ingest, mixes) — the `Sfu`'s media path, apart from the
//! session and routing bookkeeping in `mod.rs`.

use super::signals::LinkSigns;
use super::*;
use smallvec::SmallVec;
use tessera_media::Codec;
use tessera_rtc::str0m::media::{Frequency, MediaTime};
use tessera_rtc::str0m::rtp::Extension;

/// The most playout delay a viewer's browser may build up when it is given a least one: the
/// browsers' own default bound (10 s), in hundredths.
const PLAYOUT_DELAY_MAX_CS: u64 = 1000;

/// A simulcast layer without its top temporal layer is a step of the allocator's ladder only
/// where what is left still moves (half of a 30 fps camera: 15; half of a meeting's 15 fps
/// camera is 7.5, where a viewer is better served by the smaller layer at its full rate —
/// measured in the meeting scenario: a second camera at 270 lines and 6-8 fps).
const MIN_REDUCED_FPS: f64 = 12.0;
/// The step a viewer is on stays offered down to this: a loaded publisher's frame rate wavers
/// (Chromium's VP8 at 24-28 fps on two busy cores, its base 12-14), and the step withdrawn for
/// a moment moved a 600 kbit/s viewer to the lowest layer and back, a keyframe each way.
const MIN_REDUCED_FPS_HELD: f64 = 9.0;

impl Sfu {
    /// Asks a publisher for a keyframe (throttled like a viewer's PLI); an internal publisher's
    /// owner is told (`SfuOutput::KeyframeWanted`).
    pub fn request_keyframe_of(&mut self, room: &RoomKey, user: &UserId, stream: StreamKind, now: Instant) {
        let Some(pub_id) = self.publisher_in(room, &(user.clone(), stream)) else { return };
        if let Some(p) = self.internal.get_mut(&pub_id) {
            // A mix (or a transcoding ingest) makes one on request.
            if p.keyframe_requests.try_request(now) {
                self.out.push_back(SfuOutput::KeyframeWanted(pub_id, None));
            }
            return;
        }
        let Some(Session { role: Role::Publisher { producers }, .. }) = self.sessions.get(&pub_id) else { return };
        let Some(p) = producers.iter().find(|p| p.kind == MediaKind::Video) else { return };
        let (mid, rid) = (p.mid, p.layers.iter().find(|l| l.rid.as_deref() == Some("h")).or(p.layers.first()).and_then(|l| l.rid));
        let taps_layers = self.tap_layer_rids(room, &(user.clone(), stream));
        self.request_keyframe(pub_id, mid, rid, now);
        for other in taps_layers {
            self.request_keyframe(pub_id, mid, Some(other), now);
        }
    }

    /// Creates a consumer for each negotiated send section of a viewer that has none yet.
    pub(super) fn setup_consumers(&mut self, id: u64) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Role::Viewer { consumers, send_mids, subscriptions, rtx_age, rtx_cap, .. } = &mut s.role else { return };
        if consumers.len() == send_mids.len() {
            return;
        }
        let rtc = &mut s.peer.rtc;
        let params: Vec<_> = rtc.codec_config().params().to_vec();
        let mids: Vec<Mid> = {
            let mut api = rtc.direct_api();
            // Every section we answered as a sender has a tx stream.
            let mut mids = Vec::new();
            for &mid in send_mids.iter().filter(|m| !consumers.iter().any(|c| c.mid == **m)) {
                if let Some(tx) = api.stream_tx_by_mid(mid, None) {
                    // str0m's default stops resending above 15 % retransmitted bytes; bursts of loss
                    // on a 10 %-loss link pass that, and viewers would see holes.
                    tx.set_rtx_cache(RTX_CACHE_PACKETS, *rtx_age, Some(*rtx_cap));
                    mids.push(mid);
                }
            }
            mids
        };
        for mid in mids {
            let Some(media) = rtc.media(mid) else { continue };
            let kind = media.kind();
            let remote = media.remote_pts().to_vec();
            let mut pts = Vec::new();
            for p in params.iter().filter(|p| remote.contains(&p.pt())) {
                if let Some(c) = to_codec(p.spec().codec) {
                    if !pts.iter().any(|(x, _)| *x == c) {
                        pts.push((c, p.pt()));
                    }
                }
            }
            // A WHEP viewer's one subscription takes every section; a `sub` connection's the
            // sections it was offered with. A stopped section has none.
            let Some(sub) = subscriptions.iter().find(|x| x.carries(mid)) else { continue };
            let allowed = !s.spec.rejected_mids.iter().any(|m| **m == *mid);
            let red = pts.iter().find(|(c, _)| *c == Codec::Opus).and_then(|(_, pt)| red::red_pt_of(&params, *pt));
            let mut consumer = Consumer::new(mid, sub.source.clone(), kind, allowed, pts);
            consumer.red = red.filter(|_| kind == MediaKind::Audio).map(red::RedSender::new);
            consumers.push(consumer);
        }
    }

    /// The publisher of (user, stream) in a room: a WebRTC session or an internal publisher.
    pub(super) fn publisher_in(&self, room: &RoomKey, source: &(UserId, StreamKind)) -> Option<u64> {
        self.rooms.get(room)?.publishers.get(source).copied()
    }

    /// Chooses each video consumer's layer: the viewer's bandwidth estimate shared by the stream
    /// allocator (`allocator::plan`: everyone's lowest layer first, then screen share, the
    /// active speaker, the others), or its pinned quality; pauses video when even the lowest
    /// layer does not fit; and has its estimator probe for the next step up.
    pub(super) fn allocate(&mut self, viewer_id: u64, now: Instant) {
        let Some(viewer) = self.sessions.get(&viewer_id) else { return };
        let Role::Viewer { subscriptions, consumers, prober, estimate_bps, .. } = &viewer.role else { return };
        // In its first seconds a viewer's estimate is the configured start, not its link's.
        let starting = estimate_bps.is_some() && prober.starting(now);
        let speaker = self.speakers.get(&viewer.spec.room).and_then(|s| s.dominant());
        let queueing = viewer.net.queueing();
        // A standing queue (as of the last allocation): no layer is kept by hysteresis, and the
        // budget is what gets through (below).
        let standing = viewer.net.standing(now);
        let queue_deep = viewer.net.deep();
        // The largest whole layer a deep queue took to its reduced step (`Prober::relieved`).
        let mut relieved_from: Option<f64> = None;
        // Per subscription: its publisher, audio layer, and video demand.
        let mut sources: allocator::PerTrack<_> = SmallVec::new();
        let mut tracks: allocator::PerTrack<TrackDemand> = SmallVec::new();
        let mut audio_bps = 0.0;
        for sub in subscriptions {
            let pub_id = self.publisher_in(&viewer.spec.room, &sub.source);
            let producers = match pub_id.map(|p| (self.sessions.get(&p), self.internal.get(&p))) {
                Some((Some(Session { role: Role::Publisher { producers }, .. }), _)) => Some(producers),
                Some((_, Some(p))) => Some(&p.producers),
                _ => None,
            };
            let audio_producer = producers.and_then(|ps| ps.iter().find(|p| p.kind == MediaKind::Audio));
            let audio = audio_producer.map(|p| LayerChoice::Layer(p.layers.first().and_then(|l| l.rid)));
            // RED sends each packet's payload again with the next (or the next two). The first
            // copy (Opus at ~25 kbit/s) rides in the allocator's margins, as it did before RED:
            // counting it moved 700 kbit/s viewers off the middle layer at their start, when
            // str0m's estimate dips below the link. A second copy is counted.
            let copies = consumers.iter().find(|c| c.source == sub.source && c.kind == MediaKind::Audio).and_then(|c| c.red.as_ref()).map_or(1, |r| r.levels.max(1));
            audio_bps += audio_producer.and_then(|p| p.layers.first()).map_or(0.0, |l| l.rate.bps * allocator::OVERHEAD * copies as f64);
            let video = producers.and_then(|ps| ps.iter().find(|p| p.kind == MediaKind::Video));
            if let Some(v) = video {
                let priority = match (sub.source.1, speaker) {
                    (StreamKind::Aux, _) => Priority::ScreenShare,
                    (_, Some(s)) if *s == sub.source.0 => Priority::Speaker,
                    _ => Priority::Other,
                };
                let consumer = consumers.iter().find(|c| c.source == sub.source && c.kind == MediaKind::Video);
                let sending = consumer.and_then(|c| c.target).map(|(_, t)| t);
                let current = sending.filter(|_| !standing);
                // A layer the publisher stopped or starves (its uplink thinned) is not waited
                // for; with every layer silent, all are offered (the first to come back is taken).
                let offered = v.usable_layers(now);
                // A layer whose queue was just cut, and those above it, wait out `CUT_HOLD`.
                // Each layer whole, and without its top temporal layer where it has them (VP8
                // from Chrome: three), a step below it that needs no keyframe — where that
                // leaves `MIN_REDUCED_FPS`, or for the lowest layer (better than a pause).
                let mut layers = allocator::Layers::new();
                let lowest = offered.iter().map(|l| allocator::rank(l.rid.as_deref())).max();
                // Until the estimate is the link's, a layer above the lowest that has a reduced
                // step is taken reduced, whole only on a measured estimate (a pinned quality is
                // a whole layer, as asked): taken whole on the start estimate, a 600 kbit/s
                // link's queue reached 150-290 ms before the estimate came down, and the layer
                // was cut in 3 of 6 H.264 runs.
                let mut start_ceiling: Option<f64> = None;
                let siblings = || offered.iter().map(|o| (allocator::rank(o.rid.as_deref()), o.rate.bps));
                for l in offered.iter().filter(|l| !allocator::reads_under_a_lower_layer(allocator::rank(l.rid.as_deref()), l.rate.bps, siblings())) {
                    let is_lowest = Some(allocator::rank(l.rid.as_deref())) == lowest;
                    // Taken whole again from its own reduced step at its recent peak: a loaded
                    // publisher's layer dips for a moment (VP8's middle layer ~480 kbit/s read
                    // under 380), and taken whole on the dip it filled a 600 kbit/s link's
                    // queue as soon as it came back (a cut, the lowest layer).
                    let on_reduced = matches!(sending, Some(LayerChoice::Temporal(r, _)) if r == l.rid);
                    layers.push(LayerRate::whole(l.rid, if on_reduced { l.rate.bps.max(l.rate.peak_bps) } else { l.rate.bps }));
                    let on_it = |t: u8| sending == Some(LayerChoice::Temporal(l.rid, t));
                    let fps_ok = |t: u8, fps: f64| fps >= MIN_REDUCED_FPS || is_lowest || (on_it(t) && fps >= MIN_REDUCED_FPS_HELD);
                    if let Some((t, bps, _)) = l.reduced(now).filter(|&(t, bps, fps)| bps < l.rate.bps && fps_ok(t, fps)) {
                        layers.push(LayerRate { rid: l.rid, bps, temporal: Some(t) });
                        if starting && sub.quality == Quality::Auto && !is_lowest {
                            start_ceiling = allocator::lower_ceiling(start_ceiling, Some(l.rate.bps));
                        }
                    }
                }
                let cut = consumer.zip(pub_id).and_then(|(c, p)| c.cut_layer(p, now));
                let ceiling_bps = cut.and_then(|(r, whole)| allocator::cut_ceiling(r, whole, &layers));
                // While the viewer's link queues no track moves up: str0m's estimate can read
                // above what the link carries (1.4-1.5 Mbit/s on a 1.2 Mbit/s link with a 300 ms
                // queue, the meeting scenario), and a layer taken on it fills the queue to loss.
                let ceiling_bps = allocator::lower_ceiling(ceiling_bps, queueing.then(|| allocator::up_ceiling(sending, &layers)).flatten());
                let ceiling_bps = allocator::lower_ceiling(ceiling_bps, start_ceiling);
                // A deep queue takes a whole layer down to its reduced step at once (the ceiling
                // is the whole layer's rate).
                let relief = queue_deep.then(|| allocator::relief_ceiling(sending, &layers)).flatten();
                relieved_from = relieved_from.into_iter().chain(relief).reduce(f64::max);
                let ceiling_bps = allocator::lower_ceiling(ceiling_bps, relief);
                // A saturated worker holds everyone below the top (forwarding costs per packet).
                let ceiling_bps = allocator::lower_ceiling(ceiling_bps, self.shed.ceiling(&layers));
                let single_may_pause = viewer.net.capped() || standing || sending == Some(LayerChoice::Paused);
                tracks.push(TrackDemand { layers, quality: sub.quality, priority, current, ceiling_bps, single_may_pause });
            }
            sources.push((pub_id, audio, video.is_some()));
        }
        let Some(Session {
            role:
                Role::Viewer {
                    consumers,
                    estimate_bps,
                    raw_estimate_bps,
                    subscriptions,
                    prober,
                    rtx_age,
                    rtx_cap,
                    playout_min,
                    lossy_at,
                    red_lost_at,
                    paced_bps,
                    pacing_floor: floor_bps,
                    ..
                },
            peer,
            net,
            ..
        }) = self.sessions.get_mut(&viewer_id)
        else {
            return;
        };
        // Retransmission caches follow the RTT (replacing a cache empties it: only on a real
        // change).
        if let Some(age) = net.rtt.map(rtx_cache_age) {
            if age.abs_diff(*rtx_age) * 4 > *rtx_age {
                *rtx_age = age;
                let mut api = peer.rtc.direct_api();
                for c in consumers.iter().filter(|c| c.kind == MediaKind::Video) {
                    if let Some(tx) = api.stream_tx_by_mid(c.mid, None) {
                        tx.set_rtx_cache(RTX_CACHE_PACKETS, age, Some(*rtx_cap));
                    }
                }
            }
        }
        // RED carries earlier packets as the link loses (`red::levels`); video asks for a jitter
        // buffer that waits for a retransmission where any is lost.
        let mut video_loss: f32 = 0.0;
        // Paused video's loss is its last report's, from before the pause (a receiver reports
        // on no stream it gets nothing of): read as the link's, it held a viewer's video paused
        // after its link came back (24 % lost as it thinned, so the estimator was not restarted
        // and str0m, its loss controller holding the estimate down, sent no probe). Otherwise,
        // the most the receiver reports lost on any of its tracks (None before any report).
        let reported_loss = consumers.iter().filter(|c| !c.paused()).filter_map(|c| net.egress_loss_of(c.mid)).reduce(f32::max);
        if reported_loss.is_some_and(|l| l > 0.0) {
            *red_lost_at = Some(now);
        }
        for c in consumers.iter_mut() {
            let loss = net.egress_loss_of(c.mid);
            if let Some(red) = c.red.as_mut() {
                let levels = red::levels(loss, *red_lost_at, queueing, prober.probing(), now);
                if levels != red.levels {
                    tracing::debug!(mid = %c.mid, levels, ?loss, "red levels");
                    red.levels = levels;
                }
            }
            if c.kind == MediaKind::Video && !c.paused() {
                video_loss = video_loss.max(loss.unwrap_or(0.0));
            }
        }
        if video_loss >= PLAYOUT_LOSSY && net.rtt.is_some() {
            *lossy_at = Some(now);
        }
        let copies = resend_copies(*lossy_at, video_loss, queueing, now);
        for c in consumers.iter_mut().filter(|c| c.kind == MediaKind::Video && c.resend_copies != copies) {
            tracing::debug!(mid = %c.mid, copies, "resend copies");
            c.resend_copies = copies;
            if let Some(tx) = peer.rtc.direct_api().stream_tx_by_mid(c.mid, None) {
                tx.set_resend_copies(copies);
            }
        }
        // The latest transport-wide feedback's round trip (the stats' is up to a second old).
        let rtt_now = peer.rtc.bwe_rtt_now();
        let wanted = playout_delay(*playout_min, *lossy_at, rtt_now.or(net.rtt), now);
        if wanted != *playout_min {
            tracing::debug!(?wanted, loss = video_loss, rtt = ?net.rtt, "playout delay");
            *playout_min = wanted;
        }
        // A link that thinned, followed as each feedback arrives (`NetStats::thinning_seen`)
        // rather than at the next stats (once a second; rate-step: the picture smaller 2-4 s
        // after the step when it waited for them): by how long the latest acknowledged packet
        // queued (`LinkSigns`; the round trip includes how long the viewer held its feedback).
        // Then what the viewer received over the last 150 ms counts (with str0m's raw estimate
        // as of now once it loses). Only then: on a link losing in bursts with room to spare the
        // raw estimate dips with the loss, and following each dip held a viewer on its lowest
        // layer for most of a run. What got through during a keyframe's burst is the link's
        // rate, near the estimate: it moves nothing.
        let signs = LinkSigns::read(&peer.rtc);
        let LinkSigns { queued: rise_now, queueing: fresh_queue, losing, deep } = signs;
        // The link queues by the latest feedback or by the stats' RTT.
        let link_queues = fresh_queue || queueing;
        net.note_deep(deep, now);
        let raw_now = peer.rtc.bwe_estimate_now().map(|b| b.as_f64());
        // What arrived over the last moments of a queueing link is its rate (`LinkSigns::
        // thinned_by`): known at the first feedback that shows a queue.
        let delivered_now = signs.queueing.then(|| peer.rtc.bwe_delivered_now(THINNED_WINDOW).map(|b| b.as_f64())).flatten();
        // Not while this viewer's probe runs or its overshoot drains: a queue then is the
        // probe's own (the probe fails at once, below), and what arrives first is its padding's
        // ramp and the media under it. Read as a thinned link, it capped the estimate under the
        // lowest layer (harness, rate step: 145 kbit/s of a 400 kbit/s link) and no probe ran
        // until the cap ran out, 17 s after the link came back. A link that did thin still
        // queues once the overshoot has drained, and the feedback then says so.
        let thinning = (signs.thinning() || signs.thinned_by(delivered_now, *estimate_bps)) && !prober.overshooting(now);
        let delivered = delivered_now.filter(|_| thinning);
        let raw = match losing {
            true => raw_now.into_iter().chain(*raw_estimate_bps).reduce(f64::min),
            false => *raw_estimate_bps,
        };
        if fresh_queue {
            tracing::debug!(rtt = ?rtt_now, queued = ?rise_now, loss = ?peer.rtc.bwe_loss_now(), ?raw, ?delivered, estimate = ?estimate_bps, "link queues");
        }
        // Losing from a deep queue, the link is full: what got through is what it carries, even
        // a little below the estimate (capped at 600 kbit/s, the middle layer with audio needs
        // ~600: 520 got through, str0m read 540, and the layer stalled 4 s in a full queue).
        let measured = match (losing && deep, delivered, *estimate_bps) {
            (true, Some(d), Some(e)) if d < e => Some(raw.map_or(d, |r| r.min(d))),
            _ => allocator::measured(*estimate_bps, raw, delivered),
        };
        if (standing || relieved_from.is_some()) && prober.disprove(measured, now) {
            tracing::debug!(queued = ?rise_now, standing, "a deep queue soon after a probe found its room: the probe failed after all");
        } else if let Some(whole) = relieved_from {
            if prober.relieved(whole * allocator::OVERHEAD + audio_bps, measured, now) {
                tracing::debug!(queued = ?rise_now, whole, "a deep queue took a whole layer to its reduced step: the next probe backs off");
            }
        }
        let measured = match (standing, delivered) {
            (true, Some(d)) => {
                tracing::debug!(delivered = d, ?measured, queued = ?rise_now, "standing queue");
                Some(measured.map_or(d, |m| m.min(d)))
            }
            _ => measured,
        };
        let thinned = thinning && measured.is_some() && measured != *estimate_bps;
        if let (true, Some(m)) = (thinned, measured) {
            let carried = net.thinned(m, now);
            // What a probe found before the link thinned is not what it carries now: kept, it
            // lifted the cap and floored the budget at the old room (rate-step: the top layer
            // taken again 0.6 s after the step, its keyframe stuck in the thin link, a 3 s
            // queue cut and 1.5 s of freeze).
            prober.thinned(carried);
        }
        let uncapped = measured;
        let measured = net.thinned_cap(*estimate_bps, measured, now);
        if measured != uncapped {
            tracing::debug!(?measured, ?uncapped, "estimate capped where the link thinned");
        }
        // For a second after the link thinned, layers are chosen (and a viewer moved down is
        // paced, below) within a share of what it carried: the queue that overflowed drains
        // only by what they leave (rate-step: the middle layer's 15 fps base taken on 372
        // kbit/s of a 400 kbit/s link, its keyframe joined the overflowing queue and the viewer
        // moved on down to the lowest layer, a second freeze).
        let measured = match net.draining_cap(now) {
            Some(c) => measured.map(|m| m.min(c * DRAINING_SHARE)),
            None => measured,
        };
        // The start estimate in the first seconds, or what a probe just proved: not while the
        // link queues or a thinned link's cap stands.
        let floor = prober.start_floor(now).filter(|_| !queueing);
        // A queue while the proven room stands ends it: taken, the layer keeps itself by the
        // plan's hysteresis; not yet taken (the probe's own queue held it back), it was not
        // there (600 kbit/s link: the whole middle layer taken on the floor 2.5 s after its probe
        // found 622 kbit/s, by then str0m's raw value read 422; its queue was cut at 840 ms).
        if link_queues {
            prober.forget_proven();
        }
        let proven = prober.proven(now).filter(|_| !net.capped());
        let floor = match proven {
            Some(p) => Some(floor.map_or(p, |f| f.max(p))),
            None => floor,
        };
        let estimate =
            allocator::budget(measured, prober.held(now), prober.overshooting(now) || (!link_queues && video_loss == 0.0)).map(|e| prober.budget(floor.map_or(e, |f| e.max(f))));
        let plan = allocator::plan(&tracks, audio_bps, estimate);
        // One paused encoding a probe just found room for is taken though its measured rate
        // rose a little since (it moves by a few percent a second), not probed for again
        // (Chromium, 2.5 Mbit/s: room found for 2.61 Mbit/s, the step read 2.62 a second later
        // and 2.78 after that, and the video came back 5 s after the probe had found the room).
        // Only there: in a meeting the next step can be another track's, small enough to pass.
        let plan = match (proven, plan.next_bps, estimate) {
            (Some(p), Some(next), Some(e)) if plan.next_resumes && next > e && next <= p * allocator::PROVEN_SLACK => allocator::plan(&tracks, audio_bps, Some(next)),
            _ => plan,
        };
        // Whether the link queues now: by the latest feedback where there is one (the stats'
        // RTT is up to a second old: read just after a thinned link drained, it held resends
        // to a tenth while the lower layer started, and a packet of its first frames lost then
        // froze the viewer until its browser asked for a keyframe, 3 s later).
        let queueing_now = if rtt_now.is_some() { fresh_queue } else { queueing };
        let cap = rtx_ratio_cap(queueing_now);
        if cap != *rtx_cap {
            tracing::debug!(cap, rtt = ?net.rtt, "retransmission cap");
            *rtx_cap = cap;
            let mut api = peer.rtc.direct_api();
            for c in consumers.iter() {
                if let Some(tx) = api.stream_tx_by_mid(c.mid, None) {
                    tx.set_rtx_ratio_cap(cap);
                }
            }
        }
        // Video is not paused on a link that loses without queueing and is paced after its
        // media (`pacing_floor`): the estimate's loss-based part fell below the lowest layer on
        // 10 % burst loss and paused the viewer for 2-3 s. Not past a fifth lost (a policer far
        // below the lowest layer).
        let keep_lowest = *floor_bps > 0.0 && video_loss < 0.2;
        let mut planned = plan.choices.iter().zip(&tracks);
        for (sub, (pub_id, audio, has_video)) in subscriptions.iter_mut().zip(&sources) {
            // One encoding on a link measured to have thinned under it pauses at once: the
            // hold is for dips of the estimate, and every second of it floods the link and
            // loses the audio behind the video.
            // (The hold still counts: once the cap ends, the pause has been held that long.)
            let hold = |c: LayerChoice, t: &TrackDemand, pause: &mut allocator::PauseHold| {
                let held = pause.hold(c, &t.layers, keep_lowest, now);
                if allocator::one_encoding(&t.layers) && net.capped() {
                    c
                } else {
                    held
                }
            };
            let (video, priority) = match has_video.then(|| planned.next()).flatten() {
                Some((c, t)) => (Some(hold(*c, t, &mut sub.pause)), Some(t.priority)),
                None => (None, None),
            };
            for c in consumers.iter_mut().filter(|c| c.source == sub.source) {
                let t = if c.kind == MediaKind::Audio { *audio } else { video };
                let new = pub_id.zip(t);
                if c.target != new {
                    tracing::debug!(mid = %c.mid, target = ?t, ?priority, estimate = ?estimate, "layer target changed");
                    let rank = |t: Option<(u64, LayerChoice)>| t.and_then(|(_, c)| c.rid()).map(|r| allocator::rank(r.as_deref()));
                    let down = matches!((rank(c.target), rank(new)), (Some(a), Some(b)) if b > a);
                    if (thinned || standing) && down && c.kind == MediaKind::Video && c.has_sent() {
                        tracing::debug!(mid = %c.mid, rise = ?rise_now, "video held while the link drains");
                        c.hold_for_drain(now, DRAIN_HOLD_MIN, DRAIN_HOLD_MAX);
                        net.held(now, DRAIN_HOLD_MAX + THINNED_WINDOW);
                        // Nor resends of the old layer, which the viewer NACKs by the dozen
                        // (its link lost a third to a half): measured ~280 kbit/s of them into
                        // a 400 kbit/s link, which kept its queue full for the whole hold. A
                        // new cache is an empty one.
                        if let Some(tx) = peer.rtc.direct_api().stream_tx_by_mid(c.mid, None) {
                            tx.set_rtx_cache(RTX_CACHE_PACKETS, *rtx_age, Some(*rtx_cap));
                        }
                    }
                    c.target = new;
                }
            }
        }
        // (What arrived over the last moments, read above: a deep queue is a queueing one.)
        if let Some(ceiling) = net.pacing_ceiling(delivered_now, plan.used_bps, now) {
            tracing::debug!(?ceiling, "pacing ceiling");
            peer.rtc.bwe().set_pacing_ceiling(ceiling.map(|c| Bitrate::bps(c as u64)));
        }
        // A viewer without transport-wide feedback has no estimate: its pacer follows its media.
        // One with it has its first estimate before its first media; a second of media without
        // one, and no transport-wide sequence numbers negotiated, is a viewer without.
        let sending = || consumers.iter().filter_map(|c| c.sending_since()).min().is_some_and(|t| now.saturating_duration_since(t) >= UNMEASURED_AFTER);
        let twcc = || consumers.iter().any(|c| peer.rtc.media(c.mid).is_some_and(|m| m.remote_extmap().id_of(Extension::TransportSequenceNumber).is_some()));
        // What its consumers hand over (media, before resends and RED).
        let sent: f64 = consumers.iter().filter_map(|c| c.sent.as_ref()).map(|r| r.bps_at(now)).sum();
        if estimate_bps.is_none() && sending() && !twcc() {
            if let Some(rate) = unmeasured_pacing(*paced_bps, sent.max(plan.used_bps)) {
                tracing::debug!(rate, sent, "pacing without feedback");
                *paced_bps = Some(rate);
                peer.rtc.bwe().reset(Bitrate::bps(rate as u64));
            }
        }
        if estimate_bps.is_some() {
            if fresh_queue || net.congested(now) || net.capped() {
                net.queued_at = Some(now);
            }
            let quiet = net.queued_at.is_none_or(|t| now.saturating_duration_since(t) >= UNQUEUED_FOR);
            let lossy = lossy_at.is_some_and(|t| now.saturating_duration_since(t) < PLAYOUT_HOLD);
            let floor = pacing_floor(sent, lossy, quiet);
            if (floor - *floor_bps).abs() > 0.2 * floor_bps.max(floor) {
                tracing::debug!(floor, sent, "pacing floor");
                *floor_bps = floor;
                peer.rtc.bwe().set_pacing_floor(Bitrate::bps(floor as u64));
            }
        }
        // The estimate does not rise above what is sent: a viewer held below a layer it wants
        // has its estimator look for that layer's rate (padding and probe clusters).
        let overfilled = link_queues || net.just_thinned(now) || consumers.iter().any(|c| c.just_cut(now));
        // Not on a lossy link: there the raw value rises between bursts of loss, and layers
        // taken on it were given back within a second (10 % burst loss: 180 ↔ 360 lines, a
        // keyframe and a freeze each way).
        let raw_now = raw_now.filter(|_| video_loss < PLAYOUT_LOSSY);
        // str0m's loss controller can hold its estimate down for good once the link is clean
        // again (`NetStats::loss_hold_stale`): restarted from the estimate as it is, it probes.
        // str0m's recent loss halves at each feedback that loses nothing, so after any loss it
        // reads exactly zero only a minute or more later: a link is clean below `CLEAN_LOSS`
        // (harness, rate step, with a str0m variant not kept: one padding packet in 60 lost
        // at 25 s, the estimate held at 1.64 Mbit/s, under the top layer's 1.7, for the 15 s
        // left, never restarted).
        // Loss its receiver does not report is reordering (`signals::twcc_clean`).
        let clean = video_loss == 0.0 && !link_queues && signals::twcc_clean(peer.rtc.bwe_loss_now(), reported_loss == Some(0.0));
        if net.loss_hold_stale(peer.rtc.bwe_loss_limited(), clean, plan.next_bps.is_some(), now) {
            if let Some(e) = raw_now.or(*estimate_bps) {
                tracing::debug!(estimate = e, "estimator restarted: held by its loss controller on a link that no longer loses");
                peer.rtc.bwe().reset(Bitrate::bps(e as u64));
            }
        }
        if let Some((minimum, desired)) = prober.step_with_raw(&plan, measured, raw_now, overfilled, rise_now, now) {
            tracing::debug!(minimum, desired, estimate = ?estimate, rtt = ?net.rtt, "probe");
            peer.rtc.bwe().set_bitrate(Bitrate::bps(minimum as u64), Bitrate::bps(desired as u64));
        }
        if net.capped() && prober.proven(now).is_some() {
            tracing::debug!(proven = ?prober.proven(now), "a probe found more than the thinned link carried");
            net.uncap();
        }
    }

    pub(super) fn forward(&mut self, pub_id: u64, pkt: RtpPacket, now: Instant) {
        let Some(publisher) = self.sessions.get_mut(&pub_id) else { return };
        let ssrc = pkt.header.ssrc;
        let Some((mid, rid)) = publisher.peer.rtc.direct_api().stream_rx(&ssrc).map(|s| (s.mid(), s.rid())) else { return };
        let pt = pkt.header.payload_type;
        // A RED packet (RFC 2198) names the codec it wraps through its RED payload type.
        let params = publisher.peer.rtc.codec_config().params();
        let Some((param, is_red)) = params.iter().find(|p| p.pt() == pt).map(|p| (p, false)).or_else(|| params.iter().find(|p| p.red() == Some(pt)).map(|p| (p, true))) else {
            return;
        };
        let (primary_pt, Some(codec)) = (param.pt(), to_codec(param.spec().codec)) else { return };
        let Role::Publisher { producers } = &mut publisher.role else { return };
        let Some(producer) = producers.iter_mut().find(|p| p.mid == mid) else { return };
        let kind = producer.kind;
        let keyframe = kind == MediaKind::Video && is_keyframe(codec, &pkt.payload);
        let counted = match is_red {
            true => red::primary_len(&pkt.payload).map_or(&pkt.payload[..], |n| &pkt.payload[pkt.payload.len() - n..]),
            false => &pkt.payload[..],
        };
        let vp8 = vp8_descriptor(codec, &pkt.payload);
        let temporal = temporal_of(codec, &pkt.payload, vp8.as_ref());
        note_layer(producer, rid, codec, *pkt.seq_no, counted, pkt.header.marker, keyframe, temporal, now);
        if !std::mem::replace(&mut producer.announced, true) {
            let layers = producer.layers.iter().filter_map(|l| l.rid.map(|r| r.to_string())).collect();
            self.presence.media(pub_id, Track::of(publisher.spec.stream, kind == MediaKind::Video), crate::presence::TrackMedia { codec, layers });
        }
        let seq = *pkt.seq_no;
        // Producers carry plain Opus: RED is unwrapped here, and a packet lost on the way in is
        // recovered from the redundancy of the one after it (`red.rs`).
        let recovered = if is_red && kind == MediaKind::Audio {
            let red = producer.red.get_or_insert_with(Box::default);
            let Some(packets) = red.unwrap(seq, pkt.header.timestamp, &pkt.payload, *primary_pt) else { return };
            Some(packets)
        } else {
            if producer.red.as_mut().is_some_and(|red| !red.plain(seq)) {
                return; // already recovered from a RED packet's redundancy
            }
            None
        };
        let ext = ExtensionValues {
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            video_orientation: pkt.header.ext_vals.video_orientation,
            ..Default::default()
        };
        let fp = FwdPacket {
            ssrc: *ssrc,
            seq,
            ts: pkt.header.timestamp,
            marker: pkt.header.marker,
            keyframe,
            payload: pkt.payload,
            codec,
            kind,
            mid,
            rid,
            ext,
            arrival: pkt.timestamp,
            route: PacketRoute::All,
            vp8,
            temporal,
        };
        let (room, key) = (publisher.spec.room.clone(), (publisher.spec.user.clone(), publisher.spec.stream));
        let Some(packets) = recovered else {
            self.fan_out(pub_id, &room, &key, &fp, now, None);
            return;
        };
        for (seq, ts, payload) in packets {
            // A recovered packet keeps no marker (RFC 2198) and no level of its own.
            let primary = seq == fp.seq;
            let ext = if primary { fp.ext.clone() } else { ExtensionValues::default() };
            let unwrapped = FwdPacket { seq, ts, payload, marker: primary && fp.marker, ext, ..fp.clone() };
            if !primary {
                self.counters.red_recovered.fetch_add(1, Ordering::Relaxed);
            }
            self.fan_out(pub_id, &room, &key, &unwrapped, now, None);
        }
    }

    /// Hands a packet to the room's taps that take its route (a mix job's tap skips mixes) and
    /// its layer (`layer`: the simulcast rid and whether it starts a keyframe; `tap_layers.rs`).
    fn tap_out(&mut self, room: &RoomKey, mut tp: TapPacket, route: PacketRoute, layer: (Option<Rid>, bool)) {
        let Some(taps) = self.taps.get(room) else { return };
        if let PacketRoute::Fallback(original) = route {
            tp.fallback_for = Some(original);
        }
        let from_mix = tp.user.is_mix();
        let source = (tp.user.clone(), tp.stream);
        // Every taker but the last gets a copy, the last the packet itself; no list on this
        // per-packet path.
        let mut previous: Option<(u64, bool)> = None;
        for (t, kind) in taps {
            if !kind.takes(route, from_mix) {
                continue;
            }
            let (takes, switch) = match kind {
                TapKind::Cluster => (true, false),
                _ => Sfu::tap_takes_layer(&mut self.tap_layers, *t, &source, layer.0, layer.1),
            };
            if takes {
                if let Some((p, s)) = previous.replace((*t, switch)) {
                    self.out.push_back(SfuOutput::Tap(p, TapPacket { layer_switch: s, ..tp.clone() }));
                }
            }
        }
        if let Some((last, s)) = previous {
            tp.layer_switch = s;
            self.out.push_back(SfuOutput::Tap(last, tp));
        }
    }

    /// Writes one producer packet to the consumers watching (user, stream) in `room`, or only to
    /// the viewer of `replay` (a packet of a replayed GOP, due that many clock ticks after the
    /// replay's first). Returns nothing; viewers written to are marked dirty.
    pub(super) fn fan_out(&mut self, pub_id: u64, room: &RoomKey, key: &(UserId, StreamKind), fp: &FwdPacket, now: Instant, replay: Option<(u64, u32)>) {
        let only = replay.map(|(viewer, _)| viewer);
        if let (None, MediaKind::Audio, Some(level)) = (only, fp.kind, fp.ext.audio_level) {
            self.note_audio_level(room, &key.0, key.1, level, now);
        }
        // Taps take one layer: the top one (or the only one), or the one a mix's tile needs; a
        // cluster tap takes them all.
        let tap_layer = fp.rid.is_none() || fp.rid.as_deref() == Some("h") || !self.tap_layers.is_empty();
        let taps = self.taps.get(room).map(|t| tap_layer || t.iter().any(|(_, k)| *k == TapKind::Cluster));
        if only.is_none() && taps == Some(true) {
            let tp = TapPacket {
                user: key.0.clone(),
                stream: key.1,
                codec: fp.codec,
                seq: fp.seq,
                ts: fp.ts,
                marker: fp.marker,
                payload: fp.payload.clone(),
                audio_level: fp.ext.audio_level.map(|l| l.unsigned_abs().min(127)),
                composition_ms: 0,
                picture: None,
                fallback_for: None,
                layer_switch: false,
                rid: fp.rid,
                route: fp.route,
            };
            self.tap_out(room, tp, fp.route, (fp.rid, fp.keyframe));
        }
        if only.is_none() && !self.pipes.is_empty() {
            self.pipe_out(room, key, fp);
        }
        let Some(viewers) = self.rooms.get(room).and_then(|r| r.viewers.get(key)) else { return };
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        match only {
            Some(v) => ids.push(v),
            None => ids.extend_from_slice(viewers),
        }
        let (kind, rid) = (fp.kind, fp.rid);
        let mut want_keyframe = false;
        let mut need_gop: Vec<u64> = Vec::new();
        let mut cut_viewers: Vec<u64> = Vec::new();
        // An internal publisher's viewers start from its cached GOP, unless it is simulcast (a
        // piped stream, a cluster relay's mirror): then each layer's keyframe is asked for.
        let (internal, piped) = match self.internal.get(&pub_id) {
            Some(p) => (fp.rid.is_none(), p.pipe.is_some()),
            None => (false, false),
        };
        let saturated = self.busy_permille >= SATURATED_PERMILLE;
        // Counted here and added to the shared counters once: two atomic adds per copy were a
        // measurable part of the fan-out at hundreds of viewers.
        let (mut forwarded, mut dropped) = (0u64, 0u64);
        for vid in &ids {
            let Some(viewer) = self.sessions.get_mut(vid) else { continue };
            if !viewer.connected {
                continue;
            }
            let Role::Viewer { consumers, estimate_bps, raw_estimate_bps, playout_min, pacing_floor, .. } = &mut viewer.role else { continue };
            let Some(c) = consumers.iter_mut().find(|c| c.kind == kind && c.allowed && c.source == *key) else { continue };
            let first = c.unstarted();
            let link_queues = viewer.net.congested(now);
            // By the first packet sent after the hold began (audio): its wait holds everything
            // sent before it, and as little has been sent since, the queue is drained when that
            // wait has passed since it was sent — read ahead of the feedback that would say so
            // (a round trip and up to its interval later). A packet from before the hold does
            // not tell: the queue kept filling after it (measured: the keyframe released into
            // a queue still growing to its 300 ms limit).
            let link_full = c.draining_since().is_some_and(|since| viewer.peer.rtc.bwe_queue_left(now).is_none_or(|(left, sent)| sent < since || !left.is_zero()));
            let mut api = viewer.peer.rtc.direct_api();
            let Some(tx) = api.stream_tx_for_send(c.mid, None) else { continue };
            // How long the queue takes to empty: at the rate it was measured to empty, else at
            // the pacer's (1.1 × the estimate, or its floor).
            let pacing_bps = pacing_bps(*estimate_bps, *raw_estimate_bps, *pacing_floor);
            let queued = match tx.queue_info() {
                Some(q) => {
                    c.departure.sample(q.created_at(), q.byte_size());
                    let drain = c.departure.drain(q.byte_size()).or(pacing_bps.map(|r| Duration::from_secs_f64(q.byte_size() as f64 * 8.0 / r.max(1.0))));
                    Queued { packets: q.packet_count(), oldest: q.first_unsent(), drain, saturated, link_queues, link_full }
                }
                None => Queued { link_full, ..Queued::default() },
            };
            match c.route(fp, pub_id, internal, replay.map(|(_, due)| due), queued, &mut || tx.clear_queue(), now) {
                Route::Skip => continue,
                Route::WaitKeyframe => {
                    want_keyframe = true;
                    continue;
                }
                Route::ReplayGop => {
                    need_gop.push(*vid);
                    continue;
                }
                Route::Dropped { broken } => {
                    dropped += 1;
                    // A simulcast layer cut after running steadily is not restarted: the viewer
                    // is re-allocated at once, below it (`Consumer::cut_layer`), and the keyframe
                    // it then needs is the lower layer's, asked for when the consumer waits.
                    match (broken, rid) {
                        (true, Some(r)) if c.cut_layer(pub_id, now).is_some_and(|(cut, _)| cut == r) => cut_viewers.push(*vid),
                        _ => want_keyframe |= broken && (!internal || piped),
                    }
                    continue;
                }
                Route::Send { pt, seq, ts, picture_id } => {
                    c.departure.wrote(fp.payload.len());
                    let (pt, payload) = match (c.red.as_mut(), picture_id.zip(fp.vp8)) {
                        (Some(red), _) if fp.codec == Codec::Opus => (red.pt, red.wrap(seq, ts, &fp.payload, *pt).into()),
                        // A copy only for a viewer whose VP8 IDs are rewritten (it dropped
                        // frames or changed source).
                        (_, Some(((id, tl0), d))) => {
                            let mut p = fp.payload.to_vec();
                            d.set_picture_id(&mut p, id);
                            if let Some(tl0) = tl0 {
                                d.set_tl0_pic_idx(&mut p, tl0);
                            }
                            (pt, p.into())
                        }
                        _ => (pt, fp.payload.clone()),
                    };
                    let mut ext = fp.ext.clone();
                    if let (MediaKind::Video, Some(min)) = (kind, *playout_min) {
                        ext.play_delay_min = Some(MediaTime::new(min.as_millis() as u64 / 10, Frequency::HUNDREDTHS));
                        ext.play_delay_max = Some(MediaTime::new(PLAYOUT_DELAY_MAX_CS, Frequency::HUNDREDTHS));
                    }
                    // A replayed GOP is stamped as sent now (`SeqTsRewriter::rewrite_replayed`).
                    let wallclock = if only.is_some() { now } else { fp.arrival };
                    tx.write_rtp(RtpWrite::new(pt, seq.into(), ts, wallclock, payload).marker(fp.marker).ext_vals(ext).nackable(kind == MediaKind::Video));
                    if first {
                        self.out.push_back(SfuOutput::FirstMedia { session: *vid, user: key.0.clone(), stream: key.1, video: kind == MediaKind::Video });
                    }
                }
            }
            forwarded += 1;
            if !viewer.dirty {
                viewer.dirty = true;
                self.dirty.push(*vid);
            }
        }
        self.scratch_ids = ids;
        if forwarded > 0 {
            self.counters.packets_forwarded.fetch_add(forwarded, Ordering::Relaxed);
            self.counters.bytes_forwarded.fetch_add(forwarded * fp.payload.len() as u64, Ordering::Relaxed);
        }
        if dropped > 0 {
            self.counters.packets_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        for vid in cut_viewers {
            self.allocate(vid, now);
        }
        if want_keyframe {
            self.request_keyframe(pub_id, fp.mid, rid, now);
        }
        for vid in need_gop {
            let gop: Vec<FwdPacket> = self.internal.get(&pub_id).map(|p| p.gop.packets()).unwrap_or_default();
            // The GOP starts with a keyframe: the replay begins at a frame, whatever the live
            // packets did before. A viewer whose queue has no room for a keyframe waits for the
            // source's next one instead; a GOP longer than the queue allows is cut at a frame.
            let Some(viewer) = self.sessions.get_mut(&vid) else { continue };
            let Role::Viewer { consumers, estimate_bps, raw_estimate_bps, pacing_floor, prober, .. } = &mut viewer.role else { continue };
            let estimate = allocator::measured(*estimate_bps, *raw_estimate_bps, None);
            let pacing_bps = pacing_bps(*estimate_bps, *raw_estimate_bps, *pacing_floor);
            let Some(c) = consumers.iter_mut().find(|c| c.kind == MediaKind::Video && c.allowed && c.source == *key) else { continue };
            // (Only the codec it takes counts: the cache may hold an H.264 re-encoding beside
            // an AV1 original.)
            let taken: Vec<FwdPacket> = gop.iter().filter(|p| c.pt_for(p).is_some()).cloned().collect();
            if c.has_sent() && !replay_fits(&taken, estimate, now) {
                continue;
            }
            let mid = c.mid;
            c.reset_gate();
            let queued = viewer.peer.rtc.direct_api().stream_tx_by_mid(mid, None).and_then(|tx| tx.queue_info()).map_or(0, |q| q.packet_count());
            if queued >= MAX_QUEUED_PACKETS / 2 {
                continue;
            }
            tracing::debug!(viewer = vid, packets = taken.len(), restart = c.has_sent(), "GOP replayed");
            // The replay is a burst above the stream's rate: the estimator is asked to look for
            // room to send it within `REPLAY_CATCH_UP` beside the stream (str0m's first feedback
            // sets the estimate from what is sent, and the replay would leave at that).
            if let Some((bits, stream)) = gop_bits_and_rate(&taken, now) {
                let desired = stream + bits / REPLAY_CATCH_UP.as_secs_f64();
                let (minimum, desired) = prober.burst(desired, now + REPLAY_CATCH_UP);
                tracing::debug!(minimum, desired, "probe for a GOP replay");
                viewer.peer.rtc.bwe().set_bitrate(Bitrate::bps(minimum as u64), Bitrate::bps(desired as u64));
            }
            // Each packet is due when the pacer will have sent the bytes ahead of it.
            let mut bits = 0.0;
            for cached in &taken {
                let due = pacing_bps.map_or(0.0, |r| bits / r.max(1.0) * cached.codec.clock_rate() as f64);
                let due = due.min(u32::MAX as f64) as u32;
                bits += wire_bits(cached);
                self.fan_out(pub_id, room, key, cached, now, Some((vid, due)));
            }
        }
    }

    /// Adds a publisher that is not a WebRTC peer (an RTMP publish or a pull ingest): its media
    /// arrives through `push_packet`. Replaces an earlier publisher of the same (user, stream),
    /// and returns the id of the internal publisher it replaced, whose connection the caller
    /// should close (issue 10, defect 12).
    pub fn add_internal_publisher(&mut self, spec: SessionSpec, now: Instant) -> (u64, Option<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        self.enter(id, &spec, now);
        let join = self.take_join_order();
        let room = self.rooms.entry(spec.room.clone()).or_default();
        room.empty_since = None;
        room.created.get_or_insert(now);
        room.joined.entry(spec.user.clone()).or_insert(join);
        let mut replaced = None;
        if let Some(old) = room.publishers.insert((spec.user.clone(), spec.stream), id) {
            tracing::info!(room = %spec.room.room, user = %spec.user, "publisher replaced by a new session");
            self.close_session(old, LeaveReason::Left, now);
            if self.remove_internal_publisher(old, now) {
                replaced = Some(old);
            }
        }
        let producers = [(INTERNAL_AUDIO_MID, MediaKind::Audio), (INTERNAL_VIDEO_MID, MediaKind::Video)]
            .into_iter()
            .map(|(mid, kind)| Producer { mid: mid.into(), kind, layers: vec![Layer::new(None, now)], announced: false, codec: None, red: None })
            .collect();
        tracing::info!(sid = %spec.sid, room = %spec.room.room, user = %spec.user, "internal publisher added");
        self.by_sid.insert(spec.sid.clone(), id);
        self.internal.insert(id, InternalPublisher { spec, keyframe_requests: KeyframeThrottle::new(KEYFRAME_REQUEST_INTERVAL), producers, gop: GopCache::default(), pipe: None });
        (id, replaced)
    }

    pub fn remove_internal_publisher(&mut self, id: u64, now: Instant) -> bool {
        self.end_internal_publisher(id, LeaveReason::Left, now)
    }

    /// Ends an internal publisher; `reason` is its exit reason (104).
    pub(super) fn end_internal_publisher(&mut self, id: u64, reason: LeaveReason, now: Instant) -> bool {
        let Some(p) = self.internal.remove(&id) else { return false };
        self.presence.left(id, reason, now);
        self.by_sid.remove(&p.spec.sid);
        if let Some(room) = self.rooms.get_mut(&p.spec.room) {
            let key = (p.spec.user.clone(), p.spec.stream);
            if room.publishers.get(&key) == Some(&id) {
                room.publishers.remove(&key);
                room.forget_if_gone(&key.0);
            }
        }
        tracing::info!(sid = %p.spec.sid, "internal publisher removed");
        true
    }

    /// One RTP packet from an internal publisher. Video is cached from its last keyframe (at
    /// most 4 s or 8 MiB) so a viewer that starts mid-GOP gets a picture at once.
    pub fn push_packet(&mut self, id: u64, packet: IngestPacket, now: Instant) {
        let Some(p) = self.internal.get_mut(&id) else { return };
        if !packet.route.to_viewers() {
            // An original only relays and recordings keep: no viewer, no GOP cache, no stats.
            let (room, user, stream) = (p.spec.room.clone(), p.spec.user.clone(), p.spec.stream);
            let tp = TapPacket {
                user,
                stream,
                codec: packet.codec,
                seq: packet.seq,
                ts: packet.ts,
                marker: packet.marker,
                payload: packet.payload,
                audio_level: None,
                composition_ms: packet.composition_ms,
                picture: packet.picture,
                fallback_for: None,
                layer_switch: false,
                rid: packet.rid,
                route: packet.route,
            };
            self.tap_out(&room, tp, packet.route, (None, false));
            return;
        }
        let (kind, mid) = match packet.codec.kind() {
            tessera_media::MediaKind::Audio => (MediaKind::Audio, INTERNAL_AUDIO_MID),
            tessera_media::MediaKind::Video => (MediaKind::Video, INTERNAL_VIDEO_MID),
        };
        let vp8 = vp8_descriptor(packet.codec, &packet.payload);
        let temporal = temporal_of(packet.codec, &packet.payload, vp8.as_ref());
        if let Some(producer) = p.producers.iter_mut().find(|x| x.kind == kind) {
            if packet.rid.is_some() && producer.layers.first().is_some_and(|l| l.rid.is_none() && l.rate.bytes == 0 && l.rate.bps == 0.0) {
                // It sends layers: the single encoding it was made with never comes, and a
                // viewer must not be given it to wait on.
                producer.layers.remove(0);
            }
            note_layer(producer, packet.rid, packet.codec, packet.seq, &packet.payload, packet.marker, kind == MediaKind::Video && packet.keyframe, temporal, now);
            if !std::mem::replace(&mut producer.announced, true) {
                self.presence.media(id, Track::of(p.spec.stream, kind == MediaKind::Video), crate::presence::TrackMedia { codec: packet.codec, layers: Vec::new() });
            }
        }
        let fp = FwdPacket {
            ssrc: packet.ssrc,
            seq: packet.seq,
            ts: packet.ts,
            marker: packet.marker,
            keyframe: kind == MediaKind::Video && packet.keyframe,
            payload: packet.payload,
            codec: packet.codec,
            kind,
            mid: mid.into(),
            rid: packet.rid,
            ext: ExtensionValues { audio_level: packet.audio_level.map(|l| -(l.min(127) as i8)), ..Default::default() },
            arrival: now,
            route: packet.route,
            vp8,
            temporal,
        };
        // A single encoding is cached from its keyframe; simulcast layers ask the publisher
        // instead (as a piped stream's do).
        if kind == MediaKind::Video && packet.rid.is_none() {
            p.gop.push(&fp, now);
        }
        let (room, key) = (p.spec.room.clone(), (p.spec.user.clone(), p.spec.stream));
        self.fan_out(id, &room, &key, &fp, now, None);
    }

    pub(super) fn keyframe_request_from_viewer(&mut self, viewer_id: u64, mid: Mid, now: Instant) {
        let Some(viewer) = self.sessions.get(&viewer_id) else { return };
        let Role::Viewer { consumers, .. } = &viewer.role else { return };
        let Some(c) = consumers.iter().find(|c| c.mid == mid) else { return };
        tracing::debug!(parent: &viewer.span, %mid, current = ?c.current, "keyframe request from the viewer");
        let Some(pub_id) = self.publisher_in(&viewer.spec.room, &c.source) else { return };
        let rid = match c.current {
            Some((p, rid)) if p == pub_id => rid,
            _ => None,
        };
        if let Some(p) = self.internal.get_mut(&pub_id).filter(|p| p.pipe.is_none() && rid.is_none()) {
            // An ingest or a mix: its owner is told (a mix encodes an IDR, PRODUCT.md §3.5).
            if p.keyframe_requests.try_request(now) {
                self.out.push_back(SfuOutput::KeyframeWanted(pub_id, None));
            }
            return;
        }
        self.request_video_keyframe(pub_id, rid, now);
    }

    /// Asks a WebRTC publisher (or, through its pipe, a piped one) for a keyframe of layer
    /// `rid` of its video.
    pub(super) fn request_video_keyframe(&mut self, pub_id: u64, rid: Option<Rid>, now: Instant) {
        let mid = match (self.sessions.get(&pub_id), self.internal.get(&pub_id)) {
            (Some(Session { role: Role::Publisher { producers }, .. }), _) => producers.iter().find(|p| p.kind == MediaKind::Video).map(|p| p.mid),
            (_, Some(p)) => p.producers.iter().find(|p| p.kind == MediaKind::Video).map(|p| p.mid),
            _ => None,
        };
        if let Some(mid) = mid {
            self.request_keyframe(pub_id, mid, rid, now);
        }
    }

    /// Asks a producer for a keyframe, at most once per 500 ms per layer.
    pub(super) fn request_keyframe(&mut self, pub_id: u64, mid: Mid, rid: Option<Rid>, now: Instant) {
        if let Some(p) = self.internal.get_mut(&pub_id) {
            if p.pipe.is_some() {
                self.request_piped_keyframe(pub_id, rid, now);
                return;
            }
            // An ingest that sends simulcast layers (a cluster relay's mirror of a publisher on
            // another node): its owner is asked for the layer, throttled per layer as a PLI is.
            let Some(rid) = rid else { return };
            let layer = p.producers.iter_mut().find(|x| x.kind == MediaKind::Video).and_then(|v| v.layers.iter_mut().find(|l| l.rid == Some(rid)));
            if layer.is_some_and(|l| l.keyframe_requests.try_request(now)) {
                self.out.push_back(SfuOutput::KeyframeWanted(pub_id, Some(rid)));
            }
            return;
        }
        let Some(s) = self.sessions.get_mut(&pub_id) else { return };
        let Role::Publisher { producers } = &mut s.role else { return };
        let Some(layer) = producers.iter_mut().find(|p| p.mid == mid).and_then(|p| p.layers.iter_mut().find(|l| l.rid == rid)) else { return };
        if !layer.keyframe_requests.try_request(now) {
            return;
        }
        if let Some(rx) = s.peer.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            self.counters.keyframe_requests.fetch_add(1, Ordering::Relaxed);
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(pub_id);
            }
        }
    }
}
