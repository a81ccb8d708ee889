//! One registry for every task kind (relays, recordings, ingests, mix jobs): the tasks by id,
//! looked up within their app, counted, saved to `tasks/<id>.json` and read back at the next
//! start. What differs per kind is the task itself, behind the small [`Task`] trait.

use crate::persist::write_atomic;
use crate::TaskResult;
use dashmap::DashMap;
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tessera_model::AppId;

/// What the registry needs to know of a task.
pub trait Task: Send + Sync + 'static {
    /// The `kind` of its task file.
    const KIND: &'static str;
    fn app(&self) -> AppId;
    /// Not in a final state yet (counts against the app's limits, resumes after a restart).
    fn is_live(&self) -> bool;
}

/// Hears every task record saved: (kind, id, the file's bytes).
pub type TaskReplica = Box<dyn Fn(&'static str, &str, &[u8]) + Send + Sync>;

/// Cluster mode: every saved task record is also shared (so another node can take the task over
/// if this one dies). One per process, as the process has one set of tasks.
static REPLICA: std::sync::OnceLock<TaskReplica> = std::sync::OnceLock::new();

/// Sends every task record saved from now on to `f` as well.
pub fn replicate_saved_tasks(f: TaskReplica) {
    let _ = REPLICA.set(f);
}

/// Where a kind's task files go; cloned into each task that saves itself on change. `None`
/// keeps them in memory only (tests, tools).
#[derive(Clone)]
pub struct TaskFiles {
    dir: Option<PathBuf>,
    kind: &'static str,
}

impl TaskFiles {
    /// Writes the record durably (RECORDING.md §8). A failure is logged and returned: a task
    /// that cannot be saved at its start is not started (issue 10, defect 7).
    pub fn save(&self, id: &str, record: &impl Serialize) -> TaskResult<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        write_atomic(&dir.join(format!("{id}.json")), &bytes, 0o600).map_err(|e| {
            tracing::warn!(task = %id, kind = self.kind, "cannot save the task: {e}");
            crate::TaskError::from(e)
        })?;
        if let Some(replica) = REPLICA.get() {
            replica(self.kind, id, &bytes);
        }
        Ok(())
    }

    /// The valid records of this kind a previous run left (`task_file::read_all`).
    pub fn saved(&self) -> Vec<Value> {
        match &self.dir {
            Some(dir) => crate::task_file::read_all(dir, self.kind),
            None => Vec::new(),
        }
    }
}

pub struct Registry<T: Task> {
    tasks: DashMap<String, Arc<T>>,
    files: TaskFiles,
}

impl<T: Task> Registry<T> {
    pub fn new(dir: Option<PathBuf>) -> Registry<T> {
        Registry { tasks: DashMap::new(), files: TaskFiles { dir, kind: T::KIND } }
    }

    pub fn files(&self) -> &TaskFiles {
        &self.files
    }

    pub fn insert(&self, id: &str, task: Arc<T>) {
        self.tasks.insert(id.to_owned(), task);
    }

    /// The app's task with this id (another app's is not found).
    pub fn get(&self, app: &AppId, id: &str) -> Option<Arc<T>> {
        self.tasks.get(id).map(|t| t.clone()).filter(|t| t.app() == *app)
    }

    /// The app's tasks with their ids.
    pub fn of_app(&self, app: &AppId) -> Vec<(String, Arc<T>)> {
        self.tasks.iter().filter(|t| t.app() == *app).map(|t| (t.key().clone(), t.value().clone())).collect()
    }

    pub fn all(&self) -> Vec<Arc<T>> {
        self.tasks.iter().map(|t| t.value().clone()).collect()
    }

    /// Live tasks of one app, or of every app.
    pub fn live_count(&self, app: Option<&AppId>) -> usize {
        self.tasks.iter().filter(|t| t.is_live() && app.is_none_or(|a| t.app() == *a)).count()
    }
}

/// Waits (at most `limit`) until the task has ended, so a `DELETE` can answer with the final
/// state. Returns whether it did.
pub async fn wait_ended<T: Task>(task: &T, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while task.is_live() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Probe {
        app: AppId,
        live: AtomicBool,
    }

    impl Task for Probe {
        const KIND: &'static str = "relay";
        fn app(&self) -> AppId {
            self.app.clone()
        }
        fn is_live(&self) -> bool {
            self.live.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_are_found_within_their_app_counted_saved_and_waited_for() {
        let dir = std::env::temp_dir().join(format!("tessera-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let reg: Registry<Probe> = Registry::new(Some(dir.clone()));
        let (a, b) = (AppId::parse("a").unwrap(), AppId::parse("b").unwrap());
        let t1 = Arc::new(Probe { app: a.clone(), live: AtomicBool::new(true) });
        reg.insert("00000000000000a1", t1.clone());
        reg.insert("00000000000000b1", Arc::new(Probe { app: b.clone(), live: AtomicBool::new(false) }));
        assert!(reg.get(&a, "00000000000000a1").is_some());
        assert!(reg.get(&b, "00000000000000a1").is_none(), "another app's task is not found");
        assert_eq!((reg.live_count(Some(&a)), reg.live_count(Some(&b)), reg.live_count(None)), (1, 0, 1));
        assert_eq!(reg.of_app(&b).len(), 1);
        // Saved records of the kind come back; others in the folder are not this kind's.
        let record = serde_json::json!({"kind": "relay", "id": "00000000000000a1", "app": "a"});
        reg.files().save("00000000000000a1", &record).unwrap();
        std::fs::write(dir.join("00000000000000c1.json"), r#"{"kind":"ingest","id":"00000000000000c1","app":"a"}"#).unwrap();
        assert_eq!(reg.files().saved(), vec![record]);
        // A live task is waited for until the limit; an ended one at once.
        assert!(!wait_ended(&*t1, Duration::from_secs(2)).await);
        t1.live.store(false, Ordering::SeqCst);
        assert!(wait_ended(&*t1, Duration::from_secs(2)).await);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
