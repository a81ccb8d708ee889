//! Tessera's control plane and process shell: the typed configuration, the data dir and app
//! store, the REST API and HTTP server, metrics, and start-up/shut-down. Media work lives in
//! `tessera-engine`; this crate wires it to the network and the API.

pub mod api;
pub mod config;
pub mod entry;
pub mod error;
pub mod ingest;
pub mod listen;
pub mod merge;
pub mod metrics;
pub mod mix_jobs;
pub mod outbound;
pub mod recording;
pub mod relay;
pub mod rtmp;
pub mod run;
pub mod store;
pub mod task_file;
pub mod tls;
pub mod webhook;

pub use config::{Config, ConfigError, Overrides};
pub use run::{Server, StartError};

/// Locks a task's shared record even if a thread panicked while holding it: every writer
/// leaves the value whole, and one panicking worker must not break every later GET of its task.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wall-clock time in Unix milliseconds, the unit of every `*_at` field.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
