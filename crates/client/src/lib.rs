//! Chorus client: joins a Chorus room over WebSocket signaling the way a browser does, using the
//! async [`webrtc`] crate for the two peer connections.
//!
//! - The **publisher** connection carries the client's own media: Opus silence frames every
//!   20 ms and a looped VP8 clip at 30 fps (real encoded media, see [`media`]). The client offers,
//!   the server answers.
//! - The **subscriber** connection receives the other participants' tracks. The server offers
//!   (again on every change), the client answers. Every received RTP packet is accounted in
//!   [`ReceivedTrackStats`] (sequence continuity and loss, VP8 frames and keyframes, complete
//!   frames, RFC 3550 jitter, freezes, and capture-to-arrival latency from the capture stamp every
//!   sent frame carries, see [`capture_clock`]).
//!
//! A [`SharedEngine`] runs many clients' connections in one thread ([`ClientOptions::engine`]):
//! subscriber connections as a lean receive-only endpoint each, and publisher connections of
//! pre-encoded (looped) media as a lean send-only endpoint each, built from webrtc-rs's STUN,
//! DTLS and SRTP parts. That is what the load bots do, so that a bot costs a fraction of the
//! CPU the server spends on it.
//!
//! [`WhipSession`] publishes the same media over WHIP, or plays a publisher over WHEP into the
//! same [`ReceivedTrackStats`], with one HTTP exchange per session instead of the WebSocket.
//!
//! ```no_run
//! # async fn demo() -> Result<(), chorus_client::ClientError> {
//! use chorus_client::{Client, ClientOptions};
//! use std::time::Duration;
//!
//! let mut client = Client::join(ClientOptions::new("ws://127.0.0.1:7880/ws", "<jwt>")).await?;
//! client.wait_connected(Duration::from_secs(10)).await?;
//! while let Some(event) = client.next_event().await {
//!     println!("{event:?}");
//! }
//! for track in client.received() {
//!     println!("{} {}: {} packets, {} gaps", track.participant_id, track.track_id,
//!              track.packets(), track.seq.gaps);
//! }
//! client.leave().await;
//! # Ok(())
//! # }
//! ```

pub mod capture_clock;
mod client;
pub mod decode;
mod frame;
pub mod generate;
mod impair;
mod keyframe;
pub mod media;
pub mod ogg;
pub mod stats;
mod vp9;
pub mod vpx;

/// The IVF container reader (moved to [`chorus_rtp::ivf`]; re-exported at its old path).
pub use chorus_rtp::ivf;

pub use client::engine::ENGINE_THREAD;
pub use client::whip::{WhipKind, WhipSession};
pub use client::{
    Client, ClientError, ClientOptions, ConnectionStates, ReconnectEvent, ReconnectPolicy,
    RtcpSentStats, SharedEngine,
};
pub use impair::Impairment;
pub use media::{
    AudioClip, AudioFrame, AudioSource, SentLayerStats, SentTrackStats, SimulcastLayer, VideoSource,
};
pub use stats::{
    DecodeStats, LatencyHistogram, OfferedTrack, PacketMeta, ReceivedTrackStats, SeqStats,
};

/// Re-exported histogram crate ([`LatencyHistogram::histogram`]).
pub use hdrhistogram;

/// Re-exported protocol types of `chorus-signal`.
pub use chorus_signal::protocol::{
    ErrorCode, ParticipantInfo, Quality, ServerMessage, Target, TrackInfo, TrackKind,
};
/// Re-exported connection state of the `webrtc` crate.
pub use webrtc::peer_connection::RTCPeerConnectionState;
