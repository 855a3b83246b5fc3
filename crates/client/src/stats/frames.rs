//! Video frame assembly on the receive side: which frames arrived complete (start to marker),
//! from the first keyframe on, the gaps between them (freezes), and the frames kept whole for
//! the decode check.

use super::{PacketMeta, ReceivedTrackStats};
use chorus_rtp::VideoCodec;
use chorus_signal::protocol::TrackKind;
use std::time::{Duration, Instant};

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
        match VideoCodec::from_mime(mime) {
            Some(VideoCodec::Vp8) => Self::Vp8,
            Some(VideoCodec::Vp9) => Self::Vp9,
            Some(VideoCodec::Av1) => Self::Av1,
            Some(VideoCodec::H264) | None => Self::Other,
        }
    }
}

/// The packets of one video frame seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FrameAssembly {
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
            data.extend_from_slice(p.get(chorus_rtp::vp8::descriptor_len(p)?..)?);
        }
        Some(AssembledFrame {
            keyframe: self.keyframe,
            first_seq: start,
            last_seq: self.end?,
            data,
        })
    }
}

impl ReceivedTrackStats {
    pub(super) fn assemble(
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

    pub(super) fn frame_done(&mut self, now: Instant, latency: Option<Duration>) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
