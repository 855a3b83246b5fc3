//! [`Receiver`]: a receive-only WebRTC endpoint, sans-IO, for the
//! [`SharedEngine`](super::SharedEngine).
//!
//! A subscribing bot answers the server's offer (or, playing over WHEP, makes the offer and
//! applies the answer), checks connectivity, runs the DTLS handshake, decrypts SRTP and sends
//! the feedback a browser sends (receiver reports, NACKs, PLIs). It needs none of a peer
//! connection's generality: no sending, no SCTP, one candidate pair, a fixed answer.
//! webrtc-rs's `rtc` peer connection moves every received packet through a pipeline of handlers
//! and queues (demuxer, ICE, DTLS, SRTP, interceptors, endpoint), which cost the bots more CPU
//! than the server spent forwarding to them. This endpoint is built from the same parts (`rtc`'s
//! STUN, DTLS and SRTP crates through [`Transport`], its RTP and RTCP types) wired directly: a
//! received media packet is one SRTP decryption, one header parse and the client's accounting.
//!
//! The answer accepts every offered codec and the header extensions the client measures with,
//! and the data channel section (the server never opens it toward an endpoint that does not
//! speak SCTP; bots do not chat); the SDP is `description`'s, each stream's reports, NACKs and
//! PLIs `feedback`'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_signal::protocol::Target;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};
use rtc::shared::marshal::Unmarshal;

use super::accounting::{Arrival, TrackReader};
use super::error::ClientError;
use super::sdp;
use super::shared::Shared;
use super::transport::{Demuxed, Identity, Transport};
use crate::impair::{is_rtp, DelayLine, Impairment};
use description::{build_answer, build_offer, parse_offer, OfferedStream, ParsedOffer};
use feedback::Feedback;

mod description;
mod feedback;

/// Receiver reports, per connection, every second (browsers: about 1 s for video).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A received RTP stream: the client's accounting and the stream's feedback state.
struct Stream {
    reader: TrackReader,
    feedback: Feedback,
}

impl Stream {
    fn on_packet(
        &mut self,
        packet: &rtc::rtp::Packet,
        shared: &Shared,
        arrival: Arrival,
        epoch: Instant,
    ) {
        self.feedback.on_rtp(
            packet.header.sequence_number,
            packet.header.timestamp,
            arrival.at,
            epoch,
        );
        self.reader.on_packet(packet, shared, arrival);
    }
}

/// Decrypts an SRTP packet whose `header` (`header_len` bytes) is already parsed; the payload is
/// a slice of the decrypted buffer, without padding. `None` if it does not authenticate.
fn open_rtp(
    srtp: &mut super::transport::Srtp,
    data: &[u8],
    header: rtc::rtp::header::Header,
    header_len: usize,
) -> Option<rtc::rtp::Packet> {
    let plain = srtp
        .remote
        .decrypt_rtp_with_header(data, &header)
        .ok()?
        .freeze();
    let mut payload = plain.slice_ref(plain.get(header_len..)?);
    if header.padding {
        // RFC 3550 5.1: the last octet counts the padding, itself included.
        let pad = usize::from(*payload.last()?);
        if pad == 0 || pad > payload.len() {
            return None;
        }
        payload.truncate(payload.len() - pad);
    }
    Some(rtc::rtp::Packet { header, payload })
}

/// A datagram held back by the jitter impairment.
struct Held {
    from: SocketAddr,
    data: Vec<u8>,
    arrival: Arrival,
}

/// One subscriber connection's endpoint.
pub(super) struct Receiver {
    pub(super) transport: Transport,
    shared: Arc<Shared>,
    impairment: Impairment,
    /// Our RTCP sender SSRC.
    ssrc: u32,
    offered: HashMap<u32, OfferedStream>,
    streams: HashMap<u32, Stream>,
    next_report: Option<Instant>,
    held: DelayLine<Held>,
    /// The clock origin for jitter (any fixed instant).
    epoch: Instant,
    nack_buf: Vec<u16>,
}

impl Receiver {
    pub(super) fn new(
        now: Instant,
        local: SocketAddr,
        shared: Arc<Shared>,
        identity: Arc<Identity>,
        impairment: Impairment,
    ) -> Receiver {
        Receiver {
            transport: Transport::new(now, local, Target::Subscriber, identity),
            shared,
            impairment,
            ssrc: rand::random(),
            offered: HashMap::new(),
            streams: HashMap::new(),
            next_report: None,
            held: DelayLine::default(),
            epoch: now,
            nack_buf: Vec::new(),
        }
    }

    /// Our ICE username fragment (for the host candidate we announce).
    pub(super) fn ufrag(&self) -> &str {
        self.transport.ufrag()
    }

    /// Applies the server's offer and returns our answer.
    pub(super) fn answer(&mut self, now: Instant, offer: &str) -> Result<String, ClientError> {
        let offer = sdp::parse(offer)?;
        self.apply_remote(now, parse_offer(&offer)?)?;
        Ok(build_answer(&offer, &self.transport.ours()).marshal())
    }

    /// Our offer to receive one audio and one video track (WHEP): every codec the client
    /// accounts, our host candidate, no trickle.
    pub(super) fn offer(&self) -> String {
        build_offer(self.transport.local, &self.transport.ours()).marshal()
    }

    /// Applies the server's answer to [`Self::offer`].
    pub(super) fn apply_answer(&mut self, now: Instant, answer: &str) -> Result<(), ClientError> {
        let answer = sdp::parse(answer)?;
        self.transport.apply_answer_role(&answer);
        self.apply_remote(now, parse_offer(&answer)?)
    }

    fn apply_remote(&mut self, now: Instant, parsed: ParsedOffer) -> Result<(), ClientError> {
        self.transport.set_remote(now, parsed.remote)?;
        // Tracks that left the offer end; new ones start on their first packet.
        self.streams
            .retain(|ssrc, _| parsed.streams.iter().any(|s| s.ssrc == *ssrc));
        self.offered = parsed.streams.iter().map(|s| (s.ssrc, s.clone())).collect();
        Ok(())
    }

    /// Handles one datagram from `from`, received at `arrival`.
    pub(super) fn handle_read(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        arrival: Arrival,
    ) {
        if is_rtp(data) && self.impairment.is_active() {
            if self.impairment.loss_percent > 0.0
                && rand::random::<f64>() * 100.0 < self.impairment.loss_percent
            {
                return;
            }
            if !self.impairment.jitter.is_zero() {
                let hold = self.impairment.delay();
                // Delivered as if it had arrived that much later.
                let arrival = Arrival {
                    at: arrival.at + hold,
                    wall: arrival.wall + hold,
                };
                self.held.push(
                    now + hold,
                    Held {
                        from,
                        data: data.to_vec(),
                        arrival,
                    },
                );
                return;
            }
        }
        self.dispatch(now, from, data, arrival);
    }

    fn dispatch(&mut self, now: Instant, from: SocketAddr, data: &[u8], arrival: Arrival) {
        match self.transport.handle_read(now, from, data) {
            Demuxed::Rtp => self.on_rtp(data, arrival),
            Demuxed::Rtcp => self.on_rtcp(now, data),
            Demuxed::Handled => {}
        }
    }

    fn on_rtp(&mut self, data: &[u8], arrival: Arrival) {
        let Some(srtp) = self.transport.srtp.as_mut() else {
            return;
        };
        // The header is parsed once, here, and not again after decryption.
        let mut rest = data;
        let Ok(header) = rtc::rtp::header::Header::unmarshal(&mut rest) else {
            return;
        };
        let header_len = data.len() - rest.len();
        let ssrc = header.ssrc;
        // One map lookup for a stream already receiving.
        if let Some(stream) = self.streams.get_mut(&ssrc) {
            if let Some(packet) = open_rtp(srtp, data, header, header_len) {
                stream.on_packet(&packet, &self.shared, arrival, self.epoch);
            }
            return;
        }
        // A track's first packet; a stream the offer did not announce costs no decryption.
        let Some(offered) = self.offered.get(&ssrc) else {
            return;
        };
        let Some(packet) = open_rtp(srtp, data, header, header_len) else {
            return;
        };
        let reader = TrackReader::new(
            &self.shared,
            offered.stream_id.clone(),
            offered.track_id.clone(),
            offered.kind,
            offered.mime.clone(),
        );
        let feedback = Feedback::new(offered.clock_rate, offered.nack, offered.pli);
        self.streams
            .entry(ssrc)
            .or_insert(Stream { reader, feedback })
            .on_packet(&packet, &self.shared, arrival, self.epoch);
    }

    fn on_rtcp(&mut self, now: Instant, data: &[u8]) {
        let Some(packets) = self.transport.read_rtcp(data) else {
            return;
        };
        for packet in packets {
            if let Some(sr) = packet.as_any().downcast_ref::<SenderReport>() {
                if let Some(stream) = self.streams.get_mut(&sr.ssrc) {
                    stream.feedback.last_sr = Some(((sr.ntp_time >> 16) as u32, now));
                }
            }
        }
    }

    /// Runs what is due at `now`: held packets, checks, reports, NACKs, DTLS retransmissions.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        while let Some(h) = self.held.pop_due(now) {
            self.dispatch(now, h.from, &h.data, h.arrival);
        }
        self.transport.handle_timeout(now);
        if self.transport.srtp.is_some() {
            self.send_nacks(now);
            if self.report_due().is_some_and(|at| at <= now) {
                self.next_report = Some(now + REPORT_INTERVAL);
                self.send_reports(now);
            }
        }
    }

    /// When the next receiver reports are due: a report interval after connecting, then
    /// every interval.
    fn report_due(&self) -> Option<Instant> {
        self.next_report
            .or_else(|| Some(self.transport.connected_at()? + REPORT_INTERVAL))
    }

    /// The earliest instant [`Self::handle_timeout`] has work at.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let nack = self
            .transport
            .srtp
            .is_some()
            .then(|| {
                self.streams
                    .values()
                    .filter_map(|s| s.feedback.next_nack())
                    .min()
            })
            .flatten();
        [
            self.transport.poll_timeout(),
            self.report_due(),
            nack,
            self.held.next_release(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next datagram to send, and where.
    pub(super) fn poll_transmit(&mut self) -> Option<(SocketAddr, bytes::Bytes)> {
        self.transport.poll_transmit()
    }

    fn send_nacks(&mut self, now: Instant) {
        let mut nacks: Vec<Box<dyn rtc::rtcp::packet::Packet>> = Vec::new();
        let mut buf = std::mem::take(&mut self.nack_buf);
        for (ssrc, stream) in self.streams.iter_mut() {
            if stream.feedback.missing.is_empty() && !stream.feedback.keyframe_needed {
                continue;
            }
            buf.clear();
            stream.feedback.due_nacks(now, &mut buf);
            if stream.feedback.take_pli(now) {
                self.shared
                    .rtcp_sent
                    .plis
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                nacks.push(Box::new(PictureLossIndication {
                    sender_ssrc: self.ssrc,
                    media_ssrc: *ssrc,
                }));
            }
            if buf.is_empty() {
                continue;
            }
            self.shared
                .rtcp_sent
                .nacked_packets
                .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.shared
                .rtcp_sent
                .nacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            nacks.push(Box::new(TransportLayerNack {
                sender_ssrc: self.ssrc,
                media_ssrc: *ssrc,
                nacks: nack_pairs_from_sequence_numbers(&buf),
            }));
        }
        self.nack_buf = buf;
        if !nacks.is_empty() {
            self.transport.send_rtcp(&nacks);
        }
    }

    fn send_reports(&mut self, now: Instant) {
        let reports: Vec<ReceptionReport> = self
            .streams
            .iter_mut()
            .filter_map(|(ssrc, s)| s.feedback.report(*ssrc, now))
            .collect();
        if reports.is_empty() {
            return;
        }
        // At most 31 reports per RR packet.
        let packets: Vec<Box<dyn rtc::rtcp::packet::Packet>> = reports
            .chunks(31)
            .map(|chunk| {
                Box::new(ReceiverReport {
                    ssrc: self.ssrc,
                    reports: chunk.to_vec(),
                    profile_extensions: Default::default(),
                }) as Box<dyn rtc::rtcp::packet::Packet>
            })
            .collect();
        self.transport.send_rtcp(&packets);
    }
}

#[cfg(test)]
mod tests {
    use super::super::transport::tests::{check_response, dtls_client, peer_srtp, Fixture};
    use super::description::tests::OFFER;
    use super::*;
    use rtc::peer_connection::state::RTCPeerConnectionState;
    use rtc::shared::marshal::Marshal;

    #[test]
    fn garbage_datagrams_harm_nothing() {
        let Fixture {
            shared,
            ours,
            theirs: _,
            t0,
            local,
            server,
            _signaling,
        } = Fixture::new();
        let mut rx = Receiver::new(t0, local, shared, ours, Impairment::default());
        let answer = rx.answer(t0, OFFER).expect("answer");
        assert!(answer.contains(&format!("a=ice-ufrag:{}", rx.ufrag())));
        rx.handle_timeout(t0);
        // The first connectivity check goes to the offer's candidate.
        let (to, check) = rx.poll_transmit().expect("a check");
        assert_eq!((to, check.first()), (server, Some(&0u8)));
        let arrival = Arrival {
            at: t0,
            wall: std::time::SystemTime::now(),
        };
        for i in 0..20_000u32 {
            let len = (i % 300) as usize;
            let mut datagram: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            if let Some(first) = datagram.first_mut() {
                // Every class the demultiplexer knows: STUN, DTLS, RTP/RTCP, and the rest.
                *first = [0, 1, 22, 23, 128, 144, 200, 255][i as usize % 8];
            }
            if i % 5 == 0 && datagram.len() > 8 {
                // STUN's magic cookie, so the parser gets further.
                datagram[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            }
            rx.handle_read(t0, server, &datagram, arrival);
        }
        rx.handle_timeout(t0 + Duration::from_millis(60));
        // Nothing was answered or accepted: only the next round of checks goes out.
        while let Some((to, datagram)) = rx.poll_transmit() {
            assert_eq!((to, datagram.first()), (server, Some(&0u8)));
        }
        assert_eq!(rx.transport.state, RTCPeerConnectionState::New);
        assert!(rx.streams.is_empty());

        // The server answers a check: the pair is selected and the DTLS handshake starts.
        let response = check_response(&rx.transport.identity, "secret", local);
        rx.handle_read(t0, server, &response, arrival);
        assert_eq!(rx.transport.state, RTCPeerConnectionState::Connecting);
        let (to, hello) = rx.poll_transmit().expect("ClientHello");
        assert_eq!((to, hello.first()), (server, Some(&22u8)));
        // Garbage into the handshake and the media path: no keys, no streams, no panic.
        for i in 0..5_000u32 {
            let len = 1 + (i % 200) as usize;
            let mut datagram: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            datagram[0] = [20, 22, 23, 128, 200][i as usize % 5];
            rx.handle_read(t0, server, &datagram, arrival);
        }
        assert!(rx.transport.srtp.is_none());
        assert!(rx.streams.is_empty());
        assert_ne!(rx.transport.state, RTCPeerConnectionState::Connected);
    }

    /// Passes DTLS datagrams both ways until the receiver has keys (or 20 rounds).
    fn handshake(
        rx: &mut Receiver,
        client: &mut rtc::dtls::endpoint::Endpoint,
        now: Instant,
        server: SocketAddr,
        arrival: Arrival,
    ) {
        for _ in 0..20 {
            while let Some(t) = client.poll_transmit() {
                rx.handle_read(now, server, &t.message, arrival);
            }
            while let Some((to, datagram)) = rx.poll_transmit() {
                assert_eq!(to, server);
                if matches!(datagram.first(), Some(20..=63)) {
                    let _ = client.read(now, rx.transport.local, None, datagram[..].into());
                }
            }
            if rx.transport.srtp.is_some() {
                return;
            }
        }
    }

    #[test]
    fn an_offer_answered_active_makes_us_the_dtls_server() {
        let Fixture {
            shared,
            ours,
            theirs,
            t0,
            local,
            server,
            _signaling,
        } = Fixture::new();
        let mut rx = Receiver::new(t0, local, shared, ours, Impairment::default());
        let offer = rx.offer();
        for wanted in [
            "a=setup:actpass",
            "a=recvonly",
            "a=candidate:1 1 udp 2130706431 127.1.0.1 5000 typ host",
            "a=rtpmap:96 VP8/90000",
            "a=rtcp-fb:96 nack pli",
            "abs-capture-time",
        ] {
            assert!(offer.contains(wanted), "{wanted} in {offer}");
        }
        let answer = format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
             a=fingerprint:sha-256 {}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
             c=IN IP4 0.0.0.0\r\na=mid:0\r\na=ice-ufrag:srv\r\na=ice-pwd:secret\r\n\
             a=setup:active\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n\
             a=msid:alice mic\r\na=ssrc:42 cname:alice\r\na=sendonly\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n",
            theirs.fingerprint.to_uppercase()
        );
        rx.apply_answer(t0, &answer).expect("answer");
        assert!(!rx.transport.dtls_client);
        let arrival = Arrival {
            at: t0,
            wall: std::time::SystemTime::now(),
        };
        let response = check_response(&rx.transport.identity, "secret", local);
        rx.handle_read(t0, server, &response, arrival);
        assert_eq!(rx.transport.state, RTCPeerConnectionState::Connecting);

        // The server, as DTLS client, connects with the certificate its answer named.
        let mut client = dtls_client(&theirs, t0, server, local);
        handshake(&mut rx, &mut client, t0, server, arrival);
        assert!(rx.transport.srtp.is_some(), "SRTP keys from the handshake");
        assert_eq!(rx.transport.state, RTCPeerConnectionState::Connected);
        assert_eq!(
            rx.offered.get(&42).map(|s| s.track_id.as_str()),
            Some("mic")
        );

        // Media from the server: the announced stream is accounted (padding stripped), one
        // the answer never named is dropped undecrypted.
        let mut server_srtp = peer_srtp(&client, local, &theirs).expect("the server's keys");
        let mut packet = |ssrc: u32, seq: u16, padding: bool| {
            // With `padding`, marshalling pads the 3-byte payload to a multiple of 4.
            let payload = vec![0xF8, 0xFF, 0xFE];
            let plain = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    padding,
                    payload_type: 111,
                    sequence_number: seq,
                    timestamp: u32::from(seq) * 960,
                    ssrc,
                    ..Default::default()
                },
                payload: payload.into(),
            }
            .marshal()
            .expect("marshal");
            server_srtp.local.encrypt_rtp(&plain).expect("encrypt")
        };
        for (ssrc, seq, padding) in [(42, 1, false), (42, 2, true), (99, 1, false)] {
            let datagram = packet(ssrc, seq, padding);
            rx.handle_read(t0, server, &datagram, arrival);
        }
        assert_eq!(rx.streams.keys().copied().collect::<Vec<_>>(), vec![42]);
        let received = rx.shared.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].packets(), 2);
        assert_eq!(
            received[0].bytes, 6,
            "two 3-byte Opus frames, padding stripped"
        );
    }

    #[test]
    fn a_dtls_client_with_another_certificate_is_refused() {
        let Fixture {
            shared,
            ours,
            theirs: named,
            t0,
            local,
            server,
            _signaling,
        } = Fixture::new();
        let impostor = Identity::generate().expect("certificate");
        let mut rx = Receiver::new(t0, local, shared, ours, Impairment::default());
        let answer = format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
             a=fingerprint:sha-256 {}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
             a=ice-ufrag:srv\r\na=ice-pwd:secret\r\na=setup:active\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n",
            named.fingerprint
        );
        rx.apply_answer(t0, &answer).expect("answer");
        let arrival = Arrival {
            at: t0,
            wall: std::time::SystemTime::now(),
        };
        let response = check_response(&rx.transport.identity, "secret", local);
        rx.handle_read(t0, server, &response, arrival);
        let mut client = dtls_client(&impostor, t0, server, local);
        handshake(&mut rx, &mut client, t0, server, arrival);
        assert!(rx.transport.srtp.is_none());
        assert_eq!(rx.transport.state, RTCPeerConnectionState::Failed);
    }
}
