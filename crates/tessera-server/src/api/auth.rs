//! API-key authentication, per-key rate limiting and policy checks for `/v1` (PRODUCT.md §4.6,
//! §10). Runs as a route layer, before any body is read, so the order of checks of §5 holds:
//! credential, then action, then content type, size and body.

use super::AppState;
use crate::error::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;
use std::time::Instant;
use tessera_model::{AppId, PolicyDecision};

/// Who is calling: the key's app and id, inserted into the request for handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    pub app: AppId,
    pub key_id: String,
}

/// The action of each `/v1` route (PRODUCT.md §10), by method and route pattern.
pub fn action_for(method: &Method, route: &str) -> Option<&'static str> {
    let m = method.as_str();
    Some(match (m, route) {
        ("POST", "/v1/tokens") => "tokens.create",
        ("POST", "/v1/api-keys") => "apikeys.create",
        ("GET", "/v1/api-keys") => "apikeys.list",
        ("GET", "/v1/api-keys/{id}") => "apikeys.get",
        ("DELETE", "/v1/api-keys/{id}") => "apikeys.delete",
        ("GET", "/v1/app") => "app.get",
        ("PATCH", "/v1/app") => "app.update",
        ("POST", "/v1/app/secrets") => "secrets.create",
        ("DELETE", "/v1/app/secrets/{kid}") => "secrets.delete",
        ("POST", "/v1/mix-jobs") => "mixjobs.start",
        ("GET", "/v1/mix-jobs") => "mixjobs.list",
        ("GET", "/v1/mix-jobs/{id}") => "mixjobs.get",
        ("PATCH", "/v1/mix-jobs/{id}") => "mixjobs.update",
        ("DELETE", "/v1/mix-jobs/{id}") => "mixjobs.stop",
        ("POST", "/v1/recordings") => "recordings.start",
        ("GET", "/v1/recordings") => "recordings.list",
        ("GET", "/v1/recordings/{id}") => "recordings.get",
        ("GET", "/v1/recordings/{id}/result") => "recordings.get",
        ("PATCH", "/v1/recordings/{id}") => "recordings.update",
        ("DELETE", "/v1/recordings/{id}") => "recordings.stop",
        ("POST", "/v1/recordings/{id}/pause") => "recordings.pause",
        ("POST", "/v1/recordings/{id}/resume") => "recordings.resume",
        ("POST", "/v1/relays") => "relays.start",
        ("GET", "/v1/relays") => "relays.list",
        ("GET", "/v1/relays/{id}") => "relays.get",
        ("PATCH", "/v1/relays/{id}") => "relays.update",
        ("DELETE", "/v1/relays/{id}") => "relays.stop",
        ("GET", "/v1/rooms") => "rooms.list",
        ("GET", "/v1/rooms/{room}") => "rooms.get",
        ("DELETE", "/v1/rooms/{room}") => "rooms.dismiss",
        ("GET", "/v1/rooms/{room}/users") => "users.list",
        ("GET", "/v1/rooms/{room}/users/{user}") => "users.get",
        ("DELETE", "/v1/rooms/{room}/users/{user}") => "users.kick",
        ("POST", "/v1/ingests") => "ingests.start",
        ("GET", "/v1/ingests") => "ingests.list",
        ("GET", "/v1/ingests/{id}") => "ingests.get",
        ("PATCH", "/v1/ingests/{id}") => "ingests.update",
        ("DELETE", "/v1/ingests/{id}") => "ingests.stop",
        ("GET", "/v1/server") => "server.get",
        ("GET", "/v1/cluster/nodes") => "cluster.nodes",
        ("POST", "/v1/cluster/nodes/{id}/drain") => "cluster.drain",
        _ => return None,
    })
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

pub async fn require_api_key(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let key = bearer(req.headers()).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "api_key_missing", "send an API key as 'Authorization: Bearer tsk_...'"))?;
    let mut known = state.store.authenticate_key(key);
    // Cluster mode: a key made on another node a moment ago.
    if known.is_none() {
        if let Some(cluster) = state.cluster.get() {
            if cluster.catch_up_apps(&state.store).await {
                known = state.store.authenticate_key(key);
            }
        }
    }
    let (app, record) = known.ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "api_key_invalid", "the API key is not valid (unknown, deleted or mistyped)"))?;
    if let Err(wait) = state.key_rate.check(&record.id, Instant::now()) {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests with this API key; slow down");
        e.retry_after_s = Some(wait.as_secs().max(1));
        return Err(e);
    }
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    let action = action_for(req.method(), &route).ok_or_else(|| ApiError::internal(format!("route {} {route} has no action in the policy table", req.method())))?;
    match record.policy.decide(action) {
        PolicyDecision::Allowed => {}
        PolicyDecision::Denied | PolicyDecision::NotAllowed => {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "action_denied", format!("this API key may not perform '{action}'")).with_details(json!({"action": action})));
        }
    }
    let task_changing = ["ingests.", "mixjobs.", "relays.", "recordings."].iter().any(|p| action.starts_with(p)) && req.method() != Method::GET;
    if task_changing {
        if let Err(wait) = state.task_rate.check(app.as_str(), Instant::now()) {
            let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many task-changing calls for this app (20/s); slow down");
            e.retry_after_s = Some(wait.as_secs().max(1));
            return Err(e);
        }
    }
    state.store.touch_key(&record.id, crate::now_ms());
    req.extensions_mut().insert(Caller { app, key_id: record.id });
    Ok(next.run(req).await)
}

/// Token buckets keyed by a string (an API key id).
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: dashmap::DashMap<String, (f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter { per_second, burst, buckets: dashmap::DashMap::new() }
    }

    /// Takes one token, or says how long until one is available.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), std::time::Duration> {
        let mut entry = self.buckets.entry(key.to_owned()).or_insert((self.burst, now));
        let (tokens, last) = *entry;
        let refilled = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.per_second).min(self.burst);
        if refilled >= 1.0 {
            *entry = (refilled - 1.0, now);
            Ok(())
        } else {
            *entry = (refilled, now);
            Err(std::time::Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "bearer   abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn rate_limiter_allows_burst_then_refills() {
        let rl = RateLimiter::new(100.0, 100.0);
        let t0 = Instant::now();
        for _ in 0..100 {
            rl.check("k", t0).unwrap();
        }
        let wait = rl.check("k", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        // Another key has its own bucket.
        rl.check("other", t0).unwrap();
        // 50 ms later, 5 more requests fit.
        let t1 = t0 + Duration::from_millis(50);
        for _ in 0..5 {
            rl.check("k", t1).unwrap();
        }
        assert!(rl.check("k", t1).is_err());
    }

    #[test]
    fn every_action_is_named_in_the_spec_form() {
        for (m, r) in [("POST", "/v1/tokens"), ("GET", "/v1/app"), ("DELETE", "/v1/app/secrets/{kid}")] {
            let a = action_for(&m.parse().unwrap(), r).unwrap();
            assert!(a.split_once('.').is_some());
        }
        assert_eq!(action_for(&Method::PUT, "/v1/app"), None);
    }
}
