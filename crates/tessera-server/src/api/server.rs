//! `GET /v1/server`: the figures the admin dashboard draws, as counters and gauges (the page
//! takes rates between two reads). Server-wide, like `/metrics`; any key that may read
//! (`server.get`) sees them.

use super::AppState;
use crate::error::ErrorBody;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// CPU seconds this process has used (user + system), from `/proc/self/stat`; clock ticks are
/// 100 Hz on Linux (USER_HZ).
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((utime + stime) / 100.0)
}

#[utoipa::path(get, operation_id = "server.get", path = "/v1/server", tag = "server",
    responses((status = 200, description = "`{version, uptime_s, unix_ms, cpu: {process_seconds, cores}, worker_busy_ratio, rtp: {packets_forwarded, packets_received, bytes_forwarded, packets_dropped}, sfu: {rooms, publishers, viewers, participants}, webhooks: {target, ok, retry, dropped}, tasks: {mix_jobs, relay_urls, recordings, ingests}}`", body = Value), (status = "4XX", description = "Refused: the JSON error", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn get(State(state): State<AppState>, axum::Extension(caller): axum::Extension<super::auth::Caller>) -> Json<Value> {
    let stats = state.rtc.stats().await.unwrap_or_default();
    let c = &state.rtc.counters;
    let deliveries = |result: &'static str| state.metrics.webhook_deliveries.get_or_create(&crate::metrics::ResultLabel { result }).get();
    let apps = state.store.snapshot();
    let target = apps.get(&caller.app).and_then(|a| a.webhook.url.clone());
    Json(json!({
        "version": super::VERSION,
        "uptime_s": state.metrics.uptime_s(),
        "unix_ms": crate::now_ms(),
        "cpu": {"process_seconds": process_cpu_seconds(), "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)},
        "worker_busy_ratio": c.busy_permille.load(Ordering::Relaxed) as f64 / 1000.0,
        "media_workers": state.rtc.worker_busy_ratios(),
        "rtp": {
            "packets_forwarded": c.packets_forwarded.load(Ordering::Relaxed),
            "packets_received": c.packets_received.load(Ordering::Relaxed),
            "bytes_forwarded": c.bytes_forwarded.load(Ordering::Relaxed),
            "packets_dropped": c.packets_dropped.load(Ordering::Relaxed),
        },
        "sfu": {
            "rooms": stats.rooms, "publishers": stats.publishers, "viewers": stats.viewers,
            "participants": stats.participants.iter().map(|(_, n)| n).sum::<usize>(),
        },
        "webhooks": {"target": target, "ok": deliveries("ok"), "retry": deliveries("retry"), "dropped": deliveries("dropped")},
        "tasks": crate::metrics::TaskCounts::of(&state.tasks),
    }))
}
