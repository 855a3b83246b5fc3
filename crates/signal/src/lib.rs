//! # chorus-signal: how clients reach the media plane
//!
//! - [`protocol`]: the JSON messages of the WebSocket protocol (the client crate uses these).
//! - [`auth`]: access tokens (JWT) and the API key ring.
//! - [`ws`]: the `/ws` endpoint: one task per connection, translating protocol messages into
//!   [`chorus_sfu::SessionHandle`] calls and room events into protocol messages.
//! - [`http`]: WHIP and WHEP (RFC 9725 and the WHEP draft), health, metrics, the call page and
//!   the dev-only token endpoint, assembled into one axum [`Router`](axum::Router) by [`router`].
//! - [`ice`]: the STUN/TURN servers handed to clients.
//! - [`admin`]: the operator's HTTP API (list rooms, remove a participant, close a room).
//! - [`limits`]: connection caps, message rates and the bounded log of refused requests.
//! - [`resume`]: the sessions a new WebSocket may take back (resume tokens, the grace period).

pub mod admin;
pub mod auth;
pub mod convert;
pub mod http;
pub mod ice;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod resume;
pub mod ws;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// Seconds a new WebSocket has to send `join`, counted from the upgrade (not reset by
    /// anything the client sends).
    pub join_timeout_secs: u64,
    /// Largest text frame accepted before `join`, in bytes (`message_too_large` above).
    pub max_frame_bytes_before_join: usize,
    /// Messages (frames) per second one connection may send, on average.
    pub messages_per_sec: u32,
    /// Messages one connection may send at once before the rate applies.
    pub message_burst: u32,
    /// Seconds between the server's WebSocket pings to a joined client.
    pub ping_interval_secs: u64,
    /// Seconds without any frame from a joined client (pongs count) before the server closes.
    pub idle_timeout_secs: u64,
    /// Most open signaling WebSockets.
    pub max_connections: usize,
    /// Most open signaling WebSockets from one source address.
    pub max_connections_per_ip: usize,
    /// Source addresses exempt from the per-address cap (a reverse proxy, local load tests).
    pub per_ip_exempt: Vec<IpAddr>,
    /// Most media sections (`m=` lines) in one publisher offer (WebSocket and WHIP).
    pub max_media_sections: usize,
    /// Most ICE candidates one participant may trickle (both connections together).
    pub max_candidates: usize,
    /// Most tracks one participant may subscribe to explicitly, and name in one message.
    pub max_subscriptions: usize,
    /// Seconds a participant whose WebSocket was lost (closed without `leave`) stays in its
    /// room, media flowing, for a new WebSocket to `resume` it. 0 removes it at once.
    pub resume_grace_secs: u64,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            join_timeout_secs: 10,
            max_frame_bytes_before_join: 16 * 1024,
            messages_per_sec: 50,
            message_burst: 200,
            ping_interval_secs: 15,
            idle_timeout_secs: 45,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            per_ip_exempt: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            max_media_sections: 32,
            max_candidates: 200,
            max_subscriptions: 1000,
            resume_grace_secs: 15,
        }
    }
}

impl SignalConfig {
    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("join_timeout_secs", self.join_timeout_secs as usize),
            (
                "max_frame_bytes_before_join",
                self.max_frame_bytes_before_join,
            ),
            ("messages_per_sec", self.messages_per_sec as usize),
            ("message_burst", self.message_burst as usize),
            ("ping_interval_secs", self.ping_interval_secs as usize),
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_media_sections", self.max_media_sections),
            ("max_candidates", self.max_candidates),
            ("max_subscriptions", self.max_subscriptions),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("signal.{key} must be > 0"));
            }
        }
        if self.idle_timeout_secs <= self.ping_interval_secs {
            return Err(format!(
                "signal.idle_timeout_secs ({}) must exceed signal.ping_interval_secs ({})",
                self.idle_timeout_secs, self.ping_interval_secs
            ));
        }
        if self.max_frame_bytes_before_join > protocol::MAX_MESSAGE_BYTES {
            return Err(format!(
                "signal.max_frame_bytes_before_join must be at most {}",
                protocol::MAX_MESSAGE_BYTES
            ));
        }
        Ok(())
    }
}

/// What the HTTP surface offers beyond the signaling settings: set by the server from its
/// `[server]`, `[metrics]` and `[admin]` tables and its mode.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// Dev mode: `/dev/token` exists, CORS allows any origin, `/metrics` is open.
    pub dev: bool,
    /// Origins allowed to call WHIP/WHEP from scripts (CORS), outside dev mode.
    pub cors_origins: Vec<String>,
    /// A URL the call page asks for tokens (`?room=&identity=&name=`, with the user's
    /// cookies); `/dev/token` in dev mode.
    pub token_endpoint: Option<String>,
    /// Whether `/metrics` is served on the HTTP port (dev mode, or with `metrics_token`).
    pub metrics_on_http: bool,
    /// When set, `/metrics` on the HTTP port needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// When set, the admin API is on and needs `Authorization: Bearer <key>`.
    pub admin_key: Option<String>,
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
    /// Page, CORS, metrics and admin options.
    pub http: HttpOptions,
    /// Open WebSockets, overall and per address.
    pub connections: limits::ConnectionLimiter,
    /// The rate-bounded log of refused requests.
    pub refusals: limits::RefusalLog,
    /// WebSocket sessions a `resume` may take back, live or kept after a lost socket.
    pub resumable: resume::Resumable,
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
