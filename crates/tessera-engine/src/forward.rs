//! Per-consumer rewriting of sequence numbers and timestamps (LiveKit's "downtrack" munging),
//! so a viewer sees one continuous stream while the source behind it changes: a publisher
//! replaced by a new session, or a simulcast layer switch.

/// Identifies one incoming RTP stream: (publisher session, SSRC).
pub type SourceId = (u64, u32);

use tessera_media::vp8::Descriptor;

#[derive(Debug, Default)]
pub struct SeqTsRewriter {
    source: Option<SourceId>,
    seq_delta: i64,
    ts_delta: u32,
    /// Next outgoing sequence number (extended).
    next_seq: u64,
    last_ts: u32,
    started: bool,
    /// Packets were dropped on purpose: the next one sent continues the numbering.
    cut: bool,
    /// Packets of this source below this (extended) sequence number are from before a cut.
    floor: u64,
    /// Packets skipped on purpose (a temporal layer's frames), newest last: (the first sequence
    /// number after a skipped run, the delta that held below it). A packet that arrives late
    /// from before a skip keeps the number it would have had.
    skips: std::collections::VecDeque<(u64, i64)>,
    /// The newest incoming sequence number of this source.
    newest: u64,
    /// While a cached GOP is replayed: the incoming timestamps of its first frame and of the
    /// frame being replayed.
    replaying: Option<(u32, u32)>,
    /// The timestamp delta of a replay's first frame.
    replay_delta: u32,
}

/// Skipped runs remembered for late packets (a run is one dropped frame: ~2 s of them at 30 fps).
const MAX_SKIPS: usize = 64;

/// Packets older than this (in sequence numbers) behind the newest sent are dropped: they are
/// from before a switch, or too late to matter.
const MAX_BACKWARDS: u64 = 1_000;

impl SeqTsRewriter {
    pub fn source(&self) -> Option<SourceId> {
        self.source
    }

    /// The packets from now until the next one sent are dropped on purpose (whole frames cut
    /// under overload, or video paused): the viewer must not see them as loss.
    pub fn cut(&mut self) {
        self.cut = true;
    }

    /// The last `n` packets written were taken back unsent (dropped from the send queue): the
    /// next one sent takes the first of their numbers, so the viewer sees no gap to NACK.
    pub fn unsend(&mut self, n: usize) {
        if n > 0 && self.started {
            self.next_seq = self.next_seq.saturating_sub(n as u64).max(1);
            self.cut = true;
        }
    }

    /// Packet `seq` of the current source is dropped on purpose and takes no number: the ones
    /// after it close up (a viewer's temporal layers thinned: it must not NACK what it was never
    /// meant to get). One that arrives after a newer packet was seen is only dropped (its number
    /// may already be taken): the viewer sees that gap.
    pub fn skip(&mut self, source: SourceId, seq: u64) {
        if self.source != Some(source) || !self.started || self.cut || seq < self.newest || seq < self.floor {
            return;
        }
        self.newest = seq;
        match self.skips.back_mut() {
            Some(last) if last.0 == seq => last.0 = seq + 1,
            _ => {
                if self.skips.len() == MAX_SKIPS {
                    self.skips.pop_front();
                }
                self.skips.push_back((seq + 1, self.seq_delta));
            }
        }
        self.seq_delta -= 1;
    }

    /// A cached GOP is about to be replayed (`rewrite_replayed`): its packets are older than
    /// what may have been sent, so the numbering continues after the last one sent.
    pub fn begin_replay(&mut self) {
        self.cut = true;
        self.replaying = None;
    }

    /// One packet of a replayed GOP, all of which are written at once; `due`: clock ticks after
    /// the replay's first packet that the pacer will send it. Its frames are stamped when they
    /// will arrive — `due`, no later than their source's spacing and at least a tick apart —
    /// right after what was sent, and the frames that follow live continue from the last of
    /// them. Stamped as they were, a GOP that leaves at once (small frames, a fast link)
    /// arrives seconds ahead of its stamps: Chromium's receive-time extrapolation then went
    /// wrong for seconds and frames waited for render times far ahead (measured on an AV1
    /// publish: 14–41 of 100–126 frames received decoded in 5 s, freezes of 1.7–3.5 s). Stamped
    /// one tick apart whatever their size, a 720p GOP that the pacer spreads over seconds
    /// arrived ever later than its stamps (3 s freezes at every join).
    pub fn rewrite_replayed(&mut self, source: SourceId, seq: u64, ts: u32, gap_ticks: u32, due: u32) -> Option<(u64, u32)> {
        if self.replaying.is_none_or(|(_, last)| last != ts) {
            let first_ts = match self.replaying {
                Some((first, _)) => first,
                None => {
                    // (A change of source at the first packet sets the same: right after the last
                    // sent.)
                    if self.started {
                        self.ts_delta = self.last_ts.wrapping_add(gap_ticks.max(1)).wrapping_sub(ts);
                    }
                    ts
                }
            };
            if ts != first_ts && self.started {
                let first_out = first_ts.wrapping_add(self.replay_delta);
                let at = first_out.wrapping_add(due.min(ts.wrapping_sub(first_ts)));
                // At least a tick after the previous frame.
                let out = if (at.wrapping_sub(self.last_ts) as i32) > 0 { at } else { self.last_ts.wrapping_add(1) };
                self.ts_delta = out.wrapping_sub(ts);
            }
            self.replaying = Some((first_ts, ts));
        }
        let out = self.map(source, seq, ts, gap_ticks);
        if self.replaying.is_some_and(|(first, _)| first == ts) {
            self.replay_delta = self.ts_delta;
        }
        out
    }

    /// Maps an incoming (extended seq, timestamp) to outgoing ones, or `None` to drop it.
    /// `gap_ticks` is how far the timestamp advances across a source change (the time since the
    /// last packet sent, in clock ticks, at least 1).
    pub fn rewrite(&mut self, source: SourceId, seq: u64, ts: u32, gap_ticks: u32) -> Option<(u64, u32)> {
        self.replaying = None;
        self.map(source, seq, ts, gap_ticks)
    }

    fn map(&mut self, source: SourceId, seq: u64, ts: u32, gap_ticks: u32) -> Option<(u64, u32)> {
        if self.source == Some(source) && std::mem::take(&mut self.cut) {
            // Same source after a cut: the numbering continues (no gap for the viewer to NACK),
            // the timestamps keep their mapping (they still follow the source's clock).
            if self.started {
                self.seq_delta = self.next_seq as i64 - seq as i64;
            }
            self.floor = seq;
            self.skips.clear();
        }
        if self.source == Some(source) && seq < self.floor {
            return None;
        }
        if self.source != Some(source) {
            self.cut = false;
            self.floor = 0;
            self.skips.clear();
            self.newest = seq;
            // Start the new source right after what was sent; viewers see a continuous stream.
            let next = if self.started { self.next_seq } else { 1 };
            self.seq_delta = next as i64 - seq as i64;
            let first_ts = if self.started { self.last_ts.wrapping_add(gap_ticks.max(1)) } else { ts };
            self.ts_delta = first_ts.wrapping_sub(ts);
            self.source = Some(source);
        }
        // A late packet from before a skip takes the delta of its time.
        let mut delta = self.seq_delta;
        for &(from, before) in self.skips.iter().rev() {
            if seq >= from {
                break;
            }
            delta = before;
        }
        self.newest = self.newest.max(seq);
        let out = seq as i64 + delta;
        if out < 1 {
            return None;
        }
        let out = out as u64;
        if self.started && out + MAX_BACKWARDS < self.next_seq {
            return None;
        }
        let ts_out = ts.wrapping_add(self.ts_delta);
        if !self.started || out >= self.next_seq {
            self.next_seq = out + 1;
            self.last_ts = ts_out;
        }
        self.started = true;
        Some((out, ts_out))
    }
}

/// The VP8 picture IDs and TL0PICIDX a viewer sees, kept continuous (as mediasoup and LiveKit
/// keep them): over the frames dropped for it on purpose (a temporal layer it does not get), and
/// across a change of source (a simulcast switch, a new publisher session), where each layer
/// counts on its own. libwebrtc's VP8 reference finder holds back every frame after a picture
/// ID it has not seen, and keeps what it learnt per TL0PICIDX: a switch to a layer whose count
/// is behind the last one's met stale entries of that count and stalled the viewer's decoding
/// until its next keyframe request (measured: 3.4 s freezes after moves between layers).
#[derive(Debug, Default)]
pub struct PictureIds {
    source: Option<SourceId>,
    /// The newest extended ID seen of this source.
    newest: Option<u64>,
    /// Extended IDs of this source's frames dropped, ascending; `forgotten` counts those dropped
    /// off it.
    dropped: std::collections::VecDeque<u64>,
    forgotten: u64,
    /// What is added to this source's picture IDs and TL0PICIDX (modulo their widths) so that it
    /// continues where the one before left off.
    pid_shift: u64,
    tl0_shift: u8,
    /// The newest picture ID and TL0PICIDX sent (of any source).
    last_pid: Option<u64>,
    last_tl0: Option<u8>,
}

/// Dropped frames remembered for late packets (~4 s at 15 dropped frames a second).
const MAX_DROPPED_PICTURES: usize = 64;

impl PictureIds {
    /// The extended form of the picture ID of `d`, near the newest seen; a new source starts
    /// its shifts here.
    fn extend(&mut self, source: SourceId, d: &Descriptor) -> Option<(u64, u64)> {
        let (id, _) = d.picture_id?;
        let m = u64::from(d.picture_id_modulus());
        if self.source != Some(source) {
            self.source = Some(source);
            self.newest = None;
            self.dropped.clear();
            self.forgotten = 0;
            self.pid_shift = self.last_pid.map_or(0, |last| (last + 1 + m - u64::from(id) % m) % m);
            self.tl0_shift = match (self.last_tl0, d.tl0_pic_idx) {
                (Some(last), Some(tl0)) => last.wrapping_add(1).wrapping_sub(tl0),
                _ => 0,
            };
        }
        let ext = match self.newest {
            // Far from zero, so IDs just before it extend without going negative.
            None => u64::from(id) + m * 1024,
            Some(n) => {
                let diff = (u64::from(id) + m - n % m) % m;
                if diff < m / 2 {
                    n + diff
                } else {
                    n - (m - diff)
                }
            }
        };
        self.newest = Some(self.newest.map_or(ext, |n| n.max(ext)));
        Some((ext, m))
    }

    /// A frame with this descriptor is dropped (called for each of its packets).
    pub fn drop_frame(&mut self, source: SourceId, d: &Descriptor) {
        let Some((ext, _)) = self.extend(source, d) else { return };
        let at = self.dropped.partition_point(|&x| x < ext);
        if self.dropped.get(at) == Some(&ext) {
            return;
        }
        self.dropped.insert(at, ext);
        if self.dropped.len() > MAX_DROPPED_PICTURES {
            self.dropped.pop_front();
            self.forgotten += 1;
        }
    }

    /// The picture ID and TL0PICIDX to send for a packet with this descriptor, where either
    /// differs from what it carries.
    pub fn map(&mut self, source: SourceId, d: &Descriptor) -> Option<(u16, Option<u8>)> {
        let (ext, m) = self.extend(source, d)?;
        let before = self.forgotten + self.dropped.partition_point(|&x| x < ext) as u64;
        let pid = (ext + self.pid_shift + m * 1024 - before) % m;
        let tl0 = d.tl0_pic_idx.map(|t| t.wrapping_add(self.tl0_shift));
        if Some(ext) == self.newest {
            self.last_pid = Some(pid);
            if tl0.is_some() {
                self.last_tl0 = tl0;
            }
        }
        let changed = d.picture_id.is_some_and(|(id, _)| u64::from(id) != pid) || tl0 != d.tl0_pic_idx;
        changed.then_some((pid as u16, tl0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuous_across_source_switch() {
        let mut r = SeqTsRewriter::default();
        assert_eq!(r.rewrite((1, 10), 5000, 90_000, 0), Some((1, 90_000)));
        assert_eq!(r.rewrite((1, 10), 5001, 93_000, 0), Some((2, 93_000)));
        // Reordered packet from the same source keeps its place.
        assert_eq!(r.rewrite((1, 10), 5003, 99_000, 0), Some((4, 99_000)));
        assert_eq!(r.rewrite((1, 10), 5002, 96_000, 0), Some((3, 96_000)));
        // A new source continues right after the newest sent, timestamp advanced by the gap.
        assert_eq!(r.rewrite((2, 20), 10_100, 7_000, 3_000), Some((5, 102_000)));
        assert_eq!(r.rewrite((2, 20), 10_101, 10_000, 3_000), Some((6, 105_000)));
        // A packet from far before the switch maps to before the stream began: dropped.
        assert_eq!(r.rewrite((2, 20), 10_100 - 2_000, 0, 0), None);
        // One that maps more than 1000 behind the newest sent is dropped too.
        for seq in 10_102..12_200 {
            r.rewrite((2, 20), seq, 0, 0);
        }
        assert_eq!(r.rewrite((2, 20), 10_500, 0, 0), None);
        assert!(r.rewrite((2, 20), 11_500, 0, 0).is_some());
    }

    #[test]
    fn a_replayed_gop_is_stamped_when_the_pacer_sends_it_and_live_frames_follow_on() {
        let mut r = SeqTsRewriter::default();
        let src = (1, 10);
        // A viewer's first media is a GOP of three frames (the second in two packets), 3000
        // ticks apart at the source, all due at once; then the source's next frame, live.
        r.begin_replay();
        assert_eq!(r.rewrite_replayed(src, 50, 90_000, 0, 0), Some((1, 90_000)));
        assert_eq!(r.rewrite_replayed(src, 51, 93_000, 0, 0), Some((2, 90_001)));
        assert_eq!(r.rewrite_replayed(src, 52, 93_000, 0, 0), Some((3, 90_001)), "one frame, one timestamp");
        assert_eq!(r.rewrite_replayed(src, 53, 96_000, 0, 0), Some((4, 90_002)));
        assert_eq!(r.rewrite(src, 54, 99_000, 0), Some((5, 93_002)), "live: the source's spacing after the replay's last frame");
        assert_eq!(r.rewrite(src, 55, 102_000, 0), Some((6, 96_002)));
        // Cut, then the GOP replayed again up to the newest packet (older packets than those
        // sent): numbers and timestamps go on from the last sent, the first frame by the time
        // since then.
        r.begin_replay();
        let replayed: Vec<_> = [(50, 90_000), (51, 93_000), (52, 93_000), (53, 96_000), (54, 99_000), (55, 102_000)]
            .into_iter()
            .map(|(seq, ts)| r.rewrite_replayed(src, seq, ts, 9_000, 0).unwrap())
            .collect();
        assert_eq!(replayed, [(7, 105_002), (8, 105_003), (9, 105_003), (10, 105_004), (11, 105_005), (12, 105_006)]);
        assert_eq!(r.rewrite(src, 56, 105_000, 0), Some((13, 108_006)));
        // A replay the pacer spreads: the second frame due 1000 ticks after the first (3000 at
        // the source), the third 7000 after (6000 at the source: the source's spacing).
        r.begin_replay();
        assert_eq!(r.rewrite_replayed(src, 50, 90_000, 3_000, 0), Some((14, 111_006)));
        assert_eq!(r.rewrite_replayed(src, 51, 93_000, 3_000, 1_000), Some((15, 112_006)));
        assert_eq!(r.rewrite_replayed(src, 52, 96_000, 3_000, 7_000), Some((16, 117_006)));
        assert_eq!(r.rewrite(src, 53, 99_000, 0), Some((17, 120_006)));
    }

    #[test]
    fn skipped_packets_take_no_numbers_and_a_late_packet_keeps_its_own() {
        let mut r = SeqTsRewriter::default();
        let src = (1, 10);
        assert_eq!(r.rewrite(src, 100, 0, 0).map(|x| x.0), Some(1));
        // 101 and 102 come late; 103-104 (a dropped frame) are skipped: 101 and 102 are owed 2
        // and 3, so 105 takes 4.
        r.skip(src, 103);
        r.skip(src, 104);
        assert_eq!(r.rewrite(src, 101, 0, 0).map(|x| x.0), Some(2));
        assert_eq!(r.rewrite(src, 105, 0, 0).map(|x| x.0), Some(4));
        assert_eq!(r.rewrite(src, 102, 0, 0).map(|x| x.0), Some(3), "the late packet keeps its place");
        // Two separate runs.
        r.skip(src, 106);
        assert_eq!(r.rewrite(src, 107, 0, 0).map(|x| x.0), Some(5));
        r.skip(src, 108);
        r.skip(src, 109);
        assert_eq!(r.rewrite(src, 110, 0, 0).map(|x| x.0), Some(6));
        // A skip that comes late is not closed up (its number may be taken): only dropped.
        r.skip(src, 100);
        assert_eq!(r.rewrite(src, 111, 0, 0).map(|x| x.0), Some(7));
        // Another source starts clean.
        assert_eq!(r.rewrite((1, 20), 5, 0, 3_000).map(|x| x.0), Some(8));
        assert_eq!(r.rewrite((1, 20), 6, 0, 0).map(|x| x.0), Some(9));
    }

    /// A VP8 descriptor with a 15-bit (or 7-bit) picture ID and a TL0PICIDX.
    fn vp8(id: u16, tl0: u8, wide: bool) -> (Vec<u8>, Descriptor) {
        let p = match wide {
            true => vec![0x90, 0xc0, 0x80 | (id >> 8) as u8, id as u8, tl0, 0],
            false => vec![0x90, 0xc0, id as u8 & 0x7f, tl0, 0],
        };
        let d = Descriptor::parse(&p).unwrap();
        (p, d)
    }

    #[test]
    fn picture_ids_close_up_over_dropped_frames_and_continue_across_sources() {
        let mut p = PictureIds::default();
        let (a, b) = ((1, 10), (1, 20));
        let map = |p: &mut PictureIds, s, id, tl0| p.map(s, &vp8(id, tl0, true).1);
        assert_eq!(map(&mut p, a, 100, 5), None, "nothing dropped, the first source: sent as it came");
        p.drop_frame(a, &vp8(101, 5, true).1);
        p.drop_frame(a, &vp8(101, 5, true).1); // its second packet
        assert_eq!(map(&mut p, a, 102, 5), Some((101, Some(5))));
        p.drop_frame(a, &vp8(103, 5, true).1);
        assert_eq!(map(&mut p, a, 104, 6), Some((102, Some(6))));
        assert_eq!(map(&mut p, a, 100, 5), None, "a late packet from before the drops keeps its ID");
        // Another source (a layer switch) continues at 103 and TL0PICIDX 7, whatever its own
        // counts; nothing of the first source's drops carries over.
        assert_eq!(map(&mut p, b, 9_000, 200), Some((103, Some(7))));
        assert_eq!(map(&mut p, b, 9_001, 200), Some((104, Some(7))));
        p.drop_frame(b, &vp8(9_002, 200, true).1);
        assert_eq!(map(&mut p, b, 9_003, 201), Some((105, Some(8))));
        // Across the wrap of the 15-bit ID and the 8-bit TL0PICIDX.
        let mut w = PictureIds::default();
        assert_eq!(map(&mut w, a, 32_765, 255), None);
        w.drop_frame(a, &vp8(32_766, 255, true).1);
        assert_eq!(map(&mut w, a, 32_767, 255), Some((32_766, Some(255))));
        w.drop_frame(a, &vp8(0, 0, true).1);
        assert_eq!(map(&mut w, a, 1, 0), Some((32_767, Some(0))));
        assert_eq!(map(&mut w, b, 50, 3), Some((0, Some(1))));
        // A 7-bit ID wraps at 128.
        let mut q = PictureIds::default();
        q.drop_frame(a, &vp8(127, 1, false).1);
        assert_eq!(q.map(a, &vp8(0, 1, false).1), Some((127, Some(1))));
        // The rewritten descriptor carries both.
        let (mut bytes, d) = vp8(9_000, 200, true);
        d.set_picture_id(&mut bytes, 103);
        d.set_tl0_pic_idx(&mut bytes, 7);
        let again = Descriptor::parse(&bytes).unwrap();
        assert_eq!((again.picture_id, again.tl0_pic_idx), (Some((103, true)), Some(7)));
    }

    #[test]
    fn packets_taken_back_unsent_leave_no_gap() {
        let mut r = SeqTsRewriter::default();
        for i in 0..10 {
            r.rewrite((1, 10), 100 + i, 90_000, 0);
        }
        // 10 written (1..=10), the last 4 taken back: a new layer continues at 7.
        r.unsend(4);
        assert_eq!(r.rewrite((1, 20), 5_000, 0, 3_000).map(|x| x.0), Some(7));
        // The same layer again (a restart at its keyframe): it continues the numbering too.
        r.rewrite((1, 20), 5_001, 0, 0);
        r.unsend(2);
        assert_eq!(r.rewrite((1, 20), 5_010, 0, 0).map(|x| x.0), Some(7));
        assert_eq!(r.rewrite((1, 20), 5_011, 0, 0).map(|x| x.0), Some(8));
    }

    #[test]
    fn a_cut_closes_the_gap_and_refuses_what_came_before_it() {
        let mut r = SeqTsRewriter::default();
        assert_eq!(r.rewrite((1, 10), 100, 9_000, 0), Some((1, 9_000)));
        assert_eq!(r.rewrite((1, 10), 101, 12_000, 0), Some((2, 12_000)));
        // 102..=110 are dropped whole; the stream resumes at 111 as 3, timestamps unchanged.
        r.cut();
        assert_eq!(r.rewrite((1, 10), 111, 42_000, 0), Some((3, 42_000)));
        assert_eq!(r.rewrite((1, 10), 112, 45_000, 0), Some((4, 45_000)));
        assert_eq!(r.rewrite((1, 10), 105, 24_000, 0), None, "a late packet from the cut would collide with 3");
    }

    #[test]
    fn timestamps_wrap() {
        let mut r = SeqTsRewriter::default();
        assert_eq!(r.rewrite((1, 1), 1, u32::MAX - 10, 0), Some((1, u32::MAX - 10)));
        assert_eq!(r.rewrite((2, 2), 1, 500, 20), Some((2, 9)));
    }
}

/// What [`FrameGate::admit`] decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Into the viewer's queue.
    Send,
    /// Not sent: part of a frame being dropped whole (audio: one packet is one frame).
    Drop,
    /// Not sent, and the video picture is broken from here: wait for a keyframe (and ask for one).
    DropUntilKeyframe,
}

/// Overload policy of one consumer (issue 10, defect 16): when the viewer's send queue is long,
/// whole frames are dropped, never packets inside one; a video frame dropped means the stream
/// waits for the next keyframe. Only if a frame already started grows the queue past the hard
/// bound is it cut, and then it counts as dropped from its start (the picture is broken).
///
/// After a cut, the source `S` it was cut in is "broken" until its next marker, so the stream
/// never resumes inside a frame (a keyframe cut short is no place to start).
#[derive(Debug, Clone)]
pub struct FrameGate<S> {
    in_frame: bool,
    dropping: bool,
    broken: Option<S>,
}

impl<S> Default for FrameGate<S> {
    fn default() -> Self {
        FrameGate { in_frame: false, dropping: false, broken: None }
    }
}

impl<S: Copy + PartialEq> FrameGate<S> {
    /// Whether the next packet of `source` may start the stream (it is not inside a cut frame).
    pub fn may_start(&self, source: S) -> bool {
        self.broken != Some(source)
    }

    /// Notes a packet of `source` this consumer saw but did not send (waiting for a keyframe).
    pub fn skipped(&mut self, source: S, marker: bool) {
        self.in_frame = false;
        self.dropping = false;
        if marker && self.broken == Some(source) {
            self.broken = None;
        }
    }

    /// Decides for one packet of `source` given how many packets wait in the viewer's queue.
    pub fn admit(&mut self, source: S, video: bool, marker: bool, queued: usize, soft: usize, hard: usize) -> Gate {
        if self.dropping {
            self.dropping = !marker;
            self.broken = (!marker).then_some(source);
            return Gate::Drop;
        }
        let starts_frame = !self.in_frame;
        let over = if starts_frame { queued >= soft } else { queued >= hard };
        if over {
            self.in_frame = false;
            self.dropping = !marker;
            self.broken = (!marker).then_some(source);
            return if video { Gate::DropUntilKeyframe } else { Gate::Drop };
        }
        self.in_frame = !marker;
        self.broken = None;
        Gate::Send
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    /// (marker) packets of frames: 3 packets, then 2, then 1, then 3.
    const FRAMES: [&[bool]; 4] = [&[false, false, true], &[false, true], &[true], &[false, false, true]];

    #[test]
    fn a_long_queue_drops_whole_frames_never_parts_of_one() {
        let mut g = FrameGate::default();
        let mut out = Vec::new();
        // The queue is long exactly while the second frame's first packet arrives.
        let mut n = 0;
        for frame in FRAMES {
            for &marker in frame {
                let queued = if n == 3 { 100 } else { 10 };
                out.push(g.admit(1u8, true, marker, queued, 50, 200));
                n += 1;
            }
        }
        use Gate::*;
        assert_eq!(out, [Send, Send, Send, DropUntilKeyframe, Drop, Send, Send, Send, Send]);
    }

    #[test]
    fn a_frame_already_started_is_cut_only_past_the_hard_bound() {
        let mut g = FrameGate::default();
        assert_eq!(g.admit(1u8, true, false, 10, 50, 200), Gate::Send);
        // Past the soft bound mid-frame: the frame is finished.
        assert_eq!(g.admit(1, true, false, 150, 50, 200), Gate::Send);
        // Past the hard bound: cut; the source may not restart before the frame's marker.
        assert_eq!(g.admit(1, true, false, 250, 50, 200), Gate::DropUntilKeyframe);
        assert!(!g.may_start(1) && g.may_start(2), "another layer may start at once");
        g.skipped(1, false);
        assert!(!g.may_start(1));
        g.skipped(1, true);
        assert!(g.may_start(1));
    }

    #[test]
    fn audio_drops_single_packets() {
        let mut g = FrameGate::default();
        assert_eq!(g.admit(7u8, false, true, 60, 50, 200), Gate::Drop);
        assert_eq!(g.admit(7, false, true, 10, 50, 200), Gate::Send);
    }
}
