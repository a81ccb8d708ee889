//! Tessera's domain model, shared by every other crate: identifiers and their validation,
//! apps (tenants) and their secrets, HS256 user tokens, the privilege bitmask and roles,
//! API keys and their allow/deny policies, and the webhook/auto-recording settings of an app.
//!
//! Nothing here does I/O or reads the clock: callers pass `now` in, so every rule is a plain
//! function that unit tests exercise directly.

pub mod apikey;
pub mod app;
pub mod events;
pub mod ids;
pub mod outbound;
pub mod privileges;
pub mod random;
pub mod storage;
pub mod token;

pub use apikey::{ApiKeyRecord, IssuedApiKey, Policy, PolicyDecision};
pub use app::{App, AppError, AppSecret, AutoRecording, BFramePolicy, RtmpSettings, TranscodeEncoder, WebhookSettings};
pub use ids::{AppId, IdError, Kid, RoomId, TaskId, UserId};
pub use privileges::{Privileges, Role};
pub use storage::{InlineStorage, S3Settings, StorageRef};
pub use token::{TokenClaims, TokenError, UserToken};
