//! The [`Client`]: a participant in a room over WebSocket signaling. It joins, then runs its
//! publisher and subscriber connections; the parts live in the modules below.
//!
//! - [`options`]: [`ClientOptions`]; [`error`]: [`ClientError`].
//! - [`signaling`]: the WebSocket (`join`, the writer, keep-alive, the candidate gate);
//!   [`dispatch`]: applies server messages to the connections and the room view;
//!   [`reconnect`]: a lost WebSocket's backoff, `resume` (with ICE restarts) or rejoin.
//! - [`connection`]: building the async peer connections and the publisher/subscriber
//!   connection whichever way it runs; [`engine`]: the [`SharedEngine`] and its lean
//!   endpoints ([`receiver`], [`publisher`], [`transport`]).
//! - [`publishing`]: local tracks and their send loops; [`accounting`]: received-track
//!   accounting; [`shared`]: the state all of them share.
//! - [`whip`]: the same connections over WHIP/WHEP instead of the WebSocket.

mod accounting;
mod connection;
mod dispatch;
pub mod engine;
mod error;
mod options;
mod publisher;
mod publishing;
mod receiver;
mod reconnect;
mod sdp;
mod shared;
mod signaling;
mod transport;
pub mod whip;

use crate::media::{LocalTrack, SentTrackStats};
use crate::stats::{OfferedTrack, ReceivedTrackStats};
use chorus_signal::protocol::{
    ClientMessage, IceServer, ParticipantInfo, Quality, ServerMessage, Target, PROTOCOL_VERSION,
};
use connection::{
    build_pc, default_udp_addr, engine_bind_addr, Handler, PublisherConn, SubscriberConn,
    LEAVE_TIMEOUT,
};
use dispatch::SignalingContext;
use publishing::{local_tracks, open_publisher, video_to_publish};
use reconnect::{run_signaling, Notice, ResumeContext};
pub use reconnect::{ReconnectEvent, ReconnectPolicy};
use shared::lock;
use signaling::{unix_millis, write_signaling};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use webrtc::peer_connection::{MediaEngine, RTCIceServer, RTCPeerConnectionState};

pub use engine::SharedEngine;
pub use error::ClientError;
pub use options::ClientOptions;
use shared::Shared;
pub use shared::{ConnectionStates, RtcpSentStats};
use signaling::Outgoing;

/// A participant in a Chorus room.
///
/// Dropping the client aborts its tasks and closes its peer connections without telling the
/// server; [`leave`](Self::leave) says goodbye first.
pub struct Client {
    room: String,
    participant: ParticipantInfo,
    ice_servers: Vec<IceServer>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<ServerMessage>,
    publisher: Arc<PublisherConn>,
    subscriber: Arc<SubscriberConn>,
    local_tracks: Vec<Arc<LocalTrack>>,
    /// What the signaling task reports about reconnecting.
    notices: mpsc::UnboundedReceiver<Notice>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("room", &self.room)
            .field("participant_id", &self.participant.id)
            .field("states", &*self.shared.states.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects, joins, and starts publishing.
    ///
    /// Returns once the server has sent `joined` and the publisher offer has been sent;
    /// media flows as soon as the publisher connection is up.
    pub async fn join(opts: ClientOptions) -> Result<Client, ClientError> {
        let url = url::Url::parse(&opts.url)?;
        let video = video_to_publish(&opts)?;

        let (sink, stream, joined) = signaling::join(
            &opts.url,
            ClientMessage::Join {
                version: PROTOCOL_VERSION,
                token: opts.token.clone(),
                auto_subscribe: opts.auto_subscribe,
                quality: opts.quality,
            },
            opts.join_timeout,
        )
        .await?;
        let signaling::Joined {
            room,
            participant,
            participants,
            ice_servers,
            resume_token,
        } = joined;

        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut room_map = BTreeMap::new();
        for p in participants.iter().chain(std::iter::once(&participant)) {
            room_map.insert(p.id.clone(), p.clone());
        }
        let shared = Shared::new(out_tx, room_map, opts.decode_sample);

        let udp_addr = opts
            .udp_addr
            .clone()
            .unwrap_or_else(|| default_udp_addr(&url));
        let rtc_ice_servers: Vec<RTCIceServer> = ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();

        let subscriber = Arc::new(match &opts.engine {
            Some(engine) => {
                let bind = engine_bind_addr(&url, opts.udp_addr.as_deref()).await?;
                SubscriberConn::Engine(
                    engine
                        .open(Arc::clone(&shared), bind, opts.impairment)
                        .await?,
                )
            }
            None => {
                let mut sub_engine = MediaEngine::default();
                sub_engine.register_default_codecs()?;
                SubscriberConn::Own(
                    build_pc(
                        sub_engine,
                        &rtc_ice_servers,
                        &udp_addr,
                        Handler {
                            target: Target::Subscriber,
                            shared: Arc::clone(&shared),
                        },
                        Arc::clone(&shared.rtcp_sent),
                        opts.impairment,
                    )
                    .await?,
                )
            }
        });

        // Local tracks; the msid stream id is our participant id, like a browser would pick
        // any id, the server maps it via `publisher_track_id`.
        let local_tracks = local_tracks(&opts, video.as_ref());
        let (publisher, pending) = open_publisher(
            &opts,
            &url,
            &rtc_ice_servers,
            &udp_addr,
            video,
            &local_tracks,
            &participant.id,
            &shared,
        )
        .await?;
        let publisher = Arc::new(publisher);

        let (sinks_tx, sinks_rx) = mpsc::unbounded_channel();
        let (notices_tx, notices) = mpsc::unbounded_channel();
        let keepalive = opts
            .reconnect
            .map_or(signaling::KEEPALIVE_INTERVAL, |p| {
                (p.silence_timeout / 3).min(signaling::KEEPALIVE_INTERVAL)
            })
            .max(Duration::from_millis(100));
        shared.spawn(write_signaling(sink, out_rx, sinks_rx, keepalive));
        let publishing = !local_tracks.is_empty();
        shared.spawn(run_signaling(
            stream,
            SignalingContext {
                shared: Arc::clone(&shared),
                publisher: Arc::clone(&publisher),
                subscriber: Arc::clone(&subscriber),
                events: opts.events.then_some(events_tx),
                pending_media: pending,
                pending_publisher: Vec::new(),
                pending_subscriber: Vec::new(),
            },
            ResumeContext {
                opts: opts.clone(),
                participant_id: participant.id.clone(),
                resume_token,
                sinks: sinks_tx,
                notices: notices_tx,
            },
        ));

        if publishing {
            let sdp = publisher.offer().await?;
            shared.send(ClientMessage::Offer { sdp })?;
            shared.publisher_gate.open(&shared.out);
        }

        Ok(Client {
            room,
            participant,
            ice_servers,
            shared,
            events: events_rx,
            publisher,
            subscriber,
            local_tracks,
            notices,
        })
    }

    /// The next thing that happened to the signaling connection (a lost WebSocket, a resume,
    /// a rejoin, giving up); waits for one. After [`ReconnectEvent::Rejoined`] this handle is
    /// the new participant (the old one's connections are closed): a client that may rejoin
    /// keeps calling this. `None` when the client's signaling has ended.
    pub async fn next_reconnect_event(&mut self) -> Option<ReconnectEvent> {
        match self.notices.recv().await? {
            Notice::Event(e) => Some(e),
            Notice::Rejoined(new) => {
                // The old participant's tasks stop and its connections close as it drops.
                drop(std::mem::replace(self, *new));
                Some(ReconnectEvent::Rejoined)
            }
        }
    }

    /// Reads reconnect events until one matches `pred` (see
    /// [`next_reconnect_event`](Self::next_reconnect_event)).
    pub async fn wait_reconnect_event<F>(
        &mut self,
        timeout: Duration,
        mut pred: F,
    ) -> Result<ReconnectEvent, ClientError>
    where
        F: FnMut(&ReconnectEvent) -> bool,
    {
        tokio::time::timeout(timeout, async {
            while let Some(ev) = self.next_reconnect_event().await {
                if pred(&ev) {
                    return Ok(ev);
                }
            }
            Err(ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout("a reconnect event"))?
    }

    /// My participant id.
    pub fn participant_id(&self) -> &str {
        &self.participant.id
    }

    /// The room's name.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// My participant as of `joined` (tracks published later appear in
    /// [`local_participant`](Self::local_participant)).
    pub fn joined_participant(&self) -> &ParticipantInfo {
        &self.participant
    }

    /// The ICE servers the server handed out.
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    /// My participant as the room currently sees it, tracks included.
    pub fn local_participant(&self) -> ParticipantInfo {
        lock(&self.shared.room)
            .get(&self.participant.id)
            .cloned()
            .unwrap_or_else(|| self.participant.clone())
    }

    /// Everyone else in the room, kept current from the room events.
    pub fn participants(&self) -> Vec<ParticipantInfo> {
        lock(&self.shared.room)
            .values()
            .filter(|p| p.id != self.participant.id)
            .cloned()
            .collect()
    }

    /// The next server message, in order. Every message is delivered except ICE candidates
    /// and pongs (the client handles those). SDP offers and answers are delivered after the
    /// client has applied them. `None` once the signaling connection is closed and drained.
    ///
    /// Messages queue without limit until read; a client that never reads them turns
    /// [`ClientOptions::events`] off, and then this returns `None` at once.
    pub async fn next_event(&mut self) -> Option<ServerMessage> {
        self.events.recv().await
    }

    /// Reads events until one matches `pred`, discarding the others.
    pub async fn wait_event<F>(
        &mut self,
        timeout: Duration,
        mut pred: F,
    ) -> Result<ServerMessage, ClientError>
    where
        F: FnMut(&ServerMessage) -> bool,
    {
        tokio::time::timeout(timeout, async {
            while let Some(ev) = self.events.recv().await {
                if pred(&ev) {
                    return Ok(ev);
                }
            }
            Err(ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout("a matching event"))?
    }

    /// Both peer connections' current state.
    pub fn connection_states(&self) -> ConnectionStates {
        *self.shared.states.borrow()
    }

    /// Waits until the publisher connection is connected (when publishing) and the
    /// subscriber connection is connected (once the server has offered it).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let publishing = !self.local_tracks.is_empty();
        let mut rx = self.shared.states.subscribe();
        let bad = |s: RTCPeerConnectionState| {
            matches!(
                s,
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            )
        };
        let states = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| {
                bad(s.publisher)
                    || bad(s.subscriber)
                    || ((!publishing || s.publisher == RTCPeerConnectionState::Connected)
                        && (s.subscriber_offers == 0
                            || s.subscriber == RTCPeerConnectionState::Connected))
            })
            .await
            .map(|s| *s)
            .map_err(|_| ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout("the peer connections to connect"))??;
        if bad(states.publisher) {
            return Err(ClientError::ConnectionFailed(
                Target::Publisher,
                states.publisher,
            ));
        }
        if bad(states.subscriber) {
            return Err(ClientError::ConnectionFailed(
                Target::Subscriber,
                states.subscriber,
            ));
        }
        Ok(())
    }

    /// Polls `pred` every 20 ms until it holds.
    pub async fn wait_until<F>(&self, timeout: Duration, mut pred: F) -> Result<(), ClientError>
    where
        F: FnMut(&Client) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(self) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout("a condition"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Per remote track, what has been received so far, in the order tracks appeared.
    pub fn received(&self) -> Vec<ReceivedTrackStats> {
        self.shared.received()
    }

    /// The tracks the latest subscriber offer carries in active media sections.
    pub fn offered_tracks(&self) -> Vec<OfferedTrack> {
        lock(&self.shared.offered).clone()
    }

    /// RTCP feedback sent so far (NACKs, PLIs, FIRs).
    pub fn rtcp_sent(&self) -> RtcpSentStats {
        self.shared.rtcp_sent()
    }

    /// Per published track, what has been sent so far.
    pub fn sent(&self) -> Vec<SentTrackStats> {
        self.local_tracks.iter().map(|t| t.stats()).collect()
    }

    /// Asks to receive these tracks.
    pub fn subscribe<I, S>(&self, track_ids: I) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let track_ids = track_ids.into_iter().map(Into::into).collect();
        self.shared.send(ClientMessage::Subscribe { track_ids })
    }

    /// Asks to stop receiving these tracks.
    pub fn unsubscribe<I, S>(&self, track_ids: I) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let track_ids = track_ids.into_iter().map(Into::into).collect();
        self.shared.send(ClientMessage::Unsubscribe { track_ids })
    }

    /// Chooses the simulcast layer received of these tracks (server track ids); the server
    /// switches on the layer's next keyframe.
    pub fn set_quality<I, S>(&self, track_ids: I, quality: Quality) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let track_ids = track_ids.into_iter().map(Into::into).collect();
        self.shared
            .send(ClientMessage::TrackSettings { track_ids, quality })
    }

    /// Stops (`false`) or resumes sending one simulcast encoding of my video, by `rid`, as a
    /// browser's `RTCRtpSender.setParameters` with `encodings[i].active` does (e.g. when its
    /// uplink cannot carry the top layer). Returns whether such an encoding exists.
    pub fn set_layer_active(&self, rid: &str, active: bool) -> bool {
        let mut found = false;
        for l in self
            .local_tracks
            .iter()
            .flat_map(|t| &t.layers)
            .filter(|l| !l.rid.is_empty() && l.rid == rid)
        {
            l.counters
                .paused
                .store(!active, std::sync::atomic::Ordering::Relaxed);
            found = true;
        }
        found
    }

    /// Mutes or unmutes one of my published tracks (server track id). When the room already
    /// knows which local track that is, sending media on it pauses while muted (audio keeps a
    /// silence frame every 400 ms, as Opus DTX does; the server forwards none of it).
    pub fn mute(&self, track_id: &str, muted: bool) -> Result<(), ClientError> {
        let local_id = self
            .local_participant()
            .tracks
            .into_iter()
            .find(|t| t.id == track_id)
            .map(|t| t.publisher_track_id);
        if let Some(local_id) = local_id {
            for t in self.local_tracks.iter().filter(|t| t.track_id == local_id) {
                t.set_paused(muted);
            }
        }
        self.shared.send(ClientMessage::Mute {
            track_id: track_id.to_owned(),
            muted,
        })
    }

    /// Sends a keep-alive ping (answered with a pong the client swallows).
    pub fn ping(&self) -> Result<(), ClientError> {
        self.shared.send(ClientMessage::Ping {
            timestamp: unix_millis(),
        })
    }

    /// Leaves the room: sends `leave`, closes the WebSocket and both peer connections.
    pub async fn leave(self) {
        let _ = self.shared.send(ClientMessage::Leave {});
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.shared.out.send(Outgoing::Close(ack_tx)).is_ok() {
            let _ = tokio::time::timeout(LEAVE_TIMEOUT, ack_rx).await;
        }
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
            self.publisher.close().await;
            self.subscriber.close().await;
        })
        .await;
        // Drop aborts the tasks.
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.abort_tasks();
        // Closing is async; do it in the background when a runtime is around. Closing an
        // already closed connection is harmless.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (publisher, subscriber) =
                (Arc::clone(&self.publisher), Arc::clone(&self.subscriber));
            rt.spawn(async move {
                publisher.close().await;
                subscriber.close().await;
            });
        }
    }
}
