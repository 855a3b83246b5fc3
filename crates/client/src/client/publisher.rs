//! [`Publisher`]: a send-only WebRTC endpoint, sans-IO, for the engine.
//!
//! A publishing bot in cheap mode loops pre-encoded frames (Opus packets, an IVF clip per
//! video encoding) with fresh timestamps. On an async `webrtc` connection every frame took a
//! task wake-up, a sample writer, the packetizer and the interceptor chain, and each packet a
//! socket write of its own task: publishing bots cost nearly what the server spent on them.
//! Here the engine's thread paces every bot's frames and this endpoint turns each into
//! packets the way a browser's sender does: packetized for its codec (webrtc-rs's payloaders,
//! VP9 inter frames marked as in [`crate::vp9`]), stamped with the header extensions the
//! answer accepted (mid, rid for simulcast, transport-wide sequence number, abs-send-time,
//! abs-capture-time, audio level), encrypted once and kept for retransmission. It answers
//! NACKs from that history, PLI/FIR by jumping to the clip's next keyframe, and sends sender
//! reports. ICE, DTLS and SRTP are the [`Transport`]'s.
//!
//! The offer is a browser's: one `sendonly` section per track with its `msid`, simulcast as
//! `a=rid`/`a=simulcast` (RFC 8853) or a plain SSRC, our host candidate and no trickle
//! (`description`). What is sent, and each encoding's pacing and history, is `tracks`'.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use chorus_signal::protocol::{Target, TrackKind};
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp::header::{Extension, Header, EXTENSION_PROFILE_ONE_BYTE};
use rtc::shared::marshal::{Marshal, MarshalSize};

use super::error::ClientError;
use super::sdp::{self, Remote};
use super::transport::{Demuxed, Identity, Transport};
use tracks::{Codec, ExtensionIds, Layer, Track, HISTORY};
pub(crate) use tracks::{LoopSource, PublishLayer, PublishTrack};

mod description;
#[cfg(test)]
mod tests;
mod tracks;

/// RTP payload size limit (packet size stays under a 1280-byte IPv6 minimum MTU with headers,
/// extensions and the SRTP tag, as browsers' 1200).
const MTU: usize = 1200;
/// Sender reports per stream, every second.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// While muted, audio sends one silence frame per this many frame times (see
/// [`crate::media::OPUS_SILENCE_FRAME`]).
const DTX_EVERY: u32 = 20;
/// Bytes of header extension values allocated at a time.
const ARENA: usize = 4096;

/// One publisher connection's endpoint.
pub(super) struct Publisher {
    pub(super) transport: Transport,
    tracks: Vec<Track>,
    cname: String,
    /// Transport-wide sequence number of the next packet.
    transport_sequence: u16,
    next_report: Option<Instant>,
    /// Reused for building each packet before encryption.
    plain: BytesMut,
    /// Reused for each packet's header extensions.
    extensions: Vec<Extension>,
    /// Header extension values are cut from here (refilled every [`ARENA`] bytes).
    arena: BytesMut,
}

impl Publisher {
    pub(super) fn new(
        now: Instant,
        local: SocketAddr,
        identity: Arc<Identity>,
        tracks: Vec<PublishTrack>,
    ) -> Publisher {
        let tracks = tracks
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let codec = Codec::of(&t);
                Track {
                    kind: t.kind,
                    stream_id: t.stream_id,
                    track_id: t.track_id,
                    mid: Bytes::from(i.to_string().into_bytes()),
                    codec,
                    payload_type: description::offered(codec).payload_type,
                    extensions: ExtensionIds::default(),
                    accepted: false,
                    layers: t.layers.into_iter().map(|l| Layer::new(l, codec)).collect(),
                }
            })
            .collect();
        Publisher {
            transport: Transport::new(now, local, Target::Publisher, identity),
            tracks,
            cname: super::transport::random_token(16),
            transport_sequence: rand::random(),
            next_report: None,
            plain: BytesMut::with_capacity(1500),
            extensions: Vec::with_capacity(8),
            arena: BytesMut::new(),
        }
    }

    /// Our offer: one `sendonly` section per track, host candidate included.
    pub(super) fn offer(&self) -> String {
        description::offer(
            &self.tracks,
            &self.transport.ours(),
            self.transport.local,
            &self.cname,
        )
        .marshal()
    }

    /// Applies the server's answer to [`Self::offer`]: payload types and header extensions
    /// per section, and the server's transport parameters.
    pub(super) fn apply_answer(&mut self, now: Instant, answer: &str) -> Result<(), ClientError> {
        let answer = sdp::parse(answer)?;
        let remote = Remote::of(&answer)?;
        self.transport.apply_answer_role(&answer);
        let accepted = description::parse_answer(&answer);
        for track in &mut self.tracks {
            let mid = std::str::from_utf8(&track.mid).unwrap_or("");
            match accepted.get(mid) {
                Some(section) => {
                    track.accepted = true;
                    track.payload_type = section.payload_type.unwrap_or(track.payload_type);
                    track.extensions = section.extensions;
                    tracing::debug!(
                        mid,
                        payload_type = track.payload_type,
                        extensions = ?track.extensions,
                        "publisher section answered"
                    );
                }
                None => track.accepted = false,
            }
        }
        self.transport.set_remote(now, remote)?;
        Ok(())
    }

    /// Handles one datagram from `from`.
    pub(super) fn handle_read(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match self.transport.handle_read(now, from, data) {
            Demuxed::Rtcp => self.on_rtcp(data),
            // The server sends no media on this connection.
            Demuxed::Rtp | Demuxed::Handled => {}
        }
        if self.transport.connected_at().is_some() {
            self.start_media(now);
        }
    }

    /// Starts every encoding's loop once the connection is up (earlier packets would be lost);
    /// once only: the first sender report is scheduled with it.
    fn start_media(&mut self, now: Instant) {
        if self.next_report.is_some() {
            return;
        }
        for layer in self
            .tracks
            .iter_mut()
            .filter(|t| t.accepted)
            .flat_map(|t| &mut t.layers)
        {
            layer.due = Some(now);
        }
        self.next_report = Some(now + REPORT_INTERVAL);
    }

    fn on_rtcp(&mut self, data: &[u8]) {
        let Some(packets) = self.transport.read_rtcp(data) else {
            return;
        };
        for packet in &packets {
            if let Some(ssrc) = crate::keyframe::keyframe_request_ssrc(packet.as_ref()) {
                if let Some(layer) = self.layer_mut(ssrc) {
                    layer
                        .counters
                        .keyframe_requests
                        .fetch_add(1, Ordering::Relaxed);
                    layer
                        .counters
                        .keyframe_wanted
                        .store(true, Ordering::Relaxed);
                }
            } else if let Some(nack) = packet.as_any().downcast_ref::<TransportLayerNack>() {
                self.retransmit(nack);
            }
        }
    }

    fn layer_mut(&mut self, ssrc: u32) -> Option<&mut Layer> {
        self.tracks
            .iter_mut()
            .flat_map(|t| &mut t.layers)
            .find(|l| l.ssrc == ssrc)
    }

    /// Sends again what a NACK asks for and the history still holds.
    fn retransmit(&mut self, nack: &TransportLayerNack) {
        let Publisher {
            tracks, transport, ..
        } = self;
        let Some(layer) = tracks
            .iter()
            .flat_map(|t| &t.layers)
            .find(|l| l.ssrc == nack.media_ssrc)
        else {
            return;
        };
        for seq in nack.nacks.iter().flat_map(|pair| *pair) {
            if let Some(Some((sent, datagram))) = layer.history.get(usize::from(seq) % HISTORY) {
                if *sent == seq {
                    transport.send(datagram.clone());
                }
            }
        }
    }

    /// Runs what is due at `now`: frames, sender reports, checks, DTLS retransmissions.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        self.transport.handle_timeout(now);
        if self.transport.srtp.is_none() {
            return;
        }
        self.start_media(now);
        let wall = SystemTime::now();
        for t in 0..self.tracks.len() {
            for l in 0..self.tracks[t].layers.len() {
                while self.tracks[t].layers[l].due.is_some_and(|due| due <= now) {
                    self.send_frame(t, l, now, wall);
                }
            }
        }
        if self.next_report.is_some_and(|at| at <= now) {
            self.next_report = Some(now + REPORT_INTERVAL);
            self.send_reports(now, wall);
        }
    }

    /// Sends encoding `l` of track `t`'s next frame (or, muted, nothing but audio's DTX frame)
    /// and schedules the one after.
    fn send_frame(&mut self, t: usize, l: usize, now: Instant, wall: SystemTime) {
        let track = &mut self.tracks[t];
        let (codec, kind) = (track.codec, track.kind);
        let layer = &mut track.layers[l];
        if layer.due.is_none() {
            return;
        }
        let paused = layer.counters.paused.load(Ordering::Relaxed);
        let (data, duration, level, keyframe) = match &layer.source {
            LoopSource::Audio { clip, .. } => {
                let Some(frame) = clip.frames.get(layer.next) else {
                    layer.due = None;
                    return;
                };
                layer.next = (layer.next + 1) % clip.frames.len();
                if paused {
                    layer.dtx += 1;
                    if layer.dtx % DTX_EVERY != 1 {
                        layer.advance(frame.duration, now);
                        return;
                    }
                    (
                        Bytes::from_static(&crate::media::OPUS_SILENCE_FRAME),
                        frame.duration,
                        Some(127),
                        false,
                    )
                } else {
                    layer.dtx = 0;
                    (frame.data.clone(), frame.duration, frame.level, false)
                }
            }
            LoopSource::Video(clip) => {
                let duration = layer.frame_duration;
                if paused {
                    layer.advance(duration, now);
                    return;
                }
                if layer
                    .counters
                    .keyframe_wanted
                    .swap(false, Ordering::Relaxed)
                {
                    layer.next = crate::media::next_keyframe(&layer.keyframes, layer.next)
                        .unwrap_or(layer.next);
                }
                let Some(frame) = clip.frames.get(layer.next) else {
                    layer.due = None;
                    return;
                };
                let keyframe = clip.is_keyframe(layer.next);
                layer.next = (layer.next + 1) % clip.frames.len();
                (frame.data.clone(), duration, None, keyframe)
            }
        };
        let timestamp = layer.timestamp;
        layer.advance(duration, now);
        let payloads = match layer.payloader.payload(MTU, &data) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "packetizing a frame failed");
                layer.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let inter_vp9 = codec == Codec::Vp9 && !crate::ivf::is_vp9_keyframe(&data);
        if keyframe {
            layer.counters.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        layer.counters.frames.fetch_add(1, Ordering::Relaxed);
        layer
            .counters
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let count = payloads.len();
        for (i, payload) in payloads.into_iter().enumerate() {
            let payload = match inter_vp9
                .then(|| crate::vp9::mark_inter(&payload))
                .flatten()
            {
                Some(marked) => marked.freeze(),
                None => payload,
            };
            let marker = kind == TrackKind::Video && i + 1 == count;
            self.send_packet(t, l, &payload, timestamp, marker, level, wall);
        }
    }

    /// Builds, encrypts, keeps (video) and queues one packet.
    #[allow(clippy::too_many_arguments)]
    fn send_packet(
        &mut self,
        t: usize,
        l: usize,
        payload: &[u8],
        timestamp: u32,
        marker: bool,
        level: Option<u8>,
        wall: SystemTime,
    ) {
        let track = &mut self.tracks[t];
        let ids = track.extensions;
        let layer = &mut track.layers[l];
        // The extension list and the values' bytes are reused: nothing allocated per packet.
        let mut extensions = std::mem::take(&mut self.extensions);
        extensions.clear();
        let arena = &mut self.arena;
        let mut add = |id: u8, value: &[u8]| {
            if id != 0 {
                if arena.capacity() - arena.len() < value.len() {
                    *arena = BytesMut::with_capacity(ARENA);
                }
                arena.extend_from_slice(value);
                extensions.push(Extension {
                    id,
                    payload: arena.split().freeze(),
                });
            }
        };
        add(ids.mid, &track.mid);
        if !layer.rid.is_empty() {
            add(ids.rid, &layer.rid);
        }
        if ids.transport_cc != 0 {
            add(ids.transport_cc, &self.transport_sequence.to_be_bytes());
            self.transport_sequence = self.transport_sequence.wrapping_add(1);
        }
        if ids.abs_send_time != 0 {
            let stamp = crate::capture_clock::abs_send_time(wall).to_be_bytes();
            add(ids.abs_send_time, &stamp[1..]);
        }
        if ids.abs_capture_time != 0 {
            // The capture stamp subscribers measure latency from (see `capture_clock`).
            add(
                ids.abs_capture_time,
                &crate::capture_clock::ntp(wall).to_be_bytes(),
            );
        }
        if let (true, Some(level)) = (ids.audio_level != 0, level) {
            let level = level.min(127);
            let voice = if level < 127 { 0x80 } else { 0 };
            add(ids.audio_level, &[voice | level]);
        }
        let header = Header {
            version: 2,
            padding: false,
            extension: !extensions.is_empty(),
            marker,
            payload_type: track.payload_type,
            sequence_number: layer.sequence,
            timestamp,
            ssrc: layer.ssrc,
            csrc: Vec::new(),
            extension_profile: EXTENSION_PROFILE_ONE_BYTE,
            extensions,
            extensions_padding: 0,
        };
        layer.sequence = layer.sequence.wrapping_add(1);
        let size = header.marshal_size();
        self.plain.clear();
        self.plain.resize(size, 0);
        if header.marshal_to(&mut self.plain[..]).is_err() {
            layer.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.plain.extend_from_slice(payload);
        let Some(srtp) = self.transport.srtp.as_mut() else {
            return;
        };
        let datagram = match srtp.local.encrypt_rtp_with_header(&self.plain, &header) {
            Ok(d) => d.freeze(),
            Err(e) => {
                tracing::debug!(error = %e, "SRTP");
                layer.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        layer.packets = layer.packets.wrapping_add(1);
        layer.octets = layer.octets.wrapping_add(payload.len() as u32);
        if let Some(slot) = layer
            .history
            .get_mut(usize::from(header.sequence_number) % HISTORY)
        {
            *slot = Some((header.sequence_number, datagram.clone()));
        }
        self.transport.send(datagram);
        self.extensions = header.extensions;
    }

    /// A sender report per sending encoding.
    fn send_reports(&mut self, now: Instant, wall: SystemTime) {
        let ntp_time = crate::capture_clock::ntp(wall);
        let reports: Vec<Box<dyn rtc::rtcp::packet::Packet>> = self
            .tracks
            .iter()
            .flat_map(|t| &t.layers)
            .filter(|l| l.packets > 0)
            .map(|l| {
                Box::new(SenderReport {
                    ssrc: l.ssrc,
                    ntp_time,
                    rtp_time: l.timestamp_at(now),
                    packet_count: l.packets,
                    octet_count: l.octets,
                    reports: Vec::new(),
                    profile_extensions: Bytes::new(),
                }) as Box<dyn rtc::rtcp::packet::Packet>
            })
            .collect();
        if !reports.is_empty() {
            self.transport.send_rtcp(&reports);
        }
    }

    /// The earliest instant [`Self::handle_timeout`] has work at.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let frames = self
            .tracks
            .iter()
            .flat_map(|t| &t.layers)
            .filter_map(|l| l.due)
            .min();
        [self.transport.poll_timeout(), frames, self.next_report]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next datagram to send, and where.
    pub(super) fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.transport.poll_transmit()
    }
}
