//! Access tokens: HS256 JWTs carrying a room grant, signed with an API key's secret.
//!
//! The API key goes in the JWT header's `kid` and in `iss`; the server looks the secret up by
//! key. A token grants one identity in one room, with publish/subscribe/data rights, until `exp`.
//! A server may cap how far in the future `exp` lies ([`KeyRing::with_max_ttl`]). Clients are
//! only ever told `invalid_token`: why a token was refused ([`TokenError::reason`]) goes to the
//! server's log, never to the client.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// The room the bearer may join.
    pub room: String,
    /// May publish audio and video.
    #[serde(default)]
    pub can_publish: bool,
    /// May subscribe to others' tracks.
    #[serde(default)]
    pub can_subscribe: bool,
    /// May send data-channel messages to the room.
    #[serde(default)]
    pub can_publish_data: bool,
}

/// The JWT claims of a Chorus access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed the token.
    pub iss: String,
    /// The participant's identity, unique within a room.
    pub sub: String,
    /// Display name; the identity when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default)]
    pub nbf: u64,
    /// The room grant.
    pub grants: Grants,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token is not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token names an API key this server does not know.
    #[error("unknown API key {0:?}")]
    UnknownKey(String),
    /// The signature does not match the key's secret.
    #[error("bad token signature")]
    BadSignature,
    /// The token has expired or is not yet valid.
    #[error("token expired or not yet valid")]
    Expired,
    /// The token is valid for longer than the server's maximum token lifetime.
    #[error("token lifetime exceeds the server's maximum")]
    TooLong,
    /// Signing failed (only when minting).
    #[error("cannot sign token: {0}")]
    Sign(String),
}

impl TokenError {
    /// A short, fixed description for logs: never echoes anything from the token.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownKey(_) => "unknown key",
            Self::BadSignature => "bad signature",
            Self::Expired => "expired or not yet valid",
            Self::TooLong => "lifetime over the maximum",
            Self::Sign(_) => "cannot sign",
        }
    }
}

/// The API keys a server accepts: key -> secret.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: HashMap<String, String>,
    /// Longest accepted remaining lifetime (`exp` - now), in seconds; `None`: unlimited.
    max_ttl_secs: Option<u64>,
}

impl KeyRing {
    /// A key ring holding these `(key, secret)` pairs.
    pub fn new(keys: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            max_ttl_secs: None,
        }
    }

    /// Refuses tokens whose `exp` lies more than `max_ttl` in the future
    /// ([`TokenError::TooLong`]).
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl_secs = Some(max_ttl.as_secs());
        self
    }

    /// Mints a token for `claims.grants` signed by `key`.
    pub fn mint(&self, key: &str, claims: &Claims) -> Result<String, TokenError> {
        let secret = self
            .keys
            .get(key)
            .ok_or_else(|| TokenError::UnknownKey(key.to_owned()))?;
        mint(key, secret, claims)
    }

    /// Checks a token's signature and lifetime and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let key = header
            .kid
            .ok_or_else(|| TokenError::Malformed("no kid in header".into()))?;
        let secret = self
            .keys
            .get(&key)
            .ok_or(TokenError::UnknownKey(key.clone()))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.set_issuer(&[key.as_str()]);
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature
            | jsonwebtoken::errors::ErrorKind::ImmatureSignature => TokenError::Expired,
            jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
            _ => TokenError::Malformed(e.to_string()),
        })?;
        if let Some(max) = self.max_ttl_secs {
            // The same 5 s leeway as for `exp` itself, for clocks slightly ahead.
            if data.claims.exp > unix_now() + max + 5 {
                return Err(TokenError::TooLong);
            }
        }
        Ok(data.claims)
    }
}

/// Mints a token signed with `secret`, naming `key` as issuer and `kid`.
pub fn mint(key: &str, secret: &str, claims: &Claims) -> Result<String, TokenError> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.to_owned());
    let mut claims = claims.clone();
    claims.iss = key.to_owned();
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| TokenError::Sign(e.to_string()))
}

/// Claims for `identity` in `room`, valid for `ttl` from now.
pub fn claims(identity: &str, room: &str, ttl: Duration, grants: Grants) -> Claims {
    let now = unix_now();
    debug_assert_eq!(grants.room, room);
    Claims {
        iss: String::new(),
        sub: identity.to_owned(),
        name: String::new(),
        exp: now + ttl.as_secs(),
        nbf: now.saturating_sub(1),
        grants,
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    fn grants(room: &str) -> Grants {
        Grants {
            room: room.into(),
            can_publish: true,
            can_subscribe: true,
            can_publish_data: false,
        }
    }

    fn ring() -> KeyRing {
        KeyRing::new([
            ("k1".to_owned(), "s1".to_owned()),
            ("k2".to_owned(), "s2".to_owned()),
        ])
    }

    #[test]
    fn a_minted_token_verifies_with_its_grants() {
        let c = claims("alice", "r", Duration::from_secs(60), grants("r"));
        let token = ring().mint("k2", &c).expect("mints");
        let back = ring().verify(&token).expect("verifies");
        assert_eq!(back.sub, "alice");
        assert_eq!(back.iss, "k2");
        assert_eq!(back.grants, grants("r"));
    }

    #[test]
    fn bad_tokens_are_refused_with_the_right_reason() {
        let c = claims("alice", "r", Duration::from_secs(60), grants("r"));
        let wrong_secret = mint("k1", "not-s1", &c).expect("mints");
        let unknown_key = mint("k9", "s1", &c).expect("mints");
        let mut expired = c.clone();
        expired.exp = unix_now() - 3600;
        expired.nbf = 0;
        let expired = mint("k1", "s1", &expired).expect("mints");
        let table: Vec<(&str, TokenError)> = vec![
            (&wrong_secret, TokenError::BadSignature),
            (&unknown_key, TokenError::UnknownKey("k9".into())),
            (&expired, TokenError::Expired),
        ];
        for (token, want) in table {
            assert_eq!(ring().verify(token), Err(want));
        }
        assert!(matches!(
            ring().verify("garbage"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(ring().verify(""), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn tokens_living_longer_than_the_maximum_are_refused() {
        let ring = ring().with_max_ttl(Duration::from_secs(3600));
        let ok = ring
            .mint(
                "k1",
                &claims("a", "r", Duration::from_secs(3600), grants("r")),
            )
            .expect("mints");
        assert!(ring.verify(&ok).is_ok());
        let long = ring
            .mint(
                "k1",
                &claims("a", "r", Duration::from_secs(7200), grants("r")),
            )
            .expect("mints");
        assert_eq!(ring.verify(&long), Err(TokenError::TooLong));
        // Without a maximum the same token is fine.
        assert!(super::tests::ring().verify(&long).is_ok());
    }

    #[test]
    fn refusal_reasons_never_echo_the_token() {
        let e = TokenError::UnknownKey("attacker-chosen-kid".into());
        assert!(!e.reason().contains("attacker"));
        assert_eq!(e.reason(), "unknown key");
    }
}
