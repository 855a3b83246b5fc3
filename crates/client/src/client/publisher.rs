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
//! `a=rid`/`a=simulcast` (RFC 8853) or a plain SSRC, our host candidate and no trickle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use chorus_signal::protocol::{Target, TrackKind};
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp::header::{Extension, Header, EXTENSION_PROFILE_ONE_BYTE};
use rtc::rtp::packetizer::Payloader;
use rtc::shared::marshal::{Marshal, MarshalSize};

use super::transport::{sections, Demuxed, Identity, Remote, Transport};
use super::{ClientError, Shared};
use crate::ivf::{IvfClip, IvfCodec};
use crate::media::{AudioClip, AudioFrame, AudioSource, SendCounters, VideoSource};

/// RTP payload size limit (packet size stays under a 1280-byte IPv6 minimum MTU with headers,
/// extensions and the SRTP tag, as browsers' 1200).
const MTU: usize = 1200;
/// Sender reports per stream, every second.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Sent video packets kept for retransmission, per stream (about 3 s at 1.5 Mbps).
const HISTORY: usize = 512;
/// While muted, audio sends one silence frame per this many frame times (see
/// [`crate::media::OPUS_SILENCE_FRAME`]).
const DTX_EVERY: u32 = 20;
/// Bytes of header extension values allocated at a time.
const ARENA: usize = 4096;
/// A paused or stalled loop never bursts more than this much media to catch up.
const MAX_LAG: Duration = Duration::from_secs(1);

/// The header extensions the publisher offers, with their ids.
const EXT_MID: (u8, &str) = (1, rtc::sdp::extmap::SDES_MID_URI);
const EXT_ABS_SEND_TIME: (u8, &str) = (2, crate::capture_clock::ABS_SEND_TIME_URI);
const EXT_ABS_CAPTURE_TIME: (u8, &str) = (3, crate::capture_clock::ABS_CAPTURE_TIME_URI);
const EXT_AUDIO_LEVEL: (u8, &str) = (4, crate::media::AUDIO_LEVEL_URI);
const EXT_TRANSPORT_CC: (u8, &str) = (
    5,
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
);
const EXT_RID: (u8, &str) = (10, rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI);

/// What one encoding loops.
#[derive(Clone)]
pub(crate) enum LoopSource {
    /// Opus packets, from packet `start` on.
    Audio { clip: Arc<AudioClip>, start: usize },
    /// Video frames of an IVF clip (VP8, VP9 or AV1).
    Video(Arc<IvfClip>),
}

impl LoopSource {
    /// The loop for an audio source, `None` for one encoded live.
    pub(crate) fn audio(source: &AudioSource) -> Option<LoopSource> {
        match source {
            AudioSource::Silence => Some(LoopSource::Audio {
                clip: Arc::new(AudioClip {
                    frames: vec![AudioFrame {
                        data: Bytes::from_static(&crate::media::OPUS_SILENCE_FRAME),
                        duration: crate::media::OPUS_FRAME_DURATION,
                        level: Some(127),
                    }],
                }),
                start: 0,
            }),
            // A random start, so publishers sharing a clip do not talk in unison.
            AudioSource::Clip(clip) => Some(LoopSource::Audio {
                clip: Arc::clone(clip),
                start: rand::random_range(0..clip.frames.len().max(1)),
            }),
            AudioSource::Live(_) => None,
        }
    }

    /// The loop of each encoding of a video source (one per simulcast layer, lowest first),
    /// `None` when any is encoded live.
    pub(crate) fn video(source: &VideoSource) -> Option<Vec<LoopSource>> {
        match source {
            VideoSource::Clip(clip) => Some(vec![LoopSource::Video(Arc::clone(clip))]),
            VideoSource::Live(_) => None,
            VideoSource::Simulcast(layers) => layers
                .iter()
                .map(|l| match &l.source {
                    VideoSource::Clip(clip) => Some(LoopSource::Video(Arc::clone(clip))),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// One encoding of a track to publish: its `rid` (empty without simulcast), SSRC, counters
/// and what it loops.
pub(crate) struct PublishLayer {
    pub rid: String,
    pub ssrc: u32,
    pub counters: Arc<SendCounters>,
    pub source: LoopSource,
}

/// A track to publish.
pub(crate) struct PublishTrack {
    pub kind: TrackKind,
    pub stream_id: String,
    pub track_id: String,
    /// One per encoding, lowest first.
    pub layers: Vec<PublishLayer>,
}

/// The codec a track is offered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Opus,
    Vp8,
    Vp9,
    Av1,
}

impl Codec {
    fn of(track: &PublishTrack) -> Codec {
        match track.layers.first().map(|l| &l.source) {
            Some(LoopSource::Video(clip)) => match clip.codec() {
                Some(IvfCodec::Vp9) => Codec::Vp9,
                Some(IvfCodec::Av1) => Codec::Av1,
                _ => Codec::Vp8,
            },
            _ => Codec::Opus,
        }
    }

    /// Offered payload type, rtpmap and fmtp.
    fn rtpmap(self) -> (u8, &'static str, &'static str) {
        match self {
            Codec::Opus => (111, "opus/48000/2", "minptime=10;useinbandfec=1"),
            Codec::Vp8 => (96, "VP8/90000", ""),
            Codec::Vp9 => (98, "VP9/90000", "profile-id=0"),
            Codec::Av1 => (45, "AV1/90000", ""),
        }
    }

    fn clock_rate(self) -> u32 {
        if self == Codec::Opus {
            48_000
        } else {
            90_000
        }
    }

    fn payloader(self) -> Box<dyn Payloader> {
        match self {
            Codec::Opus => Box::new(rtc::rtp::codec::opus::OpusPayloader),
            Codec::Vp8 => {
                let mut vp8 = rtc::rtp::codec::vp8::Vp8Payloader::default();
                vp8.enable_picture_id = true;
                Box::new(vp8)
            }
            Codec::Vp9 => Box::new(rtc::rtp::codec::vp9::Vp9Payloader::default()),
            Codec::Av1 => Box::new(rtc::rtp::codec::av1::Av1Payloader::default()),
        }
    }
}

/// Header extension ids the answer accepted for a section (0: not accepted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ExtensionIds {
    mid: u8,
    rid: u8,
    abs_send_time: u8,
    abs_capture_time: u8,
    audio_level: u8,
    transport_cc: u8,
}

/// One encoding being sent.
struct Layer {
    rid: Bytes,
    ssrc: u32,
    counters: Arc<SendCounters>,
    source: LoopSource,
    payloader: Box<dyn Payloader>,
    /// The next frame of the loop.
    next: usize,
    keyframes: Vec<usize>,
    frame_duration: Duration,
    /// When the next frame is due; `None` until media starts.
    due: Option<Instant>,
    /// The RTP timestamp of the frame due next.
    timestamp: u32,
    clock_rate: u32,
    sequence: u16,
    /// Muted frame times since the last DTX frame (audio).
    dtx: u32,
    /// Sent packets by sequence number modulo [`HISTORY`] (video only).
    history: Vec<Option<(u16, Bytes)>>,
    packets: u32,
    octets: u32,
}

impl Layer {
    fn new(layer: PublishLayer, codec: Codec) -> Layer {
        let (keyframes, frame_duration, history) = match &layer.source {
            LoopSource::Video(clip) => (
                clip.keyframe_indices(),
                clip.frame_duration(),
                vec![None; HISTORY],
            ),
            LoopSource::Audio { .. } => (Vec::new(), crate::media::OPUS_FRAME_DURATION, Vec::new()),
        };
        let next = match &layer.source {
            LoopSource::Audio { clip, start } => start % clip.frames.len().max(1),
            LoopSource::Video(_) => 0,
        };
        Layer {
            rid: Bytes::from(layer.rid.into_bytes()),
            ssrc: layer.ssrc,
            counters: layer.counters,
            source: layer.source,
            payloader: codec.payloader(),
            next,
            keyframes,
            frame_duration,
            due: None,
            timestamp: rand::random(),
            clock_rate: codec.clock_rate(),
            sequence: rand::random(),
            dtx: 0,
            history,
            packets: 0,
            octets: 0,
        }
    }

    /// Schedules the next frame `duration` after the current one (never more than
    /// [`MAX_LAG`] behind `now`), its RTP timestamp advanced by the time between them: frame
    /// durations in clock ticks, as a capture clock would, paused time included.
    fn advance(&mut self, duration: Duration, now: Instant) {
        let Some(due) = self.due else { return };
        let next = (due + duration).max(lag_floor(now));
        self.timestamp = self.timestamp.wrapping_add(self.ticks(next - due));
        self.due = Some(next);
    }

    fn ticks(&self, d: Duration) -> u32 {
        (d.as_secs_f64() * f64::from(self.clock_rate)).round() as u64 as u32
    }

    /// The RTP timestamp of instant `at` (for sender reports).
    fn timestamp_at(&self, at: Instant) -> u32 {
        match self.due {
            Some(due) if due >= at => self.timestamp.wrapping_sub(self.ticks(due - at)),
            Some(due) => self.timestamp.wrapping_add(self.ticks(at - due)),
            None => self.timestamp,
        }
    }
}

/// One published track: its section in the offer and its encodings.
struct Track {
    kind: TrackKind,
    stream_id: String,
    track_id: String,
    mid: Bytes,
    codec: Codec,
    payload_type: u8,
    extensions: ExtensionIds,
    /// Whether the answer accepted the section.
    accepted: bool,
    layers: Vec<Layer>,
}

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
        shared: Arc<Shared>,
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
                    payload_type: codec.rtpmap().0,
                    extensions: ExtensionIds::default(),
                    accepted: false,
                    layers: t.layers.into_iter().map(|l| Layer::new(l, codec)).collect(),
                }
            })
            .collect();
        Publisher {
            transport: Transport::new(now, local, Target::Publisher, shared, identity),
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
        let ours = self.transport.description_lines("actpass");
        let local = self.transport.local;
        let session_id: u64 = rand::random::<u64>() >> 1;
        let mids: Vec<&str> = self
            .tracks
            .iter()
            .map(|t| std::str::from_utf8(&t.mid).unwrap_or("0"))
            .collect();
        let stream = self.tracks.first().map_or("-", |t| t.stream_id.as_str());
        let mut out = format!(
            "v=0\r\no=- {session_id} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
             a=group:BUNDLE {}\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS {stream}\r\n",
            mids.join(" ")
        );
        for (track, mid) in self.tracks.iter().zip(mids) {
            let (pt, rtpmap, fmtp) = track.codec.rtpmap();
            let kind = match track.kind {
                TrackKind::Audio => "audio",
                TrackKind::Video => "video",
            };
            out.push_str(&format!(
                "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\n\
                 {ours}a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:{pt} {rtpmap}\r\n"
            ));
            if !fmtp.is_empty() {
                out.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
            }
            out.push_str(&format!("a=rtcp-fb:{pt} transport-cc\r\n"));
            let mut extensions = vec![
                EXT_MID,
                EXT_ABS_SEND_TIME,
                EXT_ABS_CAPTURE_TIME,
                EXT_TRANSPORT_CC,
            ];
            if track.kind == TrackKind::Audio {
                extensions.push(EXT_AUDIO_LEVEL);
            } else {
                out.push_str(&format!(
                    "a=rtcp-fb:{pt} nack\r\na=rtcp-fb:{pt} nack pli\r\na=rtcp-fb:{pt} ccm fir\r\n"
                ));
                extensions.push(EXT_RID);
            }
            for (id, uri) in extensions {
                out.push_str(&format!("a=extmap:{id} {uri}\r\n"));
            }
            out.push_str(&format!(
                "a=sendonly\r\na=msid:{} {}\r\n",
                track.stream_id, track.track_id
            ));
            let simulcast = track.layers.iter().any(|l| !l.rid.is_empty());
            if simulcast {
                let rids: Vec<&str> = track
                    .layers
                    .iter()
                    .map(|l| std::str::from_utf8(&l.rid).unwrap_or(""))
                    .collect();
                for rid in &rids {
                    out.push_str(&format!("a=rid:{rid} send\r\n"));
                }
                out.push_str(&format!("a=simulcast:send {}\r\n", rids.join(";")));
            } else if let Some(layer) = track.layers.first() {
                out.push_str(&format!(
                    "a=ssrc:{0} cname:{1}\r\na=ssrc:{0} msid:{2} {3}\r\n",
                    layer.ssrc, self.cname, track.stream_id, track.track_id
                ));
            }
            out.push_str(&format!(
                "a=candidate:1 1 udp 2130706431 {} {} typ host\r\na=end-of-candidates\r\n",
                local.ip(),
                local.port()
            ));
        }
        out
    }

    /// Applies the server's answer to [`Self::offer`]: payload types and header extensions
    /// per section, and the server's transport parameters.
    pub(super) fn apply_answer(&mut self, now: Instant, answer: &str) -> Result<(), ClientError> {
        let remote = Remote::parse(answer)?;
        self.transport.apply_answer_role(answer);
        let accepted = parse_answer(answer);
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

/// What the answer says about one of our sections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AnsweredSection {
    payload_type: Option<u8>,
    extensions: ExtensionIds,
}

/// The accepted sections of an answer by mid: the payload type chosen and the extension ids
/// kept. A section with port 0 is rejected and left out.
fn parse_answer(answer: &str) -> HashMap<String, AnsweredSection> {
    let mut out = HashMap::new();
    for section in sections(answer).into_iter().skip(1) {
        let Some(m) = section.first().and_then(|l| l.strip_prefix("m=")) else {
            continue;
        };
        let fields: Vec<&str> = m.split_whitespace().collect();
        if fields.get(1) == Some(&"0") {
            continue;
        }
        let Some(mid) = section
            .iter()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(str::trim)
        else {
            continue;
        };
        let mut answered = AnsweredSection {
            payload_type: fields.get(3).and_then(|pt| pt.parse().ok()),
            ..Default::default()
        };
        for line in &section {
            let Some((id, uri)) = line
                .strip_prefix("a=extmap:")
                .and_then(|rest| rest.split_once(' '))
            else {
                continue;
            };
            // `id/direction`.
            let Ok(id) = id.split('/').next().unwrap_or("").parse::<u8>() else {
                continue;
            };
            // The one-byte header form carries ids 1-14.
            if !(1..=14).contains(&id) {
                continue;
            }
            let uri = uri.split_whitespace().next().unwrap_or("");
            let ids = &mut answered.extensions;
            for (slot, (_, known)) in [
                (&mut ids.mid, EXT_MID),
                (&mut ids.rid, EXT_RID),
                (&mut ids.abs_send_time, EXT_ABS_SEND_TIME),
                (&mut ids.abs_capture_time, EXT_ABS_CAPTURE_TIME),
                (&mut ids.audio_level, EXT_AUDIO_LEVEL),
                (&mut ids.transport_cc, EXT_TRANSPORT_CC),
            ] {
                if uri == known {
                    *slot = id;
                }
            }
        }
        out.insert(mid.to_owned(), answered);
    }
    out
}

/// The earliest a loop's next frame may be due: [`MAX_LAG`] before `now`.
fn lag_floor(now: Instant) -> Instant {
    now.checked_sub(MAX_LAG).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::super::transport::tests::{check_response, dtls_server, peer_srtp, Fixture};
    use super::super::transport::Srtp;
    use super::*;
    use rtc::peer_connection::state::RTCPeerConnectionState;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::nack_pairs_from_sequence_numbers;
    use rtc::shared::marshal::Unmarshal;

    /// A sent RTP packet as the server sees it.
    struct Seen {
        datagram: Bytes,
        packet: rtc::rtp::Packet,
    }

    impl Seen {
        fn extension(&self, id: u8) -> Option<Bytes> {
            self.packet.header.get_extension(id)
        }
    }

    struct Harness {
        p: Publisher,
        server: SocketAddr,
        peer: Srtp,
        audio: Arc<SendCounters>,
        q: (u32, Arc<SendCounters>),
        h: (u32, Arc<SendCounters>),
        t0: Instant,
    }

    impl Harness {
        /// A publisher of silence and a two-layer VP8 simulcast track, answered and connected
        /// to an in-process DTLS server.
        fn connected() -> Harness {
            let Fixture {
                shared,
                ours,
                theirs,
                t0,
                local,
                server,
                _signaling,
            } = Fixture::new();
            let clip = Arc::new(
                IvfClip::parse(crate::media::DEFAULT_VP8_CLIP).expect("the built-in clip"),
            );
            let counters = || Arc::new(SendCounters::default());
            let (audio, q, h) = (counters(), counters(), counters());
            let tracks = vec![
                PublishTrack {
                    kind: TrackKind::Audio,
                    stream_id: "alice".into(),
                    track_id: "mic".into(),
                    layers: vec![PublishLayer {
                        rid: String::new(),
                        ssrc: 11,
                        counters: Arc::clone(&audio),
                        source: LoopSource::audio(&AudioSource::Silence).expect("a loop"),
                    }],
                },
                PublishTrack {
                    kind: TrackKind::Video,
                    stream_id: "alice".into(),
                    track_id: "cam".into(),
                    layers: [("q", 21, &q), ("h", 22, &h)]
                        .into_iter()
                        .map(|(rid, ssrc, c)| PublishLayer {
                            rid: rid.into(),
                            ssrc,
                            counters: Arc::clone(c),
                            source: LoopSource::Video(Arc::clone(&clip)),
                        })
                        .collect(),
                },
            ];
            let mut p = Publisher::new(t0, local, shared, ours, tracks);
            let answer = format!(
                "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
                 a=fingerprint:sha-256 {fp}\r\na=group:BUNDLE 0 1\r\n\
                 m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
                 a=ice-ufrag:srv\r\na=ice-pwd:secret\r\na=setup:passive\r\na=rtcp-mux\r\n\
                 a=rtpmap:111 opus/48000/2\r\na=extmap:1 {mid}\r\na=extmap:4 {level}\r\n\
                 a=extmap:5 {twcc}\r\na=recvonly\r\n\
                 a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
                 m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
                 a=ice-ufrag:srv\r\na=ice-pwd:secret\r\na=setup:passive\r\n\
                 a=rtpmap:96 VP8/90000\r\na=extmap:1 {mid}\r\na=extmap:3 {capture}\r\n\
                 a=extmap:5 {twcc}\r\na=extmap:10 {rid}\r\na=recvonly\r\n\
                 a=rid:q recv\r\na=rid:h recv\r\na=simulcast:recv q;h\r\n",
                fp = theirs.fingerprint.to_uppercase(),
                mid = EXT_MID.1,
                level = EXT_AUDIO_LEVEL.1,
                twcc = EXT_TRANSPORT_CC.1,
                capture = EXT_ABS_CAPTURE_TIME.1,
                rid = EXT_RID.1,
            );
            p.apply_answer(t0, &answer).expect("answer");
            assert!(
                p.transport.dtls_client,
                "a passive answer leaves us the client"
            );
            p.handle_timeout(t0);
            let (to, check) = p.poll_transmit().expect("a connectivity check");
            assert_eq!((to, check.first()), (server, Some(&0u8)));
            let response = check_response(&p.transport.identity, "secret", local);
            p.handle_read(t0, server, &response);
            assert_eq!(p.transport.state, RTCPeerConnectionState::Connecting);
            let mut dtls = dtls_server(&theirs, server);
            for _ in 0..20 {
                while let Some((_, datagram)) = p.poll_transmit() {
                    if matches!(datagram.first(), Some(20..=63)) {
                        let _ = dtls.read(t0, local, None, datagram[..].into());
                    }
                }
                while let Some(t) = dtls.poll_transmit() {
                    p.handle_read(t0, server, &t.message);
                }
                if p.transport.srtp.is_some() {
                    break;
                }
            }
            assert_eq!(p.transport.state, RTCPeerConnectionState::Connected);
            let peer = peer_srtp(&dtls, local, &theirs).expect("the server's keys");
            Harness {
                p,
                server,
                peer,
                audio,
                q: (21, q),
                h: (22, h),
                t0,
            }
        }

        /// Runs the publisher's timers every 5 ms from `from` to `to` (ms after connecting);
        /// returns the RTP packets and the RTCP datagrams sent.
        fn run(&mut self, from: u64, to: u64) -> (Vec<Seen>, Vec<Vec<u8>>) {
            let (mut rtp, mut rtcp) = (Vec::new(), Vec::new());
            for ms in (from..to).step_by(5) {
                self.p.handle_timeout(self.t0 + Duration::from_millis(ms));
                while let Some((to, datagram)) = self.p.poll_transmit() {
                    assert_eq!(to, self.server);
                    match (datagram.first(), datagram.get(1)) {
                        (Some(128..=191), Some(192..=223)) => rtcp.push(
                            self.peer
                                .remote
                                .decrypt_rtcp(&datagram)
                                .expect("SRTCP decrypts")
                                .to_vec(),
                        ),
                        (Some(128..=191), _) => {
                            let plain = self
                                .peer
                                .remote
                                .decrypt_rtp(&datagram)
                                .expect("SRTP decrypts");
                            let packet =
                                rtc::rtp::Packet::unmarshal(&mut &plain[..]).expect("RTP parses");
                            rtp.push(Seen { datagram, packet });
                        }
                        _ => {}
                    }
                }
            }
            (rtp, rtcp)
        }

        fn rtcp(&mut self, at_ms: u64, packet: Box<dyn rtc::rtcp::packet::Packet>) {
            let plain = rtc::rtcp::packet::marshal(&[packet]).expect("marshal");
            let datagram = self.peer.local.encrypt_rtcp(&plain).expect("encrypt");
            let at = self.t0 + Duration::from_millis(at_ms);
            self.p.handle_read(at, self.server, &datagram);
        }
    }

    /// Whether a VP8 payload (RFC 7741 descriptor first) starts a keyframe.
    fn starts_vp8_keyframe(payload: &[u8]) -> bool {
        let mut i = 1;
        if payload[0] & 0x80 != 0 {
            let flags = payload[1];
            i = 2;
            if flags & 0x80 != 0 {
                i += if payload[i] & 0x80 != 0 { 2 } else { 1 };
            }
            if flags & 0x40 != 0 {
                i += 1;
            }
            if flags & 0x30 != 0 {
                i += 1;
            }
        }
        payload[0] & 0x10 != 0 && payload[i] & 0x01 == 0
    }

    #[test]
    fn the_offer_is_a_browsers_with_simulcast_and_the_host_candidate() {
        let h = Harness::connected();
        let offer = h.p.offer();
        for wanted in [
            "a=group:BUNDLE 0 1",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=ssrc:11 msid:alice mic",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "a=msid:alice cam",
            "a=rid:q send",
            "a=simulcast:send q;h",
            "a=rtcp-fb:96 nack pli",
            "a=setup:actpass",
            "a=sendonly",
            "a=candidate:1 1 udp 2130706431 127.1.0.1 5000 typ host",
            "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "transport-wide-cc",
        ] {
            assert!(offer.contains(wanted), "{wanted} in {offer}");
        }
        // Simulcast layers are bound by rid, not announced by SSRC.
        assert!(!offer.contains("a=ssrc:21"));
    }

    #[test]
    fn the_answer_decides_payload_types_and_extension_ids() {
        let answer = "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                      m=video 9 UDP/TLS/RTP/SAVPF 100\r\na=mid:1\r\n\
                      a=extmap:7 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
                      a=extmap:15 http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time\r\n\
                      a=extmap:2/sendrecv http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n";
        let parsed = parse_answer(answer);
        assert!(!parsed.contains_key("0"), "a rejected section");
        let video = parsed.get("1").expect("video");
        assert_eq!(video.payload_type, Some(100));
        assert_eq!(video.extensions.mid, 7);
        assert_eq!(video.extensions.abs_send_time, 2);
        assert_eq!(
            video.extensions.abs_capture_time, 0,
            "15 needs the two-byte form"
        );
        assert_eq!(video.extensions.rid, 0);
    }

    #[test]
    fn frames_are_paced_packetized_and_stamped() {
        let mut h = Harness::connected();
        let (rtp, rtcp) = h.run(0, 1_000);
        let of = |ssrc: u32| {
            rtp.iter()
                .filter(move |s| s.packet.header.ssrc == ssrc)
                .collect::<Vec<_>>()
        };
        // Audio: a silence frame every 20 ms, stamped with mid and the silence level.
        let audio = of(11);
        assert_eq!(audio.len(), 50);
        for pair in audio.windows(2) {
            let (a, b) = (&pair[0].packet.header, &pair[1].packet.header);
            assert_eq!(b.sequence_number, a.sequence_number.wrapping_add(1));
            assert_eq!(b.timestamp.wrapping_sub(a.timestamp), 960);
        }
        assert_eq!(audio[0].extension(1).as_deref(), Some(&b"0"[..]));
        assert_eq!(audio[0].extension(4).as_deref(), Some(&[127u8][..]));
        assert_eq!(h.audio.frames.load(Ordering::Relaxed), 50);
        // Video: 30 frames per second per layer, the last packet of each marked, every packet
        // naming its track and layer.
        for (ssrc, rid, counters) in [(h.q.0, "q", &h.q.1), (h.h.0, "h", &h.h.1)] {
            let video = of(ssrc);
            let frames: Vec<u32> = video
                .iter()
                .filter(|s| s.packet.header.marker)
                .map(|s| s.packet.header.timestamp)
                .collect();
            assert_eq!(frames.len(), 30, "{rid}");
            assert_eq!(counters.frames.load(Ordering::Relaxed), 30);
            assert_eq!(counters.keyframes.load(Ordering::Relaxed), 1);
            for pair in frames.windows(2) {
                assert_eq!(pair[1].wrapping_sub(pair[0]), 3000);
            }
            for s in &video {
                assert_eq!(s.packet.header.payload_type, 96);
                assert_eq!(s.extension(1).as_deref(), Some(&b"1"[..]));
                assert_eq!(s.extension(10).as_deref(), Some(rid.as_bytes()));
                assert_eq!(s.extension(3).map(|e| e.len()), Some(8));
                // VP8 descriptor with a picture id.
                assert_eq!(s.packet.payload[0] & 0x80, 0x80);
                assert_eq!(s.packet.payload[1] & 0x80, 0x80);
            }
            // The first packet starts a keyframe (the loop's first frame).
            assert_eq!(video[0].packet.payload[0] & 0x10, 0x10);
            assert!(starts_vp8_keyframe(&video[0].packet.payload));
            assert!(!starts_vp8_keyframe(&video[1].packet.payload));
        }
        // One transport-wide sequence across the connection's packets, in send order.
        let twcc: Vec<u16> = rtp
            .iter()
            .map(|s| {
                let e = s.extension(5).expect("transport-wide sequence number");
                u16::from_be_bytes([e[0], e[1]])
            })
            .collect();
        for pair in twcc.windows(2) {
            assert_eq!(pair[1], pair[0].wrapping_add(1));
        }
        // A sender report per stream after a second.
        let (_, rtcp2) = h.run(1_000, 1_005);
        let reports: Vec<u32> = rtcp
            .iter()
            .chain(&rtcp2)
            .flat_map(|d| rtc::rtcp::packet::unmarshal(&mut &d[..]).expect("RTCP parses"))
            .filter_map(|p| p.as_any().downcast_ref::<SenderReport>().map(|sr| sr.ssrc))
            .collect();
        for ssrc in [11, 21, 22] {
            assert!(reports.contains(&ssrc), "SR for {ssrc}: {reports:?}");
        }
    }

    #[test]
    fn nacks_are_answered_from_history_and_plis_bring_a_keyframe() {
        let mut h = Harness::connected();
        let (rtp, _) = h.run(0, 500);
        let q: Vec<&Seen> = rtp
            .iter()
            .filter(|s| s.packet.header.ssrc == h.q.0)
            .collect();
        let lost = [&q[3], &q[7]];
        let seqs: Vec<u16> = lost
            .iter()
            .map(|s| s.packet.header.sequence_number)
            .collect();
        h.rtcp(
            500,
            Box::new(TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc: h.q.0,
                nacks: nack_pairs_from_sequence_numbers(&seqs),
            }),
        );
        let mut resent = Vec::new();
        while let Some((_, datagram)) = h.p.poll_transmit() {
            resent.push(datagram);
        }
        // The very datagrams sent before (same sequence numbers and encryption).
        assert_eq!(
            resent,
            vec![lost[0].datagram.clone(), lost[1].datagram.clone()]
        );
        // A NACK for audio (no history) or an unknown SSRC sends nothing.
        for media_ssrc in [11, 99] {
            h.rtcp(
                500,
                Box::new(TransportLayerNack {
                    sender_ssrc: 1,
                    media_ssrc,
                    nacks: nack_pairs_from_sequence_numbers(&[1, 2]),
                }),
            );
            assert!(h.p.poll_transmit().is_none());
        }

        // A PLI for the h layer: its next frame is a keyframe; q carries on.
        let keyframes = |c: &SendCounters| c.keyframes.load(Ordering::Relaxed);
        let (q_before, h_before) = (keyframes(&h.q.1), keyframes(&h.h.1));
        h.rtcp(
            505,
            Box::new(PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc: h.h.0,
            }),
        );
        assert_eq!(h.h.1.keyframe_requests.load(Ordering::Relaxed), 1);
        let (rtp, _) = h.run(505, 540);
        let first_h = rtp
            .iter()
            .find(|s| s.packet.header.ssrc == h.h.0)
            .expect("an h frame");
        assert!(starts_vp8_keyframe(&first_h.packet.payload));
        assert_eq!(keyframes(&h.h.1), h_before + 1);
        assert_eq!(keyframes(&h.q.1), q_before);
    }

    #[test]
    fn muted_tracks_send_nothing_but_audio_dtx() {
        let mut h = Harness::connected();
        h.run(0, 100);
        for c in [&h.audio, &h.q.1, &h.h.1] {
            c.paused.store(true, Ordering::Relaxed);
        }
        let (rtp, _) = h.run(100, 1_300);
        assert!(rtp.iter().all(|s| s.packet.header.ssrc == 11));
        // One silence frame per 400 ms.
        assert_eq!(rtp.len(), 3, "{:?}", rtp.len());
        for c in [&h.q.1, &h.h.1] {
            c.paused.store(false, Ordering::Relaxed);
        }
        h.audio.paused.store(false, Ordering::Relaxed);
        // Unmuted: media resumes at once, without a burst of the muted time's frames.
        let (rtp, _) = h.run(1_300, 1_400);
        let video = rtp
            .iter()
            .filter(|s| s.packet.header.ssrc == h.q.0 && s.packet.header.marker);
        assert!((3..=4).contains(&video.count()));
    }

    #[test]
    fn garbage_after_connecting_harms_nothing() {
        let mut h = Harness::connected();
        for i in 0..5_000u32 {
            let len = 1 + (i % 300) as usize;
            let mut datagram: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            datagram[0] = [0, 1, 20, 22, 23, 128, 144, 200, 255][i as usize % 9];
            if let Some(b) = datagram.get_mut(1) {
                if i % 3 == 0 {
                    *b = 205;
                }
            }
            h.p.handle_read(h.t0, h.server, &datagram);
        }
        assert_eq!(h.p.transport.state, RTCPeerConnectionState::Connected);
        let (rtp, _) = h.run(0, 100);
        assert!(!rtp.is_empty(), "media still flows");
    }
}
