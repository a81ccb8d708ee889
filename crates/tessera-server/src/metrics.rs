//! Prometheus metrics (PRODUCT.md §11), registered once and shared by every part of the server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route pattern (`/v1/api-keys/{id}`), never the raw path, so label sets stay bounded.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserTypeLabel {
    pub user_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Task counts by state (PRODUCT.md §11), gathered when asked: by `/metrics` and `/v1/server`.
#[derive(Debug, Default, serde::Serialize)]
pub struct TaskCounts {
    pub mix_jobs: i64,
    pub relay_urls: std::collections::BTreeMap<String, i64>,
    pub recordings: std::collections::BTreeMap<String, i64>,
    pub ingests: std::collections::BTreeMap<String, i64>,
}

impl TaskCounts {
    pub fn of(tasks: &tessera_tasks::Tasks) -> TaskCounts {
        fn tally<S: ToString>(states: Vec<S>) -> std::collections::BTreeMap<String, i64> {
            let mut counts = std::collections::BTreeMap::new();
            for s in states {
                *counts.entry(s.to_string()).or_insert(0) += 1;
            }
            counts
        }
        TaskCounts {
            mix_jobs: tasks.mix_jobs.running() as i64,
            relay_urls: tally(tasks.relays.all_url_states()),
            recordings: tally(tasks.recordings.all_states()),
            ingests: tally(tasks.ingests.all_states()),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    rooms: Gauge,
    participants: Family<UserTypeLabel, Gauge>,
    forwarded: Counter,
    received: Counter,
    keyframe_requests: Counter,
    dropped: Counter,
    red_recovered: Counter,
    started: Instant,
    uptime: Gauge<f64, AtomicU64>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabel, Histogram>,
    mix_jobs: Gauge,
    custom_messages: Counter,
    speed_tests: Gauge,
    rtmp_transcodes: Gauge,
    busy_ratio: Gauge<f64, AtomicU64>,
    worker_busy: Family<WorkerLabel, Gauge<f64, AtomicU64>>,
    bytes_forwarded: Counter,
    datagrams_sent: Counter,
    datagrams_dropped: Counter,
    ingress_dropped: Counter,
    send_calls: Counter,
    gso_messages: Counter,
    layer_sheds: Counter,
    peer_panics: Counter,
    relay_urls: Family<StateLabel, Gauge>,
    recordings: Family<StateLabel, Gauge>,
    ingests: Family<StateLabel, Gauge>,
    /// Webhook attempts by outcome: ok, retry (a failed attempt) or dropped (given up).
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    /// Cluster mode: live nodes at the last heartbeat.
    pub cluster_nodes: Gauge,
    /// Cluster mode: requests sent to the room's node, by how (redirect, forward).
    pub cluster_routed: Family<ResultLabel, Counter>,
}

impl Metrics {
    pub fn new(version: &'static str) -> Metrics {
        let mut registry = Registry::default();
        registry.register("tessera_build", "Build information", Info::new(vec![("version", version)]));
        let uptime = Gauge::<f64, AtomicU64>::default();
        registry.register("tessera_uptime_seconds", "Seconds since the server started", uptime.clone());
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register("tessera_http_requests", "HTTP requests by route and status", http_requests.clone());
        let http_duration =
            Family::<RouteLabel, Histogram>::new_with_constructor(|| Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 6.0]));
        registry.register("tessera_http_request_duration_seconds", "HTTP request latency by route", http_duration.clone());
        let rooms = Gauge::default();
        registry.register("tessera_rooms", "Rooms alive", rooms.clone());
        let participants = Family::<UserTypeLabel, Gauge>::default();
        registry.register("tessera_participants", "Participants by the UserType of their first session (10 WHIP, 11 WHEP, 12 RTMP, 13 pull ingest, 14 mix)", participants.clone());
        let forwarded = Counter::default();
        registry.register("tessera_rtp_packets_forwarded", "RTP packets written to consumers", forwarded.clone());
        let received = Counter::default();
        registry.register("tessera_udp_datagrams_received", "Datagrams received on the WebRTC port", received.clone());
        let keyframe_requests = Counter::default();
        registry.register("tessera_keyframe_requests", "PLIs sent to producers (after throttling)", keyframe_requests.clone());
        let dropped = Counter::default();
        registry.register("tessera_rtp_packets_dropped", "RTP packets not forwarded because a viewer's send queue was full", dropped.clone());
        let red_recovered = Counter::default();
        registry.register("tessera_audio_red_recovered", "Audio packets lost on a publisher's uplink and recovered from RED redundancy", red_recovered.clone());
        let custom_messages = Counter::default();
        registry.register("tessera_custom_messages", "Custom messages accepted from participants (socket and data channels)", custom_messages.clone());
        let speed_tests = Gauge::default();
        registry.register("tessera_speed_tests", "Speed tests running", speed_tests.clone());
        let busy_ratio = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "tessera_worker_busy_ratio",
            "Share of the last second the busiest media worker spent working (1: saturated; packets queue and latency grows)",
            busy_ratio.clone(),
        );
        let worker_busy = Family::<WorkerLabel, Gauge<f64, AtomicU64>>::default();
        registry.register("tessera_media_worker_busy_ratio", "Share of the last second each media worker spent working", worker_busy.clone());
        let bytes_forwarded = Counter::default();
        registry.register("tessera_rtp_bytes_forwarded", "RTP payload bytes written to consumers", bytes_forwarded.clone());
        let datagrams_sent = Counter::default();
        registry.register("tessera_udp_datagrams_sent", "UDP datagrams written on the WebRTC port", datagrams_sent.clone());
        let datagrams_dropped = Counter::default();
        registry.register(
            "tessera_udp_datagrams_dropped",
            "UDP datagrams the kernel refused (unreachable destination, send buffer full for over 10 ms)",
            datagrams_dropped.clone(),
        );
        let ingress_dropped = Counter::default();
        registry.register("tessera_udp_ingress_dropped", "UDP datagrams read but dropped because their media worker was far behind (several workers)", ingress_dropped.clone());
        let send_calls = Counter::default();
        registry.register("tessera_udp_send_calls", "sendmmsg calls that wrote the UDP datagrams", send_calls.clone());
        let layer_sheds = Counter::default();
        registry.register("tessera_media_worker_layer_sheds", "Steps by which a saturated media worker held its viewers one simulcast layer lower", layer_sheds.clone());
        let peer_panics = Counter::default();
        registry.register(
            "tessera_peer_panics",
            "WebRTC peers closed because their WebRTC stack panicked on what they sent (the media worker and every other peer went on)",
            peer_panics.clone(),
        );
        let gso_messages = Counter::default();
        registry.register("tessera_udp_gso_messages", "Messages that carried several of one destination's UDP datagrams as GSO segments", gso_messages.clone());
        let rtmp_transcodes = Gauge::default();
        registry.register("tessera_rtmp_transcodes", "RTMP publishes being re-encoded for WebRTC viewers (B-frames, HEVC, AV1, VP9)", rtmp_transcodes.clone());
        let mix_jobs = Gauge::default();
        registry.register("tessera_mix_jobs", "Mix jobs running", mix_jobs.clone());
        let relay_urls = Family::<StateLabel, Gauge>::default();
        registry.register("tessera_relay_urls", "Relay URLs by state (0-5)", relay_urls.clone());
        let recordings = Family::<StateLabel, Gauge>::default();
        registry.register("tessera_recordings", "Recordings by state", recordings.clone());
        let ingests = Family::<StateLabel, Gauge>::default();
        registry.register("tessera_ingests", "Pull ingests by state", ingests.clone());
        let webhook_deliveries = Family::<ResultLabel, Counter>::default();
        registry.register("tessera_webhook_deliveries", "Webhook attempts by result (ok, retry, dropped)", webhook_deliveries.clone());
        let cluster_nodes = Gauge::default();
        registry.register("tessera_cluster_nodes", "Live nodes of the cluster at the last heartbeat (cluster mode)", cluster_nodes.clone());
        let cluster_routed = Family::<ResultLabel, Counter>::default();
        registry.register("tessera_cluster_routed", "Requests sent to their room's node, by how (redirect, forward)", cluster_routed.clone());
        Metrics {
            webhook_deliveries,
            cluster_nodes,
            cluster_routed,
            registry,
            rooms,
            participants,
            forwarded,
            received,
            keyframe_requests,
            dropped,
            red_recovered,
            started: Instant::now(),
            uptime,
            http_requests,
            http_duration,
            mix_jobs,
            custom_messages,
            speed_tests,
            busy_ratio,
            worker_busy,
            bytes_forwarded,
            datagrams_sent,
            datagrams_dropped,
            ingress_dropped,
            send_calls,
            gso_messages,
            layer_sheds,
            peer_panics,
            rtmp_transcodes,
            relay_urls,
            recordings,
            ingests,
        }
    }

    /// Sets the task gauges; states not present any more read 0.
    pub fn observe_tasks(&self, counts: &TaskCounts) {
        self.mix_jobs.set(counts.mix_jobs);
        for (family, values, states) in [
            (&self.relay_urls, &counts.relay_urls, &["0", "1", "2", "3", "4", "5"][..]),
            (&self.recordings, &counts.recordings, &["PREPARED", "RECORDING", "PAUSED", "STOPPED", "FINISHED"][..]),
            (&self.ingests, &counts.ingests, &["STARTING", "RUNNING", "RETRYING", "STOPPED", "FAILED"][..]),
        ] {
            for s in states {
                family.get_or_create(&StateLabel { state: s.to_string() }).set(values.get(*s).copied().unwrap_or(0));
            }
        }
    }

    /// Copies the engine's state and counters into the registry before a scrape.
    pub fn observe_sfu(&self, stats: &tessera_engine::SfuStats, counters: &tessera_engine::sfu::SfuCounters, worker_busy: &[f64]) {
        for (i, busy) in worker_busy.iter().enumerate() {
            self.worker_busy.get_or_create(&WorkerLabel { worker: i.to_string() }).set(*busy);
        }
        use std::sync::atomic::Ordering;
        self.rooms.set(stats.rooms as i64);
        for user_type in [1u8, 10, 11, 12, 13, 14] {
            let n = stats.participants.iter().find(|(t, _)| *t == user_type).map(|(_, n)| *n).unwrap_or(0);
            self.participants.get_or_create(&UserTypeLabel { user_type: user_type.to_string() }).set(n as i64);
        }
        let sync = |c: &Counter, v: u64| {
            let now = c.get();
            if v > now {
                c.inc_by(v - now);
            }
        };
        sync(&self.forwarded, counters.packets_forwarded.load(Ordering::Relaxed));
        sync(&self.received, counters.packets_received.load(Ordering::Relaxed));
        sync(&self.keyframe_requests, counters.keyframe_requests.load(Ordering::Relaxed));
        sync(&self.dropped, counters.packets_dropped.load(Ordering::Relaxed));
        sync(&self.red_recovered, counters.red_recovered.load(Ordering::Relaxed));
        sync(&self.custom_messages, counters.custom_messages.load(Ordering::Relaxed));
        sync(&self.bytes_forwarded, counters.bytes_forwarded.load(Ordering::Relaxed));
        sync(&self.datagrams_sent, counters.datagrams_sent.load(Ordering::Relaxed));
        sync(&self.datagrams_dropped, counters.datagrams_dropped.load(Ordering::Relaxed));
        sync(&self.send_calls, counters.send_calls.load(Ordering::Relaxed));
        sync(&self.gso_messages, counters.gso_messages.load(Ordering::Relaxed));
        sync(&self.layer_sheds, counters.layer_sheds.load(Ordering::Relaxed));
        sync(&self.peer_panics, counters.peer_panics.load(Ordering::Relaxed));
        sync(&self.ingress_dropped, counters.ingress_dropped.load(Ordering::Relaxed));
        self.busy_ratio.set(counters.busy_permille.load(Ordering::Relaxed) as f64 / 1000.0);
        self.speed_tests.set(stats.speed_tests as i64);
    }

    pub fn observe_rtmp_transcodes(&self, running: u32) {
        self.rtmp_transcodes.set(running as i64);
    }

    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The exposition text (OpenMetrics, which Prometheus reads).
    pub fn render(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
