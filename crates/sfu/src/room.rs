//! Rooms and participants: membership (join, leave, replacement by identity), the events a
//! participant hears, and what the room looks like to a newcomer.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::types::{JoinRequest, RoomEvent};
use crate::types::{ParticipantKey, PeerKey, TrackKey};
use crate::Quality;

/// Capacity of each participant's event queue; a client that falls this far behind is dropped.
pub(crate) const EVENT_QUEUE: usize = 256;

pub(crate) struct Participant {
    pub(crate) id: String,
    pub(crate) identity: String,
    pub(crate) name: String,
    pub(crate) room: String,
    pub(crate) request: JoinRequest,
    pub(crate) publisher: Option<PeerKey>,
    pub(crate) subscriber: Option<PeerKey>,
    pub(crate) events: Option<mpsc::Sender<RoomEvent>>,
    pub(crate) published: Vec<TrackKey>,
    pub(crate) subscriptions: Vec<TrackKey>,
    /// The quality asked for per track (absent: [`Quality::High`]), kept across
    /// unsubscribing and subscribing again.
    pub(crate) qualities: HashMap<TrackKey, Quality>,
    pub(crate) join_started: Instant,
    pub(crate) join_reported: bool,
    /// Data messages this participant may still send (token bucket), and when it was refilled.
    pub(crate) data_tokens: f64,
    pub(crate) data_refilled: Instant,
}

#[derive(Default)]
pub(crate) struct Room {
    pub(crate) participants: Vec<ParticipantKey>,
    /// Tracks in publication order (most recent last).
    pub(crate) tracks: Vec<TrackKey>,
}
