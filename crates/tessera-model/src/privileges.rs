//! Roles and the privilege bitmask (PRODUCT.md §4.2).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A participant's role: only anchors may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub enum Role {
    Anchor,
    Audience,
}

impl Role {
    pub fn code(self) -> i64 {
        match self {
            Role::Anchor => 20,
            Role::Audience => 21,
        }
    }

    pub fn from_code(code: i64) -> Option<Role> {
        match code {
            20 => Some(Role::Anchor),
            21 => Some(Role::Audience),
            _ => None,
        }
    }

    /// The privileges a token of this role carries when it names none.
    pub fn default_privileges(self) -> Privileges {
        match self {
            Role::Anchor => Privileges::ALL,
            Role::Audience => Privileges::AUDIENCE_DEFAULT,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Anchor => "anchor",
            Role::Audience => "audience",
        }
    }
}

/// A role that is neither anchor nor audience.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("role must be 20 (anchor) or 21 (audience), got {0}")]
    Code(i64),
    #[error("unknown role '{0}': use anchor (20) or audience (21)")]
    Name(String),
}

impl TryFrom<i64> for Role {
    type Error = RoleError;
    fn try_from(v: i64) -> Result<Role, RoleError> {
        Role::from_code(v).ok_or(RoleError::Code(v))
    }
}

impl From<Role> for i64 {
    fn from(r: Role) -> i64 {
        r.code()
    }
}

impl std::str::FromStr for Role {
    type Err = RoleError;
    /// Accepts the names (`anchor`, `audience`) and the codes (`20`, `21`).
    fn from_str(s: &str) -> Result<Role, RoleError> {
        match s {
            "anchor" | "20" => Ok(Role::Anchor),
            "audience" | "21" => Ok(Role::Audience),
            _ => Err(RoleError::Name(s.to_owned())),
        }
    }
}

/// The privilege bitmask carried by a user token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Privileges(u8);

impl Privileges {
    pub const CREATE_ROOM: Privileges = Privileges(1);
    pub const ENTER_ROOM: Privileges = Privileges(2);
    pub const PUBLISH_AUDIO: Privileges = Privileges(4);
    pub const SUBSCRIBE_AUDIO: Privileges = Privileges(8);
    pub const PUBLISH_VIDEO: Privileges = Privileges(16);
    pub const SUBSCRIBE_VIDEO: Privileges = Privileges(32);
    pub const PUBLISH_AUX: Privileges = Privileges(64);
    pub const SUBSCRIBE_AUX: Privileges = Privileges(128);
    pub const ALL: Privileges = Privileges(255);
    /// 1 + 2 + 8 + 32 + 128: an audience may create and enter rooms and subscribe to everything.
    pub const AUDIENCE_DEFAULT: Privileges = Privileges(171);
    /// Any of these makes a token able to publish (needed to switch to anchor).
    pub const ANY_PUBLISH: Privileges = Privileges(4 | 16 | 64);

    pub const fn from_bits(bits: u8) -> Privileges {
        Privileges(bits)
    }

    /// From a JSON or CLI integer, which must lie in 0–255.
    pub fn from_int(v: i64) -> Option<Privileges> {
        u8::try_from(v).ok().map(Privileges)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True when every bit of `required` is held.
    pub const fn contains(self, required: Privileges) -> bool {
        self.0 & required.0 == required.0
    }

    pub const fn intersects(self, other: Privileges) -> bool {
        self.0 & other.0 != 0
    }

    /// `Ok` when every bit of `required` is held, else the missing value for `details.required`.
    pub fn require(self, required: Privileges) -> Result<(), MissingPrivilege> {
        if self.contains(required) {
            Ok(())
        } else {
            Err(MissingPrivilege { required })
        }
    }
}

impl fmt::Debug for Privileges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Privileges({})", self.0)
    }
}

/// A check of [`Privileges::require`] failed; `required` is the value the caller lacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token lacks privilege {} ({})", .required.0, describe(*.required))]
pub struct MissingPrivilege {
    pub required: Privileges,
}

/// A human name for a privilege value, for error messages.
pub fn describe(p: Privileges) -> &'static str {
    match p.0 {
        1 => "create room",
        2 => "enter room",
        4 => "publish audio",
        8 => "subscribe audio",
        16 => "publish video",
        32 => "subscribe video",
        64 => "publish aux",
        128 => "subscribe aux",
        _ => "combined privileges",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_defaults() {
        assert_eq!(Role::Anchor.default_privileges().bits(), 255);
        assert_eq!(Role::Audience.default_privileges().bits(), 171);
        let aud = Role::Audience.default_privileges();
        for p in [Privileges::CREATE_ROOM, Privileges::ENTER_ROOM, Privileges::SUBSCRIBE_AUDIO, Privileges::SUBSCRIBE_VIDEO, Privileges::SUBSCRIBE_AUX] {
            assert!(aud.contains(p));
        }
        assert!(!aud.intersects(Privileges::ANY_PUBLISH));
    }

    #[test]
    fn require_names_the_missing_value() {
        let p = Privileges::from_bits(2 | 32);
        assert!(p.require(Privileges::ENTER_ROOM).is_ok());
        let e = p.require(Privileges::SUBSCRIBE_AUDIO).unwrap_err();
        assert_eq!(e.required.bits(), 8);
        assert_eq!(e.to_string(), "the token lacks privilege 8 (subscribe audio)");
        assert!(Privileges::ALL.require(Privileges::PUBLISH_AUX).is_ok());
        assert!(Privileges::from_bits(0).require(Privileges::CREATE_ROOM).is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(Privileges::from_int(255).unwrap().bits(), 255);
        assert!(Privileges::from_int(256).is_none());
        assert!(Privileges::from_int(-1).is_none());
        assert_eq!("anchor".parse::<Role>().unwrap(), Role::Anchor);
        assert_eq!("21".parse::<Role>().unwrap(), Role::Audience);
        assert!("22".parse::<Role>().is_err());
        assert!(Role::try_from(19).is_err());
    }
}
