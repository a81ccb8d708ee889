//! Relays (RECORDING.md §1): one user's stream, or a mix job's output, pushed to CDNs over RTMP.
//!
//! A relay is a worker thread on an SFU tap (in-process, like a mix job) that turns the source's
//! RTP into FLV tags — H.264 access units passed through (SPS/PPS and SEI kept), VP8 transcoded
//! with OpenH264, Opus decoded and encoded to AAC-LC — and broadcasts them to one tokio task
//! per URL. Each URL task owns an `RtmpPushSession` (sans-IO, `tessera-rtmp`) and the URL state
//! machine IDLE/CONNECTING/RUNNING/RECOVERING/FAILURE/DISCONNECTING with the spec's retry
//! schedule (`UrlRetry`, a plain value).

use dashmap::DashMap;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_engine::{RoomKey, RtcHandle};
use tessera_media::h264::{nal_type, NAL_PPS, NAL_SPS};
use tessera_media::{Codec, StreamKind};
use tessera_model::{AppId, RoomId, UserId};
use tessera_rtmp::client::{PushTarget, RtmpPushSession};
use tessera_rtmp::flv;
use crate::tap_input::{TrackClock, VideoInput, VideoUnit};
use tessera_transcode::decode::{AacEncoder, OpusDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

pub const MAX_URLS: usize = 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const GIVE_UP: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// RECORDING.md §1.1.
pub mod status {
    pub const IDLE: u8 = 0;
    pub const CONNECTING: u8 = 1;
    pub const RUNNING: u8 = 2;
    pub const RECOVERING: u8 = 3;
    pub const FAILURE: u8 = 4;
    pub const DISCONNECTING: u8 = 5;
}

/// Attempts at 0, 1, 2 and 4 s after a series starts, then every 8 s; `None` once 60 s have
/// passed (RECORDING.md §1.1).
#[derive(Debug, Clone)]
pub struct UrlRetry {
    series_start: Instant,
    attempts: u32,
}

impl UrlRetry {
    pub fn new(now: Instant) -> UrlRetry {
        UrlRetry { series_start: now, attempts: 0 }
    }

    /// When to make the next attempt, or `None` to give up.
    pub fn next_attempt(&mut self) -> Option<Instant> {
        let offset = match self.attempts {
            0 => 0,
            1 => 1,
            2 => 2,
            3 => 4,
            n => 4 + 8 * (n as u64 - 3),
        };
        self.attempts += 1;
        let at = self.series_start + Duration::from_secs(offset);
        (at - self.series_start < GIVE_UP).then_some(at)
    }

    pub fn given_up(&self, now: Instant) -> bool {
        now.duration_since(self.series_start) >= GIVE_UP
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UrlStatus {
    pub url: String,
    pub status: u8,
    pub error_code: u32,
    pub error_msg: String,
    pub since: i64,
    /// Every status entered, in order, with its time (ms), as event 401 reported it.
    pub history: Vec<(u8, i64)>,
    /// When event 401 last reported this URL (ms); repeated every 5 s in states 1 and 3.
    #[serde(skip)]
    pub reported_at: i64,
}

impl UrlStatus {
    fn new(url: &str, now: i64) -> UrlStatus {
        UrlStatus { url: url.to_string(), status: status::IDLE, error_code: 0, error_msg: String::new(), since: now, history: vec![(status::IDLE, now)], reported_at: now }
    }
}

/// How often event 401 repeats while a URL is CONNECTING or RECOVERING.
const REPORT_EVERY_MS: i64 = 5_000;

#[derive(Debug, Clone, Serialize)]
pub struct RelayRecord {
    pub id: String,
    #[serde(skip)]
    pub app: AppId,
    pub room: RoomId,
    pub source: SourceRef,
    pub media: String,
    pub state: &'static str,
    pub urls: Vec<UrlStatus>,
    pub created_at: i64,
    pub leave_code: Option<u32>,
    /// Set for a mix job's own relay (`outputs.rtmp_urls`).
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceRef {
    pub user: UserId,
    pub stream: StreamKind,
}

/// One FLV tag for the URL tasks.
#[derive(Debug, Clone)]
enum Tag {
    Video { body: Arc<[u8]>, ts: u32, keyframe: bool },
    Audio { body: Arc<[u8]>, ts: u32 },
}

pub struct RelayTask {
    record: Mutex<RelayRecord>,
    stop: AtomicBool,
    /// Why the URLs stop, when it is not a request (shown in their `error_msg`).
    stop_reason: Mutex<Option<&'static str>>,
    shutdown: AtomicBool,
    source: Mutex<SourceRef>,
    /// Latest sequence headers, for URLs that (re)connect mid-stream.
    video_header: Mutex<Option<Arc<[u8]>>>,
    audio_header: Mutex<Option<Arc<[u8]>>>,
    tags: broadcast::Sender<Tag>,
    /// URL → its task's stop flag.
    url_tasks: Mutex<HashMap<String, Arc<AtomicBool>>>,
    media: String,
    tasks_dir: Option<std::path::PathBuf>,
    max_idle: Duration,
    hooks: crate::webhook::Webhooks,
    tls: Arc<rustls::ClientConfig>,
}

impl RelayTask {
    fn save(&self) {
        let _ = save(self.tasks_dir.as_ref(), &self.record(), self.max_idle);
    }
}

impl RelayTask {
    pub fn record(&self) -> RelayRecord {
        self.record.lock().expect("relay record").clone()
    }

    fn set_url(&self, url: &str, status: u8, error: Option<(u32, String)>) {
        let mut r = self.record.lock().expect("relay record");
        let now = crate::now_ms();
        let report = match r.urls.iter_mut().find(|u| u.url == url) {
            Some(u) => {
                let changed = u.status != status;
                if changed {
                    u.since = now;
                    u.history.push((status, now));
                    u.reported_at = now;
                    tracing::info!(url = %short(url), status, "relay URL status");
                }
                u.status = status;
                if let Some((code, msg)) = error {
                    u.error_code = code;
                    u.error_msg = msg;
                } else if status == status::RUNNING {
                    u.error_code = 0;
                    u.error_msg.clear();
                }
                changed.then(|| (u.error_code, u.error_msg.clone()))
            }
            // A URL removed by PATCH winds down (5 → 0) outside the record; still reported.
            None => Some(error.unwrap_or_default()),
        };
        let event = report.map(|(code, msg)| url_event(&r, url, status, code, &msg));
        drop(r);
        if let Some((app, info)) = event {
            self.hooks.emit(&app, 401, info);
        }
    }

    /// Event 401 again for a URL that has stayed CONNECTING or RECOVERING for 5 s.
    fn report_if_waiting(&self, url: &str) {
        let now = crate::now_ms();
        let mut r = self.record.lock().expect("relay record");
        let Some(u) = r.urls.iter_mut().find(|u| u.url == url) else { return };
        if !matches!(u.status, status::CONNECTING | status::RECOVERING) || now - u.reported_at < REPORT_EVERY_MS {
            return;
        }
        u.reported_at = now;
        let (status, code, msg) = (u.status, u.error_code, u.error_msg.clone());
        let (app, info) = url_event(&r, url, status, code, &msg);
        drop(r);
        self.hooks.emit(&app, 401, info);
    }

    fn url_status(&self, url: &str) -> Option<u8> {
        self.record.lock().expect("relay record").urls.iter().find(|u| u.url == url).map(|u| u.status)
    }
}

/// Event 401 for one URL of a relay, made under the record's lock and sent after it.
fn url_event(r: &RelayRecord, url: &str, status: u8, code: u32, msg: &str) -> (AppId, tessera_model::events::EventInfo) {
    let info = tessera_model::events::EventInfo::task(r.room.as_str(), format!("relay_{}", r.id), &r.id)
        .with_payload(serde_json::json!({"Url": url, "Status": status, "ErrorCode": code, "ErrorMsg": msg}));
    (r.app.clone(), info)
}

/// A URL with its stream key cut, for logs.
fn short(url: &str) -> String {
    url.rsplit_once('/').map(|(a, _)| format!("{a}/…")).unwrap_or_else(|| url.to_string())
}

pub struct Relays {
    tls: Arc<rustls::ClientConfig>,
    tasks: DashMap<String, Arc<RelayTask>>,
    /// `tasks/` of the data dir: relays are saved there and resumed after a restart.
    tasks_dir: Option<std::path::PathBuf>,
    hooks: crate::webhook::Webhooks,
}

fn save(dir: Option<&std::path::PathBuf>, r: &RelayRecord, max_idle: Duration) -> std::io::Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    let record = serde_json::json!({
        "kind": "relay", "id": r.id, "app": r.app, "room": r.room, "source": r.source, "media": r.media, "state": r.state,
        "urls": r.urls.iter().map(|u| u.url.clone()).collect::<Vec<_>>(), "created_at": r.created_at, "owner": r.owner, "max_idle_s": max_idle.as_secs(),
    });
    crate::store::write_atomic(&dir.join(format!("{}.json", r.id)), &serde_json::to_vec_pretty(&record).unwrap_or_default(), 0o600).map_err(|e| {
        tracing::warn!(relay = %r.id, "cannot save the relay: {e}");
        e.into()
    })
}

pub struct NewRelay {
    /// A relay from before a restart keeps its id and creation time.
    pub resumed: Option<(String, i64)>,
    pub app: AppId,
    pub room: RoomId,
    pub source: SourceRef,
    pub media: String,
    pub urls: Vec<String>,
    pub max_idle: Duration,
    pub owner: Option<String>,
}

impl Relays {
    pub fn new(tasks_dir: Option<std::path::PathBuf>, hooks: crate::webhook::Webhooks, tls: Arc<rustls::ClientConfig>) -> Relays {
        Relays { tls, tasks: DashMap::new(), tasks_dir, hooks }
    }

    /// Restarts the relays a previous run left live (a mix job's own relay comes back with the
    /// job). Their URLs connect again (state 1) when the source publishes.
    pub fn resume(&self, rtc: &RtcHandle) {
        let Some(dir) = &self.tasks_dir else { return };
        for v in crate::task_file::read_all(dir, "relay") {
            if v["state"] == "STOPPED" || !v["owner"].is_null() {
                continue;
            }
            let (Some(id), Ok(app), Ok(room), Ok(user), Some(stream)) = (
                v["id"].as_str(),
                AppId::parse(v["app"].as_str().unwrap_or("")),
                RoomId::parse(v["room"].as_str().unwrap_or("")),
                UserId::parse(v["source"]["user"].as_str().unwrap_or("")),
                v["source"]["stream"].as_str().and_then(StreamKind::parse),
            ) else {
                continue;
            };
            let new = NewRelay {
                resumed: Some((id.to_string(), v["created_at"].as_i64().unwrap_or(0))),
                app,
                room,
                source: SourceRef { user, stream },
                media: v["media"].as_str().unwrap_or("audio_video").to_string(),
                urls: v["urls"].as_array().map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect()).unwrap_or_default(),
                max_idle: Duration::from_secs(v["max_idle_s"].as_u64().unwrap_or(30)),
                owner: None,
            };
            match self.start(new, rtc.clone()) {
                Ok(_) => tracing::info!(relay = %id, "relay resumed"),
                Err(e) => tracing::warn!(relay = %id, "relay not resumed: {e}"),
            }
        }
    }

    pub fn get(&self, app: &AppId, id: &str) -> Option<Arc<RelayTask>> {
        self.tasks.get(id).map(|t| t.clone()).filter(|t| t.record.lock().expect("relay record").app == *app)
    }

    /// Every URL's status, for the metrics.
    pub fn all_url_states(&self) -> Vec<u8> {
        self.tasks.iter().flat_map(|t| t.record().urls.iter().map(|u| u.status).collect::<Vec<_>>()).collect()
    }

    pub fn list(&self, app: &AppId) -> Vec<RelayRecord> {
        self.tasks.iter().map(|t| t.record()).filter(|r| r.app == *app).collect()
    }

    /// A URL listed by another relay that has not stopped (RECORDING.md §1: 409 `url_in_use`).
    /// Relays of the app that are not stopped (the per-app cap counts these).
    pub fn live_count(&self, app: &AppId) -> usize {
        self.list(app).iter().filter(|r| r.state != "STOPPED").count()
    }

    pub fn url_in_use(&self, url: &str, except: Option<&str>) -> bool {
        self.tasks.iter().any(|t| {
            let r = t.record();
            r.state != "STOPPED" && Some(r.id.as_str()) != except && r.urls.iter().any(|u| u.url == url)
        })
    }

    pub fn start(&self, new: NewRelay, rtc: RtcHandle) -> std::io::Result<RelayRecord> {
        let now = crate::now_ms();
        let (id, created_at) = new.resumed.clone().unwrap_or_else(|| (tessera_model::TaskId::generate().as_str().to_owned(), now));
        let record = RelayRecord {
            id: id.clone(),
            app: new.app.clone(),
            room: new.room.clone(),
            source: new.source.clone(),
            media: new.media.clone(),
            state: "WAITING",
            urls: new.urls.iter().map(|u| UrlStatus::new(u, now)).collect(),
            created_at,
            leave_code: None,
            owner: new.owner.clone(),
        };
        save(self.tasks_dir.as_ref(), &record, new.max_idle)?;
        let (tags, _) = broadcast::channel(1024);
        let task = Arc::new(RelayTask {
            record: Mutex::new(record.clone()),
            stop: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            source: Mutex::new(new.source.clone()),
            video_header: Mutex::new(None),
            audio_header: Mutex::new(None),
            tags,
            url_tasks: Mutex::new(HashMap::new()),
            media: new.media.clone(),
            tasks_dir: self.tasks_dir.clone(),
            max_idle: new.max_idle,
            hooks: self.hooks.clone(),
            tls: self.tls.clone(),
        });
        self.tasks.insert(id.clone(), task.clone());
        let runtime = tokio::runtime::Handle::current();
        let key = RoomKey { app: new.app, room: new.room };
        std::thread::Builder::new().name(format!("relay-{id}")).spawn(move || media_worker(task, key, new.urls, new.max_idle, rtc, runtime))?;
        Ok(record)
    }

    /// `PATCH urls`: added URLs start, removed ones go 5 → 0, listed ones in 0 or 4 restart.
    pub fn set_urls(&self, task: &Arc<RelayTask>, urls: Vec<String>) {
        let now = crate::now_ms();
        let removed: Vec<String> = {
            let mut r = task.record.lock().expect("relay record");
            let removed = r.urls.iter().filter(|u| !urls.contains(&u.url)).map(|u| u.url.clone()).collect();
            r.urls.retain(|u| urls.contains(&u.url));
            for u in &urls {
                if !r.urls.iter().any(|x| &x.url == u) {
                    r.urls.push(UrlStatus::new(u, now));
                }
            }
            removed
        };
        task.save();
        let mut running = task.url_tasks.lock().expect("url tasks");
        for u in removed {
            if let Some(stop) = running.remove(&u) {
                stop.store(true, Ordering::SeqCst);
            }
        }
        let active = task.record().state == "ACTIVE";
        drop(running);
        if active {
            for u in urls {
                if matches!(task.url_status(&u), Some(status::IDLE) | Some(status::FAILURE)) {
                    spawn_url(task, u);
                }
            }
        }
    }

    pub fn set_source(&self, task: &RelayTask, source: SourceRef) {
        *task.source.lock().expect("relay source") = source.clone();
        task.record.lock().expect("relay record").source = source;
        task.save();
    }

    pub fn stop(&self, task: &RelayTask) {
        task.stop.store(true, Ordering::SeqCst);
    }

    pub fn shutdown(&self) {
        for t in self.tasks.iter() {
            t.shutdown.store(true, Ordering::SeqCst);
            t.stop.store(true, Ordering::SeqCst);
        }
    }
}

fn spawn_url(task: &Arc<RelayTask>, url: String) {
    let stop = Arc::new(AtomicBool::new(false));
    let previous = task.url_tasks.lock().expect("url tasks").insert(url.clone(), stop.clone());
    if let Some(p) = previous {
        p.store(true, Ordering::SeqCst);
    }
    let rx = task.tags.subscribe();
    tokio::runtime::Handle::current().spawn(push_url(task.clone(), url, rx, stop));
}

/// The spec's failure while pushing one URL: (error_code, message, whether it had been running).
struct Failure(u32, String, bool);

async fn push_url(task: Arc<RelayTask>, url: String, mut rx: broadcast::Receiver<Tag>, stop: Arc<AtomicBool>) {
    let stopping = || stop.load(Ordering::SeqCst) || task.stop.load(Ordering::SeqCst);
    let target = match PushTarget::parse(&url) {
        Ok(t) => t,
        Err(e) => {
            task.set_url(&url, status::FAILURE, Some((1, e)));
            task.set_url(&url, status::IDLE, None);
            return;
        }
    };
    let mut retry = UrlRetry::new(Instant::now());
    task.set_url(&url, status::CONNECTING, None);
    // Repeats event 401 while the URL waits in state 1 or 3, whatever the pusher is doing.
    let reporter = {
        let (task, url) = (task.clone(), url.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                task.report_if_waiting(&url);
            }
        })
    };
    loop {
        let Some(at) = retry.next_attempt() else { break };
        while Instant::now() < at {
            if stopping() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if stopping() {
            break;
        }
        match connect_and_push(&task, &url, &target, &mut rx, &stopping).await {
            Ok(()) => break,
            Err(Failure(code, msg, was_running)) => {
                tracing::info!(url = %short(&url), code, "relay URL failed: {msg}");
                if was_running {
                    retry = UrlRetry::new(Instant::now());
                    task.set_url(&url, status::RECOVERING, Some((code, msg)));
                } else {
                    task.set_url(&url, task.url_status(&url).unwrap_or(status::CONNECTING), Some((code, msg)));
                }
                if retry.given_up(Instant::now()) {
                    break;
                }
            }
        }
    }
    reporter.abort();
    if stopping() {
        let why = task.stop_reason.lock().expect("stop reason").unwrap_or("stopped by request");
        task.set_url(&url, status::DISCONNECTING, Some((6, why.into())));
        task.set_url(&url, status::IDLE, None);
    } else {
        // 60 s of failures.
        task.set_url(&url, status::FAILURE, None);
        task.set_url(&url, status::IDLE, None);
    }
}

/// The relay's connection to a CDN: TCP, or TLS over it for rtmps.
trait Connection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Connection for T {}

async fn connect(task: &RelayTask, target: &PushTarget) -> Result<Box<dyn Connection>, Failure> {
    let tcp = crate::outbound::connect(&target.host, target.port, CONNECT_TIMEOUT).await.map_err(|e| Failure(1, e, false))?;
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|e| Failure(1, format!("bad TLS server name: {e}"), false))?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsConnector::from(task.tls.clone()).connect(name, tcp))
        .await
        .map_err(|_| Failure(2, "TLS handshake timed out".into(), false))?
        .map_err(|e| Failure(2, format!("TLS handshake failed: {e}"), false))?;
    Ok(Box::new(tls))
}

async fn connect_and_push(task: &RelayTask, url: &str, target: &PushTarget, rx: &mut broadcast::Receiver<Tag>, stopping: &impl Fn() -> bool) -> Result<(), Failure> {
    let mut socket = connect(task, target).await?;
    let mut session = RtmpPushSession::new(target.clone()).map_err(|e| Failure(e.code(), e.to_string(), false))?;
    let mut buf = vec![0u8; 16 * 1024];
    // Handshake, connect and publish.
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while !session.is_publishing() {
        if !session.outbound.is_empty() {
            socket.write_all(&session.outbound).await.map_err(|e| Failure(2, format!("write failed: {e}"), false))?;
            session.outbound.clear();
        }
        let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .map_err(|_| Failure(2, "no answer to the RTMP handshake/connect within 10 s".into(), false))?
            .map_err(|e| Failure(2, format!("read failed: {e}"), false))?;
        if n == 0 {
            return Err(Failure(2, "the server closed the connection during connect".into(), false));
        }
        session.feed(&buf[..n]).map_err(|e| Failure(e.code(), e.to_string(), false))?;
    }
    // Publishing: sequence headers, then media from the next keyframe.
    let mut running = false;
    let mut skip_to_keyframe = false;
    let mut sent_headers = (None::<Arc<[u8]>>, None::<Arc<[u8]>>);
    // Timestamps start at 0 on every connection (a CDN expects a fresh stream).
    let mut base: Option<u32> = None;
    loop {
        if stopping() {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.shutdown()).await;
            return Ok(());
        }
        let tag = tokio::select! {
            t = rx.recv() => t,
            r = socket.read(&mut buf) => {
                match r {
                    Ok(0) | Err(_) => return Err(Failure(4, "the server closed the connection".into(), running)),
                    Ok(n) => { let _ = session.feed(&buf[..n]); continue; }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let tag = match tag {
            Ok(t) => t,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // This connection fell behind: video resumes at the next keyframe.
                skip_to_keyframe = true;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        // Sequence headers whenever they are new (first, or a source switch).
        let vh = task.video_header.lock().expect("header").clone();
        let ah = task.audio_header.lock().expect("header").clone();
        if vh.is_some() && vh.as_ref().map(|h| h.as_ptr()) != sent_headers.0.as_ref().map(|h| h.as_ptr()) {
            if let Some(h) = &vh {
                session.send_video(h, base.map(|b| tag_ts(&tag).wrapping_sub(b)).unwrap_or(0)).map_err(|e| Failure(4, e.to_string(), running))?;
            }
            sent_headers.0 = vh;
        }
        if ah.is_some() && ah.as_ref().map(|h| h.as_ptr()) != sent_headers.1.as_ref().map(|h| h.as_ptr()) {
            if let Some(h) = &ah {
                session.send_audio(h, base.map(|b| tag_ts(&tag).wrapping_sub(b)).unwrap_or(0)).map_err(|e| Failure(4, e.to_string(), running))?;
            }
            sent_headers.1 = ah;
        }
        match &tag {
            Tag::Video { body, ts, keyframe } => {
                if skip_to_keyframe && !keyframe {
                    continue;
                }
                skip_to_keyframe = false;
                if base.is_none() {
                    if !keyframe {
                        continue;
                    }
                    base = Some(*ts);
                }
                let t = ts.wrapping_sub(base.unwrap_or(0));
                session.send_video(body, t).map_err(|e| Failure(4, e.to_string(), running))?;
                if *keyframe && !running {
                    running = true;
                    task.set_url(url, status::RUNNING, None);
                }
            }
            Tag::Audio { body, ts } => {
                // Audio-only relays start at once; otherwise audio waits for the first keyframe.
                if base.is_none() && task.media != "audio" {
                    continue;
                }
                let b = *base.get_or_insert(*ts);
                session.send_audio(body, ts.wrapping_sub(b)).map_err(|e| Failure(4, e.to_string(), running))?;
                if !running && task.media == "audio" {
                    running = true;
                    task.set_url(url, status::RUNNING, None);
                }
            }
        }
        if !session.outbound.is_empty() {
            tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(&session.outbound))
                .await
                .map_err(|_| Failure(4, "write timed out".into(), running))?
                .map_err(|e| Failure(4, format!("write failed: {e}"), running))?;
            session.outbound.clear();
        }
    }
}

fn tag_ts(tag: &Tag) -> u32 {
    match tag {
        Tag::Video { ts, .. } | Tag::Audio { ts, .. } => *ts,
    }
}

/// The source's packets → FLV tags, until the relay stops.
fn media_worker(task: Arc<RelayTask>, room: RoomKey, urls: Vec<String>, max_idle: Duration, rtc: RtcHandle, runtime: tokio::runtime::Handle) {
    let leave = (|| -> Result<u32, String> {
        let owner = UserId::parse(&format!("relay_{}", task.record().id)).map_err(|e| e.to_string())?;
        let (tap, mut packets) = runtime.block_on(rtc.add_tap_all(room.clone(), owner)).map_err(|e| e.to_string())?;
        let result = (|| -> Result<u32, String> {
            let start = Instant::now();
            let mut absent_since: Option<Instant> = Some(start);
            let mut next_check = start;
            let mut active = false;
            let mut video = VideoInput::default();
            let mut audio_clock = TrackClock::audio();
            let (mut sps, mut pps): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
            let mut opus = OpusDecoder::new().map_err(|e| e.to_string())?;
            let mut aac: Option<AacEncoder> = None;
            let mut pcm = Vec::new();
            let mut aac_out = Vec::new();
            let mut aac_base_ms: Option<i64> = None;
            let want_video = task.media != "audio";
            let want_audio = task.media != "video";
            loop {
                if task.stop.load(Ordering::SeqCst) {
                    return Ok(0);
                }
                let now = Instant::now();
                let source = task.source.lock().expect("relay source").clone();
                if now >= next_check {
                    next_check = now + Duration::from_millis(300);
                    let publishers = runtime.block_on(rtc.room_publishers(room.clone())).map_err(|e| e.to_string())?;
                    let present = publishers.iter().any(|p| p.user == source.user && p.stream == source.stream);
                    if present {
                        absent_since = None;
                        if !active {
                            active = true;
                            task.record.lock().expect("relay record").state = "ACTIVE";
                            let _g = runtime.enter();
                            for u in &urls {
                                spawn_url(&task, u.clone());
                            }
                        }
                    } else {
                        let since = *absent_since.get_or_insert(now);
                        if now - since >= max_idle {
                            return Ok(99);
                        }
                    }
                }
                let mut got = false;
                while let Ok(p) = packets.try_recv() {
                    got = true;
                    if p.user != source.user || p.stream != source.stream {
                        continue;
                    }
                    let arrival = start.elapsed().as_millis() as i64;
                    match p.codec {
                        Codec::Opus if want_audio => {
                            pcm.clear();
                            if opus.decode(&p.payload, &mut pcm).is_err() {
                                continue;
                            }
                            let ms = audio_clock.ms(p.ts, arrival);
                            if aac.is_none() {
                                let encoder = AacEncoder::new(2, 96).map_err(|e| e.to_string())?;
                                *task.audio_header.lock().expect("header") = Some(Arc::from(flv::aac_sequence_header(encoder.audio_specific_config())));
                                aac = Some(encoder);
                                aac_base_ms = Some(ms);
                            }
                            let encoder = aac.as_mut().expect("made above");
                            aac_out.clear();
                            encoder.push(&pcm, &mut aac_out).map_err(|e| e.to_string())?;
                            for f in aac_out.drain(..) {
                                let ts = aac_base_ms.unwrap_or(0) + (f.ts48 / 48) as i64;
                                let _ = task.tags.send(Tag::Audio { body: Arc::from(flv::aac_frame(&f.data)), ts: ts as u32 });
                            }
                        }
                        Codec::H264 | Codec::Vp8 if want_video => {
                            let (nalus, keyframe, ms) = match video.push(&p, arrival)? {
                                VideoUnit::Unit { nalus, keyframe, ms } => (nalus, keyframe, ms),
                                VideoUnit::Lost => {
                                    let _ = runtime.block_on(rtc.request_keyframe(room.clone(), source.user.clone(), source.stream));
                                    continue;
                                }
                                VideoUnit::None => continue,
                            };
                            for n in &nalus {
                                match nal_type(n) {
                                    Some(NAL_SPS) if *n != sps => sps = n.clone(),
                                    Some(NAL_PPS) if *n != pps => pps = n.clone(),
                                    _ => continue,
                                }
                                if !sps.is_empty() && !pps.is_empty() {
                                    *task.video_header.lock().expect("header") = Some(Arc::from(flv::avc_sequence_header(&sps, &pps)));
                                }
                            }
                            let units: Vec<&[u8]> = nalus.iter().map(|n| n.as_slice()).collect();
                            let _ = task.tags.send(Tag::Video { body: Arc::from(flv::avc_frame(&units, keyframe, 0)), ts: ms as u32, keyframe });
                        }
                        _ => {}
                    }
                }
                if !got {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })();
        let _ = runtime.block_on(rtc.remove_tap(tap));
        result
    })();
    // A server shutting down leaves the saved state live, so the next start resumes it.
    let shutting_down = task.shutdown.load(Ordering::SeqCst);
    let code = leave.unwrap_or_else(|e| {
        tracing::error!("relay failed: {e}");
        104
    });
    // The URLs say why they stop (issue 10, defect 18: idleness showed "stopped by request").
    let why = match code {
        99 => "stopped: the source sent no media for max_idle_time",
        104 => "stopped: the relay failed",
        _ if shutting_down => "stopped: the server is shutting down",
        _ => "stopped by request",
    };
    task.stop_reason.lock().expect("stop reason").get_or_insert(why);
    task.stop.store(true, Ordering::SeqCst);
    // Let the URL tasks go 5 → 0 before the state says STOPPED.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && task.record().urls.iter().any(|u| u.status != status::IDLE) && task.record().state == "ACTIVE" {
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        let mut r = task.record.lock().expect("relay record");
        r.state = "STOPPED";
        r.leave_code = Some(code);
    }
    if !shutting_down {
        task.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_at_0_1_2_4_then_every_8_seconds_for_60() {
        let t = Instant::now();
        let mut r = UrlRetry::new(t);
        let offsets: Vec<u64> = std::iter::from_fn(|| r.next_attempt()).map(|at| (at - t).as_secs()).collect();
        assert_eq!(offsets, vec![0, 1, 2, 4, 12, 20, 28, 36, 44, 52]);
        assert!(!r.given_up(t + Duration::from_secs(59)) && r.given_up(t + Duration::from_secs(60)));
    }
}
