//! CORS for the browser pages and WHIP/WHEP players (PRODUCT.md §6.1, §10), one middleware for
//! every route: preflights are answered here (WHIP/WHEP paths by their own `OPTIONS` handler,
//! which adds `Accept-Post`), and every response names the allowed origin and exposed headers.

use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

fn is_media_path(path: &str) -> bool {
    path.starts_with("/whip/") || path.starts_with("/whep/")
}

pub async fn cors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let media = is_media_path(req.uri().path());
    let mut resp = if req.method() == Method::OPTIONS && !media { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    let any = state.config.cors_origins.iter().any(|o| o == "*");
    let allow = if any { Some(HeaderValue::from_static("*")) } else { origin.filter(|o| o.to_str().is_ok_and(|o| state.config.cors_origins.iter().any(|x| x == o))) };
    let h = resp.headers_mut();
    if let Some(a) = allow {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, a);
    }
    if !any {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    let methods = if media { "POST, PATCH, DELETE, OPTIONS" } else { "GET, POST, PATCH, DELETE, OPTIONS" };
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Authorization, Content-Type, If-Match, X-Request-Id"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Location, ETag, Link, Accept-Patch, X-Request-Id"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    resp
}
