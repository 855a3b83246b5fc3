//! The handles the signaling layer holds: [`Sfu`] for the server, [`Session`] per participant.

use std::net::SocketAddr;

use tokio::sync::{mpsc, oneshot};

use crate::core::Command;
use crate::engine::Engine;
use crate::{MediaConfig, Metrics, SfuError};

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
    /// A new offer for the subscriber connection; answer with [`SessionHandle::subscriber_answer`].
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

/// Handle to the media engine. Cheap to clone.
#[derive(Clone)]
pub struct Sfu {
    commands: mpsc::Sender<Command>,
    media_addr: SocketAddr,
}

impl Sfu {
    /// Binds the media socket and starts the engine task.
    pub async fn start(config: MediaConfig, metrics: Metrics) -> Result<Sfu, SfuError> {
        let (commands, rx) = mpsc::channel(1024);
        let engine = Engine::bind(config, metrics).await?;
        let media_addr = engine.local_addr();
        tokio::spawn(engine.run(rx));
        Ok(Sfu {
            commands,
            media_addr,
        })
    }

    /// The address the media socket is bound to.
    pub fn media_addr(&self) -> SocketAddr {
        self.media_addr
    }

    /// Joins a room.
    pub async fn join(&self, request: JoinRequest) -> Result<Session, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Join { request, reply })
            .await
            .map_err(|_| SfuError::EngineStopped)?;
        let joined = rx.await.map_err(|_| SfuError::EngineStopped)??;
        Ok(Session {
            me: joined.me,
            others: joined.others,
            events: joined.events,
            handle: SessionHandle {
                key: joined.key,
                commands: self.commands.clone(),
            },
        })
    }

    /// Counts of rooms and participants, as the engine sees them.
    pub async fn stats(&self) -> Result<EngineStats, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Stats { reply })
            .await
            .map_err(|_| SfuError::EngineStopped)?;
        rx.await.map_err(|_| SfuError::EngineStopped)
    }
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

/// One participant's membership of a room. Dropping it leaves the room.
pub struct Session {
    /// This participant.
    pub me: ParticipantDesc,
    /// Everyone else in the room when it joined.
    pub others: Vec<ParticipantDesc>,
    /// Room events for this participant.
    pub events: mpsc::Receiver<RoomEvent>,
    /// Commands for this participant.
    pub handle: SessionHandle,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.handle.leave();
    }
}

/// Sends this participant's commands to the engine. Cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    key: u64,
    commands: mpsc::Sender<Command>,
}

impl SessionHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(u64, oneshot::Sender<Result<T, SfuError>>) -> Command,
    ) -> Result<T, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(self.key, reply))
            .await
            .map_err(|_| SfuError::EngineStopped)?;
        rx.await.map_err(|_| SfuError::EngineStopped)?
    }

    /// Applies the client's offer on the publisher connection and returns the answer.
    pub async fn publisher_offer(&self, sdp: String) -> Result<String, SfuError> {
        self.call(|participant, reply| Command::PublisherOffer {
            participant,
            sdp,
            reply,
        })
        .await
    }

    /// Applies the client's answer on the subscriber connection.
    pub async fn subscriber_answer(&self, sdp: String) -> Result<(), SfuError> {
        self.call(|participant, reply| Command::SubscriberAnswer {
            participant,
            sdp,
            reply,
        })
        .await
    }

    /// WHEP: applies a client offer on the subscriber connection, subscribing to the tracks of
    /// the participant with `identity` (or the room's most recent publisher), and returns the
    /// answer.
    pub async fn playback_offer(
        &self,
        sdp: String,
        identity: Option<String>,
    ) -> Result<String, SfuError> {
        self.call(|participant, reply| Command::PlaybackOffer {
            participant,
            sdp,
            identity,
            reply,
        })
        .await
    }

    /// Adds a trickled client candidate.
    pub async fn add_candidate(
        &self,
        role: PeerRole,
        candidate: CandidateInit,
    ) -> Result<(), SfuError> {
        self.call(|participant, reply| Command::Candidate {
            participant,
            role,
            candidate,
            reply,
        })
        .await
    }

    /// Subscribes to (`subscribe = true`) or unsubscribes from tracks.
    pub async fn set_subscribed(
        &self,
        track_ids: Vec<String>,
        subscribe: bool,
    ) -> Result<(), SfuError> {
        self.call(|participant, reply| Command::Subscribe {
            participant,
            track_ids,
            subscribe,
            reply,
        })
        .await
    }

    /// Sets the quality this participant receives of simulcast tracks (see
    /// [`crate::simulcast`]); takes effect on the wanted layer's next keyframe.
    pub async fn set_quality(
        &self,
        track_ids: Vec<String>,
        quality: crate::Quality,
    ) -> Result<(), SfuError> {
        self.call(|participant, reply| Command::SetQuality {
            participant,
            track_ids,
            quality,
            reply,
        })
        .await
    }

    /// Mutes or unmutes one of this participant's tracks.
    pub async fn mute(&self, track_id: String, muted: bool) -> Result<(), SfuError> {
        self.call(|participant, reply| Command::Mute {
            participant,
            track_id,
            muted,
            reply,
        })
        .await
    }

    /// Leaves the room (idempotent; also done when the [`Session`] drops).
    pub fn leave(&self) {
        if self
            .commands
            .try_send(Command::Leave {
                participant: self.key,
            })
            .is_err()
        {
            // Queue full or engine gone: leave from a task so the room is not leaked.
            let commands = self.commands.clone();
            let participant = self.key;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = commands.send(Command::Leave { participant }).await;
                });
            }
        }
    }
}
