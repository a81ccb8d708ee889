//! The HTTP surface: REST `/v1`, health, metrics and the browser pages, with request ids,
//! metrics and tracing around every request.

mod apikeys;
mod app;
pub mod auth;
mod cluster_api;
mod cors;
mod files;
mod ingests;
pub mod json;
pub mod mixjobs;
pub mod openapi;
mod recordings;
mod relays;
mod rooms;
pub mod rtc;
pub(crate) mod server;
mod tokens;
pub mod whip;

use crate::config::Config;
use crate::error::{ApiError, REQUEST_ID};
use crate::metrics::{HttpLabels, Metrics, RouteLabel};
use crate::store::AppStore;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct Shared {
    pub config: Config,
    pub rtc: tessera_engine::RtcHandle,
    pub store: Arc<AppStore>,
    pub metrics: Metrics,
    pub hooks: crate::webhook::Webhooks,
    pub key_rate: auth::RateLimiter,
    /// Task-changing calls, per app (PRODUCT.md §10: 20/s, burst 40).
    pub task_rate: auth::RateLimiter,
    /// Relays, recordings, ingests and mix jobs.
    pub tasks: tessera_tasks::Tasks,
    /// Room and media events as they happen, for room-signaling sessions.
    pub room_events: tokio::sync::broadcast::Sender<tessera_engine::RoomEvent>,
    /// Room-signaling sessions by participant: a newer one replaces the older.
    pub signaling: rtc::Signaling,
    /// RTMP publishes being transcoded (B-frames), per app (`rtmp.max_transcodes`).
    pub rtmp_transcodes: crate::rtmp_transcode::TranscodeCounts,
    /// Cluster mode: this node's part in the cluster (set at start).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

/// Cheap to clone; every handler gets one.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// `tls` is the client set-up of outgoing connections (`crate::tls::client_config`);
    /// `persist_tasks: false` keeps task files out of the data dir (tests, tools).
    pub fn new(config: Config, store: AppStore, rtc: tessera_engine::RtcHandle, persist_tasks: bool, tls: Arc<rustls::ClientConfig>) -> AppState {
        let metrics = Metrics::new(VERSION);
        let store = Arc::new(store);
        let hooks = crate::webhook::Webhooks::new(store.clone(), metrics.webhook_deliveries.clone(), tls.clone());
        let events = tessera_tasks::Events::new(Arc::new(hooks.clone()));
        let tasks = tessera_tasks::Tasks::new(rtc.clone(), events, config.data_dir.clone(), persist_tasks, config.limits.concurrent_mix_jobs, tls);
        tessera_tasks::recording::resolve_storage_with(crate::storage::resolver(Arc::new(config.clone()), store.clone()));
        AppState(Arc::new(Shared {
            tasks,
            room_events: tokio::sync::broadcast::channel(1024).0,
            signaling: rtc::Signaling::default(),
            rtmp_transcodes: Default::default(),
            cluster: std::sync::OnceLock::new(),
            task_rate: auth::RateLimiter::new(20.0, 40.0),
            config,
            rtc,
            store,
            hooks,
            metrics,
            // PRODUCT.md §10: 100 requests/s per key.
            key_rate: auth::RateLimiter::new(100.0, 100.0),
        }))
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/tokens", post(tokens::create))
        .route("/v1/api-keys", post(apikeys::create).get(apikeys::list))
        .route("/v1/api-keys/{id}", get(apikeys::get).delete(apikeys::delete))
        .route("/v1/app", get(app::get).patch(app::update))
        .route("/v1/app/secrets", post(app::add_secret))
        .route("/v1/app/secrets/{kid}", delete(app::remove_secret))
        .route("/v1/mix-jobs", post(mixjobs::start).get(mixjobs::list))
        .route("/v1/mix-jobs/{id}", get(mixjobs::get).patch(mixjobs::update).delete(mixjobs::stop))
        .route("/v1/recordings", post(recordings::start).get(recordings::list))
        .route("/v1/recordings/{id}", get(recordings::get).patch(recordings::update).delete(recordings::stop))
        .route("/v1/recordings/{id}/pause", post(recordings::pause))
        .route("/v1/recordings/{id}/resume", post(recordings::resume))
        .route("/v1/recordings/{id}/result", get(recordings::result))
        .route("/v1/relays", post(relays::start).get(relays::list))
        .route("/v1/relays/{id}", get(relays::get).patch(relays::update).delete(relays::stop))
        .route("/v1/rooms", get(rooms::list))
        .route("/v1/rooms/{room}", get(rooms::get).delete(rooms::dismiss))
        .route("/v1/rooms/{room}/users", get(rooms::users))
        .route("/v1/rooms/{room}/users/{user}", get(rooms::user).delete(rooms::kick))
        .route("/v1/ingests", post(ingests::start).get(ingests::list))
        .route("/v1/ingests/{id}", get(ingests::get).patch(ingests::update).delete(ingests::stop))
        .route("/v1/server", get(server::get))
        .route("/v1/cluster/nodes", get(cluster_api::nodes))
        .route("/v1/cluster/nodes/{id}/drain", post(cluster_api::drain))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_api_key));
    let media = Router::new()
        .route("/whip/{room}", post(whip::publish).options(whip::options))
        .route("/whip/session/{sid}", patch(whip::patch).delete(whip::delete).options(whip::options))
        .route("/whep/{room}/{user}/{stream}", post(whip::play).options(whip::options))
        .route("/whep/session/{sid}", get(whip::whep_status).patch(whip::whep_patch).delete(whip::whep_delete).options(whip::options))
        .route("/v1/speedtest", post(whip::speed_test).options(whip::options))
        .layer(DefaultBodyLimit::max(whip::MAX_SDP_BODY + 1))
        .layer(middleware::from_fn(crate::cluster::access_token_query));
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve))
        .route("/dev/token", post(tokens::dev_token))
        .route("/v1/rtc", get(rtc::signaling))
        .route("/{page}", get(page))
        .route("/vendor/{file}", get(vendor))
        .route("/files/{app}/{*path}", get(files::file))
        .route("/internal/cluster/relay/{app}/{room}", get(crate::cluster_relay::relay))
        .route("/internal/cluster/keyframe/{app}/{room}/{user}/{stream}", post(crate::cluster_relay::keyframe))
        .merge(v1)
        .layer(DefaultBodyLimit::max(json::MAX_JSON_BODY))
        .merge(media)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), crate::cluster::route_request))
        .layer(middleware::from_fn_with_state(state.clone(), cors::cors))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A request id from the client is echoed when it is short printable ASCII; otherwise one is made.
fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(tessera_model::random::session_id)
}

/// Request id, tracing span, access log and HTTP metrics for every request.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned());
    let id = request_id(&req);
    let span = tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id);
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    state.metrics.http_requests.get_or_create(&HttpLabels { route: route.clone(), status }).inc();
    state.metrics.http_duration.get_or_create(&RouteLabel { route }).observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, elapsed_ms = elapsed.as_millis() as u64, "request failed");
        } else {
            tracing::debug!(status, elapsed_ms = elapsed.as_millis() as u64, "request");
        }
    });
    resp
}

async fn route_not_found(req: Request) -> ApiError {
    ApiError::not_found("route_not_found", format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{} is not allowed on {}", req.method(), req.uri().path()))
}

#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "server", responses(
    (status = 200, description = "{status, version, uptime_s, worker_busy_ratio, failed_workers}", body = Value),
    (status = 503, description = "a media worker has ended: status `failed`", body = Value)
))]
/// `status` is `busy` while the media worker was saturated over the last second (busy ratio ≥
/// 0.9: new viewers would meet growing latency), so a load balancer can steer new rooms away; the
/// reply stays 200 (the server works). It is `failed`, with 503, once a media worker has ended
/// (a panic in its own code): the rooms placed on it are gone, and the process should be
/// restarted.
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let busy = state.rtc.counters.busy_permille.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0;
    let failed = state.rtc.failed_workers();
    let (code, status) = match failed {
        0 if busy >= tessera_engine::sfu::SATURATED_PERMILLE as f64 / 1000.0 => (StatusCode::OK, "busy"),
        0 => (StatusCode::OK, "ok"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "failed"),
    };
    let body = json!({"status": status, "version": VERSION, "uptime_s": state.metrics.uptime_s(), "worker_busy_ratio": busy, "failed_workers": failed});
    (code, Json(body)).into_response()
}

#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "server", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.rtc.stats().await.unwrap_or_default();
    state.metrics.observe_sfu(&stats, &state.rtc.counters, &state.rtc.worker_busy_ratios());
    state.metrics.observe_rtmp_transcodes(state.rtmp_transcodes.total());
    state.metrics.observe_tasks(&crate::metrics::TaskCounts::of(&state.tasks));
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.render()).into_response()
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../../../../assets/index.html"))
}

/// The browser pages of `assets/` and their shared script, built into the binary.
async fn page(axum::extract::Path(page): axum::extract::Path<String>) -> Result<Response, ApiError> {
    let (content_type, body) = match page.as_str() {
        "publish.html" => ("text/html; charset=utf-8", include_str!("../../../../assets/publish.html")),
        "play.html" => ("text/html; charset=utf-8", include_str!("../../../../assets/play.html")),
        "whip-client.js" => ("text/javascript; charset=utf-8", include_str!("../../../../assets/whip-client.js")),
        "hints.js" => ("text/javascript; charset=utf-8", include_str!("../../../../assets/hints.js")),
        "room.html" => ("text/html; charset=utf-8", include_str!("../../../../assets/room.html")),
        "tessera.js" => ("text/javascript; charset=utf-8", include_str!("../../../../assets/tessera.js")),
        "speedtest.html" => ("text/html; charset=utf-8", include_str!("../../../../assets/speedtest.html")),
        "player.html" => ("text/html; charset=utf-8", include_str!("../../../../assets/player.html")),
        "admin.html" => ("text/html; charset=utf-8", include_str!("../../../../assets/admin.html")),
        "favicon.svg" => ("image/svg+xml", include_str!("../../../../assets/favicon.svg")),
        _ => return Err(ApiError::not_found("route_not_found", format!("no page '{page}'"))),
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Third-party scripts the pages use, vendored with their licences (`assets/vendor/`).
async fn vendor(axum::extract::Path(file): axum::extract::Path<String>) -> Result<Response, ApiError> {
    let (content_type, body) = match file.as_str() {
        "hls.min.js" => ("text/javascript; charset=utf-8", include_str!("../../../../assets/vendor/hls.min.js")),
        "hls.js.LICENSE" => ("text/plain; charset=utf-8", include_str!("../../../../assets/vendor/hls.js.LICENSE")),
        _ => return Err(ApiError::not_found("route_not_found", format!("no file '{file}'"))),
    };
    // Versioned by the binary: a day of caching spares players the 600 kB at every visit.
    Ok(([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=86400")], body).into_response())
}

/// `?limit=1..1000&cursor=` of every list (PRODUCT.md §10).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

impl ListQuery {
    fn limit(&self) -> Result<usize, ApiError> {
        match &self.limit {
            None => Ok(100),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid_parameter("limit", "must be an integer from 1 to 1000")),
            },
        }
    }

    /// One page of `items`, which are ordered by the string `key` gives; the cursor is the key of
    /// the last item returned, so pages stay stable when items are added or removed.
    pub fn page<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> &str) -> Result<Page<T>, ApiError> {
        let limit = self.limit()?;
        items.sort_by(|a, b| key(a).cmp(key(b)));
        if let Some(c) = &self.cursor {
            items.retain(|i| key(i) > c.as_str());
        }
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = if more { items.last().map(|i| key(i).to_owned()) } else { None };
        Ok(Page { items, next_cursor })
    }
}

/// Query-string parsing with the spec's error instead of axum's plain-text rejection.
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state).await.map(|q| ApiQuery(q.0)).map_err(|e| ApiError::invalid_parameter("query", e.body_text()))
    }
}

/// Entry points for the fuzz targets in `fuzz/`: the API's JSON body parsers and checks,
/// without a server around them.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `bytes` as the body of one of the API's requests, picked by `selector`.
    pub fn body(selector: u8, bytes: &[u8]) {
        use super::json::parse;
        match selector % 10 {
            0 => drop(parse::<super::apikeys::CreateKey>(bytes)),
            1 => drop(parse::<super::tokens::CreateToken>(bytes)),
            2 => drop(parse::<super::ingests::StartIngest>(bytes)),
            3 => drop(parse::<super::ingests::UpdateIngest>(bytes)),
            4 => drop(parse::<super::recordings::StartRecording>(bytes)),
            5 => drop(parse::<super::recordings::UpdateRecording>(bytes)),
            6 => drop(parse::<super::relays::StartRelay>(bytes)),
            7 => drop(parse::<super::relays::UpdateRelay>(bytes)),
            8 => drop(parse::<serde_json::Map<String, serde_json::Value>>(bytes)),
            _ => {
                if let Ok(v) = parse::<serde_json::Value>(bytes) {
                    let _ = tessera_tasks::mix_jobs::check_body(&v);
                }
            }
        }
    }
}
