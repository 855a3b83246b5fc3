//! The handles the signaling layer holds: [`Sfu`] for the server, [`Session`] per participant.

use std::net::SocketAddr;

use tokio::sync::{mpsc, oneshot};

use crate::command::Command;
use crate::engine::Engine;
use crate::types::{CandidateInit, EngineStats, JoinRequest, ParticipantDesc, PeerRole, RoomEvent};
use crate::{MediaConfig, Metrics, SfuError};

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

    /// Every room with its participants, sorted by room name (for the admin API).
    pub async fn rooms(&self) -> Result<Vec<(String, Vec<ParticipantDesc>)>, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::ListRooms { reply })
            .await
            .map_err(|_| SfuError::EngineStopped)?;
        rx.await.map_err(|_| SfuError::EngineStopped)
    }

    /// Removes the participant with `identity` from `room`; it hears
    /// [`RoomEvent::Closed`] with `reason`. [`SfuError::NotFound`] if there is none.
    pub async fn remove_participant(
        &self,
        room: &str,
        identity: &str,
        reason: &str,
    ) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::RemoveParticipant {
                room: room.to_owned(),
                identity: identity.to_owned(),
                reason: reason.to_owned(),
                reply,
            })
            .await
            .map_err(|_| SfuError::EngineStopped)?;
        rx.await.map_err(|_| SfuError::EngineStopped)?
    }

    /// Removes everyone from `room`, which closes it; returns how many were removed.
    /// [`SfuError::NotFound`] for an unknown room.
    pub async fn close_room(&self, room: &str, reason: &str) -> Result<usize, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::CloseRoom {
                room: room.to_owned(),
                reason: reason.to_owned(),
                reply,
            })
            .await
            .map_err(|_| SfuError::EngineStopped)?;
        rx.await.map_err(|_| SfuError::EngineStopped)?
    }
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
