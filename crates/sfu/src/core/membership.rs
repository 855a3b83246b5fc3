//! Rooms and participants as the core handles them: join, leave and replacement by identity,
//! the events each participant hears, and what a room looks like to a newcomer.

use super::random_id;
use super::relay::DATA_CHANNEL_LABEL;
use super::Core;
use crate::command::Joined;
use crate::room::{Participant, EVENT_QUEUE};
use crate::types::{JoinRequest, Origin, ParticipantDesc, PeerRole, RoomEvent};
use crate::types::{ParticipantKey, PeerKey, TrackKey};
use crate::SfuError;
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{info, info_span, warn};

impl Core {
    /// Queues `event` for `participant` (WebSocket participants only); a participant whose
    /// queue is full is removed once the current input is handled.
    pub(crate) fn send_event(&mut self, participant: ParticipantKey, event: RoomEvent) {
        let Some(p) = self.participants.get_mut(&participant) else {
            return;
        };
        if p.request.origin != Origin::WebSocket {
            return; // WHIP/WHEP sessions hear only `Closed`, sent on removal
        }
        let Some(tx) = &p.events else { return };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => p.events = None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(participant = %p.id, "event queue full, dropping slow participant");
                // Removed once the current input is handled, not in the middle of it.
                self.slow.push(participant);
            }
        }
    }

    pub(crate) fn broadcast(
        &mut self,
        room: &str,
        except: Option<ParticipantKey>,
        event: RoomEvent,
    ) {
        let members = self.room_members(room);
        for m in members {
            if Some(m) != except {
                self.send_event(m, event.clone());
            }
        }
    }

    /// A snapshot of a room's participants (empty for an unknown room), to iterate while
    /// mutating the engine.
    pub(crate) fn room_members(&self, room: &str) -> Vec<ParticipantKey> {
        self.rooms
            .get(room)
            .map(|r| r.participants.clone())
            .unwrap_or_default()
    }

    pub(crate) fn participant_desc(&self, key: ParticipantKey) -> Option<ParticipantDesc> {
        let p = self.participants.get(&key)?;
        Some(ParticipantDesc {
            id: p.id.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            tracks: p
                .published
                .iter()
                .filter_map(|t| self.tracks.get(t))
                .map(|t| t.desc())
                .collect(),
        })
    }

    /// See [`crate::SessionHandle`].
    pub fn join(&mut self, now: Instant, request: JoinRequest) -> Result<Joined, SfuError> {
        let room_len = self.rooms.get(&request.room).map(|r| r.participants.len());
        // A second join with the same identity replaces the first (a reconnecting client).
        let replaced = self.rooms.get(&request.room).and_then(|r| {
            r.participants.iter().copied().find(|k| {
                self.participants
                    .get(k)
                    .is_some_and(|p| p.identity == request.identity)
            })
        });
        match room_len {
            None if self.rooms.len() >= self.config.max_rooms => return Err(SfuError::RoomFull),
            Some(n) if n >= self.config.max_participants_per_room && replaced.is_none() => {
                return Err(SfuError::RoomFull)
            }
            _ => {}
        }
        if let Some(old) = replaced {
            self.remove_participant(
                now,
                old,
                "replaced by a new connection with the same identity",
            );
        }
        let key = self.key();
        self.next_sweep.get_or_insert(now + super::SWEEP_INTERVAL);
        let id = random_id("PA_");
        let span = info_span!("participant", room = %request.room, participant = %id);
        let _enter = span.enter();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let events = Some(tx);
        let publisher = if request.permissions.publish && request.origin != Origin::Whep {
            Some(self.new_peer(now, key, PeerRole::Publisher)?)
        } else {
            None
        };
        let subscriber = if request.permissions.subscribe && request.origin != Origin::Whip {
            match self.new_peer(now, key, PeerRole::Subscriber) {
                Ok(k) => Some(k),
                Err(e) => {
                    if let Some(p) = publisher {
                        self.remove_peer(p);
                    }
                    return Err(e);
                }
            }
        } else {
            None
        };
        if let (Some(sub), Origin::WebSocket) = (subscriber, request.origin) {
            // Relayed data messages reach the client on this channel.
            if let Some(peer) = self.peers.get_mut(&sub) {
                if let Err(e) = peer.pc.create_data_channel(DATA_CHANNEL_LABEL, None) {
                    warn!("cannot create data channel: {e}");
                }
            }
        }
        let room_name = request.room.clone();
        let auto_subscribe = request.auto_subscribe && request.origin == Origin::WebSocket;
        self.participants.insert(
            key,
            Participant {
                id: id.clone(),
                identity: request.identity.clone(),
                name: request.name.clone(),
                room: room_name.clone(),
                request,
                publisher,
                subscriber,
                events,
                published: Vec::new(),
                subscriptions: Vec::new(),
                qualities: HashMap::new(),
                join_started: now,
                join_reported: false,
                data_tokens: f64::from(self.config.data_message_burst),
                data_refilled: now,
            },
        );
        if !self.rooms.contains_key(&room_name) {
            self.metrics.rooms.inc();
            info!("room opened");
        }
        self.metrics.participants.inc();
        let others_keys = {
            let room = self.rooms.entry(room_name.clone()).or_default();
            let others = room.participants.clone();
            room.participants.push(key);
            others
        };
        let others: Vec<ParticipantDesc> = others_keys
            .iter()
            .filter_map(|k| self.participant_desc(*k))
            .collect();
        let me = self.participant_desc(key).ok_or(SfuError::Gone)?;
        self.broadcast(
            &room_name,
            Some(key),
            RoomEvent::ParticipantJoined(me.clone()),
        );
        info!(identity = %me.identity, "joined");
        if auto_subscribe {
            let tracks: Vec<TrackKey> = self
                .rooms
                .get(&room_name)
                .map(|r| r.tracks.clone())
                .unwrap_or_default();
            for tk in tracks {
                self.add_downtrack(key, tk);
            }
        }
        // The first subscriber offer carries the data channel and any tracks so far.
        self.negotiate(now, key);
        Ok(Joined {
            key,
            me,
            others,
            events: rx,
        })
    }

    /// `participant`'s connection of `role`.
    pub(crate) fn peer_of(
        &self,
        participant: ParticipantKey,
        role: PeerRole,
    ) -> Result<PeerKey, SfuError> {
        let p = self.participants.get(&participant).ok_or(SfuError::Gone)?;
        match role {
            PeerRole::Publisher => p.publisher.ok_or(SfuError::NotPermitted("publish")),
            PeerRole::Subscriber => p.subscriber.ok_or(SfuError::NotPermitted("subscribe")),
        }
    }

    /// Removes a participant: its tracks, subscriptions and connections; tells it why and
    /// the room that it left; closes the room when it was the last.
    pub(crate) fn remove_participant(&mut self, now: Instant, key: ParticipantKey, reason: &str) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let published = p.published.clone();
        let subscriptions = p.subscriptions.clone();
        for tk in published {
            self.unpublish_track(now, tk);
        }
        for tk in subscriptions {
            self.remove_downtrack(key, tk);
        }
        let Some(p) = self.participants.remove(&key) else {
            return;
        };
        for peer in [p.publisher, p.subscriber].into_iter().flatten() {
            self.remove_peer(peer);
        }
        if let Some(tx) = &p.events {
            let _ = tx.try_send(RoomEvent::Closed {
                reason: reason.to_owned(),
            });
        }
        self.metrics.participants.dec();
        info!(room = %p.room, participant = %p.id, reason, "participant left");
        let empty = match self.rooms.get_mut(&p.room) {
            Some(r) => {
                r.participants.retain(|k| *k != key);
                r.participants.is_empty()
            }
            None => false,
        };
        if empty {
            self.rooms.remove(&p.room);
            self.metrics.rooms.dec();
            info!(room = %p.room, "room closed");
        } else {
            self.broadcast(
                &p.room,
                None,
                RoomEvent::ParticipantLeft {
                    participant_id: p.id,
                },
            );
        }
    }

    /// Every room with its participants, sorted by room name (the admin API's listing).
    pub(crate) fn list_rooms(&self) -> Vec<(String, Vec<ParticipantDesc>)> {
        let mut rooms: Vec<(String, Vec<ParticipantDesc>)> = self
            .rooms
            .iter()
            .map(|(name, room)| {
                let members = room
                    .participants
                    .iter()
                    .filter_map(|k| self.participant_desc(*k))
                    .collect();
                (name.clone(), members)
            })
            .collect();
        rooms.sort_by(|a, b| a.0.cmp(&b.0));
        rooms
    }

    /// Removes the participant with `identity` from `room` (the admin API), telling it
    /// `reason`.
    pub(crate) fn remove_identity(
        &mut self,
        now: Instant,
        room: &str,
        identity: &str,
        reason: &str,
    ) -> Result<(), SfuError> {
        let key = self
            .room_members(room)
            .into_iter()
            .find(|k| {
                self.participants
                    .get(k)
                    .is_some_and(|p| p.identity == identity)
            })
            .ok_or_else(|| SfuError::NotFound(format!("no {identity:?} in room {room:?}")))?;
        self.remove_participant(now, key, reason);
        Ok(())
    }

    /// Removes everyone from `room` (the admin API), which closes it; returns how many left.
    pub(crate) fn close_room(
        &mut self,
        now: Instant,
        room: &str,
        reason: &str,
    ) -> Result<usize, SfuError> {
        let members = self.room_members(room);
        if members.is_empty() {
            return Err(SfuError::NotFound(format!("no room {room:?}")));
        }
        for key in &members {
            self.remove_participant(now, *key, reason);
        }
        Ok(members.len())
    }
}
