//! Active speakers (PRODUCT.md §7 `active_speakers`), as a plain value per room with injected
//! time: audio levels (dBov, RFC 6464) of each publisher's audio come in per packet; the list
//! of who speaks comes out on change, at most every 500 ms.
//!
//! A voice's level is smoothed (exponentially, 150 ms) so one loud packet does not list a
//! user; a voice is listed when its smoothed level was above −50 dBov for at least 200 ms of
//! the last 500 ms, which also keeps a speaker listed through the short pauses between words.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tessera_media::audio_level::level_percent;
use tessera_media::StreamKind;
use tessera_model::UserId;

/// Listed when the smoothed level is above −50 dBov…
const SPEAKING_DBOV: f32 = 50.0;
/// …for at least this long…
const MIN_SPEAKING: Duration = Duration::from_millis(200);
/// …of this window.
const WINDOW: Duration = Duration::from_millis(500);
/// The list goes out at most this often, and has at most this many entries.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);
pub const MAX_SPEAKERS: usize = 16;
/// The smoothing's time constant.
const SMOOTHING: Duration = Duration::from_millis(150);
/// A packet stands for at most this much audio (a gap is silence, not speech).
const MAX_PACKET_SPAN: Duration = Duration::from_millis(60);
/// A voice with no packet this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(2);
/// Levels (0–100) that moved less than this do not make a new list.
const LEVEL_STEP: u8 = 10;

#[derive(Debug)]
struct Voice {
    smoothed: f32,
    last: Instant,
    /// (when, how much audio, smoothed level above the threshold) over the last `WINDOW`.
    history: VecDeque<(Instant, Duration, bool)>,
}

impl Voice {
    fn speaking_for(&self) -> Duration {
        self.history.iter().filter(|(_, _, above)| *above).map(|(_, d, _)| *d).sum()
    }
}

/// The voices of one room and the list last sent.
#[derive(Debug, Default)]
pub struct RoomSpeakers {
    voices: HashMap<(UserId, StreamKind), Voice>,
    sent: Vec<(UserId, u8)>,
    sent_at: Option<Instant>,
    /// A non-empty list goes out at the next poll, changed or not.
    resend: bool,
    /// The loudest of the last non-empty list.
    dominant: Option<UserId>,
}

impl RoomSpeakers {
    /// One audio packet of (user, stream) with its level in dBov (0 loud … 127 silent).
    pub fn note(&mut self, user: &UserId, stream: StreamKind, dbov: u8, now: Instant) {
        let dbov = dbov.min(127) as f32;
        let key = (user.clone(), stream);
        let v = self.voices.entry(key).or_insert_with(|| Voice { smoothed: dbov, last: now, history: VecDeque::new() });
        let dt = now.saturating_duration_since(v.last);
        let k = 1.0 - (-dt.as_secs_f32() / SMOOTHING.as_secs_f32()).exp();
        v.smoothed += k * (dbov - v.smoothed);
        v.last = now;
        v.history.push_back((now, dt.min(MAX_PACKET_SPAN), v.smoothed < SPEAKING_DBOV));
        while v.history.front().is_some_and(|(t, _, _)| now.saturating_duration_since(*t) > WINDOW) {
            v.history.pop_front();
        }
    }

    /// Who speaks now: (user, 0–100), loudest first, at most 16. A user publishing two audio
    /// tracks counts once, at the louder.
    pub fn current(&self, now: Instant) -> Vec<(UserId, u8)> {
        let mut by_user: HashMap<&UserId, f32> = HashMap::new();
        for ((user, _), v) in &self.voices {
            // Packets older than the window no longer count: a voice that stopped is quiet.
            let recent: Duration = v.history.iter().filter(|(t, _, above)| *above && now.saturating_duration_since(*t) <= WINDOW).map(|(_, d, _)| *d).sum();
            if recent >= MIN_SPEAKING && v.speaking_for() >= MIN_SPEAKING {
                let e = by_user.entry(user).or_insert(127.0);
                *e = e.min(v.smoothed);
            }
        }
        let mut list: Vec<(UserId, f32)> = by_user.into_iter().map(|(u, d)| (u.clone(), d)).collect();
        list.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
        list.truncate(MAX_SPEAKERS);
        list.into_iter().map(|(u, d)| (u, level_percent(d))).collect()
    }

    /// The loudest of the list last sent (the speaker clients show).
    pub fn loudest(&self) -> Option<&UserId> {
        self.sent.first().map(|(u, _)| u)
    }

    /// The last user to be the loudest, kept through pauses and silence until another is:
    /// whose picture a viewer's bandwidth favours. (The loudest alone comes and goes between
    /// words, and each change moves every viewer's layers, each move a keyframe.)
    pub fn dominant(&self) -> Option<&UserId> {
        self.dominant.as_ref()
    }

    /// The list to send now, if it changed (other users, another order, or a level moved by
    /// 10 or more) and the last one went out at least 500 ms ago.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<(UserId, u8)>> {
        self.voices.retain(|_, v| now.saturating_duration_since(v.last) < FORGET_AFTER);
        if self.sent_at.is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL) {
            return None;
        }
        let list = self.current(now);
        let resend = std::mem::take(&mut self.resend) && !list.is_empty();
        let same = !resend && list.len() == self.sent.len() && list.iter().zip(&self.sent).all(|(a, b)| a.0 == b.0 && a.1.abs_diff(b.1) < LEVEL_STEP);
        if same {
            return None;
        }
        if let Some((first, _)) = list.first() {
            self.dominant = Some(first.clone());
        }
        self.sent = list.clone();
        self.sent_at = Some(now);
        Some(list)
    }

    /// Sends the current list at the next poll even if it did not change (a participant
    /// joined and has not heard it).
    pub fn resend(&mut self) {
        self.resend = true;
    }

    /// Forgets the voices of `user` (it stopped publishing or left).
    pub fn forget(&mut self, user: &UserId) {
        self.voices.retain(|(u, _), _| u != user);
    }

    pub fn is_idle(&self) -> bool {
        self.voices.is_empty() && self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    /// Feeds 20 ms packets of each (user, dBov) for `ms`, polling every 250 ms like the SFU.
    fn run(r: &mut RoomSpeakers, t: &mut Instant, ms: u64, voices: &[(&str, u8)], polls: &mut Vec<(u64, Vec<(UserId, u8)>)>, start: Instant) {
        for step in 0..ms / 20 {
            *t += Duration::from_millis(20);
            for (u, d) in voices {
                r.note(&user(u), StreamKind::Main, *d, *t);
            }
            if (step + 1) % 12 == 0 {
                if let Some(l) = r.poll(*t) {
                    polls.push((t.duration_since(start).as_millis() as u64, l));
                }
            }
        }
    }

    #[test]
    fn a_tone_is_listed_within_half_a_second_and_silence_never() {
        let start = Instant::now();
        let (mut r, mut t, mut polls) = (RoomSpeakers::default(), start, Vec::new());
        run(&mut r, &mut t, 1000, &[("alice", 20), ("bob", 127), ("carol", 127)], &mut polls, start);
        let (at, list) = &polls[0];
        assert!(*at <= 500, "listed at {at} ms");
        assert_eq!(list, &vec![(user("alice"), 84)]);
        assert_eq!(polls.len(), 1, "no change, no new list: {polls:?}");
    }

    #[test]
    fn the_list_switches_when_another_speaks_and_is_loudest_first() {
        let start = Instant::now();
        let (mut r, mut t, mut polls) = (RoomSpeakers::default(), start, Vec::new());
        run(&mut r, &mut t, 1000, &[("alice", 20), ("bob", 127)], &mut polls, start);
        run(&mut r, &mut t, 1500, &[("alice", 127), ("bob", 10)], &mut polls, start);
        assert_eq!(polls.last().unwrap().1, vec![(user("bob"), 92)]);
        run(&mut r, &mut t, 1000, &[("alice", 30), ("bob", 10)], &mut polls, start);
        let last = &polls.last().unwrap().1;
        assert_eq!(last.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(), ["bob", "alice"]);
        assert!(last[1].1.abs_diff(76) < LEVEL_STEP, "{last:?}");
        // Never two lists within 500 ms.
        assert!(polls.windows(2).all(|w| w[1].0 - w[0].0 >= 500), "{polls:?}");
    }

    #[test]
    fn the_dominant_speaker_stays_through_silence_until_another_speaks() {
        let start = Instant::now();
        let (mut r, mut t, mut polls) = (RoomSpeakers::default(), start, Vec::new());
        assert_eq!(r.dominant(), None);
        run(&mut r, &mut t, 1000, &[("alice", 20), ("bob", 127)], &mut polls, start);
        assert_eq!(r.dominant(), Some(&user("alice")));
        // Everyone silent: nobody is listed, alice still dominates.
        run(&mut r, &mut t, 2000, &[("alice", 127), ("bob", 127)], &mut polls, start);
        assert_eq!((r.loudest(), r.dominant()), (None, Some(&user("alice"))));
        run(&mut r, &mut t, 1000, &[("alice", 127), ("bob", 20)], &mut polls, start);
        assert_eq!(r.dominant(), Some(&user("bob")));
    }

    #[test]
    fn a_click_is_not_speech_and_a_stopped_voice_drops_out() {
        let start = Instant::now();
        let (mut r, mut t, mut polls) = (RoomSpeakers::default(), start, Vec::new());
        run(&mut r, &mut t, 500, &[("alice", 127)], &mut polls, start);
        run(&mut r, &mut t, 60, &[("alice", 0)], &mut polls, start);
        run(&mut r, &mut t, 500, &[("alice", 127)], &mut polls, start);
        assert!(r.current(t).is_empty() && polls.is_empty(), "{polls:?}");
        run(&mut r, &mut t, 1000, &[("alice", 20)], &mut polls, start);
        assert_eq!(polls.last().unwrap().1.len(), 1);
        // The publisher stops sending: within a second, an empty list.
        t += Duration::from_millis(1000);
        assert_eq!(r.poll(t), Some(vec![]));
    }

    #[test]
    fn a_joiner_gets_the_current_list_again() {
        let start = Instant::now();
        let (mut r, mut t, mut polls) = (RoomSpeakers::default(), start, Vec::new());
        run(&mut r, &mut t, 1000, &[("alice", 20)], &mut polls, start);
        assert_eq!(polls.len(), 1);
        r.resend();
        run(&mut r, &mut t, 300, &[("alice", 20)], &mut polls, start);
        assert_eq!(polls.len(), 2, "{polls:?}");
        assert_eq!(polls[1].1, polls[0].1);
    }

    #[test]
    fn at_most_sixteen_are_listed() {
        let start = Instant::now();
        let names: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
        let voices: Vec<(&str, u8)> = names.iter().enumerate().map(|(i, n)| (n.as_str(), 10 + i as u8)).collect();
        let (mut r, mut t, mut polls) = (RoomSpeakers::default(), start, Vec::new());
        run(&mut r, &mut t, 1000, &voices, &mut polls, start);
        let list = &polls.last().unwrap().1;
        assert_eq!(list.len(), 16);
        assert_eq!(list[0].0, user("u0"));
        assert!(list.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}
