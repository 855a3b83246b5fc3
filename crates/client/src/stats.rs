//! Receive-side accounting: sequence continuity, VP8 frame boundaries, per-track counters.

use chorus_signal::protocol::TrackKind;
use std::time::{Duration, Instant};

/// A freeze is a gap between two completed video frames longer than three times the typical
/// frame interval, and never shorter than this.
pub const MIN_FREEZE: Duration = Duration::from_millis(200);

/// What the client has received on one remote track of the subscriber connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedTrackStats {
    /// The publisher's participant id (the `msid` stream id).
    pub participant_id: String,
    /// The server's track id (the `msid` track id, [`TrackInfo::id`]).
    ///
    /// [`TrackInfo::id`]: chorus_signal::protocol::TrackInfo::id
    pub track_id: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Negotiated codec MIME type, e.g. `video/VP8`, when known (set it with
    /// [`set_mime_type`](Self::set_mime_type)).
    pub mime_type: Option<String>,
    /// How frames are found in this track's payloads (from the MIME type; VP8 until known).
    pub format: VideoFormat,
    /// AV1: the previous packet ended a temporal unit, so the next one starts a frame.
    av1_at_start: bool,
    /// What the latest packet's descriptor said, for frame assembly.
    last_start: Option<FrameStart>,
    /// Whether the latest subscriber offer still carries this track in an active media section.
    /// A track removed by renegotiation stays listed with `active == false`.
    pub active: bool,
    /// SSRC of the most recent packet (0 before any packet).
    pub ssrc: u32,
    /// Payload type of the most recent packet.
    pub payload_type: u8,
    /// Sequence-number accounting.
    pub seq: SeqStats,
    /// Payload bytes received (RTP payload only).
    pub bytes: u64,
    /// VP8 frames started (packets with S=1 and partition index 0). Zero for audio.
    pub frames: u64,
    /// VP8 keyframes started. Zero for audio.
    pub keyframes: u64,
    /// Video: the frame size (width, height) of the latest keyframe, which tells which
    /// simulcast layer the server forwards.
    pub frame_size: Option<(u16, u16)>,
    /// Video: payload bytes received per frame size (each packet counted under the size of the
    /// keyframe before it), i.e. per simulcast layer.
    pub bytes_by_size: Vec<((u16, u16), u64)>,
    /// VP8: frames whose picture id does not follow the previous frame's (a loss, or a
    /// discontinuity a forwarder should have hidden, e.g. at a simulcast layer switch).
    pub picture_id_jumps: u64,
    /// VP8: the latest frame's picture id and whether it is the 15-bit form.
    pub last_picture_id: Option<(u16, bool)>,
    /// Packets with the RTP marker bit set.
    pub markers: u64,
    /// When the first packet arrived.
    pub first_packet_at: Option<Instant>,
    /// When the latest packet arrived.
    pub last_packet_at: Option<Instant>,
    /// RTP clock rate used for jitter (48 kHz for audio, 90 kHz for video).
    pub clock_rate: u32,
    /// RFC 3550 interarrival jitter estimate, in RTP timestamp units times 16 (the RFC's
    /// fixed-point form); see [`jitter`](Self::jitter).
    pub jitter_q4: u64,
    /// Complete frames: for video every VP8 frame whose packets (start to marker) all arrived,
    /// counted from the first complete keyframe on; for audio every packet.
    pub frames_completed: u64,
    /// When the first decodable frame was complete: the first complete keyframe for video, the
    /// first packet for audio.
    pub first_frame_at: Option<Instant>,
    /// When the latest frame was complete.
    pub last_frame_at: Option<Instant>,
    /// Video freezes: gaps between complete frames longer than `max(3 x typical interval,`
    /// [`MIN_FREEZE`]`)`.
    pub freezes: u64,
    /// Sum of the freeze gaps.
    pub freeze_duration: Duration,
    /// Capture-to-receive latency of complete frames (video) or packets (audio), from the
    /// `abs-send-time` stamp the sender put on them (see [`crate::capture_clock`]).
    pub latency: LatencyHistogram,
    /// Decode check results (all zero unless the client decodes a sample of frames).
    pub decode: DecodeStats,
    /// Whether VP8 frames are kept whole for a decoder ([`on_rtp`](Self::on_rtp) returns
    /// them).
    pub keep_frames: bool,
    /// Typical interval between complete frames (exponential average, freezes excluded).
    frame_interval: Option<Duration>,
    /// `arrival - rtp timestamp` of the previous packet, in RTP units.
    last_transit: Option<i64>,
    /// The video frame being assembled.
    /// Video frames being assembled, by RTP timestamp, oldest first (packets may arrive out
    /// of order).
    assembling: Vec<FrameAssembly>,
    /// RTP timestamp of the latest completed frame.
    last_completed_ts: Option<u32>,
}

/// The packets of one video frame seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FrameAssembly {
    timestamp: u32,
    keyframe: bool,
    start: Option<u16>,
    end: Option<u16>,
    seqs: Vec<u16>,
    /// `(seq, payload)` of every packet, when frames are kept.
    payloads: Vec<(u16, Vec<u8>)>,
}

/// A complete VP8 frame reassembled from its RTP packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledFrame {
    /// Whether it is a keyframe.
    pub keyframe: bool,
    /// Sequence number of its first packet.
    pub first_seq: u16,
    /// Sequence number of its last packet (the marker).
    pub last_seq: u16,
    /// The VP8 bitstream (payload descriptors stripped).
    pub data: Vec<u8>,
}

/// What the decode check found on one track.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Frames handed to the decoder.
    pub attempted: u64,
    /// Frames that decoded to a picture.
    pub decoded: u64,
    /// Frames libvpx rejected.
    pub errors: u64,
    /// Sampled groups of pictures abandoned because a frame in them never completed.
    pub skipped: u64,
    /// Size of the latest decoded picture.
    pub width: u32,
    /// Size of the latest decoded picture.
    pub height: u32,
}

impl DecodeStats {
    /// Adds another track's (or step's) counts; keeps the latest non-zero size.
    pub fn add(&mut self, other: DecodeStats) {
        self.attempted += other.attempted;
        self.decoded += other.decoded;
        self.errors += other.errors;
        self.skipped += other.skipped;
        if other.width > 0 {
            self.width = other.width;
            self.height = other.height;
        }
    }
}

impl FrameAssembly {
    fn complete(&self) -> bool {
        match (self.start, self.end) {
            (Some(start), Some(end)) => self.seqs.len() == usize::from(end.wrapping_sub(start)) + 1,
            _ => false,
        }
    }

    /// The frame's bitstream: payloads in sequence order, descriptors stripped.
    fn into_assembled(mut self) -> Option<AssembledFrame> {
        let start = self.start?;
        self.payloads
            .sort_by_key(|(seq, _)| seq.wrapping_sub(start));
        let mut data = Vec::with_capacity(self.payloads.iter().map(|(_, p)| p.len()).sum());
        for (_, p) in &self.payloads {
            data.extend_from_slice(p.get(vp8_descriptor_len(p)?..)?);
        }
        Some(AssembledFrame {
            keyframe: self.keyframe,
            first_seq: start,
            last_seq: self.end?,
            data,
        })
    }
}

/// What [`ReceivedTrackStats::on_rtp`] needs from an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// SSRC.
    pub ssrc: u32,
    /// Payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence_number: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit.
    pub marker: bool,
    /// Capture-to-arrival latency, when the packet carried a capture stamp.
    pub latency: Option<Duration>,
}

/// A latency distribution in microseconds (1 µs to 60 s, two significant digits).
#[derive(Clone, PartialEq)]
pub struct LatencyHistogram(hdrhistogram::Histogram<u64>);

// Histogram equality compares counts: a proper equivalence.
impl Eq for LatencyHistogram {}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.len())
            .field("p50", &self.quantile(0.5))
            .field("max", &self.quantile(1.0))
            .finish()
    }
}

impl LatencyHistogram {
    /// Largest value recorded; larger values are clamped.
    pub const MAX: Duration = Duration::from_secs(60);

    /// An empty histogram.
    pub fn new() -> Self {
        Self(
            hdrhistogram::Histogram::new_with_bounds(1, Self::MAX.as_micros() as u64, 2)
                .expect("constant bounds satisfy hdrhistogram's preconditions"),
        )
    }

    /// Records one sample (clamped to 1 µs ..= [`Self::MAX`]).
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, Self::MAX.as_micros() as u64);
        self.0.saturating_record(us);
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at quantile `q` (0.0 ..= 1.0); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        (!self.is_empty()).then(|| Duration::from_micros(self.0.value_at_quantile(q)))
    }

    /// Mean; `None` when empty.
    pub fn mean(&self) -> Option<Duration> {
        (!self.is_empty()).then(|| Duration::from_micros(self.0.mean() as u64))
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides, so adding cannot fail; clamp defensively otherwise.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// The underlying histogram (microseconds).
    pub fn histogram(&self) -> &hdrhistogram::Histogram<u64> {
        &self.0
    }
}

impl ReceivedTrackStats {
    /// A track with nothing received yet.
    pub fn new(participant_id: String, track_id: String, kind: TrackKind) -> Self {
        Self {
            participant_id,
            track_id,
            kind,
            mime_type: None,
            format: VideoFormat::Vp8,
            av1_at_start: true,
            last_start: None,
            active: true,
            ssrc: 0,
            payload_type: 0,
            seq: SeqStats::default(),
            bytes: 0,
            frames: 0,
            keyframes: 0,
            frame_size: None,
            bytes_by_size: Vec::new(),
            picture_id_jumps: 0,
            last_picture_id: None,
            markers: 0,
            first_packet_at: None,
            last_packet_at: None,
            clock_rate: match kind {
                TrackKind::Audio => 48_000,
                TrackKind::Video => 90_000,
            },
            jitter_q4: 0,
            frames_completed: 0,
            first_frame_at: None,
            last_frame_at: None,
            freezes: 0,
            freeze_duration: Duration::ZERO,
            latency: LatencyHistogram::new(),
            decode: DecodeStats::default(),
            keep_frames: false,
            frame_interval: None,
            last_transit: None,
            assembling: Vec::new(),
            last_completed_ts: None,
        }
    }

    /// RFC 3550 interarrival jitter.
    pub fn jitter(&self) -> Duration {
        if self.clock_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.jitter_q4 as f64 / 16.0 / f64::from(self.clock_rate))
    }

    /// Packets never received, retransmissions included (RFC 3550 cumulative loss, clamped at
    /// zero).
    pub fn lost(&self) -> u64 {
        self.seq.lost()
    }

    /// Complete frames per second between the first and the latest complete frame.
    pub fn frame_rate(&self) -> Option<f64> {
        let span = self
            .last_frame_at?
            .checked_duration_since(self.first_frame_at?)?;
        (self.frames_completed > 1 && !span.is_zero())
            .then(|| (self.frames_completed - 1) as f64 / span.as_secs_f64())
    }

    /// The freeze in progress at `now`, if the latest complete video frame is older than the
    /// freeze threshold.
    pub fn ongoing_freeze(&self, now: Instant) -> Option<Duration> {
        if self.kind != TrackKind::Video {
            return None;
        }
        let gap = now.checked_duration_since(self.last_frame_at?)?;
        (gap > self.freeze_threshold()).then_some(gap)
    }

    fn freeze_threshold(&self) -> Duration {
        self.frame_interval
            .map_or(MIN_FREEZE, |i| (i * 3).max(MIN_FREEZE))
    }

    /// Accounts one RTP packet: [`on_packet`](Self::on_packet) plus jitter, frame assembly,
    /// freezes and latency. With [`keep_frames`](Self::keep_frames), returns the VP8 frame
    /// this packet completed.
    pub fn on_rtp(
        &mut self,
        meta: PacketMeta,
        payload: &[u8],
        now: Instant,
    ) -> Option<AssembledFrame> {
        let first = self.first_packet_at.is_none();
        self.on_packet(
            meta.ssrc,
            meta.payload_type,
            meta.sequence_number,
            meta.marker,
            payload,
            now,
        );
        // Jitter (RFC 3550 section 6.4.1), arrival measured from the first packet.
        if let Some(start) = self.first_packet_at {
            let arrival = (now.saturating_duration_since(start).as_secs_f64()
                * f64::from(self.clock_rate)) as i64;
            let transit = arrival - i64::from(meta.timestamp);
            if let (Some(last), false) = (self.last_transit, first) {
                // RTP timestamps wrap at 2^32: take the difference modulo 2^32, signed.
                let d = ((transit - last) as i32).unsigned_abs() as u64 * 16;
                self.jitter_q4 = self.jitter_q4 + d / 16 - self.jitter_q4 / 16;
            }
            self.last_transit = Some(transit);
        }
        match self.kind {
            TrackKind::Audio => {
                self.frame_done(now, meta.latency);
                None
            }
            TrackKind::Video => self.assemble(meta, payload, now),
        }
    }

    fn assemble(
        &mut self,
        meta: PacketMeta,
        payload: &[u8],
        now: Instant,
    ) -> Option<AssembledFrame> {
        /// Frames in progress at most; older ones are abandoned.
        const MAX_IN_PROGRESS: usize = 8;
        let seq = meta.sequence_number;
        let ts = meta.timestamp;
        let frame_start = self.last_start;
        // A late packet of a frame already completed or abandoned.
        if let Some(last) = self.last_completed_ts {
            if (ts.wrapping_sub(last) as i32) <= 0 {
                return None;
            }
        }
        let keep = self.keep_frames;
        let i = match self.assembling.iter().position(|f| f.timestamp == ts) {
            Some(i) => i,
            None => {
                if self.assembling.len() >= MAX_IN_PROGRESS {
                    self.assembling.remove(0);
                }
                // Keep timestamp order (RTP timestamps wrap: compare as a signed distance).
                let at = self
                    .assembling
                    .iter()
                    .position(|f| (f.timestamp.wrapping_sub(ts) as i32) > 0)
                    .unwrap_or(self.assembling.len());
                self.assembling.insert(
                    at,
                    FrameAssembly {
                        timestamp: ts,
                        keyframe: false,
                        start: None,
                        end: None,
                        seqs: Vec::new(),
                        payloads: Vec::new(),
                    },
                );
                at
            }
        };
        let frame = &mut self.assembling[i];
        if frame.seqs.contains(&seq) {
            return None;
        }
        frame.seqs.push(seq);
        if keep {
            frame.payloads.push((seq, payload.to_vec()));
        }
        if let Some(start) = frame_start {
            frame.start = Some(seq);
            frame.keyframe = start.keyframe;
        }
        if meta.marker {
            frame.end = Some(seq);
        }
        if !frame.complete() {
            return None;
        }
        // Complete: older unfinished frames are abandoned.
        let frame = self.assembling.remove(i);
        self.assembling.drain(..i);
        self.last_completed_ts = Some(ts);
        let keyframe = frame.keyframe;
        if self.first_frame_at.is_none() && !keyframe {
            // Not decodable before the first keyframe.
            return None;
        }
        self.frame_done(now, meta.latency);
        keep.then(|| frame.into_assembled()).flatten()
    }

    fn frame_done(&mut self, now: Instant, latency: Option<Duration>) {
        self.frames_completed += 1;
        self.first_frame_at.get_or_insert(now);
        if let Some(l) = latency {
            self.latency.record(l);
        }
        if let (Some(last), TrackKind::Video) = (self.last_frame_at, self.kind) {
            let gap = now.saturating_duration_since(last);
            if gap > self.freeze_threshold() {
                self.freezes += 1;
                self.freeze_duration += gap;
            } else {
                self.frame_interval = Some(match self.frame_interval {
                    Some(i) => (i * 7 + gap) / 8,
                    None => gap,
                });
            }
        }
        self.last_frame_at = Some(now);
    }

    /// Packets received.
    pub fn packets(&self) -> u64 {
        self.seq.packets
    }

    /// Records the negotiated codec, which decides how frames are found.
    pub fn set_mime_type(&mut self, mime: String) {
        self.format = VideoFormat::from_mime(&mime);
        self.mime_type = Some(mime);
    }

    /// Whether `payload` starts a frame, and what the payload descriptor says about it.
    fn frame_start(&mut self, payload: &[u8], marker: bool) -> Option<FrameStart> {
        match self.format {
            VideoFormat::Vp8 => vp8_frame_start(payload),
            VideoFormat::Vp9 => vp9_frame_start(payload),
            VideoFormat::Av1 => {
                let start = std::mem::replace(&mut self.av1_at_start, marker);
                av1_frame_start(payload, start)
            }
            VideoFormat::Other => None,
        }
    }

    /// Accounts one RTP packet.
    pub fn on_packet(
        &mut self,
        ssrc: u32,
        payload_type: u8,
        seq: u16,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) {
        self.ssrc = ssrc;
        self.payload_type = payload_type;
        self.seq.push(seq);
        self.bytes += payload.len() as u64;
        if marker {
            self.markers += 1;
        }
        if self.kind == TrackKind::Video {
            let start = self.frame_start(payload, marker);
            self.last_start = start;
            if let Some(Some(pid)) = start.map(|s| s.picture_id) {
                if let Some((last, long)) = self.last_picture_id {
                    let mask = if long { 0x7fff } else { 0x7f };
                    if pid.0 != last.wrapping_add(1) & mask {
                        self.picture_id_jumps += 1;
                    }
                }
                self.last_picture_id = Some(pid);
            }
            match start {
                Some(FrameStart {
                    keyframe: true,
                    size,
                    ..
                }) => {
                    self.frames += 1;
                    self.keyframes += 1;
                    if size.is_some() {
                        self.frame_size = size;
                    }
                }
                Some(FrameStart {
                    keyframe: false, ..
                }) => self.frames += 1,
                None => {}
            }
            if let Some(size) = self.frame_size {
                let len = payload.len() as u64;
                match self.bytes_by_size.iter_mut().find(|(s, _)| *s == size) {
                    Some((_, b)) => *b += len,
                    None => self.bytes_by_size.push((size, len)),
                }
            }
        }
        self.first_packet_at.get_or_insert(now);
        self.last_packet_at = Some(now);
    }
}

/// Sequence-number continuity of one RTP stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqStats {
    /// Packets seen.
    pub packets: u64,
    /// Sequence number of the first packet.
    pub first: Option<u16>,
    /// Sequence number of the latest packet.
    pub last: Option<u16>,
    /// Discontinuities: packets whose sequence number is not `last + 1 (mod 2^16)`. Loss,
    /// reordering, duplicates and a rewrite done wrong all count.
    pub gaps: u64,
    /// Sum of the sizes of forward jumps (`seq - last - 1` when the jump is less than half the
    /// sequence space): an estimate of packets missing.
    pub missing: u64,
    /// Packets that went backwards (reordered, duplicated or retransmitted).
    pub backwards: u64,
    /// Extended (wrap-counting) sequence number of the first packet.
    pub first_extended: Option<u64>,
    /// Highest extended sequence number seen.
    pub highest_extended: Option<u64>,
}

impl SeqStats {
    /// Accounts the next packet's sequence number.
    pub fn push(&mut self, seq: u16) {
        self.packets += 1;
        if let Some(last) = self.last {
            let expected = last.wrapping_add(1);
            if seq != expected {
                self.gaps += 1;
                let jump = seq.wrapping_sub(expected);
                if jump < 0x8000 {
                    self.missing += u64::from(jump);
                } else {
                    self.backwards += 1;
                }
            }
        } else {
            self.first = Some(seq);
        }
        self.last = Some(seq);
        match self.highest_extended {
            None => {
                // Start one cycle in so that early reordering cannot go below zero.
                let ext = (1 << 16) + u64::from(seq);
                self.first_extended = Some(ext);
                self.highest_extended = Some(ext);
            }
            Some(highest) => {
                let delta = i64::from(seq.wrapping_sub(highest as u16) as i16);
                let ext = (highest as i64 + delta).max(0) as u64;
                if ext > highest {
                    self.highest_extended = Some(ext);
                }
                if self.first_extended.is_some_and(|f| ext < f) {
                    self.first_extended = Some(ext);
                }
            }
        }
    }

    /// Packets expected from the first to the highest sequence number.
    pub fn expected(&self) -> u64 {
        match (self.first_extended, self.highest_extended) {
            (Some(f), Some(h)) => h - f + 1,
            _ => 0,
        }
    }

    /// Packets never received: expected minus received (duplicates offset losses, as in
    /// RFC 3550), clamped at zero.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.packets)
    }
}

/// How a received video track's payloads mark frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VideoFormat {
    /// VP8 payload descriptor (RFC 7741).
    #[default]
    Vp8,
    /// VP9 payload descriptor (RFC 9628).
    Vp9,
    /// AV1 aggregation header (AV1 RTP specification).
    Av1,
    /// Frames are not counted.
    Other,
}

impl VideoFormat {
    /// The format of a MIME type such as `video/VP9`.
    pub fn from_mime(mime: &str) -> Self {
        match mime
            .rsplit('/')
            .next()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("vp8") => Self::Vp8,
            Some("vp9") => Self::Vp9,
            Some("av1") => Self::Av1,
            _ => Self::Other,
        }
    }
}

/// An RTP payload that starts a new frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStart {
    /// Whether the frame is a keyframe.
    pub keyframe: bool,
    /// A keyframe's width and height, when the packet holds its header (RFC 6386 §9.1).
    pub size: Option<(u16, u16)>,
    /// The picture id, when present, and whether it is the 15-bit form.
    pub picture_id: Option<(u16, bool)>,
}

/// The length of the VP8 payload descriptor (RFC 7741 §4.2) at the start of an RTP payload.
pub fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let b0 = *payload.first()?;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            let pid = *payload.get(i)?;
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    (i <= payload.len()).then_some(i)
}

/// VP9 (RFC 9628 §4.2): B=1 begins a frame; P=0 (not inter-predicted) makes it a keyframe
/// (for the base spatial layer); the picture id follows when I=1. A keyframe's size comes
/// from the scalability structure when present (V=1, as browsers send), else from the frame's
/// uncompressed header.
pub fn vp9_frame_start(payload: &[u8]) -> Option<FrameStart> {
    let b0 = *payload.first()?;
    if b0 & 0x08 == 0 {
        return None;
    }
    let (flexible, predicted) = (b0 & 0x10 != 0, b0 & 0x40 != 0);
    let mut i = 1;
    let picture_id = if b0 & 0x80 != 0 {
        let m = *payload.get(1)?;
        Some(if m & 0x80 != 0 {
            i += 2;
            (u16::from(m & 0x7f) << 8 | u16::from(*payload.get(2)?), true)
        } else {
            i += 1;
            (u16::from(m), false)
        })
    } else {
        None
    };
    if b0 & 0x20 != 0 {
        i += if flexible { 1 } else { 2 }; // layer indices (+ TL0PICIDX)
    }
    if flexible && predicted {
        // P_DIFFs, each with N set while another follows.
        while payload.get(i)? & 0x01 != 0 {
            i += 1;
        }
        i += 1;
    }
    let keyframe = !predicted;
    let mut size = None;
    if b0 & 0x02 != 0 {
        // Scalability structure: N_S-1 (3 bits), Y, G; with Y a width and height per layer.
        let ss = *payload.get(i)?;
        let layers = usize::from(ss >> 5) + 1;
        if ss & 0x10 != 0 {
            let at = i + 1 + (layers - 1) * 4; // the highest spatial layer
            let b = payload.get(at..at + 4)?;
            size = Some((
                u16::from_be_bytes([b[0], b[1]]),
                u16::from_be_bytes([b[2], b[3]]),
            ));
        }
    } else if keyframe {
        size = payload.get(i..).and_then(crate::ivf::vp9_keyframe_size);
    }
    Some(FrameStart {
        keyframe,
        size,
        picture_id,
    })
}

/// AV1: a packet starts a frame when it follows the end of a temporal unit (`at_start`, the
/// previous packet's marker) and does not continue an OBU (Z=0); N=1 (a new coded video
/// sequence) makes it a keyframe.
pub fn av1_frame_start(payload: &[u8], at_start: bool) -> Option<FrameStart> {
    let header = *payload.first()?;
    let keyframe = header & 0x08 != 0;
    (at_start && header & 0x80 == 0).then(|| FrameStart {
        keyframe,
        size: keyframe.then(|| av1_payload_size(payload)).flatten(),
        picture_id: None,
    })
}

/// The frame size a keyframe packet announces: its first OBU element, when that is the
/// sequence header (as encoders send it at the start of a coded video sequence).
fn av1_payload_size(payload: &[u8]) -> Option<(u16, u16)> {
    let w = (payload.first()? >> 4) & 0x03;
    let mut rest = payload.get(1..)?;
    // The first element's length is given unless it is the only one (W=1).
    if w != 1 {
        let (len, n) = crate::av1::leb128(rest)?;
        rest = rest.get(n..n.checked_add(usize::try_from(len).ok()?)?)?;
    }
    let obu = crate::av1::Obu::parse(rest)?;
    (obu.obu_type == crate::av1::OBU_SEQUENCE_HEADER)
        .then(|| crate::av1::sequence_size(obu.payload))
        .flatten()
}

/// Parses the VP8 payload descriptor (RFC 7741 §4.2) and, when the packet begins a frame
/// (S=1, PID=0), reports whether that frame is a keyframe (P bit of the VP8 payload header is
/// 0). `None` for continuation packets and malformed payloads.
pub fn vp8_frame_start(payload: &[u8]) -> Option<FrameStart> {
    let b0 = *payload.first()?;
    let extended = b0 & 0x80 != 0;
    let start = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    if !start || partition != 0 {
        return None;
    }
    let mut i = 1;
    let mut picture_id = None;
    if extended {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let m = *payload.get(i)?;
            if m & 0x80 != 0 {
                picture_id = Some((
                    u16::from(m & 0x7f) << 8 | u16::from(*payload.get(i + 1)?),
                    true,
                ));
                i += 2;
            } else {
                picture_id = Some((u16::from(m), false));
                i += 1;
            }
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    let header = *payload.get(i)?;
    let keyframe = header & 0x01 == 0;
    // A keyframe's 3-byte frame tag is followed by the start code 9d 01 2a and the 14-bit
    // little-endian width and height.
    let size = keyframe
        .then(|| payload.get(i + 3..i + 10))
        .flatten()
        .filter(|b| b[..3] == [0x9d, 0x01, 0x2a])
        .map(|b| {
            (
                u16::from_le_bytes([b[3], b[4]]) & 0x3fff,
                u16::from_le_bytes([b[5], b[6]]) & 0x3fff,
            )
        });
    Some(FrameStart {
        keyframe,
        size,
        picture_id,
    })
}

/// A track the server currently offers on the subscriber connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedTrack {
    /// `msid` stream id: the publisher's participant id.
    pub participant_id: String,
    /// `msid` track id: the server's track id.
    pub track_id: String,
    /// `audio` or `video` from the `m=` line.
    pub media: String,
}

/// Lists the tracks an SDP offers to send: media sections with a non-zero port, direction
/// `sendonly` or `sendrecv`, and an `a=msid` line.
pub fn offered_tracks(sdp: &str) -> Vec<OfferedTrack> {
    struct Section {
        media: String,
        port_zero: bool,
        sending: bool,
        msid: Option<(String, String)>,
    }
    fn finish(section: Option<Section>, out: &mut Vec<OfferedTrack>) {
        if let Some(Section {
            media,
            port_zero: false,
            sending: true,
            msid: Some((s, t)),
        }) = section
        {
            out.push(OfferedTrack {
                participant_id: s,
                track_id: t,
                media,
            });
        }
    }
    let mut out = Vec::new();
    let mut current: Option<Section> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            finish(current.take(), &mut out);
            let mut parts = m.split_whitespace();
            let media = parts.next().unwrap_or_default().to_owned();
            let port_zero = parts.next().is_some_and(|p| p == "0");
            current = Some(Section {
                media,
                port_zero,
                sending: true,
                msid: None,
            });
        } else if let Some(section) = current.as_mut() {
            match line {
                "a=sendonly" | "a=sendrecv" => section.sending = true,
                "a=recvonly" | "a=inactive" => section.sending = false,
                _ => {
                    if let Some(msid) = line.strip_prefix("a=msid:") {
                        let mut parts = msid.split_whitespace();
                        if let (Some(s), Some(t)) = (parts.next(), parts.next()) {
                            section.msid = Some((s.to_owned(), t.to_owned()));
                        }
                    }
                }
            }
        }
    }
    finish(current, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn av1_frame_size_comes_from_the_sequence_header() {
        let clip =
            crate::ivf::IvfClip::parse(include_bytes!("../tests/data/av1_160x120_30fps.ivf"))
                .expect("AV1 clip");
        let seq = crate::av1::obus(&clip.frames[0].data)
            .find(|o| o.obu_type == crate::av1::OBU_SEQUENCE_HEADER)
            .expect("the first temporal unit has a sequence header");
        // As an RTP packet: the only element (W=1) of a new coded video sequence (N=1), its
        // size field dropped as packetizers do.
        // No extension, no size field.
        let header = crate::av1::OBU_SEQUENCE_HEADER << 3;
        let mut rtp = vec![0x18, header];
        rtp.extend_from_slice(seq.payload);
        let start = av1_frame_start(&rtp, true).expect("frame start");
        assert!(start.keyframe);
        assert_eq!(start.size, Some((160, 120)));
        // W=0: the element carries its length.
        let mut rtp = vec![0x08, (seq.payload.len() + 1) as u8, header];
        rtp.extend_from_slice(seq.payload);
        assert_eq!(av1_payload_size(&rtp), Some((160, 120)));
        // Truncated headers give no size, never a panic.
        for cut in 0..rtp.len() {
            let _ = av1_payload_size(&rtp[..cut]);
        }
        assert_eq!(av1_payload_size(&rtp[..4]), None);
    }

    #[test]
    fn continuous_sequences_have_no_gaps_even_across_wraparound() {
        let mut s = SeqStats::default();
        for seq in (65_530u16..=65_535).chain(0..10) {
            s.push(seq);
        }
        assert_eq!(s.packets, 16);
        assert_eq!(s.first, Some(65_530));
        assert_eq!(s.last, Some(9));
        assert_eq!((s.gaps, s.missing, s.backwards), (0, 0, 0));
    }

    #[test]
    fn losses_reorders_and_duplicates_are_counted() {
        let mut s = SeqStats::default();
        for seq in [10u16, 11, 14, 15, 13, 16, 16, 17] {
            s.push(seq);
        }
        // 11->14 (missing 2), 15->13 (back), 13->16 (missing 2), 16->16 (dup = back).
        assert_eq!(s.gaps, 4);
        assert_eq!(s.missing, 4);
        assert_eq!(s.backwards, 2);
        assert_eq!(s.packets, 8);

        let mut w = SeqStats::default();
        w.push(65_535);
        w.push(2);
        assert_eq!((w.gaps, w.missing, w.backwards), (1, 2, 0));
    }

    #[test]
    fn vp8_descriptors_are_parsed() {
        // Minimal descriptor, S=1 PID=0, keyframe header (P=0).
        assert_eq!(
            vp8_frame_start(&[0x10, 0x00, 0x9d]),
            Some(FrameStart {
                keyframe: true,
                size: None,
                picture_id: None
            })
        );
        // Minimal descriptor, interframe (P=1).
        assert_eq!(
            vp8_frame_start(&[0x10, 0x01]),
            Some(FrameStart {
                keyframe: false,
                size: None,
                picture_id: None
            })
        );
        // A keyframe with its header: 640x360.
        assert_eq!(
            vp8_frame_start(&[0x10, 0x50, 0x12, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]),
            Some(FrameStart {
                keyframe: true,
                size: Some((640, 360)),
                picture_id: None
            })
        );
        // Continuation packet.
        assert_eq!(vp8_frame_start(&[0x00, 0x00]), None);
        // Start of a later partition.
        assert_eq!(vp8_frame_start(&[0x11, 0x00]), None);
        // X=1, I=1 with a 15-bit picture id, then keyframe header.
        assert_eq!(
            vp8_frame_start(&[0x90, 0x80, 0x81, 0x23, 0x00]),
            Some(FrameStart {
                keyframe: true,
                size: None,
                picture_id: Some((0x123, true))
            })
        );
        // X=1, I=1 (7-bit), L=1, T=1, then interframe header.
        assert_eq!(
            vp8_frame_start(&[0x90, 0xE0, 0x05, 0x07, 0x20, 0x01]),
            Some(FrameStart {
                keyframe: false,
                size: None,
                picture_id: Some((5, false))
            })
        );
        // Truncated descriptors.
        assert_eq!(vp8_frame_start(&[]), None);
        assert_eq!(vp8_frame_start(&[0x90, 0x80, 0x81]), None);
        assert_eq!(vp8_frame_start(&[0x10]), None);
    }

    #[test]
    fn vp9_descriptors_give_keyframes_and_sizes() {
        let clip =
            crate::ivf::IvfClip::parse(include_bytes!("../tests/data/vp9_160x120_30fps.ivf"))
                .expect("fixture parses");
        // As the client sends it: I=1 F=1 B=1, a 15-bit picture id, then the keyframe.
        let mut key = vec![0x98, 0x81, 0x02];
        key.extend_from_slice(&clip.frames[0].data[..16]);
        let start = vp9_frame_start(&key).expect("frame start");
        assert_eq!(
            (start.keyframe, start.size, start.picture_id),
            (true, Some((160, 120)), Some((0x102, true)))
        );
        // An inter frame: P=1 with one P_DIFF.
        let mut inter = vec![0xd8, 0x81, 0x03, 0x02];
        inter.extend_from_slice(&clip.frames[1].data[..8]);
        let start = vp9_frame_start(&inter).expect("frame start");
        assert_eq!((start.keyframe, start.size), (false, None));
        // As Chromium sends a keyframe: V=1 with a scalability structure giving 320x180.
        let ss = [0x9a, 0x81, 0x04, 0x10, 0x01, 0x40, 0x00, 0xb4, 0x00];
        assert_eq!(
            vp9_frame_start(&ss).expect("frame start").size,
            Some((320, 180))
        );
        // Not the beginning of a frame; truncated.
        assert_eq!(vp9_frame_start(&[0x90, 0x81, 0x05]), None);
        assert_eq!(vp9_frame_start(&[0x9a, 0x81]), None);
    }

    #[test]
    fn received_stats_count_frames_and_bytes() {
        let now = Instant::now();
        let mut s = ReceivedTrackStats::new("PA".into(), "TR_v".into(), TrackKind::Video);
        s.on_packet(5, 96, 100, false, &[0x10, 0x00, 1, 2], now);
        s.on_packet(5, 96, 101, true, &[0x00, 3, 4], now);
        s.on_packet(5, 96, 102, true, &[0x10, 0x01, 5], now);
        assert_eq!(s.packets(), 3);
        assert_eq!(s.bytes, 10);
        assert_eq!((s.frames, s.keyframes, s.markers), (2, 1, 2));
        assert_eq!((s.ssrc, s.payload_type, s.seq.gaps), (5, 96, 0));

        let mut a = ReceivedTrackStats::new("PA".into(), "TR_a".into(), TrackKind::Audio);
        a.on_packet(6, 111, 7, true, &[0xF8, 0xFF, 0xFE], now);
        assert_eq!((a.frames, a.keyframes, a.bytes), (0, 0, 3));
    }

    #[test]
    fn loss_counts_unfilled_gaps_across_wraparound() {
        let mut s = SeqStats::default();
        for seq in [65_534u16, 65_535, 1, 0, 3] {
            s.push(seq);
        }
        // 65534..=3 is 6 packets; 2 never came, 0 came late.
        assert_eq!(s.expected(), 6);
        assert_eq!(s.lost(), 1);
    }

    #[test]
    fn frames_jitter_freezes_and_latency() {
        let t0 = Instant::now();
        let mut s = ReceivedTrackStats::new("PA".into(), "TR_v".into(), TrackKind::Video);
        let meta = |seq: u16, ts: u32, marker: bool| PacketMeta {
            ssrc: 1,
            payload_type: 96,
            sequence_number: seq,
            timestamp: ts,
            marker,
            latency: Some(Duration::from_millis(5)),
        };
        // An interframe before any keyframe is not decodable.
        s.on_rtp(meta(1, 0, true), &[0x10, 0x01], t0);
        assert_eq!(s.frames_completed, 0);
        // A two-packet keyframe, every 33 ms at 90 kHz: perfectly regular, no jitter.
        let mut seq = 2;
        for i in 0..10u32 {
            let at = t0 + Duration::from_millis(u64::from(i + 1) * 33);
            let ts = (i + 1) * 2970;
            let first: &[u8] = if i == 0 { &[0x10, 0x00] } else { &[0x10, 0x01] };
            s.on_rtp(meta(seq, ts, false), first, at);
            s.on_rtp(meta(seq + 1, ts, true), &[0x00, 0x00], at);
            seq += 2;
        }
        assert_eq!(s.frames_completed, 10);
        assert_eq!(s.first_frame_at, Some(t0 + Duration::from_millis(33)));
        assert!(s.jitter() < Duration::from_millis(1), "{:?}", s.jitter());
        assert_eq!(s.freezes, 0);
        assert_eq!(s.latency.len(), 10);
        assert_eq!(s.latency.quantile(0.5).map(|d| d.as_millis()), Some(5));
        let fps = s.frame_rate().expect("fps");
        assert!((fps - 30.3).abs() < 0.5, "{fps}");
        // A frame with a missing packet is not complete; the next one arrives after 500 ms.
        let late = t0 + Duration::from_millis(330 + 500);
        s.on_rtp(meta(seq, 40_000, false), &[0x10, 0x01], late);
        s.on_rtp(meta(seq + 2, 40_000, true), &[0x00, 0x00], late);
        assert_eq!(s.frames_completed, 10);
        assert_eq!(s.lost(), 1);
        s.on_rtp(meta(seq + 3, 50_000, true), &[0x10, 0x01], late);
        assert_eq!(s.frames_completed, 11);
        assert_eq!(s.freezes, 1);
        assert_eq!(s.freeze_duration, Duration::from_millis(500));
        assert!(s
            .ongoing_freeze(late + Duration::from_millis(100))
            .is_none());
        assert!(s.ongoing_freeze(late + Duration::from_secs(1)).is_some());
        assert!(s.jitter() > Duration::from_millis(1));
    }

    #[test]
    fn latency_histograms_merge() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(100));
        b.record(Duration::from_secs(3600));
        a.merge(&b);
        assert_eq!(a.len(), 3);
        assert!(a
            .quantile(1.0)
            .is_some_and(|d| d <= Duration::from_secs(61)));
        assert!(LatencyHistogram::new().quantile(0.5).is_none());
    }

    #[test]
    fn offered_tracks_follow_direction_port_and_msid() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:PA TR_a\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=inactive\r\na=msid:PA TR_v\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendonly\r\na=msid:PB TR_x\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendrecv\r\na=msid:PB TR_y\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:4\r\na=sendonly\r\n";
        let tracks = offered_tracks(sdp);
        assert_eq!(
            tracks,
            vec![
                OfferedTrack {
                    participant_id: "PA".into(),
                    track_id: "TR_a".into(),
                    media: "audio".into()
                },
                OfferedTrack {
                    participant_id: "PB".into(),
                    track_id: "TR_y".into(),
                    media: "video".into()
                },
            ]
        );
        assert!(offered_tracks("").is_empty());
    }
}
