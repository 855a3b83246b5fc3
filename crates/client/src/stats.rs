//! Receive-side accounting of one remote track: sequence continuity and loss, frames and
//! keyframes, RFC 3550 jitter, freezes and latency. What an RTP payload says about its frame
//! comes from [`chorus_rtp`]; this module only counts.
//!
//! - this file: [`ReceivedTrackStats`] (per-packet accounting), [`PacketMeta`], [`SeqStats`];
//! - `frames`: frame assembly, freezes, [`AssembledFrame`], [`DecodeStats`], [`VideoFormat`];
//! - `latency`: [`LatencyHistogram`];
//! - `offer`: [`offered_tracks`], the tracks a subscriber offer carries.

mod frames;
mod latency;
mod offer;

pub use chorus_rtp::FrameStart;
pub use frames::{AssembledFrame, DecodeStats, VideoFormat};
pub use latency::LatencyHistogram;
pub use offer::{offered_tracks, OfferedTrack};

use chorus_rtp::jitter::Jitter;
use chorus_rtp::seq::SeqExtender;
use chorus_signal::protocol::TrackKind;
use frames::FrameAssembly;
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
    /// RFC 3550 interarrival jitter; see [`jitter`](Self::jitter).
    interarrival: Jitter,
    /// Video frames being assembled, by RTP timestamp, oldest first (packets may arrive out
    /// of order).
    assembling: Vec<FrameAssembly>,
    /// RTP timestamp of the latest completed frame.
    last_completed_ts: Option<u32>,
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
            frames_completed: 0,
            first_frame_at: None,
            last_frame_at: None,
            freezes: 0,
            freeze_duration: Duration::ZERO,
            latency: LatencyHistogram::new(),
            decode: DecodeStats::default(),
            keep_frames: false,
            frame_interval: None,
            interarrival: Jitter::default(),
            assembling: Vec::new(),
            last_completed_ts: None,
        }
    }

    /// RFC 3550 interarrival jitter.
    pub fn jitter(&self) -> Duration {
        self.interarrival.duration(self.clock_rate)
    }

    /// RFC 3550 interarrival jitter in RTP timestamp units times 16 (the RFC's fixed-point
    /// form).
    pub fn jitter_q4(&self) -> u64 {
        self.interarrival.q4()
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
            let arrival = now.saturating_duration_since(start);
            self.interarrival
                .on_packet(arrival, self.clock_rate, meta.timestamp);
        }
        match self.kind {
            TrackKind::Audio => {
                self.frame_done(now, meta.latency);
                None
            }
            TrackKind::Video => self.assemble(meta, payload, now),
        }
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
            VideoFormat::Vp8 => chorus_rtp::vp8::frame_start(payload),
            VideoFormat::Vp9 => chorus_rtp::vp9::frame_start(payload),
            VideoFormat::Av1 => {
                let start = std::mem::replace(&mut self.av1_at_start, marker);
                chorus_rtp::av1::frame_start(payload, start)
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
    /// Extends sequence numbers (starting one cycle in, so that early reordering cannot go
    /// below zero).
    extender: SeqExtender,
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
        let ext = self.extender.update(seq);
        self.highest_extended = self.extender.highest();
        if self.first_extended.is_none_or(|f| ext < f) {
            self.first_extended = Some(ext);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
