//! An S3-compatible bucket as recording storage (RECORDING.md §7).
//!
//! Requests are signed sans-IO by `rusty-s3` (presigned URLs, so no header needs signing) and
//! sent by a small blocking client on the upload threads. A recording writes its files into
//! its spool folder (`spool/<task>/files/`), which stays its working copy (the MP4 conversion
//! and crash recovery read it); each finished file is queued for upload, and the folder is
//! removed once the task is finished and every file is in the bucket. The queue is the
//! engine's `UploadQueue`: order kept, a failure holds the queue back 3, 6, 12 … s (capped at
//! 300 s), each failure is event 308, and 305 Status 2 tells when files left in the spool at
//! the end were stored later.

use super::hls::Storage;
use super::{RecordingError, TaskEvents};
use crate::persist::write_atomic;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tessera_engine::outputs::upload::{AfterFailure, UploadQueue};
use tessera_model::events::TaskEvent;
use tessera_model::S3Settings;

/// Presigned requests are valid this long (they are used at once).
const SIGNED_FOR: Duration = Duration::from_secs(600);
/// Files above this go up in parts (S3 takes at most 5 GiB in one PUT; parts keep a retry small).
const MULTIPART_ABOVE: u64 = 64 * 1024 * 1024;
const PART_BYTES: usize = 16 * 1024 * 1024;
/// S3's smallest part (but the last).
const MIN_PART_BYTES: usize = 5 * 1024 * 1024;
/// Upload threads for all recordings.
const UPLOAD_THREADS: usize = 2;

/// What the bucket (or the way to it) said when a request failed: event 308's `Code` and
/// `Message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

fn s3_error(code: &str, message: impl Into<String>) -> S3Error {
    S3Error { code: code.into(), message: message.into() }
}

/// `<Code>` and `<Message>` of an S3 error document; the HTTP status when it has none.
pub fn error_of_response(status: u16, body: &str) -> S3Error {
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = body.find(&open)? + open.len();
        let len = body[start..].find(&format!("</{t}>"))?;
        Some(body[start..start + len].to_string())
    };
    S3Error { code: tag("Code").unwrap_or_else(|| format!("Http{status}")), message: tag("Message").unwrap_or_else(|| format!("HTTP status {status}")) }
}

fn request_error(e: ureq::Error) -> S3Error {
    match e {
        ureq::Error::Status(status, resp) => {
            let mut body = String::new();
            let _ = resp.into_reader().take(64 * 1024).read_to_string(&mut body);
            error_of_response(status, &body)
        }
        // Not `t.to_string()`: that names the URL, whose query is a signature.
        ureq::Error::Transport(t) => {
            let mut message = t.kind().to_string();
            if let Some(m) = t.message() {
                message = format!("{message}: {m}");
            }
            if let Some(source) = std::error::Error::source(&t) {
                message = format!("{message}: {source}");
            }
            s3_error("RequestFailed", message)
        }
    }
}

/// One bucket with its credentials.
pub struct S3Client {
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
    key_prefix: String,
    public_base_url: Option<String>,
    /// (multipart above, part size).
    parts: (u64, usize),
}

impl S3Client {
    /// The client for `settings`, with the secret key already opened.
    pub fn new(settings: &S3Settings, secret_access_key: &str) -> Result<S3Client, S3Error> {
        let endpoint = url::Url::parse(&settings.endpoint).map_err(|e| s3_error("InvalidEndpoint", e.to_string()))?;
        let style = if settings.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(endpoint, style, settings.bucket.clone(), settings.region.clone()).map_err(|e| s3_error("InvalidBucket", e.to_string()))?;
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).timeout_read(Duration::from_secs(30)).timeout_write(Duration::from_secs(60)).build();
        Ok(S3Client {
            bucket,
            credentials: Credentials::new(settings.access_key_id.clone(), secret_access_key.to_string()),
            agent,
            key_prefix: settings.key_prefix.clone(),
            public_base_url: settings.public_base_url.clone(),
            parts: (MULTIPART_ABOVE, PART_BYTES),
        })
    }

    /// Multipart uploads for files above `above` bytes, in parts of `part` (at least 5 MiB).
    pub fn with_parts(mut self, above: u64, part: usize) -> S3Client {
        self.parts = (above, part.max(MIN_PART_BYTES));
        self
    }

    /// `<key_prefix><rel>` (RECORDING.md §7: `<key_prefix><Prefix>/<TaskId>/<file>`).
    pub fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.key_prefix)
    }

    /// What results list for an object: the public base URL, or else `s3://bucket/key`.
    pub fn url_of(&self, key: &str) -> String {
        match &self.public_base_url {
            Some(base) => format!("{}/{key}", base.trim_end_matches('/')),
            None => format!("s3://{}/{key}", self.bucket.name()),
        }
    }

    /// Stores the file at `path` as `key`: one PUT, or a multipart upload for a big file.
    pub fn put_file(&self, key: &str, path: &Path) -> Result<(), S3Error> {
        let file = std::fs::File::open(path).map_err(|e| s3_error("SpoolReadFailed", e.to_string()))?;
        let len = file.metadata().map_err(|e| s3_error("SpoolReadFailed", e.to_string()))?.len();
        if len > self.parts.0 {
            return self.put_multipart(key, file);
        }
        let url = self.bucket.put_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        self.agent.put(url.as_str()).set("Content-Length", &len.to_string()).send(file).map_err(request_error)?;
        Ok(())
    }

    fn put_multipart(&self, key: &str, mut file: std::fs::File) -> Result<(), S3Error> {
        let url = self.bucket.create_multipart_upload(Some(&self.credentials), key).sign(SIGNED_FOR);
        let body = self.agent.post(url.as_str()).send_bytes(&[]).map_err(request_error)?.into_string().map_err(|e| s3_error("RequestFailed", e.to_string()))?;
        let upload_id = parse_created_upload(&body)?;
        let parts = (|| -> Result<Vec<String>, S3Error> {
            let mut etags = Vec::new();
            let mut buf = vec![0u8; self.parts.1];
            loop {
                let mut filled = 0;
                while filled < buf.len() {
                    match file.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => return Err(s3_error("SpoolReadFailed", e.to_string())),
                    }
                }
                if filled == 0 {
                    return Ok(etags);
                }
                let number = u16::try_from(etags.len() + 1).map_err(|_| s3_error("EntityTooLarge", "more than 65535 parts"))?;
                let url = self.bucket.upload_part(Some(&self.credentials), key, number, &upload_id).sign(SIGNED_FOR);
                let resp = self.agent.put(url.as_str()).send_bytes(&buf[..filled]).map_err(request_error)?;
                etags.push(resp.header("ETag").ok_or_else(|| s3_error("MalformedResponse", "a part's answer has no ETag"))?.to_string());
                if filled < buf.len() {
                    return Ok(etags);
                }
            }
        })();
        let etags = match parts {
            Ok(e) => e,
            Err(e) => {
                let url = self.bucket.abort_multipart_upload(Some(&self.credentials), key, &upload_id).sign(SIGNED_FOR);
                let _ = self.agent.delete(url.as_str()).call();
                return Err(e);
            }
        };
        let complete = self.bucket.complete_multipart_upload(Some(&self.credentials), key, &upload_id, etags.iter().map(String::as_str));
        let url = complete.sign(SIGNED_FOR);
        self.agent.post(url.as_str()).send_string(&complete.body()).map_err(request_error)?;
        Ok(())
    }

    /// A GET of `key`, with the client's `Range` passed on: the answer to stream to the player.
    pub fn get(&self, key: &str, range: Option<&str>) -> Result<ureq::Response, S3Error> {
        let url = self.bucket.get_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        let mut req = self.agent.get(url.as_str());
        if let Some(r) = range {
            req = req.set("Range", r);
        }
        req.call().map_err(request_error)
    }
}

/// The upload id of a multipart upload's creation answer.
pub fn parse_created_upload(body: &str) -> Result<String, S3Error> {
    let created = rusty_s3::actions::CreateMultipartUpload::parse_response(body).map_err(|e| s3_error("MalformedResponse", e.to_string()))?;
    Ok(created.upload_id().to_string())
}

/// The AES-256-GCM key sealing storage secrets under one app secret (HKDF-SHA256).
fn sealing_key(app_secret: &str) -> ring::aead::LessSafeKey {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"tessera storage credentials v1");
    let prk = salt.extract(app_secret.as_bytes());
    let okm = prk.expand(&[b"aes-256-gcm"], &ring::aead::AES_256_GCM).expect("one block of output");
    ring::aead::LessSafeKey::new(ring::aead::UnboundKey::from(okm))
}

/// `plain` sealed under the app secret `kid`: `<kid>:<base64url of nonce ‖ ciphertext ‖ tag>`.
pub fn seal(plain: &str, kid: &str, app_secret: &str) -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut nonce = [0u8; 12];
    ring::rand::SystemRandom::new().fill(&mut nonce).expect("the system's random source");
    let mut sealed = plain.as_bytes().to_vec();
    sealing_key(app_secret)
        .seal_in_place_append_tag(ring::aead::Nonce::assume_unique_for_key(nonce), ring::aead::Aad::from(kid.as_bytes()), &mut sealed)
        .expect("AES-GCM takes any length we give");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    format!("{kid}:{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
}

/// Opens what `seal` made, with the app's secrets `(kid, secret)`; `None` when the secret it
/// was sealed under is gone or the text was changed.
pub fn unseal(sealed: &str, secrets: &[(String, String)]) -> Option<String> {
    use base64::Engine as _;
    let (kid, data) = sealed.split_once(':')?;
    let secret = &secrets.iter().find(|(k, _)| k == kid)?.1;
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(data).ok()?;
    if bytes.len() < 12 + 16 {
        return None;
    }
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(&bytes[..12]).ok()?;
    let plain = sealing_key(secret).open_in_place(nonce, ring::aead::Aad::from(kid.as_bytes()), &mut bytes[12..]).ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// A recording's files in an S3 bucket, with the spool folder as working copy.
pub struct S3Storage {
    pub task: String,
    pub dir: PathBuf,
    pub client: Arc<S3Client>,
    /// `<Prefix>/<TaskId>/`, the key's part after the bucket's key prefix.
    pub rel: String,
    /// HLS files go to the bucket (not for `mp4` or `aac` alone, where HLS is only the
    /// crash-safe intermediate).
    pub upload_hls: bool,
}

impl S3Storage {
    fn wanted(&self, name: &str) -> bool {
        self.upload_hls || name.ends_with(".mp4") || name.ends_with(".aac")
    }
}

impl Storage for S3Storage {
    fn store(&self, spooled: &Path, name: &str) -> Result<(), RecordingError> {
        std::fs::rename(spooled, self.dir.join(name)).map_err(|e| RecordingError::Storage { name: name.into(), reason: e.to_string() })?;
        if self.wanted(name) {
            uploads().push(&self.task, name);
        }
        Ok(())
    }
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), RecordingError> {
        write_atomic(&self.dir.join(name), bytes, 0o644).map_err(|e| RecordingError::Storage { name: name.into(), reason: e.to_string() })?;
        if self.wanted(name) {
            uploads().push(&self.task, name);
        }
        Ok(())
    }
    fn remove(&self, name: &str) {
        uploads().forget(&self.task, name);
        let _ = std::fs::remove_file(self.dir.join(name));
    }
    fn url(&self, name: &str) -> String {
        self.client.url_of(&self.client.key(&format!("{}{name}", self.rel)))
    }
    fn stored_now(&self, name: &str) -> bool {
        !uploads().waiting(&self.task, name)
    }
}

/// The names of the files stored so far, next to the working copy.
fn manifest(dir: &Path) -> PathBuf {
    dir.with_file_name("uploaded.txt")
}

/// The working copy and its manifest, and its task's spool folder if nothing else is left in it.
fn remove_working_copy(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(manifest(dir));
    if let Some(spool) = dir.parent() {
        let _ = std::fs::remove_dir(spool);
    }
}

/// One task's uploads.
struct TaskUploads {
    client: Arc<S3Client>,
    dir: PathBuf,
    rel: String,
    queue: UploadQueue,
    events: TaskEvents,
    /// Called with each stored file's name (the task marks it stored).
    on_stored: Arc<dyn Fn(&str) + Send + Sync>,
    /// The task is finished: its folder goes when the queue is empty.
    ended: bool,
    /// 305 Status 1 was sent: files were left in the spool at the end.
    left_in_spool: bool,
}

/// Every S3 recording's queue, worked by `UPLOAD_THREADS` threads.
pub struct Uploads {
    tasks: Mutex<HashMap<String, TaskUploads>>,
    changed: Condvar,
    started: Instant,
}

/// The process's uploads (its threads start on first use).
pub fn uploads() -> &'static Uploads {
    static UPLOADS: OnceLock<&'static Uploads> = OnceLock::new();
    UPLOADS.get_or_init(|| {
        let u: &'static Uploads = Box::leak(Box::new(Uploads { tasks: Mutex::new(HashMap::new()), changed: Condvar::new(), started: Instant::now() }));
        for n in 0..UPLOAD_THREADS {
            let _ = std::thread::Builder::new().name(format!("s3-upload-{n}")).spawn(move || u.work());
        }
        u
    })
}

impl Uploads {
    fn now_ms(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskUploads>> {
        crate::lock(&self.tasks)
    }

    /// Registers a task's bucket (again after a restart: the queue is kept).
    #[allow(clippy::too_many_arguments)]
    pub fn open(&self, task: &str, client: Arc<S3Client>, dir: PathBuf, rel: String, upload_hls: bool, events: TaskEvents, on_stored: Arc<dyn Fn(&str) + Send + Sync>) {
        let mut tasks = self.lock();
        match tasks.get_mut(task) {
            Some(t) => {
                t.client = client;
                t.events = events;
                t.on_stored = on_stored;
                t.ended = false;
            }
            None => {
                // Files an earlier run left (a restart): what its manifest does not list as
                // stored goes up again, segments before the playlists naming them.
                let mut queue = UploadQueue::default();
                let stored: std::collections::HashSet<String> = std::fs::read_to_string(manifest(&dir)).unwrap_or_default().lines().map(str::to_string).collect();
                let mut names: Vec<String> = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                names.retain(|n| !n.ends_with(".part") && !n.ends_with(".tmp") && (n.ends_with(".m3u8") || !stored.contains(n)));
                names.sort_by_key(|n| (n.ends_with(".m3u8"), n.clone()));
                let now = self.now_ms();
                for n in names.iter().filter(|n| upload_hls || n.ends_with(".mp4") || n.ends_with(".aac")) {
                    queue.push(n, now);
                }
                tasks.insert(task.to_string(), TaskUploads { client, dir, rel, queue, events, on_stored, ended: false, left_in_spool: false });
            }
        }
        drop(tasks);
        self.changed.notify_all();
    }

    pub fn push(&self, task: &str, name: &str) {
        let now = self.now_ms();
        if let Some(t) = self.lock().get_mut(task) {
            t.queue.push(name, now);
        }
        self.changed.notify_all();
    }

    pub fn forget(&self, task: &str, name: &str) {
        if let Some(t) = self.lock().get_mut(task) {
            t.queue.forget(name);
        }
    }

    /// Whether `name` still waits to be stored.
    pub fn waiting(&self, task: &str, name: &str) -> bool {
        self.lock().get(task).is_some_and(|t| t.queue.contains(name))
    }

    /// Files of the task not stored yet.
    pub fn pending(&self, task: &str) -> usize {
        self.lock().get(task).map_or(0, |t| t.queue.len())
    }

    /// Waits up to `limit` for the task's queue to empty; whether it did. A storage that is
    /// failing is not waited for (its files go up later).
    pub fn drain(&self, task: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut tasks = self.lock();
        loop {
            match tasks.get(task) {
                None => return true,
                Some(t) if t.queue.is_empty() => return true,
                Some(t) if t.queue.failing() => return false,
                Some(_) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            tasks = self.changed.wait_timeout(tasks, left.min(Duration::from_millis(200))).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The task is finished: its folder is removed once its queue is empty (now, or after the
    /// last upload, then with 305 Status 2). Returns the files still in the spool.
    pub fn end(&self, task: &str) -> usize {
        let mut tasks = self.lock();
        let Some(t) = tasks.get_mut(task) else { return 0 };
        t.ended = true;
        let left = t.queue.len();
        if left == 0 {
            let t = tasks.remove(task).expect("present");
            remove_working_copy(&t.dir);
        } else {
            t.left_in_spool = true;
        }
        left
    }

    fn work(&'static self) {
        loop {
            let job = {
                let mut tasks = self.lock();
                loop {
                    let now = self.now_ms();
                    let found = tasks.iter_mut().find_map(|(id, t)| t.queue.take_due(now).map(|u| (id.clone(), u.name, t.client.clone(), t.dir.clone(), t.rel.clone())));
                    if let Some(job) = found {
                        break job;
                    }
                    let next = tasks.values().filter_map(|t| t.queue.next_due_ms()).min();
                    let wait = next.map_or(1_000, |at| (at - now).clamp(10, 1_000)) as u64;
                    tasks = self.changed.wait_timeout(tasks, Duration::from_millis(wait)).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
                }
            };
            let (task, name, client, dir, rel) = job;
            let path = dir.join(&name);
            // A file deleted meanwhile (an intermediate removed) has nothing left to store.
            let outcome = if path.exists() { client.put_file(&client.key(&format!("{rel}{name}")), &path) } else { Ok(()) };
            let mut tasks = self.lock();
            let now = self.now_ms();
            let Some(t) = tasks.get_mut(&task) else { continue };
            match outcome {
                Ok(()) => {
                    t.queue.stored();
                    (t.on_stored)(&name);
                    // Kept so a restart does not upload it again (a lost line only costs that).
                    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(manifest(&t.dir)) {
                        use std::io::Write as _;
                        let _ = writeln!(f, "{name}");
                    }
                }
                Err(e) => {
                    tracing::warn!(recording = %task, file = %name, "upload failed: {e}");
                    t.events.emit(TaskEvent::StorageError { code: e.code.clone(), message: format!("{name}: {}", e.message) });
                    if t.queue.failed(now) == AfterFailure::GaveUp {
                        tracing::error!(recording = %task, file = %name, "upload given up after 24 h; the file stays in the spool");
                    }
                }
            }
            if t.ended && t.queue.is_empty() {
                let t = tasks.remove(&task).expect("present");
                if t.queue.given_up.is_empty() {
                    remove_working_copy(&t.dir);
                }
                if t.left_in_spool && t.queue.given_up.is_empty() {
                    t.events.emit(TaskEvent::UploadStopped { status: 2, leave_code: 2 });
                    tracing::info!(recording = %task, "the files left in the spool are stored");
                }
            }
            drop(tasks);
            self.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_app_secret() {
        let sealed = seal("wJalrXUtnFEMI/K7MDENG", "k2", "app-secret-0123456789");
        assert!(sealed.starts_with("k2:") && !sealed.contains("wJalr"));
        let secrets = vec![("k1".to_string(), "other-secret-0123456789".to_string()), ("k2".to_string(), "app-secret-0123456789".to_string())];
        assert_eq!(unseal(&sealed, &secrets).as_deref(), Some("wJalrXUtnFEMI/K7MDENG"));
        assert_eq!(unseal(&sealed, &secrets[..1]), None, "its secret is gone");
        let relabelled = sealed.replacen("k2:", "k1:", 1);
        assert_eq!(unseal(&relabelled, &secrets), None, "the kid is authenticated");
        let mut tampered = sealed.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(unseal(&tampered, &secrets), None);
        assert_ne!(seal("x", "k2", "app-secret-0123456789"), seal("x", "k2", "app-secret-0123456789"), "a fresh nonce each time");
    }

    /// moto's S3 server from the test venv (`scripts/setup.sh --test` installs it).
    struct Moto(std::process::Child, u16);

    impl Moto {
        fn start() -> Moto {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin");
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = std::process::Command::new(root.join("moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("moto_server (scripts/setup.sh --test installs it in target/test-venv)");
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "moto_server did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
            Moto(child, port)
        }
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_big_file_goes_up_in_parts_and_comes_back_whole_and_in_ranges() {
        let moto = Moto::start();
        let settings = S3Settings {
            bucket: "parts".into(),
            region: "us-east-1".into(),
            endpoint: format!("http://127.0.0.1:{}", moto.1),
            access_key_id: "AK".into(),
            secret_access_key: None,
            secret_access_key_sealed: None,
            secret_access_key_env: None,
            path_style: true,
            key_prefix: "p/".into(),
            public_base_url: Some("https://cdn.example/rec/".into()),
        };
        let client = S3Client::new(&settings, "SK").unwrap().with_parts(6 * 1024 * 1024, 5 * 1024 * 1024);
        let url = client.bucket.create_bucket(&client.credentials).sign(SIGNED_FOR);
        client.agent.put(url.as_str()).send_bytes(&[]).expect("bucket made");
        assert_eq!(client.url_of(&client.key("t/a.mp4")), "https://cdn.example/rec/p/t/a.mp4");
        // 12.5 MiB of a pattern: three parts, the last one short.
        let dir = std::env::temp_dir().join(format!("tessera-s3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.mp4");
        let bytes: Vec<u8> = (0..12 * 1024 * 1024 + 512 * 1024).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        client.put_file(&client.key("t/big.mp4"), &path).expect("multipart upload");
        let mut back = Vec::new();
        client.get(&client.key("t/big.mp4"), None).unwrap().into_reader().read_to_end(&mut back).unwrap();
        assert!(back == bytes, "{} bytes back of {}", back.len(), bytes.len());
        let ranged = client.get(&client.key("t/big.mp4"), Some("bytes=5242870-5242889")).unwrap();
        assert_eq!(ranged.status(), 206);
        let mut part = Vec::new();
        ranged.into_reader().read_to_end(&mut part).unwrap();
        assert_eq!(part, bytes[5_242_870..5_242_890]);
        // A small file is one PUT; a missing key is NoSuchKey; a wrong bucket names itself.
        std::fs::write(dir.join("s.m3u8"), b"#EXTM3U\n").unwrap();
        client.put_file(&client.key("t/s.m3u8"), &dir.join("s.m3u8")).unwrap();
        assert_eq!(client.get(&client.key("t/none.ts"), None).unwrap_err().code, "NoSuchKey");
        let other = S3Client::new(&S3Settings { bucket: "nobucket".into(), ..settings }, "SK").unwrap();
        assert_eq!(other.put_file("k", &dir.join("s.m3u8")).unwrap_err().code, "NoSuchBucket");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn s3_error_documents_give_code_and_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>The key does not exist</Message></Error>";
        assert_eq!(error_of_response(403, body), S3Error { code: "InvalidAccessKeyId".into(), message: "The key does not exist".into() });
        assert_eq!(error_of_response(502, "bad gateway"), S3Error { code: "Http502".into(), message: "HTTP status 502".into() });
    }
}
