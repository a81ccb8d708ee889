//! Reading `tasks/<id>.json` at start (issue 10, defect 10).
//!
//! A task file is trusted no more than an API request: an id of `../../x` in a file would make
//! the server write outside the data dir. Every file is size-bounded before it is parsed, and
//! its id, app, kind and recording prefix are checked as strictly as the API checks them; the
//! id must also be the file's own name. A file that fails is skipped with a warning.

use serde_json::Value;
use std::path::Path;
use tessera_model::{AppId, TaskId};

/// The largest task file read (a mix job with 25 inputs and every option is a few KiB).
pub const MAX_TASK_FILE_BYTES: u64 = 1024 * 1024;

pub const KINDS: [&str; 4] = ["recording", "relay", "ingest", "mix_job"];

/// Why a task file was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFileError {
    #[error("larger than {MAX_TASK_FILE_BYTES} bytes")]
    TooLarge,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("no kind")]
    NoKind,
    #[error("unknown kind '{0}'")]
    UnknownKind(String),
    /// A valid record of another kind (they share the folder).
    #[error("kind '{0}'")]
    OtherKind(String),
    #[error("no id")]
    NoId,
    /// `field` (id, app, prefix, owned_job) is not valid.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("id '{0}' is not the file's name")]
    NotItsName(String),
}

/// The task record in `bytes` if it is a valid record of `kind` named `file_stem`.
pub fn parse(bytes: &[u8], file_stem: &str, kind: &str) -> Result<Value, TaskFileError> {
    let invalid = |field: &'static str, reason: String| TaskFileError::Invalid { field, reason };
    if bytes.len() as u64 > MAX_TASK_FILE_BYTES {
        return Err(TaskFileError::TooLarge);
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| TaskFileError::NotJson(e.to_string()))?;
    if !v.is_object() {
        return Err(TaskFileError::NotObject);
    }
    let Some(file_kind) = v["kind"].as_str() else { return Err(TaskFileError::NoKind) };
    if !KINDS.contains(&file_kind) {
        return Err(TaskFileError::UnknownKind(file_kind.to_owned()));
    }
    if file_kind != kind {
        return Err(TaskFileError::OtherKind(file_kind.to_owned()));
    }
    let id = v["id"].as_str().ok_or(TaskFileError::NoId)?;
    TaskId::parse(id).map_err(|e| invalid("id", e.to_string()))?;
    if id != file_stem {
        return Err(TaskFileError::NotItsName(id.to_owned()));
    }
    AppId::parse(v["app"].as_str().unwrap_or("")).map_err(|e| invalid("app", e.to_string()))?;
    if let Some(prefix) = v.get("prefix").filter(|p| !p.is_null()) {
        if !prefix.as_str().is_some_and(tessera_model::app::valid_prefix) {
            return Err(invalid("prefix", "not a valid recording prefix".into()));
        }
    }
    if let Some(owned) = v.get("owned_job").and_then(Value::as_str) {
        TaskId::parse(owned).map_err(|e| invalid("owned_job", e.to_string()))?;
    }
    Ok(v)
}

/// Every valid record of `kind` in `dir`; the rest are skipped with a warning.
pub fn read_all(dir: &Path, kind: &str) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else { continue };
        // Regular files only (a symlink could point anywhere), bounded before reading.
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_file() || meta.len() > MAX_TASK_FILE_BYTES {
            tracing::warn!(file = %path.display(), "task file skipped: not a regular file of at most {MAX_TASK_FILE_BYTES} bytes");
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        match parse(&bytes, stem, kind) {
            Ok(v) => out.push(v),
            // Records of other kinds share the folder: only a bad record of this kind is news.
            Err(TaskFileError::OtherKind(_)) => {}
            Err(e) => tracing::warn!(file = %path.display(), "task file skipped: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_and_paths_from_disk_are_checked() {
        let good = json!({"kind": "relay", "id": "0123456789abcdef", "app": "default"});
        assert!(parse(good.to_string().as_bytes(), "0123456789abcdef", "relay").is_ok());
        for (bad, why) in [
            (json!({"kind": "relay", "id": "../../x", "app": "default"}), "id"),
            (json!({"kind": "relay", "id": "0123456789abcdef", "app": "../etc"}), "app"),
            (json!({"kind": "relay", "id": "0123456789abcdef", "app": "default", "prefix": "/abs"}), "prefix"),
            (json!({"kind": "relay", "id": "0123456789abcdef", "app": "default", "prefix": "a/../../b"}), "prefix"),
            (json!({"kind": "relay", "id": "0123456789abcdef", "app": "default", "owned_job": "../j"}), "owned_job"),
            (json!({"kind": "relay", "id": "fedcba9876543210", "app": "default"}), "file's name"),
            (json!({"kind": "relay", "app": "default"}), "no id"),
            (json!([1, 2]), "object"),
        ] {
            let e = parse(bad.to_string().as_bytes(), "0123456789abcdef", "relay").unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(parse(&vec![b' '; MAX_TASK_FILE_BYTES as usize + 1], "0123456789abcdef", "relay"), Err(TaskFileError::TooLarge));
        let ingest = json!({"kind": "ingest", "id": "0123456789abcdef", "app": "default"});
        assert_eq!(parse(ingest.to_string().as_bytes(), "0123456789abcdef", "relay"), Err(TaskFileError::OtherKind("ingest".into())));
        // Deep nesting is refused by serde_json's recursion limit, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes(), "x", "relay").is_err());
    }
}
