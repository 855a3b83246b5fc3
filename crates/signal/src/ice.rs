//! The STUN/TURN servers handed to clients, with time-limited TURN credentials
//! (the "TURN REST API" scheme coturn implements: `username = expiry:identity`,
//! `credential = base64(HMAC-SHA1(secret, username))`).

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use crate::protocol::IceServer;

/// One configured ICE server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServerConfig {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// Static TURN username (ignored when `secret` is set).
    #[serde(default)]
    pub username: Option<String>,
    /// Static TURN credential (ignored when `secret` is set).
    #[serde(default)]
    pub credential: Option<String>,
    /// TURN shared secret: clients get a fresh time-limited username and credential.
    #[serde(default)]
    pub secret: Option<String>,
    /// Lifetime of generated TURN credentials, in seconds.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

fn default_ttl() -> u64 {
    86_400
}

/// The ICE servers for one participant, credentials generated for `identity` at `now_unix`.
/// Generated TURN credentials expire with the participant's token (`token_exp`, Unix seconds)
/// when that comes before the configured `ttl_secs`.
pub fn ice_servers_for(
    configured: &[IceServerConfig],
    identity: &str,
    now_unix: u64,
    token_exp: u64,
) -> Vec<IceServer> {
    let token_left = token_exp.saturating_sub(now_unix);
    configured
        .iter()
        .map(|c| match &c.secret {
            Some(secret) => {
                let ttl = Duration::from_secs(c.ttl_secs.min(token_left));
                let (username, credential) = turn_credentials(secret, identity, now_unix, ttl);
                IceServer {
                    urls: c.urls.clone(),
                    username: Some(username),
                    credential: Some(credential),
                }
            }
            None => IceServer {
                urls: c.urls.clone(),
                username: c.username.clone(),
                credential: c.credential.clone(),
            },
        })
        .collect()
}

/// Time-limited TURN credentials for `identity`, valid until `now_unix + ttl`.
pub fn turn_credentials(
    secret: &str,
    identity: &str,
    now_unix: u64,
    ttl: Duration,
) -> (String, String) {
    let username = format!("{}:{identity}", now_unix + ttl.as_secs());
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_credentials_match_the_rest_api_scheme() {
        // Reference value computed with: printf '%s' '1000:alice' | openssl dgst -sha1 -hmac s3cret -binary | base64
        let (u, c) = turn_credentials("s3cret", "alice", 400, Duration::from_secs(600));
        assert_eq!(u, "1000:alice");
        assert_eq!(c, "W35Sx+qjGxpTv3R5RjTw75kVAFo=");
    }

    #[test]
    fn static_servers_pass_through_and_secret_servers_get_credentials() {
        let cfg = vec![
            IceServerConfig {
                urls: vec!["stun:stun.example.org:3478".into()],
                username: None,
                credential: None,
                secret: None,
                ttl_secs: 60,
            },
            IceServerConfig {
                urls: vec!["turn:turn.example.org:3478".into()],
                username: None,
                credential: None,
                secret: Some("s3cret".into()),
                ttl_secs: 600,
            },
        ];
        let out = ice_servers_for(&cfg, "alice", 400, 400 + 3600);
        assert_eq!(out[0].username, None);
        assert_eq!(out[1].username.as_deref(), Some("1000:alice"));
        assert!(out[1].credential.is_some());
        // A token expiring before the configured TTL ends the credentials with it.
        let out = ice_servers_for(&cfg, "alice", 400, 400 + 30);
        assert_eq!(out[1].username.as_deref(), Some("430:alice"));
    }
}
