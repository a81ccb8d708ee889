//! Identifiers (PRODUCT.md §3.1). Each is a string newtype that can only be built through
//! `parse`, so a value of the type is known to be valid wherever it travels.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Why a string is not a valid identifier of some kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct IdError {
    /// Which identifier: "app id", "room id", ...
    pub kind: &'static str,
    pub reason: String,
}

fn check(kind: &'static str, s: &str, max: usize, extra: &[u8]) -> Result<(), IdError> {
    if s.is_empty() || s.len() > max {
        return Err(IdError { kind, reason: format!("must be 1 to {max} characters long") });
    }
    if let Some(bad) = s.bytes().find(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || extra.contains(b))) {
        let allowed = if extra.is_empty() { "[A-Za-z0-9_]" } else { "[A-Za-z0-9_-]" };
        let shown = if bad.is_ascii_graphic() { format!("'{}'", bad as char) } else { format!("byte 0x{bad:02x}") };
        return Err(IdError { kind, reason: format!("{shown} is not allowed; use {allowed}") });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $extra:expr) => {
        $(#[$doc])*
        ///
        /// Shared, not copied: cloning one (every packet names its room and user) is a
        /// reference count, not an allocation.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(std::sync::Arc<str>);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(s: &str) -> Result<Self, IdError> {
                check($kind, s, $max, $extra)?;
                Ok(Self(s.into()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// App (tenant) id: `[A-Za-z0-9_]{1,32}`.
    AppId, "app id", 32, b""
);
string_id!(
    /// Room id: `[A-Za-z0-9_-]{1,64}`, namespaced per app.
    RoomId, "room id", 64, b"-"
);
string_id!(
    /// User id: `[A-Za-z0-9_-]{1,32}`.
    UserId, "user id", 32, b"-"
);
string_id!(
    /// Secret key id (`kid`): `[A-Za-z0-9_-]{1,16}`.
    Kid, "kid", 16, b"-"
);

impl AppId {
    /// The app that always exists.
    pub fn default_app() -> Self {
        Self("default".into())
    }
}

/// Prefixes of users the server itself plays (mix output, recorder, relay).
pub const RESERVED_USER_PREFIXES: [&str; 3] = ["mix_", "rec_", "relay_"];

impl UserId {
    /// Whether the id belongs to a server user (`mix_`, `rec_`, `relay_`): clients may not take it.
    pub fn is_reserved(&self) -> bool {
        RESERVED_USER_PREFIXES.iter().any(|p| self.0.starts_with(p))
    }

    /// Whether this is a mix job's output (`mix_<job id>`): not an anchor of its room.
    pub fn is_mix(&self) -> bool {
        self.0.starts_with("mix_")
    }
}

/// Task id: 16 lowercase hex characters, unique per server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

impl TaskId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError { kind: "task id", reason: "must be 16 lowercase hex characters".into() })
        }
    }

    pub fn generate() -> Self {
        Self(crate::random::task_id())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<TaskId> for String {
    fn from(t: TaskId) -> String {
        t.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids() {
        assert!(AppId::parse("default").is_ok());
        assert!(AppId::parse("A_b9").is_ok());
        assert!(AppId::parse(&"a".repeat(32)).is_ok());
        assert!(AppId::parse(&"a".repeat(33)).is_err());
        assert!(AppId::parse("").is_err());
        // The dash is allowed in room and user ids but not in app ids.
        let e = AppId::parse("my-app").unwrap_err();
        assert_eq!(e.kind, "app id");
        assert!(e.reason.contains("'-'"), "{}", e.reason);
    }

    #[test]
    fn room_ids() {
        assert!(RoomId::parse("class-1_B").is_ok());
        assert!(RoomId::parse(&"r".repeat(64)).is_ok());
        assert!(RoomId::parse(&"r".repeat(65)).is_err());
        for bad in ["a b", "a/b", "é", "a.b", "a?token=x", ""] {
            assert!(RoomId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = RoomId::parse("a\u{0}").unwrap_err();
        assert!(e.reason.contains("0x00"), "{}", e.reason);
    }

    #[test]
    fn user_ids_and_reserved_prefixes() {
        assert!(UserId::parse(&"u".repeat(32)).is_ok());
        assert!(UserId::parse(&"u".repeat(33)).is_err());
        for reserved in ["mix_abc", "rec_1", "relay_x"] {
            assert!(UserId::parse(reserved).unwrap().is_reserved());
        }
        for ok in ["mix", "mixer", "record_1", "alice", "relay-x"] {
            assert!(!UserId::parse(ok).unwrap().is_reserved(), "{ok}");
        }
    }

    #[test]
    fn kids_and_task_ids() {
        assert!(Kid::parse("k1").is_ok());
        assert!(Kid::parse(&"k".repeat(17)).is_err());
        assert!(TaskId::parse("0123456789abcdef").is_ok());
        assert!(TaskId::parse("0123456789ABCDEF").is_err());
        assert!(TaskId::parse("0123456789abcde").is_err());
        let t = TaskId::generate();
        assert_eq!(TaskId::parse(t.as_str()).unwrap(), t);
    }

    #[test]
    fn serde_validates() {
        let r: Result<RoomId, _> = serde_json::from_str("\"bad room\"");
        assert!(r.is_err());
        let r: RoomId = serde_json::from_str("\"good\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"good\"");
        let t: Result<TaskId, _> = serde_json::from_str("\"xyz\"");
        assert!(t.is_err());
    }
}
