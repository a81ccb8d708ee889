//! HS256 user tokens (PRODUCT.md §4.1).
//!
//! Encoding is done here rather than through a JWT library because the spec fixes the exact
//! bytes (header key order `alg`, `typ`, `kid`; claims in a fixed order), and a generic library
//! orders the header its own way. The primitives (HMAC-SHA256, base64url) are the RustCrypto and
//! base64 crates, and the MAC comparison is constant-time.

use crate::app::AppSecret;
use crate::ids::{AppId, Kid, RoomId, UserId};
use crate::privileges::{Privileges, Role};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Clock leeway for `exp` and `nbf`, in seconds.
pub const LEEWAY_S: i64 = 10;
/// Maximum length of the opaque `info` claim, in bytes.
pub const MAX_INFO_BYTES: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

/// The claims of a user token, in the order they are serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClaims {
    pub app: String,
    pub room: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileges: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// A token whose signature, binding fields and validity window have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserToken {
    pub app: AppId,
    pub room: RoomId,
    pub user: UserId,
    pub role: Role,
    pub privileges: Privileges,
    pub nbf: Option<i64>,
    pub exp: i64,
    pub info: Option<String>,
    /// The secret that verified it.
    pub kid: Kid,
}

/// Why a token was refused. Each variant maps to one error code of PRODUCT.md §5.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token was given; send it as 'Authorization: Bearer <token>'")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's signature does not match any secret of app '{0}'")]
    BadSignature(String),
    #[error("the token expired at {exp} (Unix s)")]
    Expired { exp: i64 },
    #[error("the token is not valid before {nbf} (Unix s)")]
    NotYetValid { nbf: i64 },
    #[error("the token names app '{0}', which does not exist")]
    AppUnknown(String),
}

impl TokenError {
    /// The spec's error code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::BadSignature(_) => "token_bad_signature",
            TokenError::Expired { .. } => "token_expired",
            TokenError::NotYetValid { .. } => "token_not_yet_valid",
            TokenError::AppUnknown(_) => "app_unknown",
        }
    }
}

fn sign(secret: &str, signing_input: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(signing_input);
    mac.finalize().into_bytes().to_vec()
}

/// Encodes and signs `claims` with `secret`, naming `kid` in the header.
pub fn mint(claims: &TokenClaims, kid: &Kid, secret: &str) -> String {
    let header = Header { alg: "HS256".into(), typ: Some("JWT".into()), kid: Some(kid.as_str().into()) };
    let mut out = String::with_capacity(256);
    URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&header).expect("header serializes"), &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(claims).expect("claims serialize"), &mut out);
    let sig = sign(secret, out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(sig, &mut out);
    out
}

fn malformed(msg: impl Into<String>) -> TokenError {
    TokenError::Malformed(msg.into())
}

/// Verifies `token` at time `now_s` (Unix seconds). `secrets_of` gives the secrets of an app,
/// or `None` when the app does not exist.
pub fn verify<'a>(token: &str, now_s: i64, secrets_of: impl FnOnce(&AppId) -> Option<&'a [AppSecret]>) -> Result<UserToken, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(c64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("expected three base64url parts separated by '.'"));
    };
    let header_bytes = URL_SAFE_NO_PAD.decode(h64).map_err(|_| malformed("the header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header_bytes).map_err(|e| malformed(format!("the header is not valid JSON: {e}")))?;
    if header.alg != "HS256" {
        return Err(malformed(format!("alg must be HS256, got '{}'", header.alg)));
    }
    let claim_bytes = URL_SAFE_NO_PAD.decode(c64).map_err(|_| malformed("the claims are not base64url"))?;
    let claims: TokenClaims = serde_json::from_slice(&claim_bytes).map_err(|e| malformed(format!("the claims are invalid: {e}")))?;
    let sig = URL_SAFE_NO_PAD.decode(s64).map_err(|_| malformed("the signature is not base64url"))?;

    let app = AppId::parse(&claims.app).map_err(|e| malformed(e.to_string()))?;
    let room = RoomId::parse(&claims.room).map_err(|e| malformed(e.to_string()))?;
    let user = UserId::parse(&claims.user).map_err(|e| malformed(e.to_string()))?;
    let role = match claims.role {
        None => Role::Anchor,
        Some(r) => Role::from_code(r).ok_or_else(|| malformed(format!("role must be 20 or 21, got {r}")))?,
    };
    let privileges = match claims.privileges {
        None => role.default_privileges(),
        Some(p) => Privileges::from_int(p).ok_or_else(|| malformed(format!("privileges must be 0-255, got {p}")))?,
    };
    if claims.info.as_ref().is_some_and(|i| i.len() > MAX_INFO_BYTES) {
        return Err(malformed(format!("info is longer than {MAX_INFO_BYTES} bytes")));
    }
    let kid = match &header.kid {
        Some(k) => Some(Kid::parse(k).map_err(|e| malformed(e.to_string()))?),
        None => None,
    };

    let secrets = secrets_of(&app).ok_or_else(|| TokenError::AppUnknown(app.to_string()))?;
    let signing_input = &token.as_bytes()[..h64.len() + 1 + c64.len()];
    // With a kid only that secret is tried; without one, every secret of the app (rotation).
    let matched = secrets
        .iter()
        .filter(|s| kid.as_ref().is_none_or(|k| *k == s.kid))
        .find(|s| {
            let mut mac = HmacSha256::new_from_slice(s.secret.as_bytes()).expect("any key length");
            mac.update(signing_input);
            mac.verify_slice(&sig).is_ok()
        })
        .ok_or_else(|| TokenError::BadSignature(app.to_string()))?;

    if now_s > claims.exp + LEEWAY_S {
        return Err(TokenError::Expired { exp: claims.exp });
    }
    if let Some(nbf) = claims.nbf {
        if now_s + LEEWAY_S < nbf {
            return Err(TokenError::NotYetValid { nbf });
        }
    }
    Ok(UserToken { app, room, user, role, privileges, nbf: claims.nbf, exp: claims.exp, info: claims.info, kid: matched.kid.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0.eyJhcHAiOiJkZWZhdWx0Iiwicm9vbSI6InJvb20xIiwidXNlciI6ImFsaWNlIiwicm9sZSI6MjAsInByaXZpbGVnZXMiOjI1NSwibmJmIjoxNzYzODA1NjAwLCJleHAiOjE3NjM4MjcyMDB9.bitJ7_gSkHPqP4Yq_TXYwyDhTyg10EPoq7pR4vrhkn4";
    const SECRET: &str = "tessera-test-secret-0123456789abcdef";
    const NBF: i64 = 1763805600;
    const EXP: i64 = 1763827200;

    fn secret(kid: &str, s: &str) -> AppSecret {
        AppSecret { kid: Kid::parse(kid).unwrap(), secret: s.into(), created_at: 0 }
    }

    fn vector_claims() -> TokenClaims {
        TokenClaims { app: "default".into(), room: "room1".into(), user: "alice".into(), role: Some(20), privileges: Some(255), nbf: Some(NBF), exp: EXP, info: None }
    }

    fn check(token: &str, now: i64, secrets: &[AppSecret]) -> Result<UserToken, TokenError> {
        verify(token, now, |app| (app.as_str() == "default").then_some(secrets))
    }

    #[test]
    fn mint_matches_spec_vector() {
        assert_eq!(mint(&vector_claims(), &Kid::parse("k1").unwrap(), SECRET), VECTOR);
    }

    #[test]
    fn spec_vector_verifies() {
        let t = check(VECTOR, NBF + 60, &[secret("k1", SECRET)]).unwrap();
        assert_eq!(t.app.as_str(), "default");
        assert_eq!(t.room.as_str(), "room1");
        assert_eq!(t.user.as_str(), "alice");
        assert_eq!(t.role, Role::Anchor);
        assert_eq!(t.privileges.bits(), 255);
        assert_eq!(t.kid.as_str(), "k1");
    }

    #[test]
    fn rotation_tries_every_secret_without_kid_and_only_the_named_one_with_it() {
        let mut claims = vector_claims();
        claims.nbf = None;
        // No kid in the header: build one by hand.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let input = format!("{header}.{body}");
        let sig = URL_SAFE_NO_PAD.encode(sign("new-secret", input.as_bytes()));
        let no_kid = format!("{input}.{sig}");
        let both = [secret("old", "old-secret"), secret("new", "new-secret")];
        assert_eq!(check(&no_kid, NBF, &both).unwrap().kid.as_str(), "new");

        // With kid "old" but signed by the new secret: only "old" is tried.
        let wrong_kid = mint(&claims, &Kid::parse("old").unwrap(), "new-secret");
        assert_eq!(check(&wrong_kid, NBF, &both).unwrap_err(), TokenError::BadSignature("default".into()));
    }

    #[test]
    fn expiry_and_not_before_with_leeway() {
        let s = [secret("k1", SECRET)];
        assert!(check(VECTOR, EXP + LEEWAY_S, &s).is_ok());
        assert_eq!(check(VECTOR, EXP + LEEWAY_S + 1, &s).unwrap_err(), TokenError::Expired { exp: EXP });
        assert!(check(VECTOR, NBF - LEEWAY_S, &s).is_ok());
        assert_eq!(check(VECTOR, NBF - LEEWAY_S - 1, &s).unwrap_err(), TokenError::NotYetValid { nbf: NBF });
        assert_eq!(check(VECTOR, EXP + 100, &s).unwrap_err().code(), "token_expired");
        assert_eq!(check(VECTOR, NBF - 100, &s).unwrap_err().code(), "token_not_yet_valid");
    }

    #[test]
    fn bad_signature_and_unknown_app() {
        let e = check(VECTOR, NBF, &[secret("k1", "another-secret")]).unwrap_err();
        assert_eq!(e.code(), "token_bad_signature");
        // A flipped character in the signature.
        let mut t = VECTOR.to_string();
        let last = t.pop().unwrap();
        t.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(check(&t, NBF, &[secret("k1", SECRET)]).unwrap_err().code(), "token_bad_signature");
        let e = verify(VECTOR, NBF, |_| None).unwrap_err();
        assert_eq!(e, TokenError::AppUnknown("default".into()));
        assert_eq!(e.code(), "app_unknown");
    }

    #[test]
    fn malformed_tokens() {
        let s = [secret("k1", SECRET)];
        let kid = Kid::parse("k1").unwrap();
        let mut cases: Vec<String> = vec![
            "abc".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            "!!!.b.c".into(),
            format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(b"not json")),
            // alg none / RS256 are refused, never trusted.
            format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), VECTOR.split('.').nth(1).unwrap()),
            format!("{}.{}.xx", URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#), VECTOR.split('.').nth(1).unwrap()),
        ];
        let mut bad_claims = |f: &dyn Fn(&mut TokenClaims)| {
            let mut c = vector_claims();
            f(&mut c);
            cases.push(mint(&c, &kid, SECRET));
        };
        bad_claims(&|c| c.role = Some(22));
        bad_claims(&|c| c.privileges = Some(256));
        bad_claims(&|c| c.room = "bad room".into());
        bad_claims(&|c| c.user = "".into());
        bad_claims(&|c| c.app = "my-app".into());
        bad_claims(&|c| c.info = Some("x".repeat(MAX_INFO_BYTES + 1)));
        // Missing exp and an unknown claim.
        let header = VECTOR.split('.').next().unwrap();
        for body in [br#"{"app":"default","room":"r","user":"u"}"#.as_slice(), br#"{"app":"default","room":"r","user":"u","exp":1,"admin":true}"#] {
            let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(body));
            let sig = URL_SAFE_NO_PAD.encode(sign(SECRET, input.as_bytes()));
            cases.push(format!("{input}.{sig}"));
        }
        for case in &cases {
            let e = check(case, NBF, &s).unwrap_err();
            assert_eq!(e.code(), "token_malformed", "{case}: {e}");
        }
        assert_eq!(check("", NBF, &s).unwrap_err(), TokenError::Missing);
    }

    #[test]
    fn defaults_follow_role() {
        let mut c = vector_claims();
        c.role = Some(21);
        c.privileges = None;
        let t = check(&mint(&c, &Kid::parse("k1").unwrap(), SECRET), NBF, &[secret("k1", SECRET)]).unwrap();
        assert_eq!(t.role, Role::Audience);
        assert_eq!(t.privileges.bits(), 171);
        c.role = None;
        let t = check(&mint(&c, &Kid::parse("k1").unwrap(), SECRET), NBF, &[secret("k1", SECRET)]).unwrap();
        assert_eq!(t.role, Role::Anchor);
        assert_eq!(t.privileges.bits(), 255);
    }
}
