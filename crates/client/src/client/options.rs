//! [`ClientOptions`]: how a client joins, what it publishes and where its connections run.

use super::engine::SharedEngine;
use crate::ivf::IvfClip;
use crate::media::{AudioSource, VideoSource};
use chorus_signal::protocol::Quality;
use std::sync::Arc;
use std::time::Duration;

/// How to join.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// WebSocket signaling URL, e.g. `ws://127.0.0.1:7880/ws`.
    pub url: String,
    /// Join token (JWT).
    pub token: String,
    /// Ask the server to subscribe to everyone else's tracks automatically.
    pub auto_subscribe: bool,
    /// The simulcast quality to receive (see [`Client::set_quality`](super::Client::set_quality) to change it per track).
    pub quality: Quality,
    /// Publish the audio track muted (a participant joining with the microphone off): it
    /// sends only a silence frame every 400 ms, as Opus DTX does, until [`Client::mute`](super::Client::mute)
    /// unmutes it. Tell the room with [`Client::mute`](super::Client::mute) once the track is published.
    pub audio_muted: bool,
    /// Publish an Opus track ([`audio_source`](Self::audio_source)).
    pub publish_audio: bool,
    /// Publish a VP8 track ([`video_source`](Self::video_source), else the looped
    /// [`video_clip`](Self::video_clip)).
    pub publish_video: bool,
    /// VP8 IVF clip to loop when [`video_source`](Self::video_source) is `None`; `None` uses
    /// the built-in 160x120 clip ([`media::DEFAULT_VP8_CLIP`](crate::media::DEFAULT_VP8_CLIP)).
    pub video_clip: Option<Arc<IvfClip>>,
    /// What to send on the video track; overrides [`video_clip`](Self::video_clip).
    pub video_source: Option<VideoSource>,
    /// What to send on the audio track (default: Opus silence frames every 20 ms).
    pub audio_source: AudioSource,
    /// Decode check: when `n > 0`, decode every `n`th group of pictures (a keyframe and the
    /// frames up to the next one) of every received VP8 track with libvpx and count decode
    /// errors ([`ReceivedTrackStats::decode`](crate::ReceivedTrackStats::decode)). 0 turns it off.
    pub decode_sample: u32,
    /// Impairment of incoming media on the subscriber connection (loss, extra delay), applied
    /// below NACK handling so retransmissions repair it.
    pub impairment: crate::impair::Impairment,
    /// Local UDP address for both peer connections. `None` picks `127.0.0.1:0` when the
    /// signaling host is a loopback address and `0.0.0.0:0` (every non-loopback interface)
    /// otherwise.
    pub udp_addr: Option<String>,
    /// Limit for connecting the WebSocket and receiving `joined`.
    pub join_timeout: Duration,
    /// Run the connections on this shared engine (lean endpoints built from webrtc-rs's STUN,
    /// DTLS and SRTP parts, one thread for many clients) instead of on async connections of
    /// their own: what the load bots do, so that a bot costs a fraction of the CPU. The
    /// subscriber connection always moves there; the publisher connection does when every
    /// source is pre-encoded (a clip, silence, cheap mode), since live encoders run on the
    /// async path. Host candidates only; the data channel is never opened.
    pub engine: Option<SharedEngine>,
    /// Deliver server messages to [`Client::next_event`](super::Client::next_event) (the default). A client that never
    /// reads them (the load bots) turns this off: unread messages would queue without limit,
    /// a renegotiation offer for every change in the room.
    pub events: bool,
    /// Reconnect a lost WebSocket (backoff, `resume`, or a fresh join when the server no
    /// longer has the session; see [`ReconnectEvent`](super::ReconnectEvent)). `None`: a lost
    /// WebSocket ends the client's signaling.
    pub reconnect: Option<super::ReconnectPolicy>,
}

impl ClientOptions {
    /// Options that publish audio and video and auto-subscribe.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            ..Self::default()
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            url: String::new(),
            token: String::new(),
            auto_subscribe: true,
            quality: Quality::High,
            audio_muted: false,
            publish_audio: true,
            publish_video: true,
            video_clip: None,
            video_source: None,
            audio_source: AudioSource::Silence,
            decode_sample: 0,
            impairment: crate::impair::Impairment::default(),
            udp_addr: None,
            join_timeout: Duration::from_secs(10),
            engine: None,
            events: true,
            reconnect: Some(super::ReconnectPolicy::default()),
        }
    }
}
