//! [`ClientError`]: every way joining, signaling, the connections and WHIP/WHEP can fail.

use crate::ivf::IvfError;
use chorus_signal::protocol::{ErrorCode, Target};
use webrtc::peer_connection::RTCPeerConnectionState;

/// Errors from the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The signaling URL could not be parsed.
    #[error("invalid signaling URL: {0}")]
    InvalidUrl(#[from] url::ParseError),
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// A message could not be encoded or decoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The server refused the join (or reported another error while joining).
    #[error("server error {}: {message}", code.as_str())]
    Rejected {
        /// The server's error code.
        code: ErrorCode,
        /// The server's detail.
        message: String,
    },
    /// The server sent something that does not fit the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The WebRTC stack failed.
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    /// The configured video clip is not a usable IVF file.
    #[error("video clip: {0}")]
    Ivf(#[from] IvfError),
    /// A peer connection failed or closed while waiting for it.
    #[error("{0:?} connection is {1}")]
    ConnectionFailed(Target, RTCPeerConnectionState),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The signaling connection is closed.
    #[error("signaling connection closed")]
    Closed,
    /// A WHIP/WHEP HTTP exchange failed: unsupported URL, connection, I/O or an unparsable
    /// response.
    #[error("http: {0}")]
    Http(String),
    /// A WHIP/WHEP endpoint answered with an unexpected status.
    #[error("{endpoint} answered HTTP {status}: {body}")]
    HttpStatus {
        /// `whip` or `whep`.
        endpoint: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (the server's explanation).
        body: String,
    },
    /// A local socket could not be opened or used.
    #[error("socket: {0}")]
    Io(std::io::Error),
    /// A WHIP/WHEP `201 Created` without a `Location` header.
    #[error("{0} answer has no Location header")]
    MissingLocation(&'static str),
}
