//! The signaling reader: applies every server message to the connections and the room view,
//! then hands it to [`Client::next_event`](super::Client::next_event).

use super::connection::{PublisherConn, SubscriberConn};
use super::error::ClientError;
use super::publishing::PendingMedia;
use super::shared::{lock, Shared};
use super::signaling::WsSource;
use crate::stats::offered_tracks;
use chorus_signal::protocol::{ClientMessage, ServerMessage, Target};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::peer_connection::RTCIceCandidateInit;

pub(super) struct SignalingContext {
    pub(super) shared: Arc<Shared>,
    pub(super) publisher: Arc<PublisherConn>,
    pub(super) subscriber: Arc<SubscriberConn>,
    /// Where server messages go; `None` when [`ClientOptions::events`] is off.
    pub(super) events: Option<mpsc::UnboundedSender<ServerMessage>>,
    pub(super) pending_media: Option<PendingMedia>,
    /// Remote candidates that arrived before the connection's remote description.
    pub(super) pending_publisher: Vec<RTCIceCandidateInit>,
    pub(super) pending_subscriber: Vec<RTCIceCandidateInit>,
}

impl SignalingContext {
    /// Reads and applies server messages until the WebSocket ends. True when it was lost
    /// (failed, ended without a close frame, or silent for `silence`); false when the server
    /// closed it.
    pub(super) async fn read_until_end(
        &mut self,
        stream: &mut WsSource,
        silence: Option<Duration>,
    ) -> bool {
        loop {
            let next = match silence {
                Some(limit) => match tokio::time::timeout(limit, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::debug!(?limit, "signaling silent, taking it as lost");
                        return true;
                    }
                },
                None => stream.next().await,
            };
            let Some(msg) = next else { break };
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(_)) => return false,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "signaling read failed");
                    return true;
                }
            };
            let msg = match serde_json::from_str::<ServerMessage>(text.as_str()) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable server message");
                    continue;
                }
            };
            if let Err(e) = self.handle(&msg).await {
                tracing::warn!(error = %e, "handling a server message failed");
            }
            self.deliver(msg);
        }
        true
    }

    /// Hands a server message to [`Client::next_event`](super::Client::next_event) (not
    /// candidates and pongs, which the client handles).
    pub(super) fn deliver(&self, msg: ServerMessage) {
        if let (Some(events), false) = (
            &self.events,
            matches!(
                msg,
                ServerMessage::Candidate { .. } | ServerMessage::Pong { .. }
            ),
        ) {
            let _ = events.send(msg);
        }
    }
}

impl SignalingContext {
    pub(super) async fn handle(&mut self, msg: &ServerMessage) -> Result<(), ClientError> {
        match msg {
            ServerMessage::Answer { sdp } => {
                self.publisher.apply_answer(sdp.clone()).await?;
                for c in std::mem::take(&mut self.pending_publisher) {
                    self.publisher.add_candidate(c).await;
                }
                self.shared
                    .states
                    .send_modify(|s| s.publisher_answered = true);
                if let Some(media) = self.pending_media.take() {
                    media.start(&self.shared);
                }
            }
            ServerMessage::Offer { sdp } => {
                self.shared.set_extension_ids(sdp);
                let answer = self.subscriber.answer(sdp.clone()).await?;
                self.shared.send(ClientMessage::Answer { sdp: answer })?;
                self.shared.subscriber_gate.open(&self.shared.out);
                *lock(&self.shared.offered) = offered_tracks(sdp);
                for c in std::mem::take(&mut self.pending_subscriber) {
                    self.subscriber.add_candidate(c).await;
                }
                self.shared.states.send_modify(|s| s.subscriber_offers += 1);
            }
            ServerMessage::Candidate { target, candidate } => {
                if candidate.candidate.is_empty() {
                    return Ok(());
                }
                let init = RTCIceCandidateInit {
                    candidate: candidate.candidate.clone(),
                    sdp_mid: candidate.sdp_mid.clone(),
                    sdp_mline_index: candidate.sdp_m_line_index,
                    username_fragment: candidate.username_fragment.clone(),
                    url: None,
                };
                let states = *self.shared.states.borrow();
                match target {
                    Target::Publisher if states.publisher_answered => {
                        self.publisher.add_candidate(init).await
                    }
                    Target::Publisher => self.pending_publisher.push(init),
                    Target::Subscriber if states.subscriber_offers > 0 => {
                        self.subscriber.add_candidate(init).await
                    }
                    Target::Subscriber => self.pending_subscriber.push(init),
                }
            }
            ServerMessage::ParticipantJoined { participant } => {
                lock(&self.shared.room).insert(participant.id.clone(), participant.clone());
            }
            ServerMessage::ParticipantLeft { participant_id } => {
                lock(&self.shared.room).remove(participant_id);
            }
            ServerMessage::TrackPublished {
                participant_id,
                track,
            } => {
                if let Some(p) = lock(&self.shared.room).get_mut(participant_id) {
                    p.tracks.retain(|t| t.id != track.id);
                    p.tracks.push(track.clone());
                }
            }
            ServerMessage::TrackUnpublished {
                participant_id,
                track_id,
            } => {
                if let Some(p) = lock(&self.shared.room).get_mut(participant_id) {
                    p.tracks.retain(|t| &t.id != track_id);
                }
            }
            ServerMessage::TrackMuted {
                participant_id,
                track_id,
                muted,
            } => {
                if let Some(p) = lock(&self.shared.room).get_mut(participant_id) {
                    for t in p.tracks.iter_mut().filter(|t| &t.id == track_id) {
                        t.muted = *muted;
                    }
                }
            }
            ServerMessage::Joined { .. } => {
                return Err(ClientError::Protocol("second joined".into()));
            }
            ServerMessage::Resumed {
                participant,
                participants,
                ..
            } => {
                let mut room = lock(&self.shared.room);
                room.clear();
                for p in participants.iter().chain(std::iter::once(participant)) {
                    room.insert(p.id.clone(), p.clone());
                }
            }
            ServerMessage::Pong { .. } | ServerMessage::Error { .. } => {}
        }
        Ok(())
    }
}
