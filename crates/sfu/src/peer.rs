//! Building the sans-IO peer connections the engine drives: codecs, header extensions and ICE
//! settings shared by every participant, and the interceptor chain of each role (publisher
//! connections receive through the stack's chain; subscriber connections send past it).

use std::net::SocketAddr;
use std::time::Instant;

use interceptor::{NackGeneratorBuilder, ReceiverReportBuilder};
use interceptor::{Registry, Slot};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::ice::tcp_type::TcpType;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MIME_TYPE_VP9,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sdp::extmap::{
    ABS_SEND_TIME_URI, AUDIO_LEVEL_URI, SDES_MID_URI, SDES_REPAIR_RTP_STREAM_ID_URI,
    SDES_RTP_STREAM_ID_URI,
};
use rtc::shared::TransportProtocol;

use std::collections::HashMap;

use bytes::BytesMut;
use rtc::data_channel::RTCDataChannelId;

use crate::feedback::{FeedbackTap, FEEDBACK_TAP_SLOT};
use crate::metrics::Metrics;
use crate::types::PeerRole;
use crate::types::{ParticipantKey, TrackKey};
use crate::SfuError;

fn video_feedback() -> Vec<RTCPFeedback> {
    [
        ("goog-remb", ""),
        ("ccm", "fir"),
        ("nack", ""),
        ("nack", "pli"),
    ]
    .into_iter()
    .map(|(typ, parameter)| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    })
    .collect()
}

fn codec(mime: &str, clock_rate: u32, channels: u16, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback: if channels == 0 {
                video_feedback()
            } else {
                vec![]
            },
        },
        payload_type: pt,
    }
}

/// The codecs Chorus negotiates: Opus, and VP8 first, then VP9, H264 and AV1.
pub fn supported_codecs() -> Vec<(RTCRtpCodecParameters, RtpCodecKind)> {
    vec![
        (
            codec(MIME_TYPE_OPUS, 48000, 2, "minptime=10;useinbandfec=1", 111),
            RtpCodecKind::Audio,
        ),
        (codec(MIME_TYPE_VP8, 90000, 0, "", 96), RtpCodecKind::Video),
        (
            codec(MIME_TYPE_VP9, 90000, 0, "profile-id=0", 98),
            RtpCodecKind::Video,
        ),
        (
            codec(
                MIME_TYPE_H264,
                90000,
                0,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                102,
            ),
            RtpCodecKind::Video,
        ),
        (
            codec(
                MIME_TYPE_H264,
                90000,
                0,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640032",
                104,
            ),
            RtpCodecKind::Video,
        ),
        (codec(MIME_TYPE_AV1, 90000, 0, "", 45), RtpCodecKind::Video),
    ]
}

/// The absolute capture time header extension (WebRTC `abs-capture-time`).
pub const ABS_CAPTURE_TIME_URI: &str =
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time";

fn media_engine() -> Result<MediaEngine, SfuError> {
    let mut me = MediaEngine::default();
    for (c, kind) in supported_codecs() {
        me.register_codec(c, kind).map_err(SfuError::rtc)?;
    }
    for (uri, kinds) in [
        (
            SDES_MID_URI,
            &[RtpCodecKind::Audio, RtpCodecKind::Video][..],
        ),
        (AUDIO_LEVEL_URI, &[RtpCodecKind::Audio][..]),
        // Simulcast: which layer a packet belongs to (RFC 8852).
        (SDES_RTP_STREAM_ID_URI, &[RtpCodecKind::Video][..]),
        (SDES_REPAIR_RTP_STREAM_ID_URI, &[RtpCodecKind::Video][..]),
        (
            ABS_SEND_TIME_URI,
            &[RtpCodecKind::Audio, RtpCodecKind::Video][..],
        ),
        // Forwarded untouched, so receivers (browsers, our load bots) can measure
        // capture-to-render latency and keep audio and video in sync across hops.
        (
            ABS_CAPTURE_TIME_URI,
            &[RtpCodecKind::Audio, RtpCodecKind::Video][..],
        ),
    ] {
        for kind in kinds {
            me.register_header_extension(
                RTCRtpHeaderExtensionCapability { uri: uri.into() },
                *kind,
                None,
            )
            .map_err(SfuError::rtc)?;
        }
    }
    Ok(me)
}

/// Builds a peer connection that runs ICE-lite, prefers AEAD GCM SRTP, and counts feedback.
/// Its ICE credentials are the stack's random ones, new on every ICE restart (credentials
/// fixed in the setting engine would be reused by a restart); the router learns them from each
/// local description.
///
/// A publisher connection (client to server) gets the stack's receive-side interceptors:
/// NACK generation, receiver reports, TWCC feedback. A subscriber connection sends only what
/// the lean egress path ([`crate::egress`]) writes past the interceptors, so it keeps only the
/// feedback tap, which hands the subscriber's NACKs (cut to the budget) and keyframe requests
/// to the core; the core answers NACKs from its own history and writes the sender reports.
pub fn build_peer_connection(
    role: PeerRole,
    metrics: &Metrics,
    now: Instant,
) -> Result<RTCPeerConnection, SfuError> {
    let mut me = media_engine()?;
    configure_simulcast_extension_headers(&mut me).map_err(SfuError::rtc)?;
    let registry = match role {
        PeerRole::Publisher => {
            let registry = Registry::new()
                .with(
                    Slot::Custom(FEEDBACK_TAP_SLOT),
                    FeedbackTap::new(metrics, false),
                )
                .with(Slot::NackGenerator, NackGeneratorBuilder::new().build());
            let registry =
                configure_twcc_receiver_only(registry, &mut me).map_err(SfuError::rtc)?;
            registry.with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
        }
        PeerRole::Subscriber => {
            // The same codecs and extensions either way (one SDP shape); the TWCC interceptor
            // it would add is left out with the rest of the chain.
            configure_twcc_receiver_only(Registry::new(), &mut me).map_err(SfuError::rtc)?;
            Registry::new().with(
                Slot::Custom(FEEDBACK_TAP_SLOT),
                FeedbackTap::new(metrics, true),
            )
        }
    };
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        // Answer `setup:passive`: the client, which runs full ICE and knows first when the
        // path works, starts DTLS. As DTLS client, the server's ClientHello raced the
        // client's own ICE completion and was dropped, costing a ~200 ms retransmission.
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_srtp_protection_profiles(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ])
        .build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(SfuError::rtc)
}

/// The candidates every peer connection of an engine hands out: the engine's addresses (its
/// socket's, or each `media.external_ips` entry with its port), each as a UDP host candidate
/// and, with ICE-TCP, as a passive TCP host candidate on the same port (RFC 6544; a lower
/// priority than UDP, so a client whose UDP works keeps using it). Derefs to the addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// The addresses, the first one the address the ICE agent is told it received on.
    pub addrs: Vec<SocketAddr>,
    /// Whether a passive TCP candidate goes beside each UDP one.
    pub tcp: bool,
}

impl Advertised {
    /// UDP candidates only, at `addrs`.
    pub fn udp(addrs: Vec<SocketAddr>) -> Self {
        Self { addrs, tcp: false }
    }
}

impl std::ops::Deref for Advertised {
    type Target = [SocketAddr];
    fn deref(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// Where a datagram came from: the address, and the transport it came over (a datagram on
/// the UDP socket, or one RFC 4571 frame of an ICE-TCP connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The remote address (for TCP, the connection's remote end).
    pub addr: SocketAddr,
    /// UDP or TCP.
    pub protocol: TransportProtocol,
}

impl From<SocketAddr> for Source {
    /// A UDP datagram from `addr`.
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            protocol: TransportProtocol::UDP,
        }
    }
}

/// Adds our host candidates (see [`Advertised`]) and returns them, to be trickled as well.
pub fn add_local_candidates(
    pc: &mut RTCPeerConnection,
    advertised: &Advertised,
) -> Result<Vec<RTCIceCandidateInit>, SfuError> {
    let transports: &[(&str, TcpType)] = if advertised.tcp {
        &[("udp", TcpType::Unspecified), ("tcp", TcpType::Passive)]
    } else {
        &[("udp", TcpType::Unspecified)]
    };
    let mut added = Vec::with_capacity(advertised.len() * transports.len());
    for (network, tcp_type) in transports {
        for addr in advertised.iter() {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: (*network).to_owned(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    ..Default::default()
                },
                tcp_type: *tcp_type,
            }
            .new_candidate_host()
            .map_err(SfuError::rtc)?;
            let init = RTCIceCandidate::from(&candidate)
                .to_json()
                .map_err(SfuError::rtc)?;
            pc.add_local_candidate(init.clone())
                .map_err(SfuError::rtc)?;
            added.push(init);
        }
    }
    Ok(added)
}

/// One sans-IO peer connection and what the engine knows about it.
pub(crate) struct Peer {
    pub(crate) pc: RTCPeerConnection,
    pub(crate) participant: ParticipantKey,
    pub(crate) role: PeerRole,
    pub(crate) ufrag: String,
    pub(crate) connected: bool,
    pub(crate) candidates_added: bool,
    /// Publisher: how many tracks the client's offer announced.
    pub(crate) expected_inbound: usize,
    /// Publisher: the rtc track id of each inbound track -> published track.
    pub(crate) inbound: HashMap<String, TrackKey>,
    /// Subscriber: the local track id of each downtrack -> published track.
    pub(crate) outbound: HashMap<String, TrackKey>,
    /// Subscriber: an offer is out and its answer has not come back.
    pub(crate) awaiting_answer: bool,
    /// Subscriber: something changed while an offer was out.
    pub(crate) renegotiate: bool,
    /// Subscriber: when the last offer went out.
    pub(crate) last_offer: Option<Instant>,
    /// Subscriber: a change is waiting for the offer window to pass (see `offer_interval`).
    pub(crate) offer_due: Option<Instant>,
    /// STUN checks that arrived before the remote description (a client starts checking as
    /// soon as it has answered, racing its answer over the WebSocket); replayed once it is
    /// applied instead of being rejected and retried by the client much later.
    pub(crate) early_checks: Vec<(Source, BytesMut)>,
    /// Whether the remote description (so the client's ICE credentials) is known.
    pub(crate) remote_known: bool,
    /// Subscriber: the server's `chorus` data channel, once open.
    pub(crate) data_channel: Option<RTCDataChannelId>,
    /// Timer entry in the engine's timer set.
    pub(crate) timer: Option<Instant>,
    pub(crate) dirty: bool,
    /// Subscriber: where the lean egress path sends (the selected candidate pair's remote
    /// address and transport), refreshed whenever the connection is drained; `None` before ICE
    /// selects a pair.
    pub(crate) dest: Option<Source>,
    /// When a datagram last arrived for this connection: a connection silent for
    /// `media.silence_timeout_secs` is taken as gone.
    pub(crate) last_rx: Option<Instant>,
    /// Whether an ICE-TCP connection was bound to this connection: when it goes, the engine
    /// closes them.
    pub(crate) tcp: bool,
}
