//! The data dir (PRODUCT.md §2) and the app store kept in `apps.json`.
//!
//! Durability rule: a change is written to a temp file, fsync'd, renamed over the old file and
//! the directory fsync'd before the API answers 2xx, so a crash never loses an acknowledged
//! change and never leaves a half-written file.

use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tessera_model::apikey::{self, ApiKeyRecord, IssuedApiKey};
use tessera_model::{App, AppError, AppId, Kid, Policy};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("data dir {0} is in use by another tessera process")]
    Locked(PathBuf),
    #[error("app '{0}' does not exist")]
    AppNotFound(String),
    #[error(transparent)]
    App(#[from] AppError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// Writes `bytes` to `path` atomically and durably (`tessera_tasks::persist`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    tessera_tasks::persist::write_atomic(path, bytes, mode).map_err(|e| StoreError::Io { path: e.path, source: e.source })
}

/// The data dir. While a server runs it holds an exclusive lock on `tessera.lock`, so two
/// servers never write the same files.
pub struct DataDir {
    root: PathBuf,
    _lock: Option<File>,
}

/// Keeps the I/O kind (a full disk is answered 507) for callers that speak `io::Result`.
impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> std::io::Error {
        let kind = match &e {
            StoreError::Io { source, .. } => source.kind(),
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e.to_string())
    }
}

impl DataDir {
    fn create(root: &Path) -> Result<(), StoreError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        for sub in ["tasks", "outbox", "recordings", "spool"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(())
    }

    /// Creates the layout if needed and takes the exclusive lock.
    pub fn open_locked(root: &Path) -> Result<DataDir, StoreError> {
        Self::create(root)?;
        let lock_path = root.join("tessera.lock");
        let lock = OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&lock_path).map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => Ok(DataDir { root: root.to_owned(), _lock: Some(lock) }),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked(root.to_owned())),
            Err(fs::TryLockError::Error(e)) => Err(StoreError::Io { path: lock_path, source: e }),
        }
    }

    /// For readers (the CLI) while a server may hold the lock.
    pub fn open_shared(root: &Path) -> DataDir {
        DataDir { root: root.to_owned(), _lock: None }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn apps_path(&self) -> PathBuf {
        self.root.join("apps.json")
    }

    /// Whether `root` is a data dir a server has set up (it has its apps).
    pub fn has_apps(root: &Path) -> bool {
        root.join("apps.json").is_file()
    }

    pub fn admin_key_path(&self) -> PathBuf {
        self.root.join("admin.key")
    }
}

#[derive(Serialize, Deserialize)]
struct AppsFile {
    version: u32,
    apps: Vec<App>,
}

/// What the first start created, for the banner.
pub struct FirstStart {
    pub admin_key: String,
}

/// All apps, in memory and in `apps.json`. Readers take a cheap snapshot; writers are
/// serialized, persist, then publish the new snapshot.
pub struct AppStore {
    path: Option<PathBuf>,
    apps: RwLock<Arc<BTreeMap<AppId, App>>>,
    write: Mutex<()>,
    /// API key id → last use (ms). Kept in memory and saved with the next write or at shutdown,
    /// so authenticating a request never costs an fsync.
    last_used: dashmap::DashMap<String, i64>,
    /// Cluster mode: every saved change also goes here (to the shared copy in Redis).
    replicate: std::sync::OnceLock<Box<dyn Fn(Vec<u8>) + Send + Sync>>,
}

pub type Apps = Arc<BTreeMap<AppId, App>>;

impl AppStore {
    /// A store that lives only in memory (tests, tools).
    pub fn in_memory(apps: Vec<App>) -> AppStore {
        AppStore {
            path: None,
            apps: RwLock::new(Arc::new(apps.into_iter().map(|a| (a.id.clone(), a)).collect())),
            write: Mutex::new(()),
            last_used: dashmap::DashMap::new(),
            replicate: std::sync::OnceLock::new(),
        }
    }

    fn read_file(path: &Path) -> Result<Option<Vec<App>>, StoreError> {
        match fs::read(path) {
            Ok(bytes) => {
                let f: AppsFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { path: path.to_owned(), message: e.to_string() })?;
                Ok(Some(f.apps))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: path.to_owned(), source: e }),
        }
    }

    /// Reads `apps.json` without changing anything. `None` when the data dir was never set up.
    pub fn load_shared(dir: &DataDir) -> Result<Option<AppStore>, StoreError> {
        Ok(Self::read_file(&dir.apps_path())?.map(|apps| {
            let mut s = AppStore::in_memory(apps);
            s.path = Some(dir.apps_path());
            s
        }))
    }

    /// Loads `apps.json` (creating it on first start), makes sure the `default` app and every
    /// app of the config exist with the config's secrets and settings, and saves the result.
    /// Needs the data dir lock.
    pub fn load_or_init(dir: &DataDir, config: &Config, now_ms: i64) -> Result<(AppStore, Option<FirstStart>), StoreError> {
        let path = dir.apps_path();
        let existing = Self::read_file(&path)?;
        let mut first = None;
        let mut apps: BTreeMap<AppId, App> = existing.unwrap_or_default().into_iter().map(|a| (a.id.clone(), a)).collect();
        let default = AppId::default_app();
        if let std::collections::btree_map::Entry::Vacant(slot) = apps.entry(default.clone()) {
            let mut app = App::new(default, now_ms);
            let issued = apikey::issue("admin", Policy::full_access(), now_ms);
            app.api_keys.push(issued.record);
            // The key file first: if we crash before apps.json exists, the next start redoes both.
            write_atomic(&dir.admin_key_path(), format!("{}\n", issued.key).as_bytes(), 0o600)?;
            first = Some(FirstStart { admin_key: issued.key });
            slot.insert(app);
        }
        for (id, app_config) in &config.apps {
            let id = AppId::parse(id).map_err(|e| AppError::Invalid { field: "apps".into(), reason: e.to_string() })?;
            let app = apps.entry(id.clone()).or_insert_with(|| {
                let mut a = App::new(id.clone(), now_ms);
                if !app_config.secrets.is_empty() {
                    a.secrets.clear(); // the config's secrets replace the generated one
                }
                a
            });
            for (i, s) in app_config.secrets.iter().enumerate() {
                let (kid, secret) = s.resolve(i + 1);
                let kid = Kid::parse(&kid).map_err(|e| AppError::Invalid { field: "secrets".into(), reason: e.to_string() })?;
                match app.secrets.iter_mut().find(|s| s.kid == kid) {
                    Some(existing) => existing.secret = secret,
                    None => {
                        app.add_secret(kid, secret, now_ms)?;
                    }
                }
            }
            if let Some(w) = &app_config.webhook {
                app.webhook = w.clone();
            }
            if let Some(r) = &app_config.auto_recording {
                app.auto_recording = r.clone();
            }
            if let Some(s) = &app_config.default_storage {
                app.default_storage = tessera_model::StorageRef::Named(s.clone());
            }
            if let Some(r) = &app_config.rtmp {
                app.rtmp = r.clone();
            }
        }
        let store =
            AppStore { path: Some(path), apps: RwLock::new(Arc::new(apps)), write: Mutex::new(()), last_used: dashmap::DashMap::new(), replicate: std::sync::OnceLock::new() };
        store.persist(&store.snapshot())?;
        Ok((store, first))
    }

    pub fn snapshot(&self) -> Apps {
        self.apps.read().expect("app store lock").clone()
    }

    fn with_last_used(&self, apps: &BTreeMap<AppId, App>) -> BTreeMap<AppId, App> {
        let mut apps = apps.clone();
        for app in apps.values_mut() {
            for k in &mut app.api_keys {
                if let Some(t) = self.last_used.get(&k.id) {
                    k.last_used_at = Some(*t);
                }
            }
        }
        apps
    }

    fn persist(&self, apps: &BTreeMap<AppId, App>) -> Result<(), StoreError> {
        let bytes = Self::encode(apps);
        if let Some(path) = &self.path {
            write_atomic(path, &bytes, 0o600)?;
        }
        if let Some(replicate) = self.replicate.get() {
            replicate(bytes);
        }
        Ok(())
    }

    fn encode(apps: &BTreeMap<AppId, App>) -> Vec<u8> {
        let file = AppsFile { version: 1, apps: apps.values().cloned().collect() };
        serde_json::to_vec_pretty(&file).expect("apps serialize")
    }

    fn decode(bytes: &[u8]) -> Result<BTreeMap<AppId, App>, StoreError> {
        let f: AppsFile = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { path: PathBuf::from("<cluster app store>"), message: e.to_string() })?;
        Ok(f.apps.into_iter().map(|a| (a.id.clone(), a)).collect())
    }

    /// The store as `apps.json` holds it (what the cluster shares).
    pub fn encoded(&self) -> Vec<u8> {
        Self::encode(&self.with_last_used(&self.snapshot()))
    }

    /// Sends every saved change to `f` from now on (cluster mode: to Redis).
    pub fn replicate_to(&self, f: impl Fn(Vec<u8>) + Send + Sync + 'static) {
        let _ = self.replicate.set(Box::new(f));
    }

    /// Joining a cluster: the cluster's apps win, and this node's own API keys and apps the
    /// cluster lacks are added (so the admin key this node printed at its first start keeps
    /// working on every node). Saves locally and returns the merged store to share.
    pub fn join_cluster(&self, cluster: &[u8]) -> Result<Vec<u8>, StoreError> {
        let _guard = self.write.lock().expect("app store write lock");
        let mut merged = Self::decode(cluster)?;
        for (id, local) in self.with_last_used(&self.snapshot()) {
            match merged.get_mut(&id) {
                None => {
                    merged.insert(id, local);
                }
                Some(shared) => {
                    for key in local.api_keys {
                        if shared.api_key(&key.id).is_none() {
                            shared.api_keys.push(key);
                        }
                    }
                }
            }
        }
        self.save_without_replicating(merged)?;
        Ok(self.encoded())
    }

    /// Takes another node's change to the shared store.
    pub fn adopt(&self, cluster: &[u8]) -> Result<(), StoreError> {
        let _guard = self.write.lock().expect("app store write lock");
        self.save_without_replicating(Self::decode(cluster)?)
    }

    fn save_without_replicating(&self, apps: BTreeMap<AppId, App>) -> Result<(), StoreError> {
        if let Some(path) = &self.path {
            write_atomic(path, &Self::encode(&apps), 0o600)?;
        }
        *self.apps.write().expect("app store lock") = Arc::new(apps);
        Ok(())
    }

    /// Applies `f` to one app, saves durably, then publishes the change.
    pub fn update<R>(&self, app: &AppId, f: impl FnOnce(&mut App) -> Result<R, AppError>) -> Result<R, StoreError> {
        let _guard = self.write.lock().expect("app store write lock");
        let mut next = self.with_last_used(&self.snapshot());
        let target = next.get_mut(app).ok_or_else(|| StoreError::AppNotFound(app.to_string()))?;
        let result = f(target)?;
        self.persist(&next)?;
        *self.apps.write().expect("app store lock") = Arc::new(next);
        Ok(result)
    }

    /// Saves the in-memory last-use times (at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        let _guard = self.write.lock().expect("app store write lock");
        let next = self.with_last_used(&self.snapshot());
        self.persist(&next)?;
        *self.apps.write().expect("app store lock") = Arc::new(next);
        Ok(())
    }

    /// The app and record of an API key, if the key is valid.
    pub fn authenticate_key(&self, key: &str) -> Option<(AppId, ApiKeyRecord)> {
        let id = apikey::key_id(key)?;
        let apps = self.snapshot();
        apps.values().find_map(|app| app.api_key(id).filter(|r| r.matches(key)).map(|r| (app.id.clone(), r.clone())))
    }

    pub fn touch_key(&self, id: &str, now_ms: i64) {
        self.last_used.insert(id.to_owned(), now_ms);
    }

    pub fn last_used(&self, id: &str) -> Option<i64> {
        self.last_used.get(id).map(|t| *t)
    }

    /// Creates an API key for `app` and saves it.
    pub fn create_api_key(&self, app: &AppId, name: &str, policy: Policy, now_ms: i64) -> Result<IssuedApiKey, StoreError> {
        let issued = apikey::issue(name, policy, now_ms);
        let record = issued.record.clone();
        self.update(app, move |a| {
            a.api_keys.push(record);
            Ok(())
        })?;
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppConfig, ConfigSecret};

    fn tmp() -> PathBuf {
        let p = std::env::temp_dir().join(format!("tessera-store-test-{}", tessera_model::random::task_id()));
        p
    }

    #[test]
    fn first_start_creates_default_app_and_admin_key_then_reuses_them() {
        let root = tmp();
        let config = Config::default();
        let key;
        let secret;
        {
            let dir = DataDir::open_locked(&root).unwrap();
            let (store, first) = AppStore::load_or_init(&dir, &config, 1).unwrap();
            key = first.expect("first start").admin_key;
            assert_eq!(fs::read_to_string(dir.admin_key_path()).unwrap().trim(), key);
            let (app, rec) = store.authenticate_key(&key).unwrap();
            assert_eq!(app.as_str(), "default");
            assert_eq!(rec.policy, Policy::full_access());
            secret = store.snapshot()[&AppId::default_app()].newest_secret().secret.clone();
            use std::os::unix::fs::PermissionsExt;
            for p in [dir.apps_path(), dir.admin_key_path()] {
                assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{p:?}");
            }
            // The plaintext key is never stored in apps.json.
            assert!(!fs::read_to_string(dir.apps_path()).unwrap().contains(&key));
            // A second server on the same dir is refused while this one holds the lock.
            assert!(matches!(DataDir::open_locked(&root), Err(StoreError::Locked(_))));
        }
        let dir = DataDir::open_locked(&root).unwrap();
        let (store, first) = AppStore::load_or_init(&dir, &config, 2).unwrap();
        assert!(first.is_none());
        assert!(store.authenticate_key(&key).is_some());
        assert_eq!(store.snapshot()[&AppId::default_app()].newest_secret().secret, secret);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn config_apps_and_secrets_are_installed() {
        let root = tmp();
        let mut config = Config::default();
        config.apps.insert(
            "shop".into(),
            AppConfig { secrets: vec![ConfigSecret::Plain("shop-secret-0123456789".into())], webhook: None, auto_recording: None, default_storage: None, rtmp: None },
        );
        let dir = DataDir::open_locked(&root).unwrap();
        let (store, _) = AppStore::load_or_init(&dir, &config, 1).unwrap();
        let apps = store.snapshot();
        let shop = &apps[&AppId::parse("shop").unwrap()];
        assert_eq!(shop.secrets.len(), 1);
        assert_eq!(shop.secrets[0].kid.as_str(), "cfg1");
        assert_eq!(shop.secrets[0].secret, "shop-secret-0123456789");
        drop(store);
        // Changing the configured value replaces it on the next start.
        config.apps.get_mut("shop").unwrap().secrets = vec![ConfigSecret::Plain("shop-secret-rotated-0000".into())];
        let (store, _) = AppStore::load_or_init(&dir, &config, 2).unwrap();
        assert_eq!(store.snapshot()[&AppId::parse("shop").unwrap()].secrets[0].secret, "shop-secret-rotated-0000");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn updates_are_persisted_and_failed_updates_change_nothing() {
        let root = tmp();
        let dir = DataDir::open_locked(&root).unwrap();
        let (store, _) = AppStore::load_or_init(&dir, &Config::default(), 1).unwrap();
        let app = AppId::default_app();
        let kid = store.update(&app, |a| a.add_generated_secret(5).map(|s| s.kid.clone())).unwrap();
        assert_eq!(kid.as_str(), "k2");
        let err = store.update(&app, |a| {
            a.remove_secret("k1")?;
            a.remove_secret("k2") // the last one: refused, and the k1 removal is rolled back
        });
        assert!(matches!(err, Err(StoreError::App(AppError::LastSecret(_)))));
        assert_eq!(store.snapshot()[&app].secrets.len(), 2);
        let on_disk = AppStore::load_shared(&dir).unwrap().unwrap();
        assert_eq!(on_disk.snapshot()[&app].secrets.len(), 2);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn corrupt_file_is_reported_not_overwritten() {
        let root = tmp();
        let dir = DataDir::open_locked(&root).unwrap();
        fs::write(dir.apps_path(), b"{not json").unwrap();
        let e = AppStore::load_or_init(&dir, &Config::default(), 1).err().unwrap();
        assert!(e.to_string().contains("apps.json is damaged"), "{e}");
        assert_eq!(fs::read(dir.apps_path()).unwrap(), b"{not json");
        fs::remove_dir_all(&root).unwrap();
    }
}
