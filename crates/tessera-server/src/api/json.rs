//! Request-body handling with the spec's errors: 415 for a wrong content type, 413 over the
//! size limit, 400 `invalid_json` for bad syntax and `invalid_parameter` (naming the field) for
//! well-formed JSON of the wrong shape.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

/// Largest JSON body accepted (PRODUCT.md §12).
pub const MAX_JSON_BODY: usize = 256 * 1024;

pub struct ApiJson<T>(pub T);

pub fn payload_too_large(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the body is larger than {limit} bytes")).with_details(serde_json::json!({"limit": limit}))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        // JSON merge patches (RFC 7396) may say so in their media type.
        if !essence.eq_ignore_ascii_case("application/json") && !essence.eq_ignore_ascii_case("application/merge-patch+json") {
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", format!("expected Content-Type application/json, got '{content_type}'")));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                payload_too_large(MAX_JSON_BODY)
            } else {
                ApiError::invalid_json(format!("could not read the body: {r}"))
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses JSON, telling syntax errors from shape errors.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| ApiError::invalid_json(format!("the body is not valid JSON: {e}")))?;
    from_value(value)
}

pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // A missing field is reported at its parent; name the field itself.
        let missing = inner.starts_with("missing field").then(|| backticked(&inner)).flatten();
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_owned(),
            (".", None) => "body".to_owned(),
            (p, Some(name)) => format!("{p}.{name}"),
            (p, None) => p.to_owned(),
        };
        ApiError::invalid_parameter(&field, inner)
    })
}

fn backticked(msg: &str) -> Option<&str> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(&msg[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        room: String,
        ttl_s: Option<u32>,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        x: u8,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse::<Body>(b"{nope").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse::<Body>(b"{}").unwrap_err();
        assert_eq!((e.code, e.details.unwrap()["field"].as_str().unwrap()), ("invalid_parameter", "room"));
        let e = parse::<Body>(br#"{"room":"r","ttl_s":"x"}"#).unwrap_err();
        assert_eq!(e.details.unwrap()["field"], "ttl_s");
        let e = parse::<Body>(br#"{"room":"r","extra":1}"#).unwrap_err();
        assert_eq!(e.details.unwrap()["field"], "extra");
        let e = parse::<Body>(br#"{"room":"r","inner":{"x":300}}"#).unwrap_err();
        assert_eq!(e.details.unwrap()["field"], "inner.x");
        let e = parse::<Body>(br#"{"room":"r","inner":{}}"#).unwrap_err();
        assert_eq!(e.details.unwrap()["field"], "inner.x");
    }
}
