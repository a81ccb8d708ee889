//! Which media worker a room lives on. A new room goes to the least loaded worker (busy ratio
//! first, in 10 % steps, then the fewest rooms); it stays there while that worker holds
//! anything of it (sessions, taps, watchers, signaling members), then the entry is dropped.
//!
//! The table is shared by the handle (which places) and the workers (which confirm): a worker
//! about to act for a room claims it — an absent entry becomes its own, an entry naming another
//! worker means the command raced a removal and a new placement, and the worker forwards it
//! there. So a room's state is never split over two workers.

use crate::sfu::RoomKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub(super) struct Placement {
    rooms: Mutex<HashMap<RoomKey, usize>>,
}

impl Placement {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<RoomKey, usize>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room's worker, placing it on the least loaded one if it has none.
    pub(super) fn place(&self, key: &RoomKey, busy: &[AtomicU64]) -> usize {
        let mut rooms = self.table();
        if let Some(w) = rooms.get(key) {
            return *w;
        }
        let mut count = vec![0usize; busy.len()];
        for w in rooms.values() {
            if let Some(c) = count.get_mut(*w) {
                *c += 1;
            }
        }
        let w = (0..busy.len()).min_by_key(|&w| (busy[w].load(Ordering::Relaxed) / 100, count[w], w)).unwrap_or(0);
        rooms.insert(key.clone(), w);
        w
    }

    /// The room's worker, if it is placed (a satellite sends pipe requests there).
    pub(super) fn owner(&self, key: &RoomKey) -> Option<usize> {
        self.table().get(key).copied()
    }

    /// Worker `me` is about to act for the room: `None` when the room is (now) its own, else the
    /// worker that has it.
    pub(super) fn claim(&self, key: &RoomKey, me: usize) -> Option<usize> {
        let mut rooms = self.table();
        let owner = *rooms.entry(key.clone()).or_insert(me);
        (owner != me).then_some(owner)
    }

    /// Drops worker `me`'s entries for rooms it holds nothing of any more.
    pub(super) fn release_unheld(&self, me: usize, holds: impl Fn(&RoomKey) -> bool) {
        self.table().retain(|key, w| *w != me || holds(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomKey {
        RoomKey { app: tessera_model::AppId::default_app(), room: tessera_model::RoomId::parse(name).unwrap() }
    }

    #[test]
    fn new_rooms_go_to_the_least_loaded_worker_and_stay() {
        let p = Placement::default();
        let busy: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        // Idle workers: rooms alternate by count.
        assert_eq!(p.place(&room("a"), &busy), 0);
        assert_eq!(p.place(&room("b"), &busy), 1);
        assert_eq!(p.place(&room("c"), &busy), 0);
        // A busy worker gets no new room, whatever the counts.
        busy[0].store(800, Ordering::Relaxed);
        assert_eq!(p.place(&room("d"), &busy), 1);
        assert_eq!(p.place(&room("e"), &busy), 1);
        // A placed room stays where it is.
        assert_eq!(p.place(&room("a"), &busy), 0);
    }

    #[test]
    fn a_command_that_raced_a_new_placement_is_sent_to_it() {
        let p = Placement::default();
        let busy: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        assert_eq!(p.place(&room("a"), &busy), 0);
        assert_eq!(p.claim(&room("a"), 0), None);
        // Worker 0 holds nothing of "a" any more: the entry goes.
        p.release_unheld(0, |_| false);
        assert_eq!(p.owner(&room("a")), None);
        // Meanwhile "a" is placed anew on worker 1 (worker 0 looks busier now) …
        busy[0].store(500, Ordering::Relaxed);
        assert_eq!(p.place(&room("a"), &busy), 1);
        // … so a late command that reached worker 0 is forwarded, not run there.
        assert_eq!(p.claim(&room("a"), 0), Some(1));
        // A command for an unplaced room makes it the worker's own.
        assert_eq!(p.claim(&room("z"), 0), None);
        assert_eq!(p.owner(&room("z")), Some(0));
        // Entries of rooms a worker still holds, and other workers' entries, stay.
        p.release_unheld(0, |k| *k == room("z"));
        assert_eq!(p.owner(&room("z")), Some(0));
        assert_eq!(p.owner(&room("a")), Some(1));
    }
}
