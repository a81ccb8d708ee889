//! The API's one error shape (PRODUCT.md §5): `{"code","message","request_id","details"}`.
//! Domain errors from other crates are mapped to it here, once.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tessera_model::{AppError, TokenError};

tokio::task_local! {
    /// The current request's id, set by the request middleware so every error body carries it.
    pub static REQUEST_ID: String;
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after_s: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), details: None, retry_after_s: None }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn invalid_parameter(field: &str, reason: impl Into<String>) -> ApiError {
        let reason = reason.into();
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", format!("{field}: {reason}")).with_details(json!({"field": field, "reason": reason}))
    }

    pub fn invalid_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// Adds a `Retry-After` header (seconds).
    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    pub fn body(&self, request_id: &str) -> Value {
        let mut body = json!({"code": self.code, "message": self.message, "request_id": request_id});
        if let Some(d) = &self.details {
            body["details"] = d.clone();
        }
        body
    }
}

/// The body of every error response (PRODUCT.md §5), for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: `ApiError::body` writes it
pub struct ErrorBody {
    /// Machine-readable, e.g. `token_expired`, `room_not_found`.
    code: String,
    message: String,
    /// The request's `X-Request-Id`.
    request_id: String,
    /// More about the error, e.g. `{"required": 16}` for `privilege_missing`.
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let request_id = REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default();
        let mut resp = (self.status, axum::Json(self.body(&request_id))).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        resp
    }
}

/// The media task has stopped (the server is shutting down): an internal error.
impl From<tessera_engine::RtcServerError> for ApiError {
    fn from(e: tessera_engine::RtcServerError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        match &e {
            AppError::LastSecret(_) => ApiError::new(StatusCode::CONFLICT, "last_secret", e.to_string()),
            AppError::TooManySecrets => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit_exceeded", e.to_string()).with_details(json!({"limit": tessera_model::app::MAX_SECRETS}))
            }
            AppError::SecretNotFound(_) => ApiError::not_found("secret_not_found", e.to_string()),
            AppError::ApiKeyNotFound(_) => ApiError::not_found("api_key_not_found", e.to_string()),
            AppError::Invalid { field, reason } => ApiError::invalid_parameter(field, reason.clone()),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::StoreError;
        match e {
            StoreError::App(a) => a.into(),
            StoreError::AppNotFound(a) => ApiError::new(StatusCode::UNAUTHORIZED, "app_unknown", format!("app '{a}' does not exist")),
            other => ApiError::internal(format!("could not save the change: {other}")),
        }
    }
}

impl From<tessera_tasks::TaskError> for ApiError {
    fn from(e: tessera_tasks::TaskError) -> ApiError {
        use tessera_tasks::ErrorKind;
        let status = match e.kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, code: e.code, message: e.message, details: e.details, retry_after_s: None }
    }
}
