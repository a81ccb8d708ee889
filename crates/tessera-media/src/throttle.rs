//! The one keyframe-request throttle: a publisher answers every PLI/FIR with an expensive
//! IDR, so a burst of losses, viewers or consumers must not become a burst of requests.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    interval: Duration,
    last: Option<Instant>,
}

impl KeyframeThrottle {
    pub const fn new(interval: Duration) -> KeyframeThrottle {
        KeyframeThrottle { interval, last: None }
    }

    /// Whether a request may go out at `now` (none yet, or the interval has passed).
    pub fn ready(&self, now: Instant) -> bool {
        self.last.is_none_or(|t| now.saturating_duration_since(t) >= self.interval)
    }

    /// Notes a request sent at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// `ready` and, if so, `sent`: true when the caller should send the request.
    pub fn try_request(&mut self, now: Instant) -> bool {
        let ready = self.ready(now);
        if ready {
            self.sent(now);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_interval() {
        let t = Instant::now();
        let mut k = KeyframeThrottle::new(Duration::from_millis(500));
        assert!(k.try_request(t));
        assert!(!k.try_request(t + Duration::from_millis(499)));
        assert!(k.ready(t + Duration::from_millis(500)));
        assert!(k.try_request(t + Duration::from_millis(500)));
        assert!(!k.ready(t + Duration::from_millis(600)));
    }
}
