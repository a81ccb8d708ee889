//! The tasks' one error type: what went wrong (`kind`, which the server maps to an HTTP
//! status), a stable `code` (PRODUCT.md §5), a message and optional details.

use crate::persist::PersistError;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (400).
    Invalid,
    NotFound,
    /// The task's state or another task forbids it (409).
    Conflict,
    /// The server is at a limit (503).
    Unavailable,
    /// The disk is full (507).
    StorageFull,
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type TaskResult<T> = Result<T, TaskError>;

impl TaskError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> TaskError {
        TaskError { kind, code, message: message.into(), details: None }
    }

    pub fn with_details(mut self, details: Value) -> TaskError {
        self.details = Some(details);
        self
    }

    pub fn invalid_parameter(field: &str, reason: impl Into<String>) -> TaskError {
        let reason = reason.into();
        TaskError::new(ErrorKind::Invalid, "invalid_parameter", format!("{field}: {reason}")).with_details(json!({"field": field, "reason": reason}))
    }

    pub fn invalid_json(message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::Invalid, "invalid_json", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::NotFound, code, message)
    }

    pub fn internal(message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::Internal, "internal_error", message)
    }
}

/// A task whose record could not be saved is not started (issue 10, defect 7): a full disk
/// is `storage_full`, anything else internal.
impl From<PersistError> for TaskError {
    fn from(e: PersistError) -> TaskError {
        if e.source.kind() == std::io::ErrorKind::StorageFull {
            TaskError::new(ErrorKind::StorageFull, "storage_full", format!("the task could not be saved: {}", e.source))
        } else {
            TaskError::internal(format!("the task could not be saved: {}", e.source))
        }
    }
}
