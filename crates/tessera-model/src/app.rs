//! Apps (tenants, PRODUCT.md §3.2): secrets with rotation, webhook and auto-recording settings,
//! and API keys.

use crate::apikey::ApiKeyRecord;
use crate::ids::{AppId, Kid};
use crate::random;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MAX_SECRETS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSecret {
    pub kid: Kid,
    pub secret: String,
    pub created_at: i64,
}

/// Why a change to an app was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error("an app keeps at least one secret; add a new one before removing '{0}'")]
    LastSecret(String),
    #[error("an app has at most {MAX_SECRETS} secrets; remove one first")]
    TooManySecrets,
    #[error("the app has no secret with kid '{0}'")]
    SecretNotFound(String),
    #[error("the app has no API key with id '{0}'")]
    ApiKeyNotFound(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> AppError {
    AppError::Invalid { field: field.to_owned(), reason: reason.into() }
}

/// Webhook groups by name (EVENTS.md §1).
pub const WEBHOOK_GROUPS: [(&str, u8); 6] = [("room", 1), ("media", 2), ("recording", 3), ("relay", 4), ("ingest", 7), ("mix", 8)];

fn all_groups() -> Vec<u8> {
    WEBHOOK_GROUPS.iter().map(|(_, g)| *g).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Default target of every group; none means the app sends no webhooks.
    #[serde(default)]
    pub url: Option<String>,
    /// Per-group overrides, keyed by group name.
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
    /// HMAC key; stored, never returned by the API.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default = "all_groups")]
    pub groups: Vec<u8>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings { url: None, urls: BTreeMap::new(), key: None, groups: all_groups() }
    }
}

fn check_url(field: &str, url: &str) -> Result<(), AppError> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) || url.len() > 2048 || url.contains(char::is_whitespace) {
        return Err(invalid(field, "must be an http:// or https:// URL of at most 2048 characters"));
    }
    Ok(())
}

impl WebhookSettings {
    /// Where events of `group` go and the key that signs them; `None` when the app does not
    /// send that group (no URL for it, or not in `groups`).
    pub fn target(&self, group: u8) -> Option<(&str, &str)> {
        if !self.groups.contains(&group) {
            return None;
        }
        let name = WEBHOOK_GROUPS.iter().find(|(_, g)| *g == group)?.0;
        let url = self.urls.get(name).or(self.url.as_ref())?;
        Some((url.as_str(), self.key.as_deref()?))
    }

    pub fn validate(&self) -> Result<(), AppError> {
        if let Some(url) = &self.url {
            check_url("webhook.url", url)?;
        }
        for (name, url) in &self.urls {
            if !WEBHOOK_GROUPS.iter().any(|(g, _)| g == name) {
                return Err(invalid("webhook.urls", format!("unknown group '{name}'; use room, media, recording, relay, ingest or mix")));
            }
            check_url(&format!("webhook.urls.{name}"), url)?;
        }
        let mut seen = Vec::new();
        for g in &self.groups {
            if !WEBHOOK_GROUPS.iter().any(|(_, id)| id == g) {
                return Err(invalid("webhook.groups", format!("unknown group {g}; use 1, 2, 3, 4, 7 or 8")));
            }
            if seen.contains(g) {
                return Err(invalid("webhook.groups", format!("group {g} is listed twice")));
            }
            seen.push(*g);
        }
        match &self.key {
            Some(k) if k.is_empty() || k.len() > 32 || !k.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                return Err(invalid("webhook.key", "must be 1-32 characters [A-Za-z0-9]"));
            }
            None if self.url.is_some() || !self.urls.is_empty() => {
                return Err(invalid("webhook.key", "is required when a webhook URL is set"));
            }
            _ => {}
        }
        Ok(())
    }
}

pub const RECORDING_CONTENTS: [&str; 3] = ["audio_video", "audio", "video"];
pub const RECORDING_FORMATS: [&str; 5] = ["hls", "hls+mp4", "mp4", "hls+aac", "aac"];

/// Automatic single-stream recording (RECORDING.md §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoRecording {
    pub enabled: bool,
    pub content: String,
    pub format: String,
    pub mp4_split_minutes: u32,
    pub resume_wait_s: u32,
    pub storage: String,
    pub prefix: String,
}

impl Default for AutoRecording {
    fn default() -> Self {
        AutoRecording {
            enabled: false,
            content: "audio_video".into(),
            format: "hls+mp4".into(),
            mp4_split_minutes: 1440,
            resume_wait_s: 30,
            storage: "local".into(),
            prefix: String::new(),
        }
    }
}

/// A recording prefix: `[A-Za-z0-9_/-]{0,256}`, no leading `/`, no `..`.
pub fn valid_prefix(p: &str) -> bool {
    p.len() <= 256 && !p.starts_with('/') && !p.contains("..") && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/' | b'-'))
}

impl AutoRecording {
    pub fn validate(&self) -> Result<(), AppError> {
        if !RECORDING_CONTENTS.contains(&self.content.as_str()) {
            return Err(invalid("auto_recording.content", "must be audio_video, audio or video"));
        }
        if !RECORDING_FORMATS.contains(&self.format.as_str()) {
            return Err(invalid("auto_recording.format", "must be hls, hls+mp4, mp4, hls+aac or aac"));
        }
        if self.format.contains("aac") && self.content != "audio" {
            return Err(invalid("auto_recording.format", "aac formats need content 'audio'"));
        }
        if !(1..=1440).contains(&self.mp4_split_minutes) {
            return Err(invalid("auto_recording.mp4_split_minutes", "must be 1-1440"));
        }
        if !(1..=86400).contains(&self.resume_wait_s) {
            return Err(invalid("auto_recording.resume_wait_s", "must be 1-86400"));
        }
        if !valid_prefix(&self.prefix) {
            return Err(invalid("auto_recording.prefix", "must match [A-Za-z0-9_/-]{0,256}, without a leading '/' or '..'"));
        }
        Ok(())
    }
}

/// What an RTMP publish with B-frames gets (OBS's and ffmpeg's x264 defaults have them; WebRTC
/// viewers cannot take them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BFramePolicy {
    /// Decoded once and re-encoded without B-frames for viewers and mixes; relays and
    /// recordings keep the original.
    #[default]
    Transcode,
    /// Refused with `b_frames_unsupported`.
    Refuse,
}

/// The H.264 encoder of ingest transcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscodeEncoder {
    /// Cisco's OpenH264 (the default encoder everywhere in Tessera).
    #[default]
    Openh264,
    /// libx264 (veryfast, zerolatency) through the system FFmpeg: better pictures per bit.
    X264,
}

/// RTMP ingest settings (`[apps.<id>.rtmp]`, `PATCH /v1/app` `rtmp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpSettings {
    pub b_frames: BFramePolicy,
    /// Publishes of the app being transcoded at once (each takes about a core at 1080p30);
    /// beyond it a publish that needs one is refused.
    pub max_transcodes: u32,
    pub encoder: TranscodeEncoder,
}

impl Default for RtmpSettings {
    fn default() -> Self {
        RtmpSettings { b_frames: BFramePolicy::Transcode, max_transcodes: 4, encoder: TranscodeEncoder::Openh264 }
    }
}

impl RtmpSettings {
    pub fn validate(&self) -> Result<(), AppError> {
        if self.max_transcodes > 64 {
            return Err(invalid("rtmp.max_transcodes", "must be 0-64"));
        }
        Ok(())
    }
}

/// A tenant. Rooms, tasks, keys and events all belong to exactly one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: AppId,
    pub created_at: i64,
    /// Oldest first; the last one is the newest and mints tokens.
    pub secrets: Vec<AppSecret>,
    #[serde(default)]
    pub webhook: WebhookSettings,
    #[serde(default)]
    pub auto_recording: AutoRecording,
    #[serde(default)]
    pub default_storage: crate::StorageRef,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyRecord>,
    #[serde(default)]
    pub rtmp: RtmpSettings,
}

impl App {
    /// A new app with one generated secret.
    pub fn new(id: AppId, now_ms: i64) -> App {
        let mut app = App {
            id,
            created_at: now_ms,
            secrets: Vec::new(),
            webhook: WebhookSettings::default(),
            auto_recording: AutoRecording::default(),
            default_storage: crate::StorageRef::default(),
            api_keys: Vec::new(),
            rtmp: RtmpSettings::default(),
        };
        app.add_generated_secret(now_ms).expect("a new app has room for a secret");
        app
    }

    /// The secret that mints tokens: the newest.
    pub fn newest_secret(&self) -> &AppSecret {
        self.secrets.last().expect("an app always has at least one secret")
    }

    /// Adds a generated secret under the next free kid `k<N>`.
    pub fn add_generated_secret(&mut self, now_ms: i64) -> Result<&AppSecret, AppError> {
        let kid = (1..).map(|n| Kid::parse(&format!("k{n}")).expect("k<N> is a valid kid")).find(|k| self.secrets.iter().all(|s| s.kid != *k)).expect("an unused kid exists");
        self.add_secret(kid, random::secret(), now_ms)
    }

    pub fn add_secret(&mut self, kid: Kid, secret: String, now_ms: i64) -> Result<&AppSecret, AppError> {
        if self.secrets.iter().any(|s| s.kid == kid) {
            return Err(invalid("kid", format!("kid '{kid}' is already used by this app")));
        }
        if self.secrets.len() >= MAX_SECRETS {
            return Err(AppError::TooManySecrets);
        }
        if secret.len() < 16 {
            return Err(invalid("secret", "must be at least 16 characters"));
        }
        self.secrets.push(AppSecret { kid, secret, created_at: now_ms });
        Ok(self.secrets.last().expect("just pushed"))
    }

    pub fn remove_secret(&mut self, kid: &str) -> Result<(), AppError> {
        let pos = self.secrets.iter().position(|s| s.kid.as_str() == kid).ok_or_else(|| AppError::SecretNotFound(kid.into()))?;
        if self.secrets.len() == 1 {
            return Err(AppError::LastSecret(kid.into()));
        }
        self.secrets.remove(pos);
        Ok(())
    }

    pub fn api_key(&self, id: &str) -> Option<&ApiKeyRecord> {
        self.api_keys.iter().find(|k| k.id == id)
    }

    pub fn remove_api_key(&mut self, id: &str) -> Result<ApiKeyRecord, AppError> {
        let pos = self.api_keys.iter().position(|k| k.id == id).ok_or_else(|| AppError::ApiKeyNotFound(id.into()))?;
        Ok(self.api_keys.remove(pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        App::new(AppId::default_app(), 1000)
    }

    #[test]
    fn new_app_has_one_generated_secret() {
        let a = app();
        assert_eq!(a.secrets.len(), 1);
        assert_eq!(a.newest_secret().kid.as_str(), "k1");
        assert_eq!(a.newest_secret().secret.len(), 43);
    }

    #[test]
    fn rotation_limits() {
        let mut a = app();
        for n in 2..=5 {
            assert_eq!(a.add_generated_secret(n).unwrap().kid.as_str(), format!("k{n}"));
        }
        assert_eq!(a.add_generated_secret(6).unwrap_err(), AppError::TooManySecrets);
        assert_eq!(a.newest_secret().kid.as_str(), "k5");
        a.remove_secret("k2").unwrap();
        // The freed kid is reused.
        assert_eq!(a.add_generated_secret(7).unwrap().kid.as_str(), "k2");
        assert_eq!(a.newest_secret().kid.as_str(), "k2");
        assert_eq!(a.remove_secret("nope").unwrap_err(), AppError::SecretNotFound("nope".into()));
        for k in ["k1", "k3", "k4", "k5"] {
            a.remove_secret(k).unwrap();
        }
        assert_eq!(a.remove_secret("k2").unwrap_err(), AppError::LastSecret("k2".into()));
        assert!(a.add_secret(Kid::parse("x").unwrap(), "short".into(), 0).is_err());
    }

    #[test]
    fn webhook_targets_follow_groups_and_overrides() {
        let w: WebhookSettings = serde_json::from_str(r#"{"url":"http://a/x","key":"k","urls":{"recording":"http://b/y"},"groups":[1,3,4]}"#).unwrap();
        assert_eq!(w.target(1), Some(("http://a/x", "k")));
        assert_eq!(w.target(3), Some(("http://b/y", "k")));
        assert_eq!(w.target(7), None);
        assert_eq!(WebhookSettings::default().target(1), None);
    }

    #[test]
    fn webhook_validation() {
        let ok: WebhookSettings = serde_json::from_str(r#"{"url":"https://h/x","key":"k3yA","urls":{"recording":"http://r/h"},"groups":[1,2,3,4,7,8]}"#).unwrap();
        ok.validate().unwrap();
        let cases = [
            (r#"{"url":"https://h/x"}"#, "webhook.key"),
            (r#"{"url":"ftp://h/x","key":"a"}"#, "webhook.url"),
            (r#"{"urls":{"video":"http://h"},"key":"a"}"#, "webhook.urls"),
            (r#"{"groups":[5]}"#, "webhook.groups"),
            (r#"{"groups":[1,1]}"#, "webhook.groups"),
            (r#"{"key":"bad-key"}"#, "webhook.key"),
            (r#"{"key":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#, "webhook.key"),
        ];
        for (json, field) in cases {
            let w: WebhookSettings = serde_json::from_str(json).unwrap();
            match w.validate() {
                Err(AppError::Invalid { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        assert_eq!(WebhookSettings::default().groups, vec![1, 2, 3, 4, 7, 8]);
    }

    #[test]
    fn auto_recording_validation() {
        AutoRecording::default().validate().unwrap();
        let bad = [
            r#"{"format":"aac"}"#,
            r#"{"format":"flv"}"#,
            r#"{"content":"both"}"#,
            r#"{"mp4_split_minutes":0}"#,
            r#"{"resume_wait_s":86401}"#,
            r#"{"prefix":"/abs"}"#,
            r#"{"prefix":"a/../b"}"#,
        ];
        for json in bad {
            let a: AutoRecording = serde_json::from_str(json).unwrap();
            assert!(a.validate().is_err(), "{json}");
        }
        let a: AutoRecording = serde_json::from_str(r#"{"content":"audio","format":"hls+aac","prefix":"class/2026"}"#).unwrap();
        a.validate().unwrap();
    }
}
