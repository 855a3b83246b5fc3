//! The WebSocket signaling protocol: JSON messages tagged by `type`.
//!
//! Every message is one JSON object with a `type` field in `snake_case`. The client opens with
//! [`ClientMessage::Join`] carrying its token and the protocol version it speaks; the server
//! answers with [`ServerMessage::Joined`] or an [`ServerMessage::Error`] and closes. Each
//! participant has two peer connections:
//!
//! - the **publisher** connection carries media from the client to the server. The client offers
//!   ([`ClientMessage::Offer`]) and the server answers ([`ServerMessage::Answer`]).
//! - the **subscriber** connection carries media from the server to the client. The server offers
//!   ([`ServerMessage::Offer`]) whenever the set of tracks the client receives changes, and the
//!   client answers ([`ClientMessage::Answer`]).
//!
//! Since each side offers on its own connection, renegotiation never collides. ICE candidates
//! trickle both ways in [`ClientMessage::Candidate`] / [`ServerMessage::Candidate`], tagged with
//! the connection they belong to. `docs/protocol.md` has a full exchange with examples.

use serde::{Deserialize, Serialize};

/// The protocol version this server speaks. A join with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest text frame the server accepts on the WebSocket, in bytes. A subscriber answer
/// grows by about 600 bytes per track it receives: 64 KiB held only ~110 tracks, so a
/// 200-person audio room could not negotiate; 1 MiB holds well over 1,000.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Which of a participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Client to server media; the client offers.
    Publisher,
    /// Server to client media; the server offers.
    Subscriber,
}

/// Kind of a media track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    /// Opus audio.
    Audio,
    /// VP8, VP9, H264 or AV1 video.
    Video,
}

/// An ICE candidate, in the shape of the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` attribute line, without the `a=` prefix. Empty means end of candidates.
    pub candidate: String,
    /// The media section id the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The index of the media section the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    /// The ICE username fragment the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A STUN or TURN server the client should use, in the shape of the browser's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:` or `turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (time-limited when the server holds a TURN shared secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A published track as the room sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Server-assigned id, unique in the room. Subscribers see it as the track id of the
    /// `msid` in the subscriber offer; the stream id there is the publisher's participant id.
    pub id: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// The codec's MIME type, e.g. `video/VP8`.
    pub mime_type: String,
    /// The track id the publisher used in its own SDP (`msid`), so a publisher can tell which
    /// of its tracks this is.
    pub publisher_track_id: String,
    /// Whether the publisher has muted it.
    pub muted: bool,
    /// Simulcast layers (`rid`s), lowest quality first; empty or absent without simulcast.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
}

/// Which simulcast layer a subscriber wants of a track: the lowest, the middle or the highest
/// the publisher sends (a track with two layers maps `medium` to its higher one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// The lowest layer (e.g. 320x180).
    Low,
    /// The middle layer (e.g. 640x360).
    Medium,
    /// The highest layer (e.g. 1280x720); the default.
    #[default]
    High,
}

/// A participant as the room sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Server-assigned id, unique in the room.
    pub id: String,
    /// The identity from the participant's token.
    pub identity: String,
    /// Display name (from the token, or the identity).
    pub name: String,
    /// Tracks the participant publishes.
    pub tracks: Vec<TrackInfo>,
}

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message on a connection: who I am and what I may do.
    Join {
        /// Protocol version the client speaks; must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// A JWT minted by `chorus token` or the operator's backend.
        token: String,
        /// Subscribe to every other participant's tracks automatically (default true).
        #[serde(default = "default_true")]
        auto_subscribe: bool,
        /// The simulcast quality to receive of every track, until `track_settings` says
        /// otherwise (default high).
        #[serde(default)]
        quality: Quality,
    },
    /// First message on a new connection instead of `join`: take back a session whose
    /// WebSocket was lost, within the server's grace period (`resumed` or `resume_failed`).
    Resume {
        /// Protocol version the client speaks; must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// A valid access token for the same identity and room (the one joined with, if it
        /// has not expired, or a fresh one).
        token: String,
        /// The participant id `joined` gave.
        participant_id: String,
        /// The resume token of the last `joined` or `resumed`; each works once.
        resume_token: String,
    },
    /// SDP offer for the publisher connection.
    Offer {
        /// The SDP text.
        sdp: String,
    },
    /// SDP answer for the subscriber connection.
    Answer {
        /// The SDP text.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The connection the candidate belongs to.
        target: Target,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// Start receiving these tracks.
    Subscribe {
        /// Track ids from [`TrackInfo::id`].
        track_ids: Vec<String>,
    },
    /// Stop receiving these tracks.
    Unsubscribe {
        /// Track ids from [`TrackInfo::id`].
        track_ids: Vec<String>,
    },
    /// Choose the simulcast layer I receive of these tracks. The server switches on the
    /// layer's next keyframe (requesting one). Applies to tracks subscribed later as well.
    TrackSettings {
        /// Track ids from [`TrackInfo::id`].
        track_ids: Vec<String>,
        /// The quality wanted.
        quality: Quality,
    },
    /// Mute or unmute one of my published tracks.
    Mute {
        /// Track id from [`TrackInfo::id`].
        track_id: String,
        /// New state.
        muted: bool,
    },
    /// Leave the room; the server closes the connection.
    Leave {},
    /// Keep-alive; the server answers with [`ServerMessage::Pong`].
    Ping {
        /// Echoed back.
        #[serde(default)]
        timestamp: u64,
    },
    /// A fresh token for the same identity, room and grants: the session then ends at its
    /// `exp` instead of the old one's. No answer on success; `invalid_token` or
    /// `permission_denied` (and the old expiry stands) otherwise.
    RefreshToken {
        /// The new token.
        token: String,
    },
}

fn default_true() -> bool {
    true
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The join succeeded.
    Joined {
        /// Protocol version the server speaks.
        version: u32,
        /// The room's name.
        room: String,
        /// My participant.
        participant: ParticipantInfo,
        /// Everyone else already in the room, with their tracks.
        participants: Vec<ParticipantInfo>,
        /// STUN/TURN servers to put in both peer connections' configuration.
        ice_servers: Vec<IceServer>,
        /// The secret that lets a new WebSocket take this session back (`resume`) if this one
        /// is lost. Empty when the server keeps no session after a lost WebSocket.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        resume_token: String,
    },
    /// The session was resumed on this WebSocket: the same participant, its tracks and
    /// subscriptions. A subscriber offer with fresh ICE credentials follows (an ICE restart);
    /// a publishing client restarts ICE on its publisher connection (an offer with new
    /// credentials).
    Resumed {
        /// Protocol version the server speaks.
        version: u32,
        /// The room's name.
        room: String,
        /// My participant, as the room sees it now.
        participant: ParticipantInfo,
        /// Everyone else in the room now, with their tracks.
        participants: Vec<ParticipantInfo>,
        /// STUN/TURN servers (fresh TURN credentials).
        ice_servers: Vec<IceServer>,
        /// The next resume token (the one just used no longer works).
        resume_token: String,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone left; their tracks are gone.
    ParticipantLeft {
        /// Their id.
        participant_id: String,
    },
    /// A participant (possibly me) published a track.
    TrackPublished {
        /// Publisher's participant id.
        participant_id: String,
        /// The track.
        track: TrackInfo,
    },
    /// A track was unpublished.
    TrackUnpublished {
        /// Publisher's participant id.
        participant_id: String,
        /// The track's id.
        track_id: String,
    },
    /// A track was muted or unmuted.
    TrackMuted {
        /// Publisher's participant id.
        participant_id: String,
        /// The track's id.
        track_id: String,
        /// New state.
        muted: bool,
    },
    /// SDP offer for the subscriber connection.
    Offer {
        /// The SDP text.
        sdp: String,
    },
    /// SDP answer for the publisher connection.
    Answer {
        /// The SDP text.
        sdp: String,
    },
    /// A trickled ICE candidate from the server.
    Candidate {
        /// The connection the candidate belongs to.
        target: Target,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// Answer to [`ClientMessage::Ping`].
    Pong {
        /// Echo of the ping's timestamp.
        timestamp: u64,
    },
    /// Something went wrong. Fatal errors are followed by the server closing the socket.
    Error {
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

/// Stable error codes sent in [`ServerMessage::Error`] and used as the `code` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message was not valid JSON or not a known message.
    BadMessage,
    /// The frame exceeded [`MAX_MESSAGE_BYTES`].
    MessageTooLarge,
    /// The protocol version is not supported.
    UnsupportedVersion,
    /// The token is missing, malformed, badly signed or expired.
    InvalidToken,
    /// The token does not grant what was asked.
    PermissionDenied,
    /// The room has reached its participant limit, or the server its room limit.
    RoomFull,
    /// The SDP could not be parsed or applied.
    InvalidSdp,
    /// A message arrived in the wrong state (e.g. anything before `join`).
    InvalidState,
    /// The named track does not exist.
    UnknownTrack,
    /// The server failed internally.
    Internal,
    /// The session's token expired (and was not refreshed): the server closes the socket.
    TokenExpired,
    /// The connection sent more messages than its rate allows: the server closes the socket.
    RateLimited,
    /// Nothing (not even a pong) was received for the idle timeout: the server closes the socket.
    IdleTimeout,
    /// The server's connection limit (overall or for the client's address) is reached.
    TooManyConnections,
    /// A per-participant limit (media sections per offer, candidates, subscriptions) is reached;
    /// the request was not applied.
    LimitExceeded,
    /// `resume` found no session to take back: unknown participant, wrong or already used
    /// resume token, another identity or room, or the grace period is over. The client joins
    /// afresh (`join`).
    ResumeFailed,
}

impl ErrorCode {
    /// The code as it appears on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMessage => "bad_message",
            Self::MessageTooLarge => "message_too_large",
            Self::UnsupportedVersion => "unsupported_version",
            Self::InvalidToken => "invalid_token",
            Self::PermissionDenied => "permission_denied",
            Self::RoomFull => "room_full",
            Self::InvalidSdp => "invalid_sdp",
            Self::InvalidState => "invalid_state",
            Self::UnknownTrack => "unknown_track",
            Self::Internal => "internal",
            Self::TokenExpired => "token_expired",
            Self::RateLimited => "rate_limited",
            Self::IdleTimeout => "idle_timeout",
            Self::TooManyConnections => "too_many_connections",
            Self::LimitExceeded => "limit_exceeded",
            Self::ResumeFailed => "resume_failed",
        }
    }
}

impl ClientMessage {
    /// The message's `type`, as used in metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Resume { .. } => "resume",
            Self::Offer { .. } => "offer",
            Self::Answer { .. } => "answer",
            Self::Candidate { .. } => "candidate",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::TrackSettings { .. } => "track_settings",
            Self::Mute { .. } => "mute",
            Self::Leave {} => "leave",
            Self::Ping { .. } => "ping",
            Self::RefreshToken { .. } => "refresh_token",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_round_trip_and_match_the_documented_json() {
        let cases: Vec<(&str, ClientMessage)> = vec![
            (
                r#"{"type":"join","version":1,"token":"t","auto_subscribe":false,"quality":"low"}"#,
                ClientMessage::Join {
                    version: 1,
                    token: "t".into(),
                    auto_subscribe: false,
                    quality: Quality::Low,
                },
            ),
            (
                r#"{"type":"track_settings","track_ids":["TR_v"],"quality":"medium"}"#,
                ClientMessage::TrackSettings {
                    track_ids: vec!["TR_v".into()],
                    quality: Quality::Medium,
                },
            ),
            (
                r#"{"type":"offer","sdp":"v=0"}"#,
                ClientMessage::Offer { sdp: "v=0".into() },
            ),
            (
                r#"{"type":"candidate","target":"subscriber","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
                ClientMessage::Candidate {
                    target: Target::Subscriber,
                    candidate: IceCandidate {
                        candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                        sdp_mid: Some("0".into()),
                        sdp_m_line_index: Some(0),
                        username_fragment: None,
                    },
                },
            ),
            (
                r#"{"type":"subscribe","track_ids":["TR_a"]}"#,
                ClientMessage::Subscribe {
                    track_ids: vec!["TR_a".into()],
                },
            ),
            (
                r#"{"type":"mute","track_id":"TR_a","muted":true}"#,
                ClientMessage::Mute {
                    track_id: "TR_a".into(),
                    muted: true,
                },
            ),
            (r#"{"type":"leave"}"#, ClientMessage::Leave {}),
            (
                r#"{"type":"ping","timestamp":5}"#,
                ClientMessage::Ping { timestamp: 5 },
            ),
            (
                r#"{"type":"resume","version":1,"token":"t","participant_id":"PA_1","resume_token":"r"}"#,
                ClientMessage::Resume {
                    version: 1,
                    token: "t".into(),
                    participant_id: "PA_1".into(),
                    resume_token: "r".into(),
                },
            ),
            (
                r#"{"type":"refresh_token","token":"t2"}"#,
                ClientMessage::RefreshToken { token: "t2".into() },
            ),
        ];
        for (json, msg) in cases {
            let parsed: ClientMessage = serde_json::from_str(json).expect(json);
            assert_eq!(parsed, msg, "{json}");
            let back: ClientMessage =
                serde_json::from_str(&serde_json::to_string(&msg).expect("serializes"))
                    .expect("round trip");
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn join_defaults_to_auto_subscribe() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"join","version":1,"token":"x"}"#).expect("parses");
        assert_eq!(
            m,
            ClientMessage::Join {
                version: 1,
                token: "x".into(),
                auto_subscribe: true,
                quality: Quality::High,
            }
        );
    }

    #[test]
    fn malformed_messages_are_rejected() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"type":"nope"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"offer","sdp":1}"#,
            r#"{"type":"leave","extra":1}"#,
            r#"{"sdp":"v=0"}"#,
        ] {
            assert!(
                serde_json::from_str::<ClientMessage>(bad).is_err(),
                "{bad} should fail"
            );
        }
    }

    #[test]
    fn server_errors_serialize_with_snake_case_codes() {
        let m = ServerMessage::Error {
            code: ErrorCode::RoomFull,
            message: "full".into(),
        };
        assert_eq!(
            serde_json::to_string(&m).expect("serializes"),
            r#"{"type":"error","code":"room_full","message":"full"}"#
        );
        assert_eq!(ErrorCode::RoomFull.as_str(), "room_full");
        // Every code's wire name is its metric label.
        for code in [
            ErrorCode::TokenExpired,
            ErrorCode::RateLimited,
            ErrorCode::IdleTimeout,
            ErrorCode::TooManyConnections,
            ErrorCode::LimitExceeded,
            ErrorCode::ResumeFailed,
        ] {
            let json = serde_json::to_string(&code).expect("serializes");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
