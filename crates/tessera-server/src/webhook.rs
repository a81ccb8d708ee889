//! Webhook delivery (EVENTS.md §2): every part of the server calls [`Webhooks::emit`] (cheap,
//! never blocks, callable from worker threads); one dispatcher task writes each event to
//! `outbox/` and then runs its attempts: signed POSTs with a 5 s limit, retried on the
//! schedule of `tessera_model::events::attempt_start`, at most 8 in flight per URL, dropped
//! once 60 s old. Events still in the outbox at start are delivered if young enough.

use crate::metrics::ResultLabel;
use crate::store::AppStore;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_engine::{RoomEvent, RoomKey};
use tessera_model::events::{self, attempt_start, Event, EventInfo, RoomClocks};
use tessera_model::AppId;
use tokio::sync::{mpsc, Semaphore};

/// Tasks' events (groups 3, 4, 7, 8) are delivered like the rest.
impl tessera_tasks::EventSink for Webhooks {
    fn emit(&self, app: &AppId, code: u16, info: EventInfo) {
        Webhooks::emit(self, app, code, info);
    }
}

/// Attempts in flight per URL.
const IN_FLIGHT_PER_URL: usize = 8;
/// Events waiting for delivery, at most (issue 10, defect 9): a target that never answers
/// drains ≈1.6 events/s, so without a bound the outbox grows with every event. Past either
/// bound the oldest event is dropped and counted (`result="dropped"`).
pub const MAX_OUTBOX_EVENTS: usize = 10_000;
pub const MAX_OUTBOX_BYTES: usize = 32 * 1024 * 1024;

/// The events waiting for delivery, oldest first, with their sizes; evicting one cancels it.
#[derive(Default)]
struct Outbox {
    waiting: std::collections::BTreeMap<(i64, String), (usize, Arc<std::sync::atomic::AtomicBool>)>,
    bytes: usize,
}

impl Outbox {
    /// Admits an event of `size` bytes; returns its cancel flag and the ids evicted for room.
    fn admit(&mut self, created_ms: i64, id: &str, size: usize, max_events: usize, max_bytes: usize) -> (Arc<std::sync::atomic::AtomicBool>, Vec<String>) {
        let mut evicted = Vec::new();
        while !self.waiting.is_empty() && (self.waiting.len() + 1 > max_events || self.bytes + size > max_bytes) {
            let Some(((_, old), (old_size, cancel))) = self.waiting.pop_first() else { break };
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            self.bytes -= old_size;
            evicted.push(old);
        }
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.waiting.insert((created_ms, id.to_string()), (size, cancel.clone()));
        self.bytes += size;
        (cancel, evicted)
    }

    fn done(&mut self, created_ms: i64, id: &str) {
        if let Some((size, _)) = self.waiting.remove(&(created_ms, id.to_string())) {
            self.bytes -= size;
        }
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Hears (app, room, EventMsTs) of every stamped event.
type StampListener = Box<dyn Fn(&str, &str, i64) + Send + Sync>;

/// A change of the outbox, for a cluster to keep a copy another node can deliver from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxChange {
    /// An event (its outbox file's bytes: id, attempts so far) waits for delivery.
    Put(String, Vec<u8>),
    /// The event was delivered, dropped or is no longer wanted.
    Done(String),
}

type OutboxListener = Box<dyn Fn(OutboxChange) + Send + Sync>;

#[derive(Clone)]
pub struct Webhooks(Arc<Inner>);

struct Inner {
    store: Arc<AppStore>,
    clocks: Mutex<RoomClocks>,
    tx: mpsc::UnboundedSender<Event>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    deliveries: Family<ResultLabel, Counter>,
    tls: Arc<rustls::ClientConfig>,
    /// Events emitted but not yet in the outbox.
    unwritten: std::sync::atomic::AtomicUsize,
    /// Cluster mode: each stamp, so the room's next node continues after it.
    on_stamp: std::sync::OnceLock<StampListener>,
    /// Cluster mode: each outbox change, so another node delivers what this one could not.
    on_outbox: std::sync::OnceLock<OutboxListener>,
}

impl Webhooks {
    pub fn new(store: Arc<AppStore>, deliveries: Family<ResultLabel, Counter>, tls: Arc<rustls::ClientConfig>) -> Webhooks {
        let (tx, rx) = mpsc::unbounded_channel();
        Webhooks(Arc::new(Inner {
            store,
            clocks: Mutex::new(RoomClocks::default()),
            tx,
            rx: Mutex::new(Some(rx)),
            deliveries,
            tls,
            unwritten: Default::default(),
            on_stamp: Default::default(),
            on_outbox: Default::default(),
        }))
    }

    /// Cluster mode: `f` hears every change of the outbox (and keeps a copy of it).
    pub fn on_outbox(&self, f: impl Fn(OutboxChange) + Send + Sync + 'static) {
        let _ = self.0.on_outbox.set(Box::new(f));
    }

    fn outbox_changed(&self, change: OutboxChange) {
        if let Some(f) = self.0.on_outbox.get() {
            f(change);
        }
    }

    /// Delivers events another node left undelivered (it died): as its own, under the same
    /// ids (the receivers' idempotency keys), their attempts continuing where that node's
    /// stopped, and still dropped 60 s after they were made.
    pub fn adopt(&self, events: Vec<Event>) {
        for event in events {
            tracing::info!(event = %event.id, code = event.code, attempts = event.attempts, "webhook event taken over from a node that died");
            self.0.unwritten.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = self.0.tx.send(event);
        }
    }

    /// Cluster mode: `f` hears every room's stamps (and shares them).
    pub fn on_stamp(&self, f: impl Fn(&str, &str, i64) + Send + Sync + 'static) {
        let _ = self.0.on_stamp.set(Box::new(f));
    }

    /// The room's next `EventMsTs` comes after `floor` (another node's last for it).
    pub fn raise_clock(&self, app: &str, room: &str, floor: i64) {
        self.0.clocks.lock().expect("room clocks").raise(app, room, floor);
    }

    /// Stamps `info` with the room's next `EventMsTs` and queues the event for the app's
    /// webhook, if it has one for the event's group.
    pub fn emit(&self, app: &AppId, code: u16, mut info: EventInfo) {
        let now = crate::now_ms();
        let ms = self.0.clocks.lock().expect("room clocks").stamp(app.as_str(), &info.room_id, now);
        info.event_ms_ts = ms;
        if let Some(f) = self.0.on_stamp.get() {
            f(app.as_str(), &info.room_id, ms);
        }
        let group = events::group_of(code);
        // Group 7 follows its TRTC original, which has no EventTs.
        info.event_ts = (group != events::GROUP_INGEST).then_some(ms / 1000);
        let apps = self.0.store.snapshot();
        if apps.get(app).and_then(|a| a.webhook.target(group)).is_none() {
            return;
        }
        tracing::debug!(app = %app, code, room = %info.room_id, "webhook event");
        self.0.unwritten.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.0.tx.send(Event { id: tessera_model::random::task_id(), app: app.to_string(), code, created_ms: now, info, attempts: 0 });
    }

    /// Starts delivering on the current runtime: first what `outbox` still holds, then what
    /// is emitted. Without an outbox (tests, tools) events are delivered but not persisted.
    pub fn start(&self, outbox: Option<PathBuf>) {
        let Some(mut rx) = self.0.rx.lock().expect("webhook rx").take() else { return };
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*self.0.tls).clone()).https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let delivery = Delivery { hooks: self.clone(), client, outbox: outbox.clone(), limits: Arc::new(Mutex::new(HashMap::new())), waiting: Arc::default() };
        if let Some(dir) = &outbox {
            for (event, size) in pending(dir) {
                if crate::now_ms() - event.created_ms > events::MAX_EVENT_AGE_MS {
                    delivery.dropped(&event);
                } else {
                    if self.0.on_outbox.get().is_some() {
                        self.outbox_changed(OutboxChange::Put(event.id.clone(), serde_json::to_vec(&event).expect("an event serializes")));
                    }
                    let cancel = delivery.admit(&event, size);
                    tokio::spawn(delivery.clone().deliver(event, cancel));
                }
            }
        }
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let bytes = serde_json::to_vec(&event).expect("an event serializes");
                let cancel = delivery.admit(&event, bytes.len());
                if !delivery.write(&event, bytes).await {
                    tracing::warn!(event = %event.id, "cannot write the event to the outbox; delivering it anyway");
                }
                delivery.hooks.0.unwritten.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(delivery.clone().deliver(event, cancel));
            }
        });
    }

    /// Groups 1 and 2 from the SFU's presence events (EVENTS.md §5).
    pub fn room_event(&self, event: RoomEvent) {
        let user_info = |room: &RoomKey, user: &tessera_model::UserId| EventInfo { user_id: Some(user.to_string()), ..EventInfo::room(room.room.as_str()) };
        let (room, code, info) = match &event {
            RoomEvent::RoomCreated { room, user } => (room, 101, user_info(room, user)),
            RoomEvent::RoomDismissed { room } => (room, 102, EventInfo::room(room.room.as_str())),
            RoomEvent::Entered { room, user, join, reason } => (
                room,
                103,
                EventInfo {
                    role: Some(join.role.code() as u8),
                    terminal_type: Some(join.terminal_type),
                    user_type: Some(join.user_type),
                    reason: Some((*reason).into()),
                    business_info: join.info.clone(),
                    ..user_info(room, user)
                },
            ),
            RoomEvent::Exited { room, user, role, reason } => (room, 104, EventInfo { role: Some(role.code() as u8), reason: Some((*reason).into()), ..user_info(room, user) }),
            RoomEvent::RoleChanged { room, user, role } => (room, 105, EventInfo { role: Some(role.code() as u8), ..user_info(room, user) }),
            RoomEvent::TrackStarted { room, user, track, .. } => (room, track.start_code(), user_info(room, user)),
            RoomEvent::TrackStopped { room, user, track } => (room, track.start_code() + 1, EventInfo { reason: Some(0.into()), ..user_info(room, user) }),
            // Muting stops the track for the webhooks' purposes, unmuting starts it again.
            RoomEvent::TrackMuted { room, user, track, muted: true } => (room, track.start_code() + 1, EventInfo { reason: Some(0.into()), ..user_info(room, user) }),
            RoomEvent::TrackMuted { room, user, track, muted: false } => (room, track.start_code(), user_info(room, user)),
            // Live signals for the room's participants, not events.
            RoomEvent::ActiveSpeakers { .. } | RoomEvent::Quality { .. } => return,
        };
        self.emit(&room.app, code, info);
    }

    /// At shut-down: waits (at most `limit`) until every emitted event is in the outbox, so
    /// the next start delivers what this run could not.
    pub async fn settle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.0.unwritten.load(std::sync::atomic::Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn count(&self, result: &'static str) {
        self.0.deliveries.get_or_create(&ResultLabel { result }).inc();
    }
}

/// Whether `id` can be an event's id and so name its outbox file (`<id>.json`): ids made here
/// are 16 hex digits; ids read from elsewhere (another node's outbox in Redis) are checked.
pub fn is_event_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Events left in the outbox by an earlier run, with their files' sizes; unreadable files are
/// removed.
fn pending(dir: &Path) -> Vec<(Event, usize)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Event>(&b).ok().map(|e| (e, b.len()))) {
                Some(e) => out.push(e),
                None => {
                    tracing::warn!(path = %path.display(), "removing an unreadable outbox file");
                    let _ = std::fs::remove_file(&path);
                }
            }
        } else if path.extension().is_some_and(|e| e == "tmp") {
            let _ = std::fs::remove_file(&path);
        }
    }
    out.sort_by_key(|(e, _)| e.created_ms);
    out
}

#[derive(Clone)]
struct Delivery {
    hooks: Webhooks,
    client: HttpClient,
    outbox: Option<PathBuf>,
    /// URL → its in-flight limit.
    limits: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// What waits for delivery, bounded.
    waiting: Arc<Mutex<Outbox>>,
}

impl Delivery {
    /// Writes the event (with its attempt count) to the outbox; true when it is there (or
    /// there is no outbox).
    async fn persist(&self, event: &Event) -> bool {
        self.write(event, serde_json::to_vec(event).expect("an event serializes")).await
    }

    /// `persist` of an event already serialized.
    async fn write(&self, event: &Event, bytes: Vec<u8>) -> bool {
        self.hooks.outbox_changed(OutboxChange::Put(event.id.clone(), bytes.clone()));
        let Some(dir) = &self.outbox else { return true };
        let path = dir.join(format!("{}.json", event.id));
        matches!(tokio::task::spawn_blocking(move || crate::store::write_atomic(&path, &bytes, 0o600)).await, Ok(Ok(())))
    }

    /// Takes the event into the bounded outbox, dropping the oldest ones past the bounds.
    fn admit(&self, event: &Event, size: usize) -> Arc<std::sync::atomic::AtomicBool> {
        let (cancel, evicted) = self.waiting.lock().expect("outbox").admit(event.created_ms, &event.id, size, MAX_OUTBOX_EVENTS, MAX_OUTBOX_BYTES);
        for id in evicted {
            tracing::warn!(event = %id, "webhook event dropped: the outbox is full ({MAX_OUTBOX_EVENTS} events or {MAX_OUTBOX_BYTES} bytes)");
            self.hooks.count("dropped");
            self.hooks.outbox_changed(OutboxChange::Done(id.clone()));
            if let Some(dir) = &self.outbox {
                let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
            }
        }
        cancel
    }

    fn forget(&self, event: &Event) {
        self.waiting.lock().expect("outbox").done(event.created_ms, &event.id);
        self.hooks.outbox_changed(OutboxChange::Done(event.id.clone()));
        if let Some(dir) = &self.outbox {
            let _ = std::fs::remove_file(dir.join(format!("{}.json", event.id)));
        }
    }

    fn dropped(&self, event: &Event) {
        tracing::warn!(event = %event.id, code = event.code, "webhook event dropped after 60 s without a 2xx");
        self.hooks.count("dropped");
        self.forget(event);
    }

    fn limit(&self, url: &str) -> Arc<Semaphore> {
        self.limits.lock().expect("webhook limits").entry(url.to_string()).or_insert_with(|| Arc::new(Semaphore::new(IN_FLIGHT_PER_URL))).clone()
    }

    /// The event's attempts, from where an earlier run left them.
    async fn deliver(self, mut event: Event, evicted: Arc<std::sync::atomic::AtomicBool>) {
        let (mut k, mut previous_end) = (event.attempts + 1, if event.attempts > 0 { crate::now_ms() } else { event.created_ms });
        let evicted = || evicted.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            if evicted() {
                return; // counted and removed when it was evicted
            }
            let Some(at) = attempt_start(k, event.created_ms, previous_end) else {
                self.dropped(&event);
                return;
            };
            let wait = at - crate::now_ms();
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
            // Settings are read per attempt, so a new key or URL applies to retries too.
            let apps = self.hooks.0.store.snapshot();
            let target = AppId::parse(&event.app).ok().and_then(|id| apps.get(&id)).and_then(|a| a.webhook.target(event.group()).map(|(u, k)| (u.to_string(), k.to_string())));
            let Some((url, key)) = target else {
                // The app stopped sending this group: nothing to deliver any more.
                self.forget(&event);
                return;
            };
            let limit = self.limit(&url);
            let Ok(_permit) = limit.acquire().await else { return };
            if evicted() {
                return;
            }
            // Waiting for a slot can take long behind a target that never answers: the spec's
            // 60 s holds when the attempt starts, not only when it was scheduled.
            if crate::now_ms() - event.created_ms > events::MAX_EVENT_AGE_MS {
                self.dropped(&event);
                return;
            }
            let ok = self.attempt(&event, k, &url, &key).await;
            previous_end = crate::now_ms();
            if ok {
                self.hooks.count("ok");
                self.forget(&event);
                return;
            }
            self.hooks.count("retry");
            event.attempts = k;
            // Best effort: a lost count only restarts Tessera-Attempt after a crash.
            self.persist(&event).await;
            k += 1;
        }
    }

    async fn attempt(&self, event: &Event, k: u32, url: &str, key: &str) -> bool {
        let body = event.body(crate::now_ms());
        let request = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header("Sign", events::sign(key, &body))
            .header("SdkAppId", &event.app)
            .header("Tessera-Event-Id", &event.id)
            .header("Tessera-Attempt", k.to_string())
            .header(hyper::header::USER_AGENT, format!("tessera/{}", crate::api::VERSION))
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else {
            tracing::warn!(event = %event.id, "webhook URL cannot be requested");
            return false;
        };
        match tokio::time::timeout(Duration::from_millis(events::ATTEMPT_TIMEOUT_MS), self.client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => true,
            Ok(Ok(response)) => {
                tracing::info!(event = %event.id, attempt = k, status = response.status().as_u16(), "webhook attempt refused");
                false
            }
            Ok(Err(e)) => {
                tracing::info!(event = %event.id, attempt = k, "webhook attempt failed: {e}");
                false
            }
            Err(_) => {
                tracing::info!(event = %event.id, attempt = k, "webhook attempt timed out after 5 s");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_drops_its_oldest_events_past_either_bound() {
        let mut outbox = Outbox::default();
        let (first, _) = outbox.admit(1, "a", 100, 3, 1000);
        outbox.admit(2, "b", 100, 3, 1000);
        outbox.admit(3, "c", 100, 3, 1000);
        let (_, evicted) = outbox.admit(4, "d", 100, 3, 1000);
        assert_eq!(evicted, ["a"]);
        assert!(first.load(std::sync::atomic::Ordering::SeqCst), "the evicted event's delivery is cancelled");
        assert_eq!((outbox.waiting.len(), outbox.bytes), (3, 300));
        // Bytes: a 750-byte event next to 300 waiting pushes out the oldest 100.
        let (_, evicted) = outbox.admit(5, "e", 750, 10, 1000);
        assert_eq!(evicted, ["b"]);
        assert_eq!((outbox.waiting.len(), outbox.bytes), (3, 950));
        for (t, id) in [(3, "c"), (4, "d"), (5, "e")] {
            outbox.done(t, id);
        }
        assert_eq!((outbox.waiting.len(), outbox.bytes), (0, 0));
    }
}
