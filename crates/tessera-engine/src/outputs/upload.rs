//! One recording's uploads to an object store as a value (RECORDING.md §7 "Spool and upload"):
//! files wait in the spool in the order they were finished; the first is tried, and a failure
//! holds the whole queue back 3, 6, 12 … s (capped at 300 s) so a playlist never lands before
//! the segments it names. A file still failing 24 h after the first failure is given up.
//! The driver (threads, HTTP) asks what is due, does it, and reports back.

use std::collections::VecDeque;

/// The first retry waits this long; each next one twice as long.
pub const FIRST_RETRY_MS: i64 = 3_000;
pub const MAX_RETRY_MS: i64 = 300_000;
/// A file that cannot be stored for this long is dropped from the queue (it stays on disk).
pub const GIVE_UP_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The file's name in the task's folder (and in the object key).
    pub name: String,
    /// Queued at (ms), for the give-up rule.
    pub since_ms: i64,
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Tried again at this time.
    RetryAt(i64),
    /// Failing for 24 h: the file is left in the spool and the queue goes on.
    GaveUp,
}

#[derive(Debug, Default)]
pub struct UploadQueue {
    waiting: VecDeque<Upload>,
    /// The head is being uploaded now (the driver holds it).
    in_flight: bool,
    /// Consecutive failures of the head.
    failures: u32,
    next_try_ms: i64,
    /// Files given up (they stay in the spool).
    pub given_up: Vec<String>,
}

impl UploadQueue {
    /// A finished file (or a new version of a playlist) to store. A name already waiting (not
    /// the one in flight) is not queued twice: its upload reads the newest file anyway.
    pub fn push(&mut self, name: &str, now_ms: i64) {
        let skip_head = usize::from(self.in_flight);
        if self.waiting.iter().skip(skip_head).any(|u| u.name == name) {
            return;
        }
        self.waiting.push_back(Upload { name: name.to_string(), since_ms: now_ms });
    }

    /// Drops a waiting file (deleted before it was stored). The one in flight stays.
    pub fn forget(&mut self, name: &str) {
        let skip_head = usize::from(self.in_flight);
        let mut i = 0;
        self.waiting.retain(|u| {
            i += 1;
            i <= skip_head || u.name != name
        });
    }

    /// The upload to do now, if one is due: the driver must report it with `stored` or `failed`.
    pub fn take_due(&mut self, now_ms: i64) -> Option<Upload> {
        if self.in_flight || now_ms < self.next_try_ms {
            return None;
        }
        let head = self.waiting.front()?.clone();
        self.in_flight = true;
        Some(head)
    }

    /// When something is due next (for the driver's sleep), if anything waits.
    pub fn next_due_ms(&self) -> Option<i64> {
        (!self.in_flight && !self.waiting.is_empty()).then_some(self.next_try_ms)
    }

    pub fn stored(&mut self) {
        if self.in_flight {
            self.waiting.pop_front();
            self.in_flight = false;
        }
        self.failures = 0;
        self.next_try_ms = 0;
    }

    pub fn failed(&mut self, now_ms: i64) -> AfterFailure {
        self.in_flight = false;
        let Some(head) = self.waiting.front() else { return AfterFailure::GaveUp };
        if now_ms - head.since_ms >= GIVE_UP_MS {
            let dropped = self.waiting.pop_front().expect("a head");
            self.given_up.push(dropped.name);
            self.failures = 0;
            self.next_try_ms = 0;
            return AfterFailure::GaveUp;
        }
        let wait = (FIRST_RETRY_MS << self.failures.min(16)).min(MAX_RETRY_MS);
        self.failures += 1;
        self.next_try_ms = now_ms + wait;
        AfterFailure::RetryAt(self.next_try_ms)
    }

    /// Whether `name` waits (or is in flight).
    pub fn contains(&self, name: &str) -> bool {
        self.waiting.iter().any(|u| u.name == name)
    }

    /// Nothing waits and nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && !self.in_flight
    }

    /// Files not stored yet (the one in flight included).
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether the storage has failed since the last stored file.
    pub fn failing(&self) -> bool {
        self.failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_go_in_order_and_a_failure_holds_the_queue_back_with_a_doubling_wait() {
        let mut q = UploadQueue::default();
        q.push("a.ts", 0);
        q.push("a.m3u8", 0);
        q.push("a.m3u8", 0);
        assert_eq!(q.len(), 2, "a waiting playlist is not queued twice");
        let head = q.take_due(0).unwrap();
        assert_eq!(head.name, "a.ts");
        assert_eq!(q.take_due(0), None, "one upload at a time per task");
        // A new version of the playlist while the segment is in flight is still one entry.
        q.push("a.m3u8", 1);
        assert_eq!(q.len(), 2);
        assert_eq!(q.failed(1_000), AfterFailure::RetryAt(4_000));
        assert!(q.failing());
        assert_eq!(q.take_due(3_999), None);
        assert_eq!(q.take_due(4_000).unwrap().name, "a.ts", "the same file is retried first");
        assert_eq!(q.failed(4_000), AfterFailure::RetryAt(10_000));
        assert_eq!(q.take_due(10_000).unwrap().name, "a.ts");
        assert_eq!(q.failed(10_000), AfterFailure::RetryAt(22_000));
        for _ in 0..10 {
            let t = q.next_due_ms().unwrap();
            q.take_due(t).unwrap();
            q.failed(t);
        }
        let t = q.next_due_ms().unwrap();
        q.take_due(t).unwrap();
        assert_eq!(q.failed(t), AfterFailure::RetryAt(t + MAX_RETRY_MS), "the wait is capped at 300 s");
        q.take_due(t + MAX_RETRY_MS).unwrap();
        q.stored();
        assert!(!q.failing());
        assert_eq!(q.take_due(t + MAX_RETRY_MS).unwrap().name, "a.m3u8", "the next one goes at once");
        q.stored();
        assert!(q.is_empty() && q.next_due_ms().is_none());
    }

    #[test]
    fn a_playlist_rewritten_while_it_uploads_is_uploaded_again() {
        let mut q = UploadQueue::default();
        q.push("a.m3u8", 0);
        assert_eq!(q.take_due(0).unwrap().name, "a.m3u8");
        q.push("a.m3u8", 1);
        q.stored();
        assert_eq!(q.take_due(2).unwrap().name, "a.m3u8", "the newer version follows");
        q.stored();
        assert!(q.is_empty());
    }

    #[test]
    fn a_file_failing_for_24_hours_is_given_up_and_the_queue_goes_on() {
        let mut q = UploadQueue::default();
        q.push("a.ts", 0);
        q.push("b.ts", 0);
        q.take_due(0).unwrap();
        assert!(matches!(q.failed(GIVE_UP_MS - 1), AfterFailure::RetryAt(_)));
        let t = q.next_due_ms().unwrap();
        q.take_due(t).unwrap();
        assert_eq!(q.failed(t), AfterFailure::GaveUp);
        assert_eq!(q.given_up, vec!["a.ts".to_string()]);
        assert_eq!(q.take_due(t).unwrap().name, "b.ts");
    }

    #[test]
    fn a_forgotten_file_leaves_the_queue_but_not_while_in_flight() {
        let mut q = UploadQueue::default();
        q.push("a.ts", 0);
        q.push("b.ts", 0);
        q.take_due(0).unwrap();
        q.forget("a.ts");
        q.forget("b.ts");
        assert_eq!(q.len(), 1);
        q.stored();
        assert!(q.is_empty());
    }
}
