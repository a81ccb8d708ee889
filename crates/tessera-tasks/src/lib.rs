//! Tessera's long-running tasks: relays (`relay`), recordings (`recording`), pull ingests
//! (`ingest`) and mix jobs (`mix_jobs`). Their logic is the engine's sans-IO machines; this
//! crate holds the registries, the task files that make them survive a restart, and the thin
//! drivers that run a machine on sockets, threads and timers. Events leave through an
//! [`EventSink`] (the server delivers them as webhooks); errors are [`TaskError`]s (the
//! server maps them to its HTTP error shape).

pub mod error;
pub mod events;
pub mod ingest;
pub mod merge;
pub mod mix_jobs;
pub mod outbound;
pub mod persist;
pub mod recording;
pub mod registry;
pub mod relay;
pub mod task_file;

pub use error::{ErrorKind, TaskError, TaskResult};
pub use events::{EventSink, Events};
pub use registry::{Registry, Task, TaskFiles};

use std::path::PathBuf;
use std::sync::Arc;
use tessera_engine::RoomKey;
use tessera_model::{AppId, RoomId, UserId};

/// Locks a task's shared record even if a thread panicked while holding it: every writer
/// leaves the value whole, and one panicking worker must not break every later GET of its task.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wall-clock time in Unix milliseconds, the unit of every `*_at` field.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Every task of the process and what they share: the engine, where events go, the data dir.
/// Cheap to clone.
#[derive(Clone)]
pub struct Tasks(Arc<TasksInner>);

pub struct TasksInner {
    pub rtc: tessera_engine::RtcHandle,
    pub events: Events,
    /// Recordings live under `<data_dir>/recordings`, task files under `<data_dir>/tasks`.
    pub data_dir: PathBuf,
    /// At most this many mix jobs run at once (default: one per core).
    pub max_mix_jobs: Option<u32>,
    pub ingests: ingest::Ingests,
    pub mix_jobs: mix_jobs::MixJobs,
    pub relays: relay::Relays,
    pub recordings: recording::Recordings,
}

impl std::ops::Deref for Tasks {
    type Target = TasksInner;
    fn deref(&self) -> &TasksInner {
        &self.0
    }
}

impl Tasks {
    /// `persist: false` keeps task files out of the data dir (tests, tools); `tls` is the
    /// client set-up of relays' RTMPS connections.
    pub fn new(rtc: tessera_engine::RtcHandle, events: Events, data_dir: PathBuf, persist: bool, max_mix_jobs: Option<u32>, tls: Arc<rustls::ClientConfig>) -> Tasks {
        let tasks_dir = persist.then(|| data_dir.join("tasks"));
        Tasks(Arc::new(TasksInner {
            ingests: ingest::Ingests::new(tasks_dir.clone(), events.clone()),
            mix_jobs: mix_jobs::MixJobs::new(data_dir.join("tasks")),
            relays: relay::Relays::new(tasks_dir, events.clone(), tls),
            recordings: recording::Recordings::new(events.clone(), data_dir.join("tasks")),
            rtc,
            events,
            data_dir,
            max_mix_jobs,
        }))
    }

    pub fn tasks_dir(&self) -> PathBuf {
        self.data_dir.join("tasks")
    }

    /// Live tasks on a room: (mix jobs, relays, recordings, ingests).
    pub fn live_in_room(&self, room: &RoomKey) -> RoomTasks {
        let on = |app: AppId, r: &RoomId| app == room.app && *r == room.room;
        RoomTasks {
            mix_jobs: self.mix_jobs.all().iter().filter(|j| j.is_live() && on(j.app(), &j.handle.spec().room.room)).count(),
            relays: self.relays.all().iter().filter(|t| t.is_live() && on(t.app(), &t.record().room)).count(),
            recordings: self.recordings.all().iter().filter(|t| t.is_live() && on(t.app(), &recording::lock(&t.spec).room)).count(),
            ingests: self.ingests.all().iter().filter(|t| t.is_live() && on(t.app(), &t.record().room)).count(),
        }
    }

    /// `DELETE /v1/rooms/{room}`: every task on the room stops (LeaveCode 2; ingests end with
    /// 702 `room_dismissed`). The room's sessions are the SFU's to end.
    pub fn dismiss_room(&self, room: &RoomKey) {
        let on = |app: AppId, r: &RoomId| app == room.app && *r == room.room;
        for j in self.mix_jobs.all().iter().filter(|j| on(j.app(), &j.handle.spec().room.room)) {
            j.handle.stop_with(2);
        }
        for t in self.relays.all().iter().filter(|t| on(t.app(), &t.record().room)) {
            self.relays.stop_for(t, tessera_engine::outputs::relay::StopCause::RoomDismissed);
        }
        for t in self.recordings.all().iter().filter(|t| on(t.app(), &recording::lock(&t.spec).room)) {
            t.stop_with(2);
        }
        for t in self.ingests.all().iter().filter(|t| on(t.app(), &t.record().room)) {
            self.ingests.stop_for(t, tessera_engine::ingest::EndReason::RoomDismissed);
        }
    }

    /// `DELETE /v1/rooms/{room}/users/{user}`: an ingest publishing as the user stops (702
    /// `api`); the user's sessions are the SFU's to end.
    pub fn remove_user(&self, room: &RoomKey, user: &UserId) {
        for t in self.ingests.all().iter().filter(|t| {
            let r = t.record();
            r.app == room.app && r.room == room.room && r.user == *user
        }) {
            self.ingests.stop(t);
        }
    }
}

/// Live tasks on one room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RoomTasks {
    pub mix_jobs: usize,
    pub relays: usize,
    pub recordings: usize,
    pub ingests: usize,
}
