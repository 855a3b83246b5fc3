//! What a publisher sends: the tracks to publish ([`PublishTrack`], each encoding's
//! [`LoopSource`]), their codecs, and each encoding's sending state ([`Layer`]: the loop's
//! pacing, RTP sequence and timestamps, the retransmission history).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_signal::protocol::TrackKind;
use rtc::rtp::packetizer::Payloader;

use crate::ivf::{IvfClip, IvfCodec};
use crate::media::{AudioClip, AudioFrame, AudioSource, SendCounters, VideoSource};

/// Sent video packets kept for retransmission, per stream (about 3 s at 1.5 Mbps).
pub(super) const HISTORY: usize = 512;
/// A paused or stalled loop never bursts more than this much media to catch up.
const MAX_LAG: Duration = Duration::from_secs(1);

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
pub(super) enum Codec {
    Opus,
    Vp8,
    Vp9,
    Av1,
}

impl Codec {
    /// The codec of a track's (first) loop.
    pub(super) fn of(track: &PublishTrack) -> Codec {
        match track.layers.first().map(|l| &l.source) {
            Some(LoopSource::Video(clip)) => match clip.codec() {
                Some(IvfCodec::Vp9) => Codec::Vp9,
                Some(IvfCodec::Av1) => Codec::Av1,
                _ => Codec::Vp8,
            },
            _ => Codec::Opus,
        }
    }

    /// The RTP clock rate.
    pub(super) fn clock_rate(self) -> u32 {
        if self == Codec::Opus {
            48_000
        } else {
            90_000
        }
    }

    /// A packetizer for frames of this codec.
    pub(super) fn payloader(self) -> Box<dyn Payloader> {
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
pub(super) struct ExtensionIds {
    pub(super) mid: u8,
    pub(super) rid: u8,
    pub(super) abs_send_time: u8,
    pub(super) abs_capture_time: u8,
    pub(super) audio_level: u8,
    pub(super) transport_cc: u8,
}

/// One encoding being sent.
pub(super) struct Layer {
    pub(super) rid: Bytes,
    pub(super) ssrc: u32,
    pub(super) counters: Arc<SendCounters>,
    pub(super) source: LoopSource,
    pub(super) payloader: Box<dyn Payloader>,
    /// The next frame of the loop.
    pub(super) next: usize,
    pub(super) keyframes: Vec<usize>,
    pub(super) frame_duration: Duration,
    /// When the next frame is due; `None` until media starts.
    pub(super) due: Option<Instant>,
    /// The RTP timestamp of the frame due next.
    pub(super) timestamp: u32,
    pub(super) clock_rate: u32,
    pub(super) sequence: u16,
    /// Muted frame times since the last DTX frame (audio).
    pub(super) dtx: u32,
    /// Sent packets by sequence number modulo [`HISTORY`] (video only).
    pub(super) history: Vec<Option<(u16, Bytes)>>,
    pub(super) packets: u32,
    pub(super) octets: u32,
}

impl Layer {
    /// A layer to send `layer` with, paused until media starts.
    pub(super) fn new(layer: PublishLayer, codec: Codec) -> Layer {
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
    pub(super) fn advance(&mut self, duration: Duration, now: Instant) {
        let Some(due) = self.due else { return };
        let next = (due + duration).max(lag_floor(now));
        self.timestamp = self.timestamp.wrapping_add(self.ticks(next - due));
        self.due = Some(next);
    }

    /// `d` in RTP clock ticks.
    pub(super) fn ticks(&self, d: Duration) -> u32 {
        (d.as_secs_f64() * f64::from(self.clock_rate)).round() as u64 as u32
    }

    /// The RTP timestamp of instant `at` (for sender reports).
    pub(super) fn timestamp_at(&self, at: Instant) -> u32 {
        match self.due {
            Some(due) if due >= at => self.timestamp.wrapping_sub(self.ticks(due - at)),
            Some(due) => self.timestamp.wrapping_add(self.ticks(at - due)),
            None => self.timestamp,
        }
    }
}

/// One published track: its section in the offer and its encodings.
pub(super) struct Track {
    pub(super) kind: TrackKind,
    pub(super) stream_id: String,
    pub(super) track_id: String,
    pub(super) mid: Bytes,
    pub(super) codec: Codec,
    pub(super) payload_type: u8,
    pub(super) extensions: ExtensionIds,
    /// Whether the answer accepted the section.
    pub(super) accepted: bool,
    pub(super) layers: Vec<Layer>,
}

/// The earliest a loop's next frame may be due: [`MAX_LAG`] before `now`.
pub(super) fn lag_floor(now: Instant) -> Instant {
    now.checked_sub(MAX_LAG).unwrap_or(now)
}
