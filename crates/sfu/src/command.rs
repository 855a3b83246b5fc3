//! The commands sessions send the engine, and their dispatch onto the [`Core`].
//!
//! Every request a [`crate::SessionHandle`] makes is one [`Command`] with a oneshot reply; the
//! engine applies it at the instant it gives ([`Core::handle_command`]) and answers.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::core::{Core, ParticipantKey};
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
    Stats {
        reply: oneshot::Sender<EngineStats>,
    },
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

impl Core {
    /// Applies one command from a session at `now`, then drains every peer it touched.
    pub(crate) fn handle_command(&mut self, now: Instant, command: Command) {
        self.apply_command(now, command);
        self.drain(now);
    }

    fn apply_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Join { request, reply } => {
                let _ = reply.send(self.join(now, request));
            }
            Command::PublisherOffer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.publisher_offer(now, participant, sdp));
            }
            Command::SubscriberAnswer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.subscriber_answer(now, participant, sdp));
            }
            Command::PlaybackOffer {
                participant,
                sdp,
                identity,
                reply,
            } => {
                let _ = reply.send(self.playback_offer(now, participant, sdp, identity));
            }
            Command::Candidate {
                participant,
                role,
                candidate,
                reply,
            } => {
                let _ = reply.send(self.add_candidate(participant, role, candidate));
            }
            Command::Subscribe {
                participant,
                track_ids,
                subscribe,
                reply,
            } => {
                let _ = reply.send(self.set_subscribed(now, participant, track_ids, subscribe));
            }
            Command::SetQuality {
                participant,
                track_ids,
                quality,
                reply,
            } => {
                let _ = reply.send(self.set_quality(now, participant, track_ids, quality));
            }
            Command::Mute {
                participant,
                track_id,
                muted,
                reply,
            } => {
                let _ = reply.send(self.mute(participant, track_id, muted));
            }
            Command::Leave { participant } => self.remove_participant(now, participant, "left"),
            Command::Stats { reply } => {
                let _ = reply.send(EngineStats {
                    rooms: self.rooms.len(),
                    participants: self.participants.len(),
                    peers: self.peers.len(),
                    tracks: self.tracks.len(),
                });
            }
        }
    }
}
