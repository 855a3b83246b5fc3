//! The handles the signaling layer holds: [`Sfu`] for the server, [`Session`] per participant.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::command::Command;
use crate::engine::{self, Engine};
use crate::placement::Placement;
use crate::types::{CandidateInit, EngineStats, JoinRequest, ParticipantDesc, PeerRole, RoomEvent};
use crate::{MediaConfig, Metrics, SfuError};

/// Handle to the media engines. Cheap to clone.
#[derive(Clone)]
pub struct Sfu {
    engines: Arc<[EngineHandle]>,
    placement: Arc<Placement>,
    /// Becomes true when an engine dies of a panic the core could not contain.
    failed: watch::Receiver<bool>,
}

/// How to reach one engine.
struct EngineHandle {
    commands: mpsc::Sender<Command>,
    media_addr: SocketAddr,
}

impl Sfu {
    /// Binds the media sockets and starts the engines (`media.engines`, default one per
    /// core), each on a thread of its own.
    pub async fn start(config: MediaConfig, metrics: Metrics) -> Result<Sfu, SfuError> {
        config.validate().map_err(SfuError::Bind)?;
        let count = config.engine_count();
        let sockets = engine::bind_sockets(&config, count)?;
        let (failed_tx, failed) = watch::channel(false);
        let failed_tx = Arc::new(failed_tx);
        let mut engines = Vec::with_capacity(count);
        for (index, bound) in sockets.into_iter().enumerate() {
            let (commands, rx) = mpsc::channel(1024);
            let media_addr = Engine::spawn(
                index,
                bound,
                config.clone(),
                metrics.clone(),
                rx,
                failed_tx.clone(),
            )?;
            engines.push(EngineHandle {
                commands,
                media_addr,
            });
        }
        Ok(Sfu {
            engines: engines.into(),
            placement: Arc::new(Placement::new(count, config.max_rooms, metrics)),
            failed,
        })
    }

    /// Resolves when a media engine has died (a panic its core could not contain): the
    /// server should stop rather than serve signaling with a broken media plane.
    pub async fn failed(&self) {
        let mut failed = self.failed.clone();
        let _ = failed.wait_for(|f| *f).await;
    }

    /// Makes engine `index` die of a panic outside its core (fault injection for tests).
    #[cfg(feature = "fault-injection")]
    pub async fn inject_engine_panic(&self, index: usize) {
        let _ = self.engines[index]
            .commands
            .send(Command::PanicEngine)
            .await;
    }

    /// Whether a media engine has died.
    pub fn is_failed(&self) -> bool {
        *self.failed.borrow()
    }

    /// The address engine 0's media socket is bound to.
    pub fn media_addr(&self) -> SocketAddr {
        self.engines[0].media_addr
    }

    /// Every engine's media socket address, by engine index.
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.engines.iter().map(|e| e.media_addr).collect()
    }

    /// Joins a room (on the engine the room lives on, or the least-loaded one for a new room).
    pub async fn join(&self, request: JoinRequest) -> Result<Session, SfuError> {
        let room = request.room.clone();
        let index = self.placement.enter(&room)?;
        // Counted from here: undone when this guard drops, with the session or on failure.
        let placed = Placed {
            placement: self.placement.clone(),
            room,
        };
        let commands = self.engines[index].commands.clone();
        let (reply, rx) = oneshot::channel();
        commands
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
                commands,
            },
            _placed: placed,
        })
    }

    /// Counts of rooms and participants, summed over the engines.
    pub async fn stats(&self) -> Result<EngineStats, SfuError> {
        let mut total = EngineStats::default();
        for e in self.engines.iter() {
            let (reply, rx) = oneshot::channel();
            e.commands
                .send(Command::Stats { reply })
                .await
                .map_err(|_| SfuError::EngineStopped)?;
            let s = rx.await.map_err(|_| SfuError::EngineStopped)?;
            total.rooms += s.rooms;
            total.participants += s.participants;
            total.peers += s.peers;
            total.tracks += s.tracks;
        }
        Ok(total)
    }

    /// Every room with its participants, sorted by room name (for the admin API).
    pub async fn rooms(&self) -> Result<Vec<(String, Vec<ParticipantDesc>)>, SfuError> {
        let mut all = Vec::new();
        for e in self.engines.iter() {
            let (reply, rx) = oneshot::channel();
            e.commands
                .send(Command::ListRooms { reply })
                .await
                .map_err(|_| SfuError::EngineStopped)?;
            all.extend(rx.await.map_err(|_| SfuError::EngineStopped)?);
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// The command channel of the engine `room` lives on; [`SfuError::NotFound`] for a room
    /// with no sessions.
    fn engine_of(&self, room: &str) -> Result<&mpsc::Sender<Command>, SfuError> {
        let index = self
            .placement
            .engine_of(room)
            .ok_or_else(|| SfuError::NotFound(format!("no room {room:?}")))?;
        Ok(&self.engines[index].commands)
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
        self.engine_of(room)?
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
        self.engine_of(room)?
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

/// A session's place in its room's engine, given back when the session goes.
struct Placed {
    placement: Arc<Placement>,
    room: String,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.placement.leave(&self.room);
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
    /// Counts this session on its room's engine.
    _placed: Placed,
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

    /// After the client's signaling came back (a resumed WebSocket): restarts ICE on the
    /// subscriber connection (a subscriber offer with fresh ICE credentials follows as a room
    /// event, replacing any offer the client may have missed) and returns the room as it is
    /// now: this participant, then everyone else.
    pub async fn resume(&self) -> Result<(ParticipantDesc, Vec<ParticipantDesc>), SfuError> {
        self.call(|participant, reply| Command::Resume { participant, reply })
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
