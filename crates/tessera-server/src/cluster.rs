//! Cluster mode's driver (`[cluster]`): this node's heartbeat into Redis, its view of the live
//! nodes, the room directory's compare-and-sets, the shared app store, and the routing of a
//! request to the node its room lives on. The decisions are `tessera_cluster`'s pure functions;
//! this module only does their I/O.
//!
//! Entry points (docs/operating.md, "Cluster"):
//! - `POST /whip/{room}` (may create the room) and `POST /whep/{room}/{user}/{stream}`: a
//!   `307 Temporary Redirect` to the room's node, the token carried in the new URL's
//!   `access_token` (browsers and curl drop `Authorization` on a redirect to another host).
//! - `/v1/rooms/{room}…`: forwarded to the room's node and its answer returned.
//! - `GET /v1/rooms`: every node's rooms, merged.

use crate::api::AppState;
use crate::config::ClusterConfig;
use crate::store::AppStore;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tessera_cluster::{decide, ClusterError, ClusterStore, Decision, Membership, NodeId, NodeLoad, NodeRecord, NodeState, RoomIntent};

#[derive(Debug, thiserror::Error)]
enum JoinError {
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("the shared app store: {0}")]
    Apps(#[from] crate::store::StoreError),
}

/// Marks a request one node forwarded to another: the receiver serves it itself (no loops).
pub const FORWARDED: &str = "x-tessera-forwarded-by";

/// Where a request goes.
#[derive(Debug)]
pub enum Route {
    Local,
    Remote(NodeRecord),
}

type Forwarder = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

pub struct Cluster {
    pub me: NodeId,
    /// This node's public URL (what other nodes redirect to).
    pub url: String,
    rtmp: String,
    store: ClusterStore,
    config: ClusterConfig,
    membership: RwLock<Membership>,
    started_ms: i64,
    draining: AtomicBool,
    /// The version of the shared app store this node last wrote or adopted.
    apps_version: AtomicU64,
    /// The last CPU reading: (process CPU seconds, when).
    cpu_sample: std::sync::Mutex<Option<(f64, Instant)>>,
    bytes_sample: std::sync::Mutex<Option<(u64, Instant)>>,
    last_catch_up: std::sync::Mutex<Option<Instant>>,
    /// The live nodes at the last heartbeat (a node missing from the next is gone).
    known_nodes: std::sync::Mutex<std::collections::HashSet<NodeId>>,
    tls: Arc<rustls::ClientConfig>,
    forwarder: Forwarder,
    /// The inter-node relay's client: HTTP/2 only, so every relayed room and keyframe request
    /// between two nodes shares one TCP connection (h2c on plain http, ALPN h2 on https).
    relay_client: Forwarder,
    /// Authenticates relay requests between nodes (`p:secret` in Redis).
    pub(crate) secret: String,
    /// Rooms this node relays from their node (as an edge), with the publishers it mirrors.
    pub(crate) edges: crate::cluster_relay::Edges,
    /// Task records saved but not yet shared: a stop waits for them before leaving, so the
    /// node that takes the tasks over reads their last state.
    unshared_tasks: Arc<std::sync::atomic::AtomicUsize>,
}

/// One HTTP/2 connection per node pair for the relay: streams multiplexed, windows that grow
/// with the link (a relayed room is a few Mbit/s), and PINGs that notice a dead peer in ~20 s
/// even when nothing flows.
fn relay_client(tls: &Arc<rustls::ClientConfig>) -> Forwarder {
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((**tls).clone()).https_or_http().enable_http2().build();
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .http2_keep_alive_while_idle(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

impl Cluster {
    /// Connects to Redis, joins the shared app store, writes the first heartbeat and reads the
    /// nodes, so the node routes correctly from its first request.
    pub async fn join(config: &ClusterConfig, default_url: String, http_port: u16, rtmp: String, apps: &AppStore, tls: Arc<rustls::ClientConfig>) -> Result<Arc<Cluster>, String> {
        Self::try_join(config, default_url, http_port, rtmp, apps, tls)
            .await
            .map_err(|e| format!("{e} (cluster.redis_url {})", crate::config::redact_url_password(&config.redis_url)))
    }

    async fn try_join(
        config: &ClusterConfig,
        default_url: String,
        http_port: u16,
        rtmp: String,
        apps: &AppStore,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Arc<Cluster>, JoinError> {
        let store = ClusterStore::connect(&config.redis_url, &config.key_prefix).await?;
        let me = NodeId(config.node_id.clone().unwrap_or_else(|| format!("{}-{http_port}", host_name())));
        let url = config.public_url.clone().unwrap_or(default_url).trim_end_matches('/').to_owned();
        store.clear_draining(&me).await?;
        let shared = match store.apps().await? {
            Some((bytes, _, _)) => apps.join_cluster(&bytes)?,
            None => apps.encoded(),
        };
        let version = store.put_apps(&shared, &me).await?;
        let secret = store.secret(&tessera_model::random::secret()).await?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*tls).clone()).https_or_http().enable_http1().build();
        let cluster = Arc::new(Cluster {
            me,
            url,
            rtmp,
            store,
            config: config.clone(),
            membership: RwLock::new(Membership::default()),
            started_ms: crate::now_ms(),
            draining: AtomicBool::new(false),
            apps_version: AtomicU64::new(version),
            cpu_sample: Default::default(),
            bytes_sample: Default::default(),
            last_catch_up: Default::default(),
            known_nodes: Default::default(),
            tls: tls.clone(),
            secret,
            edges: Default::default(),
            forwarder: Client::builder(TokioExecutor::new()).build(connector),
            relay_client: relay_client(&tls),
            unshared_tasks: Default::default(),
        });
        // Every change saved from now on goes to the shared copy, in order.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        apps.replicate_to(move |bytes| {
            let _ = tx.send(bytes);
        });
        let writer = cluster.clone();
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                match writer.store.put_apps(&bytes, &writer.me).await {
                    Ok(v) => writer.apps_version.store(v, Ordering::SeqCst),
                    Err(e) => tracing::error!("cluster: sharing an app store change failed: {e}"),
                }
            }
        });
        // Every task record saved is shared, so another node can take the task over.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
        let unshared = cluster.unshared_tasks.clone();
        tessera_tasks::registry::replicate_saved_tasks(Box::new(move |_kind, id, bytes| {
            unshared.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send((id.to_owned(), bytes.to_vec()));
        }));
        let sharer = cluster.clone();
        tokio::spawn(async move {
            while let Some((id, bytes)) = rx.recv().await {
                let app = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["app"].as_str().map(str::to_owned)).unwrap_or_default();
                match sharer.store.put_task_file(&sharer.me, &app, &id, &bytes).await {
                    Ok(true) => {}
                    Ok(false) => tracing::info!(task = %id, "cluster: the task runs on another node now; its record here is not shared"),
                    Err(e) => tracing::warn!(task = %id, "cluster: sharing the task's record failed: {e}"),
                }
                sharer.unshared_tasks.fetch_sub(1, Ordering::SeqCst);
            }
        });
        let record = cluster.record(NodeLoad { cores: cores(), ..NodeLoad::default() });
        cluster.store.heartbeat(&record, cluster.ttl()).await?;
        cluster.refresh().await?;
        tracing::info!(node = %cluster.me, url = %cluster.url, nodes = cluster.membership.read().expect("membership").len(), "joined the cluster");
        Ok(cluster)
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.config.node_ttl_ms)
    }

    fn record(&self, load: NodeLoad) -> NodeRecord {
        NodeRecord {
            id: self.me.clone(),
            url: self.url.clone(),
            rtmp: self.rtmp.clone(),
            state: if self.draining.load(Ordering::SeqCst) { NodeState::Draining } else { NodeState::Active },
            load,
            max_viewers: self.config.max_viewers_per_node,
            version: crate::api::VERSION.into(),
            started_ms: self.started_ms,
            heartbeat_ms: crate::now_ms(),
        }
    }

    /// Reads the live nodes into the view.
    async fn refresh(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        let nodes = self.store.nodes().await?;
        self.membership.write().expect("membership").replace(nodes.clone());
        Ok(nodes)
    }

    /// The live nodes, read now.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        self.refresh().await
    }

    /// A live node's record, from the last read.
    pub fn node(&self, id: &NodeId) -> Option<NodeRecord> {
        self.membership.read().expect("membership").get(id).cloned()
    }

    /// For a new viewer of `owner`'s room, given this node's viewers counted now: whether the
    /// owner is full, and the node that would serve the viewer instead (counted as sent there).
    pub fn viewer_placement(&self, owner: &NodeId, live_viewers: u32) -> (bool, Option<NodeRecord>) {
        let mut m = self.membership.write().expect("membership");
        m.set_live_viewers(&self.me, live_viewers);
        let full = m.get(owner).is_some_and(|o| m.is_full(o));
        if !full {
            return (false, None);
        }
        let edge = m.edge_for(owner).cloned();
        if let Some(e) = &edge {
            if e.id != self.me {
                m.note_viewer(&e.id);
            }
        }
        (true, edge)
    }

    /// Counts a viewer sent to `node` (its record shows it at its next heartbeat).
    pub fn viewer_sent(&self, node: &NodeId) {
        self.membership.write().expect("membership").note_viewer(node);
    }

    pub(crate) fn relay_client(&self) -> &Forwarder {
        &self.relay_client
    }

    /// Other live nodes, from the last read.
    pub fn peers(&self) -> Vec<NodeRecord> {
        self.membership.read().expect("membership").nodes().filter(|n| n.id != self.me).cloned().collect()
    }

    pub async fn drain(&self, id: &NodeId) -> Result<(), ClusterError> {
        self.store.set_draining(id).await
    }

    /// Where a request about `app`/`room` is served. Redis unreachable: here (a node keeps
    /// serving what reaches it rather than nothing).
    pub async fn route(&self, app: &str, room: &str, intent: RoomIntent) -> Route {
        match self.try_route(app, room, intent).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%app, %room, "cluster directory unreachable, serving here: {e}");
                Route::Local
            }
        }
    }

    async fn try_route(&self, app: &str, room: &str, intent: RoomIntent) -> Result<Route, ClusterError> {
        let mut owner = self.store.room_owner(app, room).await?;
        // A claim may lose to another node's; the second decision follows the winner.
        for _ in 0..2 {
            let decision = decide(&self.me, owner.as_ref(), &self.membership.read().expect("membership"), intent);
            match decision {
                Decision::Local => {
                    // The room is this node's: a copy left by a relay from its old node is it now.
                    if let Some(key) = crate::cluster_relay::room_key(app, room) {
                        self.edges.forget(&key);
                    }
                    return Ok(Route::Local);
                }
                Decision::Remote(node) => return Ok(Route::Remote(node)),
                Decision::Claim { expected, node } => {
                    let got = self.store.claim_room(app, room, expected.as_ref(), &node).await?;
                    if got == node {
                        self.membership.write().expect("membership").note_placed(&node);
                        tracing::info!(%app, %room, node = %node, "room placed");
                    }
                    owner = Some(got);
                }
            }
        }
        Ok(Route::Local)
    }

    /// The room ended here: forget its placement (if it is still ours).
    pub async fn room_ended(&self, app: &str, room: &str) {
        if let Err(e) = self.store.release_room(app, room, &self.me).await {
            tracing::warn!(%app, %room, "cluster: releasing the room failed: {e}");
        }
    }

    /// Shares every room's webhook stamps (in order, off the emitting thread), and continues a
    /// room's clock where its last node left it when the room starts here.
    pub fn share_room_clocks(self: &Arc<Self>, hooks: &crate::webhook::Webhooks) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, i64)>();
        hooks.on_stamp(move |app, room, ms| {
            let _ = tx.send((app.to_owned(), room.to_owned(), ms));
        });
        let cluster = self.clone();
        tokio::spawn(async move {
            while let Some((app, room, ms)) = rx.recv().await {
                if let Err(e) = cluster.store.raise_room_clock(&app, &room, ms).await {
                    tracing::warn!(%app, %room, "cluster: sharing the room's event clock failed: {e}");
                }
            }
        });
    }

    /// Keeps a copy of this node's webhook outbox in Redis (in order, off the delivering
    /// task), so a node that sees this one die delivers what it left (`take_over_outbox`).
    pub fn share_outbox(self: &Arc<Self>, hooks: &crate::webhook::Webhooks) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::webhook::OutboxChange>();
        hooks.on_outbox(move |change| {
            let _ = tx.send(change);
        });
        let cluster = self.clone();
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let result = match &change {
                    crate::webhook::OutboxChange::Put(id, bytes) => cluster.store.outbox_put(&cluster.me, id, bytes).await,
                    crate::webhook::OutboxChange::Done(id) => cluster.store.outbox_done(&cluster.me, id).await,
                };
                if let Err(e) = result {
                    tracing::warn!("cluster: sharing the webhook outbox failed: {e}");
                }
            }
        });
    }

    /// Delivers the webhook events a dead node left undelivered (if this node takes them
    /// first): the same event ids, so a receiver that already had one drops the copy.
    async fn take_over_outbox(&self, state: &AppState, dead: &NodeId) {
        let taken = match self.store.take_outbox(dead).await {
            Ok(t) => t,
            Err(e) => return tracing::warn!(%dead, "cluster: taking a dead node's webhook outbox failed: {e}"),
        };
        // Only what parses, with an id that can name an outbox file here.
        let events: Vec<tessera_model::events::Event> =
            taken.iter().filter_map(|b| serde_json::from_slice::<tessera_model::events::Event>(b).ok()).filter(|e| crate::webhook::is_event_id(&e.id)).collect();
        if !events.is_empty() {
            tracing::info!(%dead, events = events.len(), "cluster: delivering the webhook events a dead node left");
            state.hooks.adopt(events);
        }
    }

    /// Before a room's first event here: its clock continues after the last stamp any node
    /// gave it.
    pub async fn continue_room_clock(&self, hooks: &crate::webhook::Webhooks, app: &str, room: &str) {
        match self.store.room_clock(app, room).await {
            Ok(Some(floor)) => hooks.raise_clock(app, room, floor),
            Ok(None) => {}
            Err(e) => tracing::warn!(%app, %room, "cluster: reading the room's event clock failed: {e}"),
        }
    }

    /// Leaves at shutdown, after the tasks stopped: their last records shared (for at most
    /// 2 s), the node's record goes at once instead of at its TTL, and the next heartbeat of
    /// another node takes its tasks (and undelivered webhooks) over.
    pub async fn leave(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.unshared_tasks.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.store.leave(&self.me).await {
            tracing::warn!("cluster: leaving failed: {e}");
        }
    }

    /// One heartbeat: this node's load, its drain mark, the live nodes and the app store.
    async fn beat(&self, state: &AppState) -> Result<(), ClusterError> {
        let draining = self.store.is_draining(&self.me).await?;
        if draining && !self.draining.swap(true, Ordering::SeqCst) {
            tracing::info!(node = %self.me, "draining: no new rooms on this node");
        }
        let load = self.load(state).await;
        self.store.heartbeat(&self.record(load), self.ttl()).await?;
        let nodes = self.refresh().await?;
        state.metrics.cluster_nodes.set(nodes.len() as i64);
        // Nodes gone since the last beat: their tasks are taken over (by whichever live node
        // claims each first).
        let now: std::collections::HashSet<NodeId> = nodes.iter().map(|n| n.id.clone()).collect();
        let gone: Vec<NodeId> = {
            let mut known = self.known_nodes.lock().expect("known nodes");
            let gone = known.difference(&now).filter(|id| **id != self.me).cloned().collect();
            *known = now;
            gone
        };
        for node in gone {
            tracing::warn!(%node, "a node left the cluster without a word; taking over its tasks");
            self.take_over_tasks(state, &node).await;
            self.take_over_outbox(state, &node).await;
        }
        self.sync_apps(&state.store).await?;
        Ok(())
    }

    /// Claims and resumes the tasks of a node that died. A task's record comes from Redis into
    /// this node's data dir (so a restart here resumes it too), its room is claimed for this node
    /// if the dead node still held it (its publishers come back here), and it resumes as after a
    /// restart (recordings continue in `ha<N>_` files).
    async fn take_over_tasks(&self, state: &AppState, dead: &NodeId) {
        let ids = match self.store.tasks_of(dead).await {
            Ok(ids) => ids,
            Err(e) => return tracing::warn!(%dead, "cluster: reading a dead node's tasks failed: {e}"),
        };
        for id in ids {
            let Ok(Some(bytes)) = self.store.task_file(&id).await else { continue };
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
            let (Some(app), Some(kind)) = (record["app"].as_str(), record["kind"].as_str()) else { continue };
            match self.store.claim_task(app, &id, dead, &self.me).await {
                Ok(owner) if owner == self.me => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(task = %id, "cluster: claiming a task failed: {e}");
                    continue;
                }
            }
            let dir = state.tasks.tasks_dir();
            let _ = std::fs::create_dir_all(&dir);
            if let Err(e) = tessera_tasks::persist::write_atomic(&dir.join(format!("{id}.json")), &bytes, 0o600) {
                tracing::error!(task = %id, "cluster: cannot save a task taken over: {e}");
                continue;
            }
            let _ = self.store.move_task(dead, &self.me, &id).await;
            if let Some(room) = record["room"].as_str() {
                let _ = self.store.claim_room(app, room, Some(dead), &self.me).await;
            }
            tracing::info!(task = %id, %kind, from = %dead, "cluster: took over the task");
            let records = vec![record.clone()];
            match kind {
                "relay" => state.tasks.relays.resume_from(&state.rtc, records),
                "recording" => state.tasks.recordings.resume_from(&state.config.data_dir, &state.rtc, records),
                "ingest" => state.tasks.ingests.resume_from(&state.rtc, records),
                "mix_job" => tessera_tasks::mix_jobs::resume_from(&state.tasks, records).await,
                _ => {}
            }
        }
    }

    /// At start: task files of this node that another node took over while it was gone are
    /// moved to `tasks/handed_over/` (not resumed here: the task runs there).
    pub async fn set_aside_handed_over(&self, tasks_dir: &std::path::Path) {
        let Ok(entries) = std::fs::read_dir(tasks_dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
            let (Some(app), Some(id)) = (record["app"].as_str(), record["id"].as_str()) else { continue };
            match self.store.task_node(app, id).await {
                Ok(Some(owner)) if owner != self.me => {
                    let aside = tasks_dir.join("handed_over");
                    let _ = std::fs::create_dir_all(&aside);
                    if std::fs::rename(&path, aside.join(format!("{id}.json"))).is_ok() {
                        tracing::info!(task = %id, node = %owner, "the task runs on another node now; not resumed here");
                    }
                }
                _ => {}
            }
        }
    }

    /// At start: webhook events of this node that another node delivered while it was gone
    /// are removed from its outbox (not delivered twice).
    pub async fn set_aside_taken_events(&self, outbox: &std::path::Path) {
        let Ok(ids) = self.store.outbox_taken(&self.me).await else { return };
        for id in ids.iter().filter(|id| crate::webhook::is_event_id(id)) {
            if std::fs::remove_file(outbox.join(format!("{id}.json"))).is_ok() {
                tracing::info!(event = %id, "the webhook event was delivered by another node while this one was gone");
            }
        }
    }

    /// Adopts another node's change to the shared app store, if there is one.
    async fn sync_apps(&self, apps: &AppStore) -> Result<bool, ClusterError> {
        let version = self.store.apps_version().await?;
        if version == self.apps_version.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let Some((bytes, version, writer)) = self.store.apps().await? else { return Ok(false) };
        let adopted = writer != self.me;
        if adopted {
            match apps.adopt(&bytes) {
                Ok(()) => tracing::info!(%writer, version, "cluster: adopted the app store's change"),
                Err(e) => tracing::error!("cluster: the shared app store does not load: {e}"),
            }
        }
        self.apps_version.store(version, Ordering::SeqCst);
        Ok(adopted)
    }

    /// A user token as this node's entry points route by it: verified, after catching up with
    /// the shared app store if it does not verify (its secret may be new). None: it does not
    /// verify (the entry point refuses it itself, with its error).
    pub async fn verify_token(&self, state: &AppState, raw: &str) -> Option<tessera_model::token::UserToken> {
        let mut verified = crate::entry::verify_raw(state, raw, false);
        if verified.is_err() && self.catch_up_apps(&state.store).await {
            verified = crate::entry::verify_raw(state, raw, false);
        }
        verified.ok()
    }

    /// A credential this node does not know may be one another node just made: look for a
    /// newer shared app store before refusing it. At most every 100 ms, so a flood of bad
    /// credentials costs Redis little.
    pub async fn catch_up_apps(&self, apps: &AppStore) -> bool {
        {
            let mut last = self.last_catch_up.lock().expect("catch-up");
            if last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.sync_apps(apps).await.unwrap_or(false)
    }

    async fn load(&self, state: &AppState) -> NodeLoad {
        let stats = state.rtc.stats().await.unwrap_or_default();
        let now = Instant::now();
        let cpu_cores = match crate::api::server::process_cpu_seconds() {
            Some(cpu) => {
                let mut last = self.cpu_sample.lock().expect("cpu");
                let rate = last.map(|(c, t)| (cpu - c) / now.duration_since(t).as_secs_f64().max(0.001)).unwrap_or(0.0);
                *last = Some((cpu, now));
                rate.max(0.0)
            }
            None => 0.0,
        };
        let bytes = state.rtc.counters.bytes_forwarded.load(Ordering::Relaxed);
        let send_bps = {
            let mut last = self.bytes_sample.lock().expect("bytes");
            let bps = last.map(|(b, t)| (bytes.saturating_sub(b) as f64 * 8.0 / now.duration_since(t).as_secs_f64().max(0.001)) as u64).unwrap_or(0);
            *last = Some((bytes, now));
            bps
        };
        NodeLoad {
            cpu_cores,
            cores: cores(),
            busy_ratio: state.rtc.worker_busy_ratios().into_iter().fold(0.0, f64::max),
            rooms: stats.rooms as u32,
            publishers: stats.publishers as u32,
            viewers: stats.viewers as u32,
            participants: stats.participants.iter().map(|(_, n)| *n as u32).sum(),
            send_bps,
        }
    }

    /// Heartbeats until the process ends.
    pub fn spawn_heartbeat(self: &Arc<Self>, state: AppState) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(cluster.config.heartbeat_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match cluster.beat(&state).await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("cluster: Redis answers again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!("cluster: heartbeat failed (retrying each beat): {e}");
                    }
                    Err(_) => {}
                }
            }
        })
    }

    /// Sends `req` to `node` as it came and returns its answer.
    pub async fn forward(&self, node: &NodeRecord, req: Request<Body>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri: Uri = match format!("{}{path}", node.url).parse() {
            Ok(u) => u,
            Err(e) => return gateway_error(&node.id, &format!("bad node URL: {e}")),
        };
        parts.uri = uri;
        parts.headers.remove(axum::http::header::HOST);
        parts.headers.insert(FORWARDED, HeaderValue::from_str(&self.me.0).unwrap_or(HeaderValue::from_static("node")));
        match tokio::time::timeout(Duration::from_secs(30), self.forwarder.request(Request::from_parts(parts, body))).await {
            Ok(Ok(resp)) => {
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, Body::new(body.map_err(axum::Error::new)))
            }
            Ok(Err(e)) => gateway_error(&node.id, &e.to_string()),
            Err(_) => gateway_error(&node.id, "no answer in 30 s"),
        }
    }
}

fn gateway_error(node: &NodeId, why: &str) -> Response<Body> {
    tracing::warn!(%node, "cluster: forwarding failed: {why}");
    let body = serde_json::json!({"error": {"code": "node_unreachable", "message": format!("the room's node {node} did not answer: {why}")}});
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn cores() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "node".into())
}

impl Cluster {
    /// `GET path` on every other live node (as forwarded requests, with the caller's
    /// `Authorization`), the JSON answers of those that answered 200.
    pub async fn gather(&self, path: &str, authorization: Option<&HeaderValue>) -> Vec<serde_json::Value> {
        let asks = self.peers().into_iter().map(|node| {
            let mut req = Request::get(path).body(Body::empty()).expect("a GET request");
            if let Some(a) = authorization {
                req.headers_mut().insert(axum::http::header::AUTHORIZATION, a.clone());
            }
            async move {
                let resp = self.forward(&node, req).await;
                if resp.status() != StatusCode::OK {
                    tracing::warn!(node = %node.id, status = %resp.status(), %path, "cluster: a node's part of a list is missing");
                    return None;
                }
                let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.ok()?;
                serde_json::from_slice(&bytes).ok()
            }
        });
        futures_util::future::join_all(asks).await.into_iter().flatten().collect()
    }
}

/// The access token of a WHIP/WHEP request: its `Authorization: Bearer`, or the
/// `access_token` query parameter (RFC 6750 §2.3) a cluster redirect puts there.
fn request_token(req: &Request<Body>) -> Option<(String, bool)> {
    if let Some(t) = crate::api::auth::bearer(req.headers()) {
        return Some((t.to_owned(), true));
    }
    query_param(req.uri(), "access_token").map(|t| (t, false))
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.to_owned()))
}

/// Middleware of the WHIP/WHEP routes: a token in `access_token` stands for the
/// `Authorization` header (clients following a cluster redirect to another host drop it).
pub async fn access_token_query(mut req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    if !req.headers().contains_key(axum::http::header::AUTHORIZATION) {
        if let Some(t) = query_param(req.uri(), "access_token") {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                req.headers_mut().insert(axum::http::header::AUTHORIZATION, v);
            }
        }
    }
    next.run(req).await
}

/// Middleware: a request about a room another node holds goes there (module docs).
pub async fn route_request(axum::extract::State(state): axum::extract::State<AppState>, req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    let Some(cluster) = state.cluster.get() else { return next.run(req).await };
    if req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let media = match (req.method().as_str(), segments.as_slice()) {
        ("POST", ["whip", room]) if *room != "session" => Some((*room, RoomIntent::Create)),
        ("POST", ["whep", room, _, _]) if *room != "session" => Some((*room, RoomIntent::Use)),
        _ => None,
    };
    if let Some((room, intent)) = media {
        // Routed by the verified token's app; a token that does not verify is refused here.
        let Some((raw, from_header)) = request_token(&req) else { return next.run(req).await };
        let Some(token) = cluster.verify_token(&state, &raw).await else { return next.run(req).await };
        let route = cluster.route(token.app.as_str(), room, intent).await;
        if let ("POST", ["whep", _, user, stream]) = (req.method().as_str(), segments.as_slice()) {
            // A viewer of a room whose node is full is served by another node, which relays
            // the room's streams from it (`cluster_relay`). This node's own viewers are counted
            // now; other nodes' are their records plus the viewers sent there since.
            let live = state.rtc.stats().await.map(|s| s.viewers as u32).unwrap_or(0);
            let owner = match &route {
                Route::Local => cluster.node(&cluster.me),
                Route::Remote(node) => Some(node.clone()),
            };
            let sent_as_edge = query_param(req.uri(), "cluster_edge").is_some();
            let watched = tessera_model::UserId::parse(user).ok().zip(tessera_media::StreamKind::parse(stream));
            if let (Some(owner), Some((user, stream))) = (owner, watched) {
                let (full, edge) = cluster.viewer_placement(&owner.id, live);
                if sent_as_edge && owner.id != cluster.me {
                    state.metrics.cluster_routed.get_or_create(&crate::metrics::ResultLabel { result: "edge" }).inc();
                    crate::cluster_relay::serve_as_edge(&state, cluster, &owner, token.app.clone(), room, user, stream).await;
                    return next.run(req).await;
                }
                match edge.filter(|_| full && !sent_as_edge) {
                    Some(edge) if edge.id == cluster.me => {
                        state.metrics.cluster_routed.get_or_create(&crate::metrics::ResultLabel { result: "edge" }).inc();
                        crate::cluster_relay::serve_as_edge(&state, cluster, &owner, token.app.clone(), room, user, stream).await;
                        return next.run(req).await;
                    }
                    Some(edge) => {
                        state.metrics.cluster_routed.get_or_create(&crate::metrics::ResultLabel { result: "redirect" }).inc();
                        return redirect_as_edge(&edge, req.uri(), from_header.then_some(raw.as_str()));
                    }
                    None if owner.id != cluster.me => cluster.viewer_sent(&owner.id),
                    None => {}
                }
            }
        }
        return match route {
            Route::Local => next.run(req).await,
            Route::Remote(node) => {
                state.metrics.cluster_routed.get_or_create(&crate::metrics::ResultLabel { result: "redirect" }).inc();
                redirect(&node, req.uri(), from_header.then_some(raw.as_str()))
            }
        };
    }
    // A recording's files are where it ran: `/files/<app>/[<prefix>/]<task id>/<file>`.
    if let ["files", app, .., id, _file] = segments.as_slice() {
        if let Ok(Some(owner)) = cluster.store.task_node(app, id).await {
            let node = (owner != cluster.me).then(|| cluster.membership.read().expect("membership").get(&owner).cloned()).flatten();
            if let Some(node) = node {
                state.metrics.cluster_routed.get_or_create(&crate::metrics::ResultLabel { result: "forward" }).inc();
                return cluster.forward(&node, req).await;
            }
        }
        return next.run(req).await;
    }
    if let ["v1", kind, rest @ ..] = segments.as_slice() {
        if TASK_KINDS.contains(kind) {
            let id = rest.first().map(|s| s.to_string());
            return route_task(&state, cluster, id, req, next).await;
        }
    }
    if let ["v1", "rooms", room, ..] = segments.as_slice() {
        let Some(app) = api_key_app(&state, cluster, req.headers()).await else { return next.run(req).await };
        return match cluster.route(&app, room, RoomIntent::Use).await {
            Route::Local => next.run(req).await,
            Route::Remote(node) => {
                state.metrics.cluster_routed.get_or_create(&crate::metrics::ResultLabel { result: "forward" }).inc();
                cluster.forward(&node, req).await
            }
        };
    }
    next.run(req).await
}

/// The node a room-signaling `join` belongs on, if not this one (the join's token decides; a
/// token that does not verify is answered here).
pub async fn signaling_route(state: &AppState, join: &serde_json::Value) -> Option<NodeRecord> {
    let cluster = state.cluster.get()?;
    let token = cluster.verify_token(state, join["token"].as_str()?).await?;
    match cluster.route(token.app.as_str(), token.room.as_str(), RoomIntent::Create).await {
        Route::Local => None,
        Route::Remote(node) => Some(node),
    }
}

fn to_tungstenite(m: axum::extract::ws::Message) -> tokio_tungstenite::tungstenite::Message {
    use axum::extract::ws::Message as Axum;
    use tokio_tungstenite::tungstenite::Message as Tung;
    match m {
        Axum::Text(t) => Tung::Text(t.as_str().into()),
        Axum::Binary(b) => Tung::Binary(b),
        Axum::Ping(p) => Tung::Ping(p),
        Axum::Pong(p) => Tung::Pong(p),
        Axum::Close(c) => Tung::Close(c.map(|c| tokio_tungstenite::tungstenite::protocol::CloseFrame { code: c.code.into(), reason: c.reason.as_str().into() })),
    }
}

/// `None` for a raw frame (never read from a stream).
fn to_axum(m: tokio_tungstenite::tungstenite::Message) -> Option<axum::extract::ws::Message> {
    use axum::extract::ws::Message as Axum;
    use tokio_tungstenite::tungstenite::Message as Tung;
    Some(match m {
        Tung::Text(t) => Axum::Text(t.as_str().into()),
        Tung::Binary(b) => Axum::Binary(b),
        Tung::Ping(p) => Axum::Ping(p),
        Tung::Pong(p) => Axum::Pong(p),
        Tung::Close(c) => Axum::Close(c.map(|c| axum::extract::ws::CloseFrame { code: c.code.into(), reason: c.reason.as_str().into() })),
        Tung::Frame(_) => return None,
    })
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Cluster {
    /// Carries a room-signaling session to the room's node: the client's WebSocket stays on
    /// this node, its messages (the `join` first) go to `node`'s `/v1/rtc` and the answers come
    /// back, until either side closes. Browsers do not follow redirects on WebSockets.
    pub async fn proxy_signaling(&self, mut client: axum::extract::ws::WebSocket, node: &NodeRecord, join: &serde_json::Value, user_agent: &str) {
        use axum::extract::ws::Message as Axum;
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message as Tung;
        let upstream = match self.connect_signaling(node, user_agent).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(node = %node.id, "cluster: cannot reach the room's node for signaling: {e}");
                let msg = serde_json::json!({"type": "error", "id": join.get("id"), "code": "node_unreachable", "message": format!("the room's node {} did not answer", node.id)});
                let _ = client.send(Axum::Text(msg.to_string().into())).await;
                let _ = client.send(Axum::Close(Some(axum::extract::ws::CloseFrame { code: 1013, reason: "node unreachable".into() }))).await;
                return;
            }
        };
        let (mut up_tx, mut up_rx) = upstream.split();
        if up_tx.send(Tung::Text(join.to_string().into())).await.is_err() {
            return;
        }
        let (mut down_tx, mut down_rx) = client.split();
        // Each direction until its side closes (the close frame is passed on) or fails.
        let to_node = async {
            while let Some(Ok(m)) = down_rx.next().await {
                let close = matches!(m, Axum::Close(_));
                if up_tx.send(to_tungstenite(m)).await.is_err() || close {
                    break;
                }
            }
        };
        let to_client = async {
            while let Some(Ok(m)) = up_rx.next().await {
                let Some(m) = to_axum(m) else { continue };
                let close = matches!(m, Axum::Close(_));
                if down_tx.send(m).await.is_err() || close {
                    break;
                }
            }
        };
        // Either side ending ends the session (the other is dropped, which closes it).
        tokio::select! {
            () = to_node => {}
            () = to_client => {}
        }
    }

    async fn connect_signaling(&self, node: &NodeRecord, user_agent: &str) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Io>>, String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let uri: Uri = node.url.parse().map_err(|e| format!("node URL {}: {e}", node.url))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("node URL without a host")?.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let ws_url = format!("{}://{}/v1/rtc", if https { "wss" } else { "ws" }, uri.authority().map(|a| a.as_str()).unwrap_or(&host));
        let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let stream: Box<dyn Io> = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            Box::new(tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?)
        } else {
            Box::new(tcp)
        };
        let mut req = ws_url.into_client_request().map_err(|e| e.to_string())?;
        req.headers_mut().insert(FORWARDED, HeaderValue::from_str(&self.me.0).map_err(|e| e.to_string())?);
        if let Ok(ua) = HeaderValue::from_str(user_agent) {
            req.headers_mut().insert(axum::http::header::USER_AGENT, ua);
        }
        let (ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::client_async(req, stream))
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }
}

/// The task collections of the API: a task runs on its room's node.
const TASK_KINDS: [&str; 4] = ["mix-jobs", "recordings", "relays", "ingests"];

/// The app of an API key, looking for a key just made on another node before giving up.
async fn api_key_app(state: &AppState, cluster: &Cluster, headers: &axum::http::HeaderMap) -> Option<String> {
    let key = crate::api::auth::bearer(headers)?;
    let mut known = state.store.authenticate_key(key);
    if known.is_none() && cluster.catch_up_apps(&state.store).await {
        known = state.store.authenticate_key(key);
    }
    known.map(|(app, _)| app.to_string())
}

/// Task calls: a start goes to the room's node (and the task's node is recorded), a call about
/// one task to the node it runs on, a list to every node (merged, paged by id as one node does).
async fn route_task(state: &AppState, cluster: &Cluster, id: Option<String>, req: Request<Body>, next: axum::middleware::Next) -> Response<Body> {
    let Some(app) = api_key_app(state, cluster, req.headers()).await else { return next.run(req).await };
    let method = req.method().clone();
    match (method.as_str(), id) {
        ("POST", None) => {
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, crate::api::json::MAX_JSON_BODY + 1).await else {
                let e = crate::error::ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the JSON body is larger than 256 KiB");
                return axum::response::IntoResponse::into_response(e);
            };
            let room = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["room"].as_str().map(str::to_owned));
            let req = Request::from_parts(parts, Body::from(bytes));
            let (resp, node) = match room {
                Some(room) => match cluster.route(&app, &room, RoomIntent::Use).await {
                    Route::Remote(node) => {
                        state.metrics.cluster_routed.get_or_create(&crate::metrics::ResultLabel { result: "forward" }).inc();
                        (cluster.forward(&node, req).await, node.id)
                    }
                    Route::Local => (next.run(req).await, cluster.me.clone()),
                },
                None => (next.run(req).await, cluster.me.clone()),
            };
            if !resp.status().is_success() {
                return resp;
            }
            // Remember where the task runs, from the id in the answer.
            let (parts, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_default();
            if let Some(id) = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["id"].as_str().map(str::to_owned)) {
                if let Err(e) = cluster.store.set_task_node(&app, &id, &node).await {
                    tracing::warn!(%id, "cluster: recording the task's node failed: {e}");
                }
            }
            Response::from_parts(parts, Body::from(bytes))
        }
        (_, Some(id)) => {
            let owner = cluster.store.task_node(&app, &id).await.unwrap_or_else(|e| {
                tracing::warn!(%id, "cluster directory unreachable, serving the task here: {e}");
                None
            });
            let node = owner.filter(|n| *n != cluster.me).and_then(|n| cluster.membership.read().expect("membership").get(&n).cloned());
            match node {
                Some(node) => {
                    state.metrics.cluster_routed.get_or_create(&crate::metrics::ResultLabel { result: "forward" }).inc();
                    cluster.forward(&node, req).await
                }
                None => next.run(req).await,
            }
        }
        ("GET", None) => {
            let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let limit = query_param(req.uri(), "limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(100);
            let auth = req.headers().get(axum::http::header::AUTHORIZATION).cloned();
            let local = next.run(req).await;
            if local.status() != StatusCode::OK {
                return local;
            }
            let (parts, body) = local.into_parts();
            let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_default();
            let Ok(mut page) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return Response::from_parts(parts, Body::from(bytes)) };
            let mut items = page["items"].as_array().cloned().unwrap_or_default();
            for other in cluster.gather(&path, auth.as_ref()).await {
                items.extend(other["items"].as_array().cloned().unwrap_or_default());
            }
            // Each node pages by id after the cursor: the first `limit` of the union are the page.
            items.sort_by(|a, b| a["id"].as_str().unwrap_or("").cmp(b["id"].as_str().unwrap_or("")));
            let more = items.len() > limit;
            items.truncate(limit);
            page["next_cursor"] = if more { items.last().map(|i| i["id"].clone()).unwrap_or(serde_json::Value::Null) } else { serde_json::Value::Null };
            page["items"] = serde_json::Value::Array(items);
            let mut r = Response::from_parts(parts, Body::from(page.to_string()));
            r.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
            r
        }
        _ => next.run(req).await,
    }
}

/// `redirect` to a node that serves the viewer as an edge of the room's full node.
fn redirect_as_edge(node: &NodeRecord, uri: &Uri, token: Option<&str>) -> Response<Body> {
    let mut r = redirect(node, uri, token);
    if let Some(loc) = r.headers().get(axum::http::header::LOCATION).and_then(|l| l.to_str().ok()) {
        let sep = if loc.contains('?') { '&' } else { '?' };
        if let Ok(v) = HeaderValue::from_str(&format!("{loc}{sep}cluster_edge=1")) {
            r.headers_mut().insert(axum::http::header::LOCATION, v);
        }
    }
    r
}

/// `307` to the same path and query on `node`, with the token in the query if it came in the
/// header.
fn redirect(node: &NodeRecord, uri: &Uri, token: Option<&str>) -> Response<Body> {
    let mut location = format!("{}{}", node.url, uri.path());
    let mut query: Vec<String> = uri.query().map(|q| q.split('&').filter(|kv| !kv.is_empty()).map(str::to_owned).collect()).unwrap_or_default();
    if let Some(t) = token {
        query.retain(|kv| !kv.starts_with("access_token="));
        query.push(format!("access_token={t}"));
    }
    if !query.is_empty() {
        location.push('?');
        location.push_str(&query.join("&"));
    }
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    r.headers_mut().insert("x-tessera-node", HeaderValue::from_str(&node.id.0).unwrap_or(HeaderValue::from_static("node")));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay's client puts a node pair's relayed rooms (long-lived streams) and keyframe
    /// requests on one connection, against the same HTTP/2-by-prior-knowledge serving the nodes
    /// use.
    #[tokio::test]
    async fn the_relay_client_multiplexes_a_node_pairs_streams_on_one_connection() {
        use std::sync::atomic::AtomicUsize;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (io, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        // A "relay": a body that keeps coming; anything else: a short answer.
                        let body = if req.uri().path().starts_with("/relay") {
                            let chunks = futures_util::stream::unfold(0u32, |n| async move {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                Some((Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(axum::body::Bytes::from(vec![n as u8; 100]))), n + 1))
                            });
                            Body::new(http_body_util::StreamBody::new(chunks))
                        } else {
                            Body::from("ok")
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service).await;
                });
            }
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = relay_client(&crate::tls::client_config(None).unwrap());
        let mut streams = Vec::new();
        for room in ["a", "b", "c"] {
            let resp = client.request(Request::get(format!("http://{addr}/relay/{room}")).body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(resp.version(), axum::http::Version::HTTP_2);
            let mut body = resp.into_body();
            assert!(body.frame().await.is_some(), "the stream flows");
            streams.push(body);
        }
        for _ in 0..5 {
            let resp = client.request(Request::post(format!("http://{addr}/keyframe")).body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
        for body in &mut streams {
            assert!(body.frame().await.is_some(), "every stream still flows");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "three relayed rooms and five requests on one connection");
    }

    #[test]
    fn a_redirect_keeps_the_path_and_query_and_carries_a_header_token() {
        let node = NodeRecord {
            id: NodeId("a".into()),
            url: "http://10.0.0.1:8080".into(),
            rtmp: String::new(),
            state: NodeState::Active,
            load: NodeLoad::default(),
            max_viewers: 0,
            version: String::new(),
            started_ms: 0,
            heartbeat_ms: 0,
        };
        let uri: Uri = "/whep/r1/cam/main?quality=low".parse().unwrap();
        let r = redirect(&node, &uri, Some("a.b.c"));
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(r.headers()[axum::http::header::LOCATION], "http://10.0.0.1:8080/whep/r1/cam/main?quality=low&access_token=a.b.c");
        let uri: Uri = "/whip/r1?access_token=x.y.z".parse().unwrap();
        assert_eq!(redirect(&node, &uri, None).headers()[axum::http::header::LOCATION], "http://10.0.0.1:8080/whip/r1?access_token=x.y.z");
        assert_eq!(query_param(&uri, "access_token").as_deref(), Some("x.y.z"));
    }
}
