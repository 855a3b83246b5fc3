//! # chorus-sfu: the media plane of Chorus
//!
//! Rooms, participants and the forwarding path, on webrtc-rs's sans-IO `rtc` core. Nothing
//! here knows HTTP or the signaling protocol: the signaling layer drives it through a
//! [`Sfu`] handle and a [`Session`] per participant, and hears back through [`RoomEvent`]s.
//!
//! ## Layout
//! The driver and the handles:
//! - [`engine`]: the media engines (`media.engines`, one per core by default), each an OS
//!   thread with its own UDP socket and its own core, driven with datagrams, commands and the
//!   clock; [`socket`]: their batched I/O (`recvmmsg`, GSO, `sendmmsg`); [`tcp`]: their
//!   ICE-TCP listener and connections (RFC 6544/4571); `placement`: which engine a room
//!   lives on.
//! - [`session`]: the handles the signaling layer holds ([`Sfu`], [`Session`],
//!   [`SessionHandle`]); [`types`]: the plain types they exchange (a leaf module).
//! - `command`: the commands a session sends, and their dispatch onto the core.
//!
//! The sans-IO core ([`core::Core`]: no socket, no task, no clock but the wall clock its sender
//! reports carry; every input carries `now`),
//! one module per thing it owns:
//! - [`router`]: which peer connection a datagram on the shared port belongs to (by STUN ufrag,
//!   then by learned source address).
//! - [`peer`]: building a peer connection (codecs, extensions, interceptors, ICE-lite, SRTP
//!   profiles) and what the core keeps per connection.
//! - `room`: rooms and participants: join, leave, replacement, the events each one hears.
//! - `negotiate`: offers and answers on both connections, WHEP's one exchange, candidates.
//! - `track`: published tracks and their packet path (fan-out to every downtrack), keyframe
//!   requests, mute.
//! - `downtrack`: a subscriber's copy of a track (its sender and header mappings);
//!   `subscribe`: subscribing and the quality wanted.
//! - [`forwarder`]: the per-downtrack decision and rewrite (layer, sequence numbers,
//!   timestamps, VP8 picture ids), unit-tested without a peer connection; built on
//!   [`simulcast`] (layer selection), [`munger`] (numbering) and [`keyframe`] (throttling).
//! - [`egress`]: the lean egress path: a rewritten packet sealed with the subscriber
//!   connection's own SRTP context and queued for the socket; the send history NACKs are
//!   answered from; the counts sender reports carry.
//! - `data`: the data-channel relay.
//! - [`feedback`]: the interceptor that counts NACK/PLI/FIR, cuts NACKs to the connection's
//!   retransmission budget ([`nack`]) and lets PLI/FIR (and, on subscriber connections,
//!   NACKs) through to the core;
//!   [`stun`]: just enough STUN to route; [`metrics`], [`config`].
//!
//! Codec knowledge (payload descriptors, keyframe detection, sequence extension) lives in the
//! `chorus-rtp` crate, shared with the client.
//!
//! ## Errors
//! Bad input from the network is never a panic: a datagram that cannot be routed or parsed is
//! dropped and counted in `chorus_packets_dropped_total{reason}`; a bad SDP or request is an
//! [`SfuError`] returned to the caller.

mod command;
pub mod config;
pub mod core;
mod downtrack;
pub mod egress;
pub mod engine;
pub mod feedback;
pub mod forwarder;
pub mod keyframe;
pub mod metrics;
pub mod munger;
pub mod nack;
pub mod peer;
mod placement;
mod room;
pub mod router;
pub mod session;
pub mod simulcast;
pub mod socket;
pub mod stun;
pub mod tcp;
mod track;
pub mod types;

pub use command::Joined;
pub use config::MediaConfig;
pub use core::relay::DATA_CHANNEL_LABEL;
pub use metrics::Metrics;
pub use session::{Session, SessionHandle, Sfu};
pub use simulcast::Quality;
pub use types::{
    CandidateInit, EngineStats, JoinRequest, Origin, ParticipantDesc, PeerRole, Permissions,
    RoomEvent, TrackDesc, TrackKind,
};

/// Errors the media plane returns to its callers.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SfuError {
    /// The room has its maximum number of participants, or the server its maximum of rooms.
    #[error("room is full")]
    RoomFull,
    /// The participant's grants do not allow this.
    #[error("not permitted: {0}")]
    NotPermitted(&'static str),
    /// The SDP could not be parsed or applied.
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    /// No such track in the room.
    #[error("unknown track {0}")]
    UnknownTrack(String),
    /// Nothing to play: no such publisher, or no publisher at all.
    #[error("not found: {0}")]
    NotFound(String),
    /// What was asked for exists but is not ready yet (e.g. a publisher whose media has not
    /// started); retrying shortly may succeed.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The request does not fit the connection's state (e.g. an answer with no offer out).
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
    /// The participant is gone (left, or its connection failed).
    #[error("participant is gone")]
    Gone,
    /// The media engine has stopped.
    #[error("media engine stopped")]
    EngineStopped,
    /// The socket could not be bound.
    #[error("cannot bind media socket: {0}")]
    Bind(String),
    /// The WebRTC stack failed.
    #[error("webrtc: {0}")]
    Rtc(String),
}

impl SfuError {
    pub(crate) fn rtc(e: impl std::fmt::Display) -> Self {
        Self::Rtc(e.to_string())
    }
}
