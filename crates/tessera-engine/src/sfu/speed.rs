//! Speed-test sessions (PRODUCT.md §9): a peer with two data channels, `speedtest-ctl` and
//! `speedtest-data`, driving a `speedtest::SpeedTest`. They share the UDP port and ICE-lite
//! routing with media sessions but belong to no room.

use super::*;
use crate::speedtest::{SpeedTest, SpeedTestOutput};
use tessera_rtc::str0m::channel::ChannelId;

/// At most this many run at once per app (PRODUCT.md §12).
pub const MAX_SPEED_TESTS_PER_APP: usize = 20;
/// A finished test's session stays this long, for the result to be delivered.
const LINGER: Duration = Duration::from_secs(5);

/// A speed test's peer state.
pub(super) struct SpeedRun {
    test: SpeedTest,
    ctl: Option<ChannelId>,
    data: Option<ChannelId>,
    done_at: Option<Instant>,
}

/// Why a speed test was not started.
#[derive(Debug)]
pub enum SpeedTestRefusal {
    /// 20 already run for the app.
    Limit,
    Offer(OfferError),
}

impl Sfu {
    /// Starts a speed test for `spec.user` of `spec.room.app` (the room is only a label) from
    /// the client's offer; returns the SDP answer. `server_ip` goes in the result.
    pub fn add_speed_test(&mut self, spec: SessionSpec, offer: &str, server_ip: String, now: Instant) -> Result<String, SpeedTestRefusal> {
        let running = self.speed_tests.iter().filter(|id| self.sessions.get(id).is_some_and(|s| s.spec.room.app == spec.room.app)).count();
        if running >= MAX_SPEED_TESTS_PER_APP {
            return Err(SpeedTestRefusal::Limit);
        }
        let (peer, answer) = Peer::from_offer(PeerRole::Publish, offer, &self.candidates, None, now).map_err(SpeedTestRefusal::Offer)?;
        let id = self.next_id;
        self.next_id += 1;
        self.by_sid.insert(spec.sid.clone(), id);
        self.index_ufrag(&peer.local_ufrag, id);
        let span = tracing::info_span!("speedtest", sid = %spec.sid, user = %spec.user);
        tracing::info!(parent: &span, "speed test added");
        let role = Role::SpeedTest(Box::new(SpeedRun { test: SpeedTest::new(server_ip, now), ctl: None, data: None, done_at: None }));
        self.insert_session(id, Session::new(spec, peer, role, span, now));
        self.speed_tests.push(id);
        self.mark_dirty(id);
        self.drain_all(now);
        Ok(answer)
    }

    /// When the next speed test wants time.
    pub(super) fn speed_test_timeout(&self) -> Option<Instant> {
        self.speed_tests
            .iter()
            .filter_map(|id| match self.sessions.get(id).map(|s| &s.role) {
                Some(Role::SpeedTest(run)) => run.test.poll_timeout().or(run.done_at.map(|t| t + LINGER)),
                _ => None,
            })
            .min()
    }

    /// Gives due speed tests their time; ends those finished a while ago.
    pub(super) fn speed_tests_timeout(&mut self, now: Instant) {
        let mut ended = Vec::new();
        for id in self.speed_tests.clone() {
            let Some(s) = self.sessions.get_mut(&id) else {
                ended.push(id);
                continue;
            };
            let Role::SpeedTest(run) = &mut s.role else { continue };
            if run.done_at.is_some_and(|t| now >= t + LINGER) {
                ended.push(id);
                continue;
            }
            if run.test.poll_timeout().is_some_and(|t| t <= now) {
                let buffered = run.data.and_then(|ch| s.peer.rtc.channel(ch)).map_or(0, |mut c| c.buffered_amount());
                run.test.handle_timeout(now, buffered);
                self.flush_speed_test(id, now);
            }
        }
        for id in ended {
            self.speed_tests.retain(|x| *x != id);
            self.close_session(id, LeaveReason::Left, now);
        }
    }

    pub(super) fn speed_channel_opened(&mut self, id: u64, channel: ChannelId, label: &str) {
        let Some(Session { role: Role::SpeedTest(run), .. }) = self.sessions.get_mut(&id) else { return };
        match label {
            "speedtest-ctl" => run.ctl = Some(channel),
            "speedtest-data" => run.data = Some(channel),
            _ => {}
        }
    }

    /// A message on a speed test's channel.
    pub(super) fn speed_channel_data(&mut self, id: u64, channel: ChannelId, binary: bool, data: &[u8], now: Instant) {
        let Some(Session { role: Role::SpeedTest(run), .. }) = self.sessions.get_mut(&id) else { return };
        if Some(channel) == run.ctl && !binary {
            // Control messages are small JSON objects.
            if data.len() <= 4096 {
                run.test.handle_control(&String::from_utf8_lossy(data), now);
            }
        } else if Some(channel) == run.data {
            run.test.handle_data(data, now);
        }
        self.flush_speed_test(id, now);
    }

    /// Writes what the test has to say on its channels.
    fn flush_speed_test(&mut self, id: u64, now: Instant) {
        let Some(Session { role: Role::SpeedTest(run), peer, span, dirty, .. }) = self.sessions.get_mut(&id) else { return };
        while let Some(o) = run.test.poll_output() {
            let (ch, binary, bytes) = match &o {
                SpeedTestOutput::Control(text) => (run.ctl, false, text.as_bytes()),
                SpeedTestOutput::Data(frame) => (run.data, true, &frame[..]),
            };
            let taken = match ch.and_then(|ch| peer.rtc.channel(ch)) {
                Some(mut c) => c.write(binary, bytes).unwrap_or_else(|e| {
                    tracing::debug!(parent: &*span, "speed test write failed: {e}");
                    false
                }),
                None => false,
            };
            if !taken {
                run.test.not_sent(bytes);
            }
        }
        if run.test.is_done() && run.done_at.is_none() {
            tracing::info!(parent: &*span, "speed test finished");
            run.done_at = Some(now);
        }
        if !*dirty {
            *dirty = true;
            self.dirty.push(id);
        }
    }
}
