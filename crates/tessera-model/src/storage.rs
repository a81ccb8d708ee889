//! Where recordings go (RECORDING.md §7): local storage, a storage named in the config file, or
//! an S3-compatible bucket given inline (an app's default, or one recording's).

use crate::app::AppError;
use serde::{Deserialize, Serialize};

/// An S3-compatible bucket. The secret key is given in one of three ways: plain (config files
/// and API requests only), sealed under the app secret (how the server keeps one it was given
/// over the API), or as the name of an environment variable of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub endpoint: String,
    pub access_key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// `<kid>:<base64 of nonce and ciphertext>`: AES-256-GCM under a key derived from the app
    /// secret `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_env: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub key_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_base_url: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn invalid(field: &str, reason: &str) -> AppError {
    AppError::Invalid { field: field.into(), reason: reason.into() }
}

impl S3Settings {
    /// Checks the fields a request gave (`field` names the object, e.g. `storage.s3`).
    pub fn validate(&self, field: &str) -> Result<(), AppError> {
        let bucket_ok = (3..=63).contains(&self.bucket.len()) && self.bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(invalid(&format!("{field}.bucket"), "must be 3-63 characters of a-z, 0-9, '-' and '.'"));
        }
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) || self.endpoint.len() > 512 {
            return Err(invalid(&format!("{field}.endpoint"), "must be an http:// or https:// URL"));
        }
        if self.region.is_empty() || self.region.len() > 64 {
            return Err(invalid(&format!("{field}.region"), "must be 1-64 characters"));
        }
        if self.access_key_id.is_empty() || self.access_key_id.len() > 256 {
            return Err(invalid(&format!("{field}.access_key_id"), "must be 1-256 characters"));
        }
        let given = [self.secret_access_key.is_some(), self.secret_access_key_sealed.is_some(), self.secret_access_key_env.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(invalid(&format!("{field}.secret_access_key"), "give exactly one of secret_access_key or secret_access_key_env"));
        }
        if self.key_prefix.len() > 256 || self.key_prefix.starts_with('/') || self.key_prefix.contains("..") {
            return Err(invalid(&format!("{field}.key_prefix"), "must be at most 256 characters, with no leading '/' and no '..'"));
        }
        if let Some(u) = &self.public_base_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(invalid(&format!("{field}.public_base_url"), "must be an http:// or https:// URL"));
            }
        }
        Ok(())
    }

    /// The settings as the API shows them: never a secret, sealed or not.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("plain fields");
        let o = v.as_object_mut().expect("an object");
        let set = o.remove("secret_access_key").is_some() | o.remove("secret_access_key_sealed").is_some();
        o.insert("secret_access_key_set".into(), serde_json::Value::Bool(set));
        v
    }
}

/// A storage choice as requests give it and task files keep it: `"local"`, a configured name,
/// or `{"local": {}}` / `{"s3": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StorageRef {
    Named(String),
    Inline(InlineStorage),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)] // a few per app or task, never on a hot path
pub enum InlineStorage {
    Local {},
    S3(S3Settings),
}

impl Default for StorageRef {
    fn default() -> Self {
        StorageRef::Named("local".into())
    }
}

impl StorageRef {
    pub fn is_local(&self) -> bool {
        matches!(self, StorageRef::Named(n) if n == "local") || matches!(self, StorageRef::Inline(InlineStorage::Local {}))
    }

    /// As the API shows it (secrets left out).
    pub fn redacted(&self) -> serde_json::Value {
        match self {
            StorageRef::Named(n) => serde_json::Value::String(n.clone()),
            StorageRef::Inline(InlineStorage::Local {}) => serde_json::json!({"local": {}}),
            StorageRef::Inline(InlineStorage::S3(s)) => serde_json::json!({"s3": s.redacted()}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3() -> S3Settings {
        S3Settings {
            bucket: "recordings".into(),
            region: "us-east-1".into(),
            endpoint: "http://10.0.0.1:9000".into(),
            access_key_id: "AK".into(),
            secret_access_key: Some("SK".into()),
            secret_access_key_sealed: None,
            secret_access_key_env: None,
            path_style: true,
            key_prefix: "tessera/".into(),
            public_base_url: None,
        }
    }

    #[test]
    fn storage_choices_parse_as_requests_give_them() {
        assert_eq!(serde_json::from_str::<StorageRef>("\"local\"").unwrap(), StorageRef::Named("local".into()));
        assert!(serde_json::from_str::<StorageRef>("{\"local\": {}}").unwrap().is_local());
        let inline: StorageRef =
            serde_json::from_value(serde_json::json!({"s3": {"bucket": "recordings", "endpoint": "http://e", "access_key_id": "AK", "secret_access_key": "SK"}})).unwrap();
        let StorageRef::Inline(InlineStorage::S3(s)) = &inline else { panic!("{inline:?}") };
        assert_eq!(s.region, "us-east-1");
        assert!(serde_json::from_value::<StorageRef>(serde_json::json!({"s3": {"bucket": "b", "nope": 1}})).is_err());
        let shown = inline.redacted().to_string();
        assert!(!shown.contains("SK") && shown.contains("\"secret_access_key_set\":true"), "{shown}");
    }

    #[test]
    fn s3_settings_are_checked() {
        assert!(s3().validate("s3").is_ok());
        let mut bad = s3();
        bad.bucket = "UPPER".into();
        assert!(bad.validate("s3").is_err());
        let mut bad = s3();
        bad.secret_access_key_env = Some("X".into());
        assert!(bad.validate("s3").is_err(), "two secrets");
        let mut bad = s3();
        bad.endpoint = "ftp://x".into();
        assert!(bad.validate("s3").is_err());
        let mut bad = s3();
        bad.key_prefix = "../x".into();
        assert!(bad.validate("s3").is_err());
    }
}
