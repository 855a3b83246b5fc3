//! The plain types the media plane and its callers share: who joins, with what grants, what a
//! room looks like and what a participant hears. A leaf module: it imports nothing else of the
//! crate but [`Quality`](crate::Quality), so every other module can use it.

/// A peer connection's key in the core.
pub type PeerKey = u64;
/// A participant's key in the core.
pub type ParticipantKey = u64;
/// A published track's key in the core.
pub type TrackKey = u64;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

impl TrackKind {
    /// `audio` or `video`, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
        }
    }
}

/// Which of a participant's peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// Client to server media.
    Publisher,
    /// Server to client media.
    Subscriber,
}

/// How a participant reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// WebSocket signaling: hears room events and renegotiates.
    WebSocket,
    /// A WHIP ingest session: publishes only, hears nothing.
    Whip,
    /// A WHEP playback session: subscribes only, hears nothing.
    Whep,
}

/// What a participant may do, from its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions {
    /// May publish media.
    pub publish: bool,
    /// May subscribe to others' media.
    pub subscribe: bool,
    /// May send data messages.
    pub publish_data: bool,
}

/// A request to join a room.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Room name; the room is created on first join.
    pub room: String,
    /// Identity from the token, unique in the room: a second join with the same identity
    /// replaces the first.
    pub identity: String,
    /// Display name.
    pub name: String,
    /// Grants.
    pub permissions: Permissions,
    /// Subscribe to every other participant's tracks automatically.
    pub auto_subscribe: bool,
    /// The simulcast quality received of tracks without a per-track setting.
    pub quality: crate::Quality,
    /// How the participant connects.
    pub origin: Origin,
}

/// A published track as the room sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackDesc {
    /// Server-assigned id.
    pub id: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Codec MIME type.
    pub mime_type: String,
    /// The track id in the publisher's SDP `msid`.
    pub publisher_track_id: String,
    /// Muted by the publisher.
    pub muted: bool,
    /// Simulcast layers (`rid`s), lowest quality first; empty without simulcast.
    pub layers: Vec<String>,
}

/// A participant as the room sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantDesc {
    /// Server-assigned id.
    pub id: String,
    /// Identity from the token.
    pub identity: String,
    /// Display name.
    pub name: String,
    /// Published tracks.
    pub tracks: Vec<TrackDesc>,
}

/// An ICE candidate in the browser's `RTCIceCandidateInit` shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateInit {
    /// The candidate line.
    pub candidate: String,
    /// Media section id.
    pub sdp_mid: Option<String>,
    /// Media section index.
    pub sdp_mline_index: Option<u16>,
    /// ICE ufrag.
    pub username_fragment: Option<String>,
}

/// What a participant hears from its room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// Someone joined.
    ParticipantJoined(ParticipantDesc),
    /// Someone left.
    ParticipantLeft {
        /// Their id.
        participant_id: String,
    },
    /// A track was published (possibly by this participant).
    TrackPublished {
        /// Publisher.
        participant_id: String,
        /// The track.
        track: TrackDesc,
    },
    /// A track was unpublished.
    TrackUnpublished {
        /// Publisher.
        participant_id: String,
        /// Its id.
        track_id: String,
    },
    /// A track was muted or unmuted.
    TrackMuted {
        /// Publisher.
        participant_id: String,
        /// Its id.
        track_id: String,
        /// New state.
        muted: bool,
    },
    /// A new offer for the subscriber connection; answer with [`crate::SessionHandle::subscriber_answer`].
    SubscriberOffer(String),
    /// A server ICE candidate.
    Candidate {
        /// The connection.
        role: PeerRole,
        /// The candidate.
        candidate: CandidateInit,
    },
    /// The participant was removed by the server (connection failed, replaced, shutdown).
    Closed {
        /// Why.
        reason: String,
    },
}

/// Engine counts, for health checks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Open rooms.
    pub rooms: usize,
    /// Participants.
    pub participants: usize,
    /// Peer connections.
    pub peers: usize,
    /// Published tracks.
    pub tracks: usize,
}
