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
//! speak SCTP; bots do not chat).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_signal::protocol::{Target, TrackKind};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};
use rtc::shared::marshal::Unmarshal;

use super::transport::{sections, Demuxed, Identity, Remote, Transport};
use super::{Arrival, ClientError, Shared, TrackReader};
use crate::impair::{is_rtp, DelayLine, Impairment};

/// Receiver reports, per connection, every second (browsers: about 1 s for video).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A missing packet is first asked for after this (reordering gets a chance), then every
/// [`NACK_RETRY`], at most [`NACK_MAX`] times, and forgotten after [`NACK_MAX_AGE`].
const NACK_DELAY: Duration = Duration::from_millis(10);
const NACK_RETRY: Duration = Duration::from_millis(100);
const NACK_MAX: u8 = 10;
const NACK_MAX_AGE: Duration = Duration::from_secs(1);
/// The most missing packets tracked per stream (a longer gap is not worth repairing).
const NACK_WINDOW: u32 = 512;
/// A packet NACKs could not repair in [`NACK_MAX_AGE`] leaves a frame undecodable: a
/// browser asks for a keyframe (PLI), at most this often per stream.
const PLI_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
struct OfferedStream {
    ssrc: u32,
    stream_id: String,
    track_id: String,
    kind: TrackKind,
    mime: Option<String>,
    clock_rate: u32,
    nack: bool,
    pli: bool,
}

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

/// What receiver reports and NACKs of one stream need (RFC 3550 6.4.1, RFC 4585 6.2.1).
struct Feedback {
    clock_rate: u32,
    nack: bool,
    pli: bool,
    /// A packet was lost for good: the next PLI is due (see [`PLI_INTERVAL`]).
    keyframe_needed: bool,
    last_pli: Option<Instant>,
    /// Extended highest sequence number; `None` before the first packet.
    max_seq: Option<u32>,
    base_seq: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// RFC 3550 interarrival jitter, in timestamp units.
    jitter: f64,
    last_transit: Option<i64>,
    /// Middle 32 bits of the last sender report's NTP time, and when it arrived.
    last_sr: Option<(u32, Instant)>,
    /// Missing packets by extended sequence number: (noticed at, NACKs sent, last NACK).
    missing: BTreeMap<u32, (Instant, u8, Option<Instant>)>,
}

impl Feedback {
    fn new(clock_rate: u32, nack: bool, pli: bool) -> Feedback {
        Feedback {
            clock_rate: clock_rate.max(1),
            nack,
            pli,
            keyframe_needed: false,
            last_pli: None,
            max_seq: None,
            base_seq: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: 0.0,
            last_transit: None,
            last_sr: None,
            missing: BTreeMap::new(),
        }
    }

    /// Updates sequence, loss and jitter state for a packet that arrived at `at`.
    fn on_rtp(&mut self, seq: u16, timestamp: u32, at: Instant, epoch: Instant) {
        let ext = match self.max_seq {
            None => {
                self.base_seq = u32::from(seq);
                self.max_seq = Some(u32::from(seq));
                u32::from(seq)
            }
            Some(max) => {
                let ext = extend_seq(max, seq);
                if ext > max {
                    if self.nack && ext - max > 1 {
                        let from = (max + 1).max(ext.saturating_sub(NACK_WINDOW));
                        for missing in from..ext {
                            self.missing.insert(missing, (at, 0, None));
                        }
                    }
                    self.max_seq = Some(ext);
                } else {
                    self.missing.remove(&ext);
                }
                ext
            }
        };
        let _ = ext;
        self.received = self.received.wrapping_add(1);
        // Transit in timestamp units: arrival (as RTP clock) minus the packet's timestamp.
        let arrival =
            at.saturating_duration_since(epoch).as_secs_f64() * f64::from(self.clock_rate);
        let transit = arrival as i64 - i64::from(timestamp);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// The reception report for this stream (RFC 3550 6.4.1), resetting the interval counters.
    fn report(&mut self, ssrc: u32, now: Instant) -> Option<ReceptionReport> {
        let max = self.max_seq?;
        let expected = max.wrapping_sub(self.base_seq).wrapping_add(1);
        let lost = i64::from(expected) - i64::from(self.received);
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        let (last_sender_report, delay) = match self.last_sr {
            Some((lsr, at)) => {
                let waited = now.saturating_duration_since(at).as_secs_f64();
                (lsr, (waited * 65536.0) as u32)
            }
            None => (0, 0),
        };
        Some(ReceptionReport {
            ssrc,
            fraction_lost,
            total_lost: lost.clamp(0, 0x7f_ffff) as u32,
            last_sequence_number: max,
            jitter: self.jitter as u32,
            last_sender_report,
            delay,
        })
    }

    /// Sequence numbers to NACK now; forgets what is too old or asked for too often.
    fn due_nacks(&mut self, now: Instant, out: &mut Vec<u16>) {
        let before = self.missing.len();
        self.missing
            .retain(|_, (noticed, _, _)| now.saturating_duration_since(*noticed) < NACK_MAX_AGE);
        if self.missing.len() < before && self.pli {
            self.keyframe_needed = true;
        }
        for (seq, (noticed, sent, last)) in self.missing.iter_mut() {
            let due = match last {
                None => now.saturating_duration_since(*noticed) >= NACK_DELAY,
                Some(last) => now.saturating_duration_since(*last) >= NACK_RETRY,
            };
            if due && *sent < NACK_MAX {
                *sent += 1;
                *last = Some(now);
                out.push(*seq as u16);
            }
        }
    }

    /// Whether a PLI is due now (and, if so, takes it).
    fn take_pli(&mut self, now: Instant) -> bool {
        let due = self.keyframe_needed
            && self
                .last_pli
                .is_none_or(|last| now.saturating_duration_since(last) >= PLI_INTERVAL);
        if due {
            self.keyframe_needed = false;
            self.last_pli = Some(now);
        }
        due
    }

    /// When the next NACK, giving up on a missing packet, or PLI for this stream is due.
    fn next_nack(&self) -> Option<Instant> {
        let pli = self
            .keyframe_needed
            .then(|| self.last_pli.map(|l| l + PLI_INTERVAL))
            .flatten();
        self.missing
            .values()
            .map(|(noticed, sent, last)| match last {
                None => *noticed + NACK_DELAY,
                Some(_) if *sent >= NACK_MAX => *noticed + NACK_MAX_AGE,
                Some(last) => (*last + NACK_RETRY).min(*noticed + NACK_MAX_AGE),
            })
            .chain(pli)
            .min()
    }
}

/// `seq` extended with the rollover count closest to `max`.
fn extend_seq(max: u32, seq: u16) -> u32 {
    let cycles = max & !0xffff;
    let candidate = cycles | u32::from(seq);
    let delta = i64::from(candidate) - i64::from(max);
    if delta > 0x8000 && cycles > 0 {
        candidate - 0x1_0000
    } else if delta < -0x8000 {
        candidate + 0x1_0000
    } else {
        candidate
    }
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
            transport: Transport::new(
                now,
                local,
                Target::Subscriber,
                Arc::clone(&shared),
                identity,
            ),
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
        self.apply_remote(now, parse_offer(offer)?)?;
        Ok(build_answer(
            offer,
            &self.transport.description_lines("active"),
        ))
    }

    /// Our offer to receive one audio and one video track (WHEP): every codec the client
    /// accounts, our host candidate, no trickle.
    pub(super) fn offer(&self) -> String {
        build_offer(
            self.transport.local,
            &self.transport.description_lines("actpass"),
        )
    }

    /// Applies the server's answer to [`Self::offer`].
    pub(super) fn apply_answer(&mut self, now: Instant, answer: &str) -> Result<(), ClientError> {
        self.transport.apply_answer_role(answer);
        self.apply_remote(now, parse_offer(answer)?)
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

/// What an offer tells the receiver.
#[derive(Debug)]
struct ParsedOffer {
    remote: Remote,
    streams: Vec<OfferedStream>,
}

/// Reads the server's ICE credentials, fingerprint, candidates and the tracks it sends (by
/// SSRC) from an offer.
fn parse_offer(sdp: &str) -> Result<ParsedOffer, ClientError> {
    let mut offer = ParsedOffer {
        remote: Remote::parse(sdp)?,
        streams: Vec::new(),
    };
    for section in sections(sdp) {
        let media = section.first().and_then(|l| l.strip_prefix("m="));
        let attr = |name: &str| {
            section
                .iter()
                .find_map(|l| l.strip_prefix("a=")?.strip_prefix(name)?.strip_prefix(':'))
        };
        let Some(media) = media else { continue };
        let mut fields = media.split_whitespace();
        let kind = match fields.next() {
            Some("audio") => TrackKind::Audio,
            Some("video") => TrackKind::Video,
            _ => continue,
        };
        if fields.next() == Some("0") {
            continue;
        }
        let sends = section
            .iter()
            .any(|l| *l == "a=sendonly" || *l == "a=sendrecv");
        if !sends {
            continue;
        }
        let first_pt = media.split_whitespace().nth(3);
        let (mime, clock_rate) = first_pt
            .and_then(|pt| {
                section.iter().find_map(|l| {
                    let rest = l
                        .strip_prefix("a=rtpmap:")?
                        .strip_prefix(pt)?
                        .strip_prefix(' ')?;
                    let mut parts = rest.split('/');
                    let name = parts.next()?;
                    let rate = parts.next()?.parse::<u32>().ok()?;
                    let prefix = if kind == TrackKind::Audio {
                        "audio"
                    } else {
                        "video"
                    };
                    Some((Some(format!("{prefix}/{name}")), rate))
                })
            })
            .unwrap_or((None, 90_000));
        let feedback = |wanted: &str| {
            section.iter().any(|l| {
                l.strip_prefix("a=rtcp-fb:")
                    .and_then(|r| r.split_once(' '))
                    .is_some_and(|(_, fb)| fb.trim() == wanted)
            })
        };
        let (nack, pli) = (feedback("nack"), feedback("nack pli"));
        let msid = attr("msid").and_then(|v| {
            let (s, t) = v.trim().split_once(' ')?;
            Some((s.to_owned(), t.to_owned()))
        });
        let mut ssrcs: Vec<u32> = Vec::new();
        let mut ssrc_msid = None;
        for line in section.iter() {
            let Some(rest) = line.strip_prefix("a=ssrc:") else {
                continue;
            };
            let mut parts = rest.splitn(2, ' ');
            let Some(Ok(ssrc)) = parts.next().map(str::parse::<u32>) else {
                continue;
            };
            if !ssrcs.contains(&ssrc) {
                ssrcs.push(ssrc);
            }
            if let Some(v) = parts.next().and_then(|a| a.strip_prefix("msid:")) {
                if let Some((s, t)) = v.trim().split_once(' ') {
                    ssrc_msid = Some((s.to_owned(), t.to_owned()));
                }
            }
        }
        let Some((stream_id, track_id)) = msid.or(ssrc_msid) else {
            continue;
        };
        // The first SSRC is the media's (a second would be a repair stream).
        if let Some(ssrc) = ssrcs.first() {
            offer.streams.push(OfferedStream {
                ssrc: *ssrc,
                stream_id,
                track_id,
                kind,
                mime,
                clock_rate,
                nack,
                pli,
            });
        }
    }
    Ok(offer)
}

/// A `recvonly` offer for one audio and one video track with every codec the client accounts,
/// the header extensions it measures with, NACK/PLI/FIR feedback, and `local` as the one
/// host candidate (gathering is complete: WHEP does not trickle).
fn build_offer(local: SocketAddr, ours: &str) -> String {
    let session_id: u64 = rand::random::<u64>() >> 1;
    let extensions = [
        (1, "urn:ietf:params:rtp-hdrext:sdes:mid"),
        (2, crate::capture_clock::ABS_SEND_TIME_URI),
        (3, crate::capture_clock::ABS_CAPTURE_TIME_URI),
    ];
    let mut out = format!(
        "v=0\r\no=- {session_id} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
         a=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n"
    );
    // (payload type, rtpmap, fmtp) per codec.
    type Codecs<'a> = &'a [(u8, &'a str, &'a str)];
    let sections: [(&str, &str, Codecs<'_>); 2] = [
        (
            "audio",
            "0",
            &[(111, "opus/48000/2", "minptime=10;useinbandfec=1")],
        ),
        (
            "video",
            "1",
            &[
                (96, "VP8/90000", ""),
                (98, "VP9/90000", "profile-id=0"),
                (
                    102,
                    "H264/90000",
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                ),
                (45, "AV1/90000", ""),
            ],
        ),
    ];
    for (kind, mid, codecs) in sections {
        let pts: Vec<String> = codecs.iter().map(|(pt, _, _)| pt.to_string()).collect();
        out.push_str(&format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
             {ours}a=rtcp-mux\r\na=rtcp-rsize\r\n",
            pts.join(" "),
        ));
        for (pt, rtpmap, fmtp) in codecs.iter() {
            out.push_str(&format!("a=rtpmap:{pt} {rtpmap}\r\n"));
            if !fmtp.is_empty() {
                out.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
            }
            if kind == "video" {
                out.push_str(&format!(
                    "a=rtcp-fb:{pt} nack\r\na=rtcp-fb:{pt} nack pli\r\na=rtcp-fb:{pt} ccm fir\r\n"
                ));
            }
        }
        for (id, uri) in extensions {
            out.push_str(&format!("a=extmap:{id} {uri}\r\n"));
        }
        if kind == "audio" {
            out.push_str(&format!("a=extmap:4 {}\r\n", crate::media::AUDIO_LEVEL_URI));
        }
        out.push_str(&format!(
            "a=recvonly\r\na=candidate:1 1 udp 2130706431 {} {} typ host\r\na=end-of-candidates\r\n",
            local.ip(),
            local.port()
        ));
    }
    out
}

/// The answer to `offer`: every section accepted as it was offered (codecs, feedback, header
/// extensions other than transport-wide congestion control, which we do not report), receiving
/// only, with our ICE credentials and fingerprint, as the DTLS client.
fn build_answer(offer: &str, ours: &str) -> String {
    let mut out = String::with_capacity(offer.len());
    let mut push = |line: &str| {
        out.push_str(line);
        out.push_str("\r\n");
    };
    let all = sections(offer);
    let session_id: u64 = rand::random::<u64>() >> 1;
    push("v=0");
    push(&format!("o=- {session_id} 2 IN IP4 127.0.0.1"));
    push("s=-");
    push("t=0 0");
    if let Some(session) = all.first() {
        for line in session {
            if line.starts_with("a=group:") || *line == "a=extmap-allow-mixed" {
                push(line);
            }
        }
    }
    push("a=msid-semantic: WMS");
    for section in all.iter().skip(1) {
        let Some(m) = section.first() else { continue };
        let mut fields: Vec<&str> = m.split_whitespace().collect();
        let rejected = fields.get(1) == Some(&"0");
        if !rejected && fields.len() > 1 {
            fields[1] = "9";
        }
        push(&fields.join(" "));
        push("c=IN IP4 0.0.0.0");
        let transport_cc = section.iter().find_map(|l| {
            let rest = l.strip_prefix("a=extmap:")?;
            let (id, uri) = rest.split_once(' ')?;
            uri.contains("transport-wide-cc").then(|| id.to_owned())
        });
        let application = m.starts_with("m=application");
        let mut direction = None;
        for line in section.iter().skip(1) {
            let Some(a) = line.strip_prefix("a=") else {
                continue;
            };
            let name = a.split([':', ' ']).next().unwrap_or("");
            match name {
                "mid" | "rtcp-mux" | "rtcp-rsize" | "rtpmap" | "fmtp" | "sctp-port"
                | "max-message-size" => push(line),
                "rtcp-fb" if !a.contains("transport-cc") => push(line),
                "extmap" => {
                    let id = a
                        .strip_prefix("extmap:")
                        .and_then(|r| r.split([' ', '/']).next());
                    if id != transport_cc.as_deref() {
                        push(line);
                    }
                }
                "sendonly" | "sendrecv" => direction = Some("a=recvonly"),
                "recvonly" | "inactive" => direction = Some("a=inactive"),
                _ => {}
            }
        }
        if rejected {
            continue;
        }
        push(ours.trim_end_matches("\r\n"));
        if !application {
            push(direction.unwrap_or("a=inactive"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::transport::tests::{check_response, dtls_client, peer_srtp, Fixture};
    use super::*;
    use rtc::peer_connection::state::RTCPeerConnectionState;
    use rtc::shared::marshal::Marshal;

    #[test]
    fn gaps_are_nacked_after_a_reordering_delay_and_repairs_stop_them() {
        let t0 = Instant::now();
        let mut f = Feedback::new(90_000, true, true);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        f.on_rtp(65_534, 0, ms(0), t0);
        // 65535, 0 and 1 are missing (across the wrap).
        f.on_rtp(2, 3000, ms(1), t0);
        let mut out = Vec::new();
        f.due_nacks(ms(5), &mut out);
        assert!(out.is_empty(), "reordering gets {NACK_DELAY:?}");
        assert_eq!(f.next_nack(), Some(ms(1) + NACK_DELAY));
        f.due_nacks(ms(11), &mut out);
        assert_eq!(out, vec![65_535, 0, 1]);
        // The retransmission of 0 arrives; the others are asked for again after NACK_RETRY.
        f.on_rtp(0, 1000, ms(12), t0);
        out.clear();
        f.due_nacks(ms(50), &mut out);
        assert!(out.is_empty());
        f.due_nacks(ms(111), &mut out);
        assert_eq!(out, vec![65_535, 1]);
        // Given up after NACK_MAX_AGE: the frame is lost, a keyframe is asked for, once per
        // PLI_INTERVAL however many packets are given up.
        assert_eq!(f.next_nack(), Some(ms(111) + NACK_RETRY));
        for t in (211..=911).step_by(100) {
            out.clear();
            f.due_nacks(ms(t), &mut out);
            assert_eq!(out, vec![65_535, 1], "retry at {t} ms");
        }
        // NACK_MAX sent: nothing more until the packets are given up.
        assert!(!f.take_pli(ms(950)));
        assert_eq!(f.next_nack(), Some(ms(1) + NACK_MAX_AGE));
        out.clear();
        f.due_nacks(ms(1_001), &mut out);
        assert!(out.is_empty());
        assert!(f.take_pli(ms(1_001)));
        assert!(!f.take_pli(ms(1_002)));
        assert_eq!(f.next_nack(), None);
        f.on_rtp(10, 30_000, ms(1_100), t0);
        f.due_nacks(ms(2_200), &mut out);
        assert!(f.keyframe_needed);
        assert_eq!(f.next_nack(), Some(ms(1_001) + PLI_INTERVAL));
        assert!(!f.take_pli(ms(1_500)));
        assert!(f.take_pli(ms(2_200)));
    }

    #[test]
    fn audio_without_nack_feedback_is_never_nacked() {
        let t0 = Instant::now();
        let mut f = Feedback::new(48_000, false, false);
        f.on_rtp(1, 0, t0, t0);
        f.on_rtp(10, 960, t0, t0);
        let mut out = Vec::new();
        f.due_nacks(t0 + Duration::from_secs(2), &mut out);
        assert!(out.is_empty());
        assert!(!f.take_pli(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn receiver_reports_count_loss_per_interval_and_echo_the_sender_report() {
        let t0 = Instant::now();
        let mut f = Feedback::new(90_000, false, false);
        for seq in (0u16..100).filter(|s| s % 10 != 0) {
            f.on_rtp(seq, u32::from(seq) * 3000, t0, t0);
        }
        f.last_sr = Some((0x1234_5678, t0));
        let r = f
            .report(7, t0 + Duration::from_millis(500))
            .expect("a report once packets arrived");
        // 1..=99 expected from the first one seen; 10, 20, ... 90 missing.
        assert_eq!(r.ssrc, 7);
        assert_eq!(r.last_sequence_number, 99);
        assert_eq!(r.total_lost, 9);
        assert_eq!(r.fraction_lost, ((9u32 << 8) / 99) as u8);
        assert_eq!(r.last_sender_report, 0x1234_5678);
        assert_eq!(r.delay, 32_768, "half a second in 1/65536 s");
        // Nothing lost since: the next interval's fraction is 0, the total stays.
        f.on_rtp(100, 300_000, t0, t0);
        let r = f.report(7, t0).expect("report");
        assert_eq!((r.fraction_lost, r.total_lost), (0, 9));
        assert!(Feedback::new(90_000, false, false).report(7, t0).is_none());
    }

    #[test]
    fn sequence_numbers_extend_across_wraps() {
        assert_eq!(extend_seq(65_535, 0), 65_536);
        assert_eq!(extend_seq(65_536, 65_535), 65_535);
        assert_eq!(extend_seq(10, 5), 5);
        assert_eq!(extend_seq(131_071, 2), 131_074);
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
a=fingerprint:sha-256 AA:BB\r\na=group:BUNDLE 0 1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=setup:actpass\r\na=mid:0\r\n\
a=ice-ufrag:srv\r\na=ice-pwd:secret\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 nack\r\na=rtcp-fb:96 transport-cc\r\na=rtpmap:97 VP9/90000\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time\r\n\
a=ssrc:1234 cname:x\r\na=ssrc:1234 msid:alice cam\r\na=msid:alice cam\r\na=sendonly\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
a=sctp-port:5000\r\n";

    #[test]
    fn offer_yields_credentials_candidates_and_tracks() {
        let offer = parse_offer(OFFER).expect("offer");
        assert_eq!(offer.remote.ufrag, "srv");
        assert_eq!(offer.remote.pwd, "secret");
        assert_eq!(offer.remote.fingerprint, "AA:BB");
        assert_eq!(
            offer.remote.candidates,
            vec!["127.0.0.1:7882".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(offer.streams.len(), 1);
        let s = &offer.streams[0];
        assert_eq!(
            (s.ssrc, s.stream_id.as_str(), s.track_id.as_str()),
            (1234, "alice", "cam")
        );
        assert_eq!(s.mime.as_deref(), Some("video/VP8"));
        assert!(s.nack);
    }

    #[test]
    fn answer_receives_everything_offered_without_transport_cc() {
        let answer = build_answer(
            OFFER,
            "a=ice-ufrag:me\r\na=ice-pwd:pw\r\na=fingerprint:sha-256 AB:CD\r\na=setup:active\r\n",
        );
        assert!(answer.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"));
        assert!(answer.contains("a=recvonly\r\n"));
        assert!(answer.contains("a=setup:active\r\n"));
        assert!(answer.contains("a=fingerprint:sha-256 AB:CD\r\n"));
        assert!(answer.contains("a=ice-ufrag:me\r\n"));
        assert!(answer.contains("abs-capture-time"));
        assert!(!answer.contains("transport-wide-cc"));
        assert!(!answer.contains("transport-cc"));
        assert!(!answer.contains("a=ssrc"));
        assert!(answer.contains("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"));
        assert!(answer.contains("a=group:BUNDLE 0 1\r\n"));
    }

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
            "v=0\r\na=fingerprint:sha-256 {}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
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

    #[test]
    fn offers_without_credentials_are_refused() {
        assert!(parse_offer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n").is_err());
    }
}
