//! The commands sessions send the engine, and their dispatch onto the [`Core`].
//!
//! Every request a [`crate::SessionHandle`] makes is one [`Command`] with a oneshot reply; the
//! engine applies it at the instant it gives ([`Core::handle_command`]) and answers.

use tokio::sync::{mpsc, oneshot};

use crate::types::ParticipantKey;
use crate::types::{CandidateInit, EngineStats, JoinRequest, ParticipantDesc, PeerRole, RoomEvent};
use crate::{Quality, SfuError};

type Reply<T> = oneshot::Sender<Result<T, SfuError>>;

/// Requests from sessions to the engine.
pub(crate) enum Command {
    Join {
        request: JoinRequest,
        reply: Reply<Joined>,
    },
    PublisherOffer {
        participant: u64,
        sdp: String,
        reply: Reply<String>,
    },
    SubscriberAnswer {
        participant: u64,
        sdp: String,
        reply: Reply<()>,
    },
    PlaybackOffer {
        participant: u64,
        sdp: String,
        identity: Option<String>,
        reply: Reply<String>,
    },
    Candidate {
        participant: u64,
        role: PeerRole,
        candidate: CandidateInit,
        reply: Reply<()>,
    },
    Subscribe {
        participant: u64,
        track_ids: Vec<String>,
        subscribe: bool,
        reply: Reply<()>,
    },
    SetQuality {
        participant: u64,
        track_ids: Vec<String>,
        quality: Quality,
        reply: Reply<()>,
    },
    Mute {
        participant: u64,
        track_id: String,
        muted: bool,
        reply: Reply<()>,
    },
    Leave {
        participant: u64,
    },
    /// Resume: restarts ICE on the subscriber connection (a new offer with fresh
    /// credentials) and replies with the room as it is now (me, then everyone else).
    Resume {
        participant: u64,
        reply: Reply<(ParticipantDesc, Vec<ParticipantDesc>)>,
    },
    Stats {
        reply: oneshot::Sender<EngineStats>,
    },
    /// Admin: every room with its participants, sorted by room name.
    ListRooms {
        reply: oneshot::Sender<Vec<(String, Vec<ParticipantDesc>)>>,
    },
    /// Admin: removes the participant with `identity` from `room`.
    RemoveParticipant {
        room: String,
        identity: String,
        reason: String,
        reply: Reply<()>,
    },
    /// Admin: removes everyone from `room` (which then closes); replies how many.
    CloseRoom {
        room: String,
        reason: String,
        reply: Reply<usize>,
    },
    /// Panics while being handled (fault injection for tests).
    #[cfg(feature = "fault-injection")]
    Panic {
        participant: u64,
    },
    /// Panics in the engine itself, outside the core (fault injection for tests).
    #[cfg(feature = "fault-injection")]
    PanicEngine,
}

impl Command {
    /// The participant a command concerns, if one.
    pub(crate) fn participant(&self) -> Option<u64> {
        match self {
            Command::Join { .. }
            | Command::Stats { .. }
            | Command::ListRooms { .. }
            | Command::RemoveParticipant { .. }
            | Command::CloseRoom { .. } => None,
            #[cfg(feature = "fault-injection")]
            Command::PanicEngine => None,
            Command::PublisherOffer { participant, .. }
            | Command::SubscriberAnswer { participant, .. }
            | Command::PlaybackOffer { participant, .. }
            | Command::Candidate { participant, .. }
            | Command::Subscribe { participant, .. }
            | Command::SetQuality { participant, .. }
            | Command::Mute { participant, .. }
            | Command::Resume { participant, .. }
            | Command::Leave { participant } => Some(*participant),
            #[cfg(feature = "fault-injection")]
            Command::Panic { participant } => Some(*participant),
        }
    }
}

/// What a successful join returns.
pub struct Joined {
    /// The participant's key in the core.
    pub key: ParticipantKey,
    /// The participant as the room sees it.
    pub me: ParticipantDesc,
    /// Everyone else in the room.
    pub others: Vec<ParticipantDesc>,
    /// Room events for this participant.
    pub events: mpsc::Receiver<RoomEvent>,
}
