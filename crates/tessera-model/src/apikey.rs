//! API keys and their allow/deny policies (PRODUCT.md §4.6).
//!
//! A key looks like `tsk_<id: 12 base32>_<secret: 32 base62>`. Only its SHA-256 is stored; the
//! id part lets the server find the record without scanning, and the hash comparison is
//! constant-time.

use crate::random;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "tsk_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
pub const MAX_STATEMENTS: usize = 32;
pub const MAX_ACTIONS_PER_STATEMENT: usize = 64;
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub effect: Effect,
    pub actions: Vec<String>,
}

/// What a key may do: any matching deny wins, then any matching allow, else refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub statements: Vec<Statement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyDecision {
    Allowed,
    /// A deny statement matched.
    Denied,
    /// No statement allowed it.
    NotAllowed,
}

/// Why an API-key policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("a policy needs at least one statement")]
    NoStatements,
    #[error("a policy has at most {MAX_STATEMENTS} statements")]
    TooManyStatements,
    #[error("a statement lists 1 to {MAX_ACTIONS_PER_STATEMENT} actions")]
    ActionCount,
    #[error("'{0}' is not an action pattern; use '*', '<group>.*', '*.<verb>' or '<group>.<verb>'")]
    Pattern(String),
}

impl Policy {
    pub fn full_access() -> Policy {
        Policy { statements: vec![Statement { effect: Effect::Allow, actions: vec!["*".into()] }] }
    }

    pub fn read_only() -> Policy {
        Policy { statements: vec![Statement { effect: Effect::Allow, actions: vec!["*.get".into(), "*.list".into()] }] }
    }

    /// The named presets: `full-access` and `read-only`.
    pub fn preset(name: &str) -> Option<Policy> {
        match name {
            "full-access" => Some(Policy::full_access()),
            "read-only" => Some(Policy::read_only()),
            _ => None,
        }
    }

    /// Checks the shape of every pattern; the error names the first bad one.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.statements.is_empty() {
            return Err(PolicyError::NoStatements);
        }
        if self.statements.len() > MAX_STATEMENTS {
            return Err(PolicyError::TooManyStatements);
        }
        for st in &self.statements {
            if st.actions.is_empty() || st.actions.len() > MAX_ACTIONS_PER_STATEMENT {
                return Err(PolicyError::ActionCount);
            }
            for a in &st.actions {
                if !valid_pattern(a) {
                    return Err(PolicyError::Pattern(a.clone()));
                }
            }
        }
        Ok(())
    }

    pub fn decide(&self, action: &str) -> PolicyDecision {
        let matching = |effect| self.statements.iter().filter(|s| s.effect == effect).flat_map(|s| &s.actions).any(|p| pattern_matches(p, action));
        if matching(Effect::Deny) {
            PolicyDecision::Denied
        } else if matching(Effect::Allow) {
            PolicyDecision::Allowed
        } else {
            PolicyDecision::NotAllowed
        }
    }
}

fn word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase())
}

fn valid_pattern(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    match p.split_once('.') {
        Some(("*", verb)) => word(verb),
        Some((group, "*")) => word(group),
        Some((group, verb)) => word(group) && word(verb),
        None => false,
    }
}

fn pattern_matches(pattern: &str, action: &str) -> bool {
    if pattern == "*" || pattern == action {
        return true;
    }
    let (Some((pg, pv)), Some((ag, av))) = (pattern.split_once('.'), action.split_once('.')) else {
        return false;
    };
    (pg == "*" && pv == av) || (pv == "*" && pg == ag)
}

/// A stored key: everything but the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub policy: Policy,
    /// Lowercase hex SHA-256 of the whole key string.
    pub sha256: String,
    pub created_at: i64,
    #[serde(default)]
    pub last_used_at: Option<i64>,
}

/// A freshly created key: its record and the plaintext, shown once.
#[derive(Debug, Clone)]
pub struct IssuedApiKey {
    pub record: ApiKeyRecord,
    pub key: String,
}

fn sha256_hex(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Creates a key with a fresh random id and secret.
pub fn issue(name: &str, policy: Policy, now_ms: i64) -> IssuedApiKey {
    let id = random::string_from(random::BASE32_LOWER, ID_LEN);
    let secret = random::string_from(random::BASE62, SECRET_LEN);
    let key = format!("{KEY_PREFIX}{id}_{secret}");
    let record = ApiKeyRecord { id, name: name.to_owned(), policy, sha256: sha256_hex(&key), created_at: now_ms, last_used_at: None };
    IssuedApiKey { record, key }
}

/// The id part of a well-formed key, or `None` when the string is not shaped like a key.
pub fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == ID_LEN && id.bytes().all(|b| random::BASE32_LOWER.contains(&b)) && secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(id)
}

impl ApiKeyRecord {
    /// Whether `key` is this record's key, compared in constant time.
    pub fn matches(&self, key: &str) -> bool {
        let given = sha256_hex(key);
        given.len() == self.sha256.len() && given.bytes().zip(self.sha256.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Policy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn presets() {
        let full = Policy::preset("full-access").unwrap();
        let ro = Policy::preset("read-only").unwrap();
        assert!(Policy::preset("admin").is_none());
        for a in ["rooms.list", "rooms.dismiss", "users.kick", "apikeys.create", "files.get"] {
            assert_eq!(full.decide(a), PolicyDecision::Allowed);
        }
        assert_eq!(ro.decide("rooms.list"), PolicyDecision::Allowed);
        assert_eq!(ro.decide("mixjobs.get"), PolicyDecision::Allowed);
        assert_eq!(ro.decide("rooms.dismiss"), PolicyDecision::NotAllowed);
        assert_eq!(ro.decide("apikeys.create"), PolicyDecision::NotAllowed);
    }

    #[test]
    fn deny_beats_allow() {
        let p = policy(r#"{"statements":[{"effect":"allow","actions":["*"]},{"effect":"deny","actions":["users.kick"]}]}"#);
        p.validate().unwrap();
        assert_eq!(p.decide("rooms.dismiss"), PolicyDecision::Allowed);
        assert_eq!(p.decide("users.kick"), PolicyDecision::Denied);
        let p = policy(r#"{"statements":[{"effect":"allow","actions":["rooms.*"]},{"effect":"deny","actions":["*.dismiss"]}]}"#);
        assert_eq!(p.decide("rooms.list"), PolicyDecision::Allowed);
        assert_eq!(p.decide("rooms.dismiss"), PolicyDecision::Denied);
        assert_eq!(p.decide("users.list"), PolicyDecision::NotAllowed);
    }

    #[test]
    fn pattern_validation() {
        for good in ["*", "rooms.*", "*.get", "mixjobs.update"] {
            assert!(valid_pattern(good), "{good}");
        }
        for bad in ["", "rooms", "rooms.", ".get", "*.*x", "Rooms.get", "rooms.get.x", "**", "*.", "a b.c"] {
            assert!(!valid_pattern(bad), "{bad}");
        }
        assert!(policy(r#"{"statements":[]}"#).validate().is_err());
        let e = policy(r#"{"statements":[{"effect":"allow","actions":["rooms"]}]}"#).validate().unwrap_err();
        assert_eq!(e, PolicyError::Pattern("rooms".into()));
        assert!(serde_json::from_str::<Policy>(r#"{"statements":[{"effect":"maybe","actions":["*"]}]}"#).is_err());
    }

    #[test]
    fn issued_keys_have_the_spec_format_and_match_only_themselves() {
        let a = issue("ci", Policy::read_only(), 1);
        let b = issue("ci", Policy::read_only(), 1);
        assert_eq!(a.key.len(), 4 + 12 + 1 + 32);
        assert_eq!(key_id(&a.key), Some(a.record.id.as_str()));
        assert!(a.record.matches(&a.key));
        assert!(!a.record.matches(&b.key));
        assert!(!a.record.sha256.contains(&a.key[17..]));
        for bad in ["", "tsk_", "tsk_abc_def", "xyz_aaaaaaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "tsk_AAAAAAAAAAAA_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
    }
}
