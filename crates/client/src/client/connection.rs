//! The peer connections: building an async `webrtc` connection (media engine, interceptor
//! chain, [`Handler`] callbacks), the publisher and subscriber connections whichever way they
//! run ([`PublisherConn`], [`SubscriberConn`]), and the local addresses they bind.

use super::accounting::read_remote_track;
use super::engine::EngineConn;
use super::error::ClientError;
use super::shared::Shared;
use crate::keyframe::RtcpSent;
use crate::media;
use chorus_signal::protocol::{IceCandidate, Target};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpHeaderExtensionCapability, RtpCodecKind};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    Registry,
};

/// How long [`Client::leave`](super::Client::leave) waits for the `leave` message to be flushed and the connections
/// to close.
pub(super) const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Peer connection callbacks.
pub(super) struct Handler {
    pub(super) target: Target,
    pub(super) shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let init = match event.candidate.to_json() {
            Ok(init) => init,
            Err(e) => {
                tracing::debug!(error = %e, "cannot serialize local candidate");
                return;
            }
        };
        let candidate = IceCandidate {
            candidate: init.candidate,
            sdp_mid: init.sdp_mid.filter(|m| !m.is_empty()),
            sdp_m_line_index: init.sdp_mline_index,
            username_fragment: init.username_fragment,
        };
        let gate = match self.target {
            Target::Publisher => &self.shared.publisher_gate,
            Target::Subscriber => &self.shared.subscriber_gate,
        };
        gate.send(candidate, &self.shared.out);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(target = ?self.target, %state, "peer connection state");
        self.shared.states.send_modify(|s| match self.target {
            Target::Publisher => s.publisher = state,
            Target::Subscriber => s.subscriber = state,
        });
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.shared.gathered.send_replace(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = Arc::clone(&self.shared);
        self.shared.spawn(read_remote_track(track, shared));
    }
}

pub(super) async fn build_pc(
    media_engine: MediaEngine,
    ice_servers: &[RTCIceServer],
    udp_addr: &str,
    handler: Handler,
    rtcp_sent: Arc<RtcpSent>,
    impairment: crate::impair::Impairment,
) -> Result<Arc<dyn PeerConnection>, ClientError> {
    let (media_engine, registry) =
        configure_stack(media_engine, handler.target, rtcp_sent, impairment)?;
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(ice_servers.to_vec())
        .build();
    let mut builder = PeerConnectionBuilder::new();
    if impairment.loss_percent > 0.0 {
        // Loss is injected below SRTP, on the socket: dropping after SRTP would make its replay
        // window reject the (same-index) retransmissions that repair the loss.
        builder = builder.with_runtime(crate::impair::lossy_runtime(impairment.loss_percent)?);
    }
    let pc = builder
        .with_configuration(config)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(handler))
        .with_udp_addrs(vec![udp_addr.to_owned()])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// The header extensions and interceptor chain of a client connection: the stack's defaults,
/// the capture stamps, and per role only the interceptors that have work there.
pub(super) fn configure_stack(
    mut media_engine: MediaEngine,
    target: Target,
    rtcp_sent: Arc<RtcpSent>,
    impairment: crate::impair::Impairment,
) -> Result<(MediaEngine, Registry), ClientError> {
    let registry = match target {
        // Send-only: NACK responses, sender reports and transport-wide sequence numbers (a
        // browser's sender stamps them and the server answers with feedback, work a load test
        // must cause); nothing that only reads media (the default NACK generator, receiver
        // reports and transport-wide feedback are hops every sent packet would take for
        // nothing).
        Target::Publisher => {
            for parameter in ["", "pli"] {
                media_engine.register_feedback(
                    rtc::rtp_transceiver::rtp_sender::RTCPFeedback {
                        typ: "nack".to_owned(),
                        parameter: parameter.to_owned(),
                    },
                    RtpCodecKind::Video,
                );
            }
            let registry = Registry::new()
                .with(
                    rtc::interceptor::Slot::NackResponder,
                    rtc::interceptor::NackResponderBuilder::new().build(),
                )
                .with(
                    rtc::interceptor::Slot::SenderReport,
                    rtc::interceptor::SenderReportBuilder::new().build(),
                );
            rtc::peer_connection::configuration::interceptor_registry::configure_twcc_sender_only(
                registry,
                &mut media_engine,
            )?
        }
        Target::Subscriber => register_default_interceptors(Registry::new(), &mut media_engine)?,
    };
    register_measured_extensions(&mut media_engine)?;
    // Simulcast publishing: every packet names its track (mid) and encoding (rid).
    rtc::peer_connection::configuration::interceptor_registry::configure_simulcast_extension_headers(
        &mut media_engine,
    )?;
    // Each interceptor is a hop every packet takes through the chain (the bots' largest cost
    // after the stack itself): register only where it has work.
    let registry = match target {
        // Keyframe requests arrive for local tracks; VP9 is sent from here.
        Target::Publisher => registry
            .with(
                rtc::interceptor::Slot::from(crate::keyframe::SLOT),
                crate::keyframe::KeyframeRequestForwarder::default(),
            )
            .with(
                rtc::interceptor::Slot::from(crate::vp9::SLOT),
                crate::vp9::Vp9InterFrames::default(),
            ),
        // NACK and PLI go out from here.
        Target::Subscriber => registry.with(
            rtc::interceptor::Slot::from(crate::keyframe::COUNTER_SLOT),
            crate::keyframe::RtcpCounter::new(rtcp_sent),
        ),
    };
    Ok((media_engine, with_impairment(registry, impairment)))
}

/// Adds the impairment interceptor when there is an impairment.
pub(super) fn with_impairment(
    registry: Registry,
    impairment: crate::impair::Impairment,
) -> Registry {
    if impairment.is_active() {
        registry.with(
            rtc::interceptor::Slot::from(crate::impair::SLOT),
            crate::impair::Impairer::new(impairment),
        )
    } else {
        registry
    }
}

/// The header extensions the client reads or writes: the capture stamps for latency
/// measurement (see `capture_clock`) and the audio level. Registered after the stack's own so
/// those keep their ids.
pub(super) fn register_measured_extensions(
    media_engine: &mut MediaEngine,
) -> Result<(), ClientError> {
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        for uri in [
            crate::capture_clock::ABS_SEND_TIME_URI,
            crate::capture_clock::ABS_CAPTURE_TIME_URI,
        ] {
            media_engine.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                kind,
                None,
            )?;
        }
    }
    media_engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: media::AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    Ok(())
}

/// `127.0.0.1:0` for a loopback signaling host (the wildcard skips loopback interfaces), else
/// `0.0.0.0:0`.
pub(super) fn default_udp_addr(url: &url::Url) -> String {
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    if loopback { "127.0.0.1:0" } else { "0.0.0.0:0" }.to_owned()
}

pub(super) async fn add_candidate(pc: &Arc<dyn PeerConnection>, init: RTCIceCandidateInit) {
    if let Err(e) = pc.add_ice_candidate(init).await {
        tracing::debug!(error = %e, "remote candidate rejected");
    }
}

/// The publisher connection: an async connection of its own, one on a shared
/// [`SharedEngine`](super::SharedEngine), or none when there is nothing to publish.
pub(super) enum PublisherConn {
    None,
    Own(Arc<dyn PeerConnection>),
    Engine(EngineConn),
}

impl PublisherConn {
    /// Our offer (set as the local description).
    pub(super) async fn offer(&self) -> Result<String, ClientError> {
        match self {
            PublisherConn::None => Err(ClientError::Protocol("nothing to publish".into())),
            PublisherConn::Own(pc) => {
                let offer = pc.create_offer(None).await?;
                pc.set_local_description(offer.clone()).await?;
                Ok(offer.sdp)
            }
            PublisherConn::Engine(conn) => conn.offer().await,
        }
    }

    /// An offer with fresh ICE credentials (an ICE restart), set as the local description;
    /// `None` where there is nothing to restart (not publishing, or a shared-engine
    /// connection, whose lean transport keeps its credentials).
    pub(super) async fn restart_offer(&self) -> Result<Option<String>, ClientError> {
        match self {
            PublisherConn::None | PublisherConn::Engine(_) => Ok(None),
            PublisherConn::Own(pc) => {
                let options =
                    rtc::peer_connection::configuration::RTCOfferOptions { ice_restart: true };
                let offer = pc.create_offer(Some(options)).await?;
                pc.set_local_description(offer.clone()).await?;
                Ok(Some(offer.sdp))
            }
        }
    }

    /// Applies the server's answer.
    pub(super) async fn apply_answer(&self, sdp: String) -> Result<(), ClientError> {
        match self {
            PublisherConn::None => Err(ClientError::Protocol("an answer without an offer".into())),
            PublisherConn::Own(pc) => {
                pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
                    .await?;
                Ok(())
            }
            PublisherConn::Engine(conn) => conn.apply_answer(sdp).await,
        }
    }

    pub(super) async fn add_candidate(&self, init: RTCIceCandidateInit) {
        match self {
            PublisherConn::None => {}
            PublisherConn::Own(pc) => add_candidate(pc, init).await,
            PublisherConn::Engine(conn) => conn.add_candidate(init),
        }
    }

    pub(super) async fn close(&self) {
        match self {
            PublisherConn::None => {}
            PublisherConn::Own(pc) => {
                let _ = pc.close().await;
            }
            PublisherConn::Engine(conn) => conn.close(),
        }
    }
}

/// The subscriber connection: an async connection of its own, or one on a shared
/// [`SharedEngine`](super::SharedEngine).
pub(super) enum SubscriberConn {
    Own(Arc<dyn PeerConnection>),
    Engine(EngineConn),
}

impl SubscriberConn {
    /// Applies the server's offer; returns the answer.
    pub(super) async fn answer(&self, sdp: String) -> Result<String, ClientError> {
        match self {
            SubscriberConn::Own(pc) => {
                pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
                    .await?;
                let answer = pc.create_answer(None).await?;
                pc.set_local_description(answer.clone()).await?;
                Ok(answer.sdp)
            }
            SubscriberConn::Engine(conn) => conn.answer(sdp).await,
        }
    }

    pub(super) async fn add_candidate(&self, init: RTCIceCandidateInit) {
        match self {
            SubscriberConn::Own(pc) => add_candidate(pc, init).await,
            SubscriberConn::Engine(conn) => conn.add_candidate(init),
        }
    }

    pub(super) async fn close(&self) {
        match self {
            SubscriberConn::Own(pc) => {
                let _ = pc.close().await;
            }
            SubscriberConn::Engine(conn) => conn.close(),
        }
    }
}

/// The address an engine connection's socket binds: `udp_addr` if given, else the local
/// address that routes to the signaling host (a host candidate must be a real address).
pub(super) async fn engine_bind_addr(
    url: &url::Url,
    udp_addr: Option<&str>,
) -> Result<std::net::SocketAddr, ClientError> {
    if let Some(addr) = udp_addr {
        return addr
            .parse()
            .map_err(|_| ClientError::Protocol(format!("bad UDP address {addr:?}")));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ClientError::Protocol("signaling URL has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(80);
    let server = tokio::net::lookup_host((host, port))
        .await
        .map_err(ClientError::Io)?
        .next()
        .ok_or_else(|| ClientError::Protocol(format!("{host} does not resolve")))?;
    let probe = std::net::UdpSocket::bind(match server {
        std::net::SocketAddr::V4(_) => "0.0.0.0:0",
        std::net::SocketAddr::V6(_) => "[::]:0",
    })
    .map_err(ClientError::Io)?;
    // Connecting a UDP socket sends nothing; it only picks the route's source address.
    probe.connect(server).map_err(ClientError::Io)?;
    let mut local = probe.local_addr().map_err(ClientError::Io)?;
    local.set_port(0);
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_address_follows_the_signaling_host() {
        let parse = |s: &str| url::Url::parse(s).expect("url");
        assert_eq!(
            default_udp_addr(&parse("ws://127.0.0.1:1/ws")),
            "127.0.0.1:0"
        );
        assert_eq!(
            default_udp_addr(&parse("ws://localhost:1/ws")),
            "127.0.0.1:0"
        );
        assert_eq!(default_udp_addr(&parse("ws://[::1]:1/ws")), "127.0.0.1:0");
        assert_eq!(
            default_udp_addr(&parse("wss://sfu.example.com/ws")),
            "0.0.0.0:0"
        );
    }
}
