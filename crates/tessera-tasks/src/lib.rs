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
pub mod relay;
pub mod task_file;

pub use error::{ErrorKind, TaskError, TaskResult};
pub use events::{EventSink, Events};

use std::path::PathBuf;
use std::sync::Arc;

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
            mix_jobs: mix_jobs::MixJobs::default(),
            relays: relay::Relays::new(tasks_dir, events.clone(), tls),
            recordings: recording::Recordings::new(events.clone()),
            rtc,
            events,
            data_dir,
            max_mix_jobs,
        }))
    }

    pub fn tasks_dir(&self) -> PathBuf {
        self.data_dir.join("tasks")
    }
}
