//! The per-subscriber forwarding decision and rewrite, without a peer connection.
//!
//! One [`Forwarder`] per downtrack decides, packet by packet, whether a publisher's packet
//! reaches that subscriber and with which sequence number, timestamp and (VP8) picture id:
//!
//! - which simulcast layer it forwards ([`LayerSelector`]): video starts, and switches layer,
//!   only on a keyframe of the target layer; a paused layer falls back to the best one flowing;
//! - the numbering ([`RtpMunger`]): sequence numbers offset so the publisher's gaps (loss) are
//!   the subscriber's gaps and nothing else is, timestamps offset, and a new source (another
//!   layer, or the same one after a mute) continuing where the subscriber's stream left off;
//! - VP8 picture id and TL0PICIDX continuity across layer switches ([`Vp8Munger`]).
//!
//! Sans-IO and clock-free (time is an argument), so the whole policy is unit-tested below with
//! tables of packets, as LiveKit tests its forwarder.

use std::cell::Cell;
use std::time::Instant;

use bytes::Bytes;

use crate::munger::{Munged, RtpMunger};
use crate::simulcast::{Decision, LayerSelector};
use chorus_rtp::vp8::{Vp8Descriptor, Vp8Munger};
use chorus_rtp::VideoCodec;

/// One publisher packet as every downtrack of its track sees it. What is worked out from its
/// payload (the VP8 descriptor, whether it starts a keyframe) is worked out once for all of
/// them, and the keyframe check only if some downtrack waits for one.
pub struct Source<'a> {
    /// The simulcast layer (encoding index, lowest quality first) it belongs to.
    pub layer: u8,
    /// The layers flowing lately (bit `i`: layer `i`); 0 without simulcast.
    pub flowing: u8,
    /// Its sequence number.
    pub seq: u16,
    /// Its RTP timestamp.
    pub timestamp: u32,
    /// Its payload.
    pub payload: &'a Bytes,
    /// Its VP8 payload descriptor, when the track is VP8.
    pub vp8: Option<Vp8Descriptor>,
    codec: Option<VideoCodec>,
    keyframe: Cell<Option<bool>>,
}

impl<'a> Source<'a> {
    /// Describes a packet of a track whose video codec is `codec` (`None` for audio).
    pub fn new(
        codec: Option<VideoCodec>,
        layer: u8,
        flowing: u8,
        seq: u16,
        timestamp: u32,
        payload: &'a Bytes,
    ) -> Self {
        let vp8 = (codec == Some(VideoCodec::Vp8))
            .then(|| Vp8Descriptor::parse(payload))
            .flatten();
        Self {
            layer,
            flowing,
            seq,
            timestamp,
            payload,
            vp8,
            codec,
            keyframe: Cell::new(None),
        }
    }

    /// Whether the packet starts a keyframe (worked out on first use).
    pub fn is_keyframe(&self) -> bool {
        if let Some(k) = self.keyframe.get() {
            return k;
        }
        let k = self.codec.is_some_and(|c| c.starts_keyframe(self.payload));
        self.keyframe.set(Some(k));
        k
    }
}

/// What a downtrack does with one [`Source`] packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it with this header and payload.
    Send {
        /// Outgoing sequence number.
        seq: u16,
        /// Outgoing timestamp.
        timestamp: u32,
        /// The payload: the publisher's, shared, unless VP8 picture ids had to be rewritten.
        payload: Bytes,
        /// It is the first packet of another layer than before.
        switched: bool,
    },
    /// Not for this subscriber: another layer is being forwarded, or wanted.
    Skip,
    /// Not sent: the downtrack waits for a keyframe of this layer (ask the publisher).
    WaitingKeyframe,
    /// Not sent: older than the first packet this downtrack forwarded.
    TooOld,
}

/// One downtrack's forwarding state. See the module docs.
#[derive(Debug, Clone)]
pub struct Forwarder {
    selector: LayerSelector,
    munger: RtpMunger,
    vp8: Vp8Munger,
    /// The track's RTP clock rate, to turn the time between sources into timestamp ticks.
    clock_rate: u32,
    /// When the last packet was sent: a new source continues timestamps from there.
    last_sent: Option<Instant>,
    /// The next forwarded packet continues the numbering after a pause (the track was muted
    /// and its packets dropped), so the subscriber sees no gap to NACK.
    rebase: bool,
}

impl Forwarder {
    /// A forwarder that wants layer `layer`, for video (starts on a keyframe) or audio, whose
    /// first packet goes out with sequence number `out_seq` and timestamp `out_ts`.
    pub fn new(layer: u8, video: bool, clock_rate: u32, out_seq: u16, out_ts: u32) -> Self {
        Self {
            selector: LayerSelector::new(layer, video),
            munger: RtpMunger::new(out_seq, out_ts),
            vp8: Vp8Munger::default(),
            clock_rate,
            last_sent: None,
            rebase: false,
        }
    }

    /// The layer wanted (the subscriber's quality).
    pub fn wanted(&self) -> u8 {
        self.selector.wanted()
    }

    /// Asks for another layer; returns whether that changed anything (then a keyframe of it
    /// is worth requesting).
    pub fn set_wanted(&mut self, layer: u8) -> bool {
        if self.selector.wanted() == layer {
            return false;
        }
        self.selector.set_wanted(layer);
        true
    }

    /// The layer a keyframe would help: the one forwarded, or the one awaited.
    pub fn keyframe_layer(&self) -> u8 {
        self.selector.current().unwrap_or(self.selector.target())
    }

    /// The track resumes after a mute: continue the numbering past what was dropped, and
    /// restart video on a keyframe (what follows may reference frames nobody received).
    pub fn resume(&mut self, video: bool) {
        self.rebase = true;
        if video {
            self.selector.restart();
        }
    }

    /// Records that the packet last returned as [`Verdict::Send`] went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
    }

    /// Decides on one packet at `now`.
    pub fn forward(&mut self, now: Instant, source: &Source<'_>) -> Verdict {
        self.selector.retarget(source.flowing);
        let decision = self.selector.decide(source.layer, || source.is_keyframe());
        // A new source (another layer, or the same one after a pause) continues the numbering
        // where the subscriber's stream left off.
        let (new_source, switched) = match decision {
            Decision::Forward => (std::mem::take(&mut self.rebase), false),
            Decision::Switch => {
                self.rebase = false;
                (true, true)
            }
            Decision::WantKeyframe => return Verdict::WaitingKeyframe,
            Decision::Skip => return Verdict::Skip,
        };
        if new_source {
            let gap = self.last_sent.map_or(1, |t| {
                // Integer ticks, rounded: exact and the same on every machine.
                let nanos = now.saturating_duration_since(t).as_nanos();
                let ticks = (nanos * u128::from(self.clock_rate) + 500_000_000) / 1_000_000_000;
                u32::try_from(ticks).unwrap_or(u32::MAX)
            });
            self.munger.switch_source(gap);
            if let Some(d) = &source.vp8 {
                self.vp8.switch_source(d);
            }
        }
        let (seq, timestamp) = match self.munger.munge(source.seq, source.timestamp) {
            Munged::Forward { seq, timestamp } => (seq, timestamp),
            Munged::TooOld => return Verdict::TooOld,
        };
        let payload = match &source.vp8 {
            Some(d) => self.vp8.munge(d, source.payload),
            None => source.payload.clone(),
        };
        Verdict::Send {
            seq,
            timestamp,
            payload,
            switched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A VP8 payload: descriptor with a 15-bit picture id and TL0PICIDX, then the payload
    /// header's first byte (P bit clear on keyframes).
    fn vp8(pid: u16, keyframe: bool) -> Bytes {
        Bytes::from(vec![
            0x90,
            0xc0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            pid as u8, // TL0PICIDX follows the picture id in these tables
            if keyframe { 0x00 } else { 0x01 },
        ])
    }

    fn picture_id(payload: &Bytes) -> u16 {
        Vp8Descriptor::parse(payload)
            .and_then(|d| d.picture_id)
            .map(|p| p.value)
            .expect("picture id")
    }

    /// One input row: (layer, flowing, seq, timestamp, picture id, keyframe, ms since start).
    type Row = (u8, u8, u16, u32, u16, bool, u64);

    /// What came out: (seq, timestamp, picture id, switched), or the verdict's name.
    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Sent(u16, u32, u16, bool),
        Skip,
        Waiting,
        TooOld,
    }

    fn run(f: &mut Forwarder, rows: &[Row]) -> Vec<Out> {
        // One time origin for every call: a row's milliseconds are on the test's timeline,
        // so a later call's rows are not shifted by the time between two calls (which made
        // a timestamp one tick late on a loaded machine).
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let t0 = *T0.get_or_init(Instant::now);
        rows.iter()
            .map(|&(layer, flowing, seq, ts, pid, key, ms)| {
                let now = t0 + Duration::from_millis(ms);
                let payload = vp8(pid, key);
                let source = Source::new(Some(VideoCodec::Vp8), layer, flowing, seq, ts, &payload);
                match f.forward(now, &source) {
                    Verdict::Send {
                        seq,
                        timestamp,
                        payload,
                        switched,
                    } => {
                        f.sent(now);
                        Out::Sent(seq, timestamp, picture_id(&payload), switched)
                    }
                    Verdict::Skip => Out::Skip,
                    Verdict::WaitingKeyframe => Out::Waiting,
                    Verdict::TooOld => Out::TooOld,
                }
            })
            .collect()
    }

    #[test]
    fn video_starts_on_a_keyframe_with_its_own_numbering() {
        let mut f = Forwarder::new(0, true, 90_000, 500, 10_000);
        let out = run(
            &mut f,
            &[
                (0, 0, 100, 9000, 40, false, 0),
                (0, 0, 101, 9000, 40, false, 0),
                (0, 0, 102, 12000, 41, true, 33),
                (0, 0, 103, 12000, 41, false, 33),
                (0, 0, 104, 15000, 42, false, 66),
            ],
        );
        assert_eq!(
            out,
            [
                Out::Waiting,
                Out::Waiting,
                Out::Sent(500, 10_000, 41, false),
                Out::Sent(501, 10_000, 41, false),
                Out::Sent(502, 13_000, 42, false),
            ]
        );
    }

    #[test]
    fn gaps_and_reordering_pass_through_and_older_than_the_start_is_dropped() {
        let mut f = Forwarder::new(0, true, 90_000, 0xfffe, 0);
        let out = run(
            &mut f,
            &[
                (0, 0, 10, 3000, 1, true, 0),
                // 11 and 12 lost: the subscriber sees the same gap, across its wrap.
                (0, 0, 13, 6000, 2, false, 33),
                // 12 arrives late: it takes its own place.
                (0, 0, 12, 3000, 1, false, 34),
                // Older than the first forwarded packet.
                (0, 0, 9, 0, 0, false, 35),
                (0, 0, 14, 6000, 2, false, 36),
            ],
        );
        assert_eq!(
            out,
            [
                Out::Sent(0xfffe, 0, 1, false),
                Out::Sent(1, 3000, 2, false),
                Out::Sent(0, 0, 1, false),
                Out::TooOld,
                Out::Sent(2, 3000, 2, false),
            ]
        );
    }

    #[test]
    fn a_layer_switch_waits_for_a_keyframe_and_continues_everything() {
        let mut f = Forwarder::new(0, true, 90_000, 1000, 0);
        let both = 0b011;
        let mut rows: Vec<Row> = vec![
            (0, both, 100, 3000, 7, true, 0),
            (1, both, 5000, 777_000, 300, false, 1),
            (0, both, 101, 6000, 8, false, 33),
        ];
        let before = run(&mut f, &rows);
        assert_eq!(
            before,
            [
                Out::Sent(1000, 0, 7, false),
                Out::Skip,
                Out::Sent(1001, 3000, 8, false),
            ]
        );
        assert!(f.set_wanted(1));
        assert!(!f.set_wanted(1), "asking again changes nothing");
        rows = vec![
            // Layer 0 keeps flowing until layer 1 has a keyframe.
            (1, both, 5001, 780_000, 301, false, 40),
            (0, both, 102, 9000, 9, false, 66),
            // Layer 1's keyframe, 34 ms after the last packet sent: 3060 ticks later.
            (1, both, 5002, 783_000, 302, true, 100),
            (1, both, 5003, 783_000, 302, false, 100),
            (0, both, 103, 12000, 10, true, 101),
            (1, both, 5004, 786_000, 303, false, 133),
        ];
        let after = run(&mut f, &rows);
        assert_eq!(
            after,
            [
                Out::Waiting,
                Out::Sent(1002, 6000, 9, false),
                Out::Sent(1003, 6000 + 3060, 10, true),
                Out::Sent(1004, 6000 + 3060, 10, false),
                Out::Skip,
                Out::Sent(1005, 6000 + 3060 + 3000, 11, false),
            ]
        );
    }

    #[test]
    fn a_paused_layer_falls_back_to_the_best_one_flowing() {
        let mut f = Forwarder::new(2, true, 90_000, 0, 0);
        let out = run(
            &mut f,
            &[
                // Only layers 0 and 1 flow: the wanted top layer is paused, start on 1.
                (0, 0b011, 10, 3000, 1, true, 0),
                (1, 0b011, 20, 3000, 50, true, 0),
                (1, 0b011, 21, 6000, 51, false, 33),
                // All three flow again: climb to 2 on its keyframe.
                (2, 0b111, 30, 6000, 90, false, 66),
                (2, 0b111, 31, 9000, 91, true, 99),
            ],
        );
        assert_eq!(
            out,
            [
                Out::Skip,
                Out::Sent(0, 0, 50, false),
                Out::Sent(1, 3000, 51, false),
                Out::Waiting,
                Out::Sent(2, 3000 + 5940, 52, true),
            ]
        );
    }

    #[test]
    fn resuming_after_mute_continues_numbering_from_a_keyframe() {
        let mut f = Forwarder::new(0, true, 90_000, 100, 0);
        let out = run(
            &mut f,
            &[(0, 0, 10, 3000, 1, true, 0), (0, 0, 11, 6000, 2, false, 33)],
        );
        assert_eq!(
            out,
            [Out::Sent(100, 0, 1, false), Out::Sent(101, 3000, 2, false)]
        );
        // Muted: packets 12..=99 were dropped by the track. Resumed a second later.
        f.resume(true);
        let out = run(
            &mut f,
            &[
                (0, 0, 100, 96_000, 50, false, 1033),
                (0, 0, 101, 99_000, 51, true, 1066),
                (0, 0, 102, 99_000, 51, false, 1066),
            ],
        );
        // No gap in sequence numbers; the timestamp advances by the time since the last packet
        // sent (1033 ms: 92,970 ticks).
        assert_eq!(
            out,
            [
                Out::Waiting,
                Out::Sent(102, 3000 + 92_970, 3, false),
                Out::Sent(103, 3000 + 92_970, 3, false),
            ]
        );
    }

    #[test]
    fn audio_starts_on_any_packet_and_shares_the_payload() {
        let mut f = Forwarder::new(0, false, 48_000, 7, 70);
        let payload = Bytes::from_static(&[1, 2, 3]);
        let now = Instant::now();
        let source = Source::new(None, 0, 0, 500, 960, &payload);
        let Verdict::Send {
            seq,
            timestamp,
            payload: out,
            switched,
        } = f.forward(now, &source)
        else {
            panic!("audio not forwarded");
        };
        assert_eq!((seq, timestamp, switched), (7, 70, false));
        assert_eq!(out.as_ptr(), payload.as_ptr(), "payload shared, not copied");
        assert!(!source.is_keyframe());
    }
}
