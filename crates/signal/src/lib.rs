//! # chorus-signal: how clients reach the media plane
//!
//! - [`protocol`]: the JSON messages of the WebSocket protocol (the client crate uses these).
//! - [`auth`]: access tokens (JWT) and the API key ring.
//! - [`ws`]: the `/ws` endpoint: one task per connection, translating protocol messages into
//!   [`chorus_sfu::SessionHandle`] calls and room events into protocol messages.
//! - [`http`]: WHIP and WHEP (RFC 9725 and the WHEP draft), health, metrics, the call page and
//!   the dev-only token endpoint, assembled into one axum [`Router`](axum::Router) by [`router`].
//! - [`ice`]: the STUN/TURN servers handed to clients.

pub mod auth;
pub mod http;
pub mod ice;
pub mod metrics;
pub mod protocol;
pub mod ws;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use chorus_sfu::{Session, Sfu, SfuError};
use serde::{Deserialize, Serialize};

pub use http::router;

use crate::auth::KeyRing;
use crate::ice::IceServerConfig;
use crate::metrics::SignalMetrics;
use crate::protocol::ErrorCode;

/// Signaling settings, the `[signal]` table of the server config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalConfig {
    /// STUN/TURN servers handed to clients in `joined` and in WHIP/WHEP `Link` headers.
    pub ice_servers: Vec<IceServerConfig>,
    /// Seconds a new WebSocket may take to send `join`.
    pub join_timeout_secs: u64,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            join_timeout_secs: 10,
        }
    }
}

/// Everything the HTTP and WebSocket handlers share.
pub struct AppState {
    /// The media plane.
    pub sfu: Sfu,
    /// Accepted API keys.
    pub keys: KeyRing,
    /// Signaling settings.
    pub config: SignalConfig,
    /// In dev mode, the key `/dev/token` signs with; `None` turns the endpoint off.
    pub dev_key: Option<String>,
    /// Where `/metrics` gathers from.
    pub registry: prometheus::Registry,
    /// Signaling metrics.
    pub metrics: SignalMetrics,
    /// Media-plane metrics (WHIP/WHEP session gauges live there).
    pub media_metrics: chorus_sfu::Metrics,
    /// Open WHIP/WHEP sessions by resource id; dropping one leaves the room.
    pub http_sessions: Mutex<HashMap<String, HttpSession>>,
    /// False once shutdown has begun: `/readyz` fails and joins are refused.
    pub ready: AtomicBool,
}

/// A WHIP or WHEP session resource.
pub struct HttpSession {
    /// WHIP or WHEP.
    pub kind: &'static str,
    /// The room.
    pub room: String,
    /// The identity whose token created it; `DELETE` needs a token for the same identity.
    pub identity: String,
    /// The membership; dropping it leaves.
    pub session: Session,
}

/// Shared state handle.
pub type SharedState = Arc<AppState>;

/// The media-plane join request a verified token asks for.
pub fn join_request(
    claims: &auth::Claims,
    permissions: chorus_sfu::Permissions,
    auto_subscribe: bool,
    origin: chorus_sfu::Origin,
) -> chorus_sfu::JoinRequest {
    chorus_sfu::JoinRequest {
        room: claims.grants.room.clone(),
        identity: claims.sub.clone(),
        name: if claims.name.is_empty() {
            claims.sub.clone()
        } else {
            claims.name.clone()
        },
        permissions,
        auto_subscribe,
        quality: chorus_sfu::Quality::High,
        origin,
    }
}

/// The protocol error code for a media-plane error.
pub fn error_code(e: &SfuError) -> ErrorCode {
    match e {
        SfuError::RoomFull => ErrorCode::RoomFull,
        SfuError::NotPermitted(_) => ErrorCode::PermissionDenied,
        SfuError::InvalidSdp(_) => ErrorCode::InvalidSdp,
        SfuError::UnknownTrack(_) | SfuError::NotFound(_) | SfuError::NotReady(_) => {
            ErrorCode::UnknownTrack
        }
        SfuError::InvalidState(_) => ErrorCode::InvalidState,
        SfuError::Gone | SfuError::EngineStopped | SfuError::Bind(_) | SfuError::Rtc(_) => {
            ErrorCode::Internal
        }
    }
}
