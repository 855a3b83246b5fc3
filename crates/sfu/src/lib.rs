//! # chorus-sfu: the media plane of Chorus
//!
//! Rooms, participants and the forwarding path, on webrtc-rs's sans-IO `rtc` core. Nothing
//! here knows HTTP or the signaling protocol: the signaling layer drives it through a
//! [`Sfu`] handle and a [`Session`] per participant, and hears back through [`RoomEvent`]s.
//!
//! ## Layout
//! - [`core`]: the sans-IO state machine that owns every peer connection, room, participant
//!   and track: datagrams, commands and the clock in, datagrams out. No locks: one owner.
//! - [`engine`]: the one tokio task that owns the media UDP socket and drives the core;
//!   commands come in over a channel, timers fire from the core's ordered timer set.
//! - [`session`]: the handle types the signaling layer holds ([`Sfu`], [`Session`]).
//! - [`peer`]: how a peer connection is built (codecs, extensions, interceptors, ICE-lite).
//! - [`codec`]: keyframe detection per video codec, so a new downtrack starts on a keyframe.
//! - [`munger`]: sequence number and timestamp rewriting per downtrack.
//! - [`simulcast`]: a published track's layers and which one each downtrack forwards.
//! - [`vp8`]: VP8 picture id / TL0PICIDX continuity across layer switches.
//! - [`keyframe`]: keyframe request throttling.
//! - [`feedback`]: the interceptor that counts NACK/PLI/FIR and lets PLI/FIR through.
//! - [`stun`]: routing a datagram from an unknown address by its STUN USERNAME.
//! - [`metrics`], [`config`].
//!
//! ## Errors
//! Bad input from the network is never a panic: a datagram that cannot be routed or parsed is
//! dropped and counted in `chorus_packets_dropped_total{reason}`; a bad SDP or request is an
//! [`SfuError`] returned to the caller.

pub mod codec;
mod command;
pub mod config;
pub mod core;
mod data;
mod downtrack;
pub mod engine;
pub mod feedback;
pub mod forwarder;
pub mod keyframe;
pub mod metrics;
pub mod munger;
mod negotiate;
pub mod peer;
mod room;
pub mod router;
pub mod session;
pub mod simulcast;
pub mod stun;
mod subscribe;
mod track;
pub mod types;
pub mod vp8;

pub use command::Joined;
pub use config::MediaConfig;
pub use data::DATA_CHANNEL_LABEL;
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
