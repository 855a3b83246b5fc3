//! [`Feedback`]: what one received stream's receiver reports, NACKs and PLIs need, as a
//! browser generates them (RFC 3550 6.4.1, RFC 4585 6.2.1): sequence and loss accounting,
//! interarrival jitter, the last sender report, and the missing packets still worth asking
//! for.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chorus_rtp::jitter::Jitter;
use chorus_rtp::seq::SeqExtender;
use rtc::rtcp::reception_report::ReceptionReport;

/// A missing packet is first asked for after this (reordering gets a chance), then every
/// [`NACK_RETRY`], at most [`NACK_MAX`] times, and forgotten after [`NACK_MAX_AGE`].
const NACK_DELAY: Duration = Duration::from_millis(10);
const NACK_RETRY: Duration = Duration::from_millis(100);
const NACK_MAX: u8 = 10;
const NACK_MAX_AGE: Duration = Duration::from_secs(1);
/// The most missing packets tracked per stream (a longer gap is not worth repairing).
const NACK_WINDOW: u64 = 512;
/// A packet NACKs could not repair in [`NACK_MAX_AGE`] leaves a frame undecodable: a
/// browser asks for a keyframe (PLI), at most this often per stream.
const PLI_INTERVAL: Duration = Duration::from_secs(1);

/// What receiver reports and NACKs of one stream need (RFC 3550 6.4.1, RFC 4585 6.2.1).
pub(super) struct Feedback {
    clock_rate: u32,
    nack: bool,
    pli: bool,
    /// A packet was lost for good: the next PLI is due (see [`PLI_INTERVAL`]).
    pub(super) keyframe_needed: bool,
    last_pli: Option<Instant>,
    /// Extended sequence numbers (the first lands at `seq + 2^16`).
    seqs: SeqExtender,
    /// The extended number of the first packet.
    base_seq: u64,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// RFC 3550 interarrival jitter.
    jitter: Jitter,
    /// Middle 32 bits of the last sender report's NTP time, and when it arrived.
    pub(super) last_sr: Option<(u32, Instant)>,
    /// Missing packets by extended sequence number: (noticed at, NACKs sent, last NACK).
    pub(super) missing: BTreeMap<u64, (Instant, u8, Option<Instant>)>,
}

impl Feedback {
    pub(super) fn new(clock_rate: u32, nack: bool, pli: bool) -> Feedback {
        Feedback {
            clock_rate: clock_rate.max(1),
            nack,
            pli,
            keyframe_needed: false,
            last_pli: None,
            seqs: SeqExtender::default(),
            base_seq: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: Jitter::default(),
            last_sr: None,
            missing: BTreeMap::new(),
        }
    }

    /// Updates sequence, loss and jitter state for a packet that arrived at `at`.
    pub(super) fn on_rtp(&mut self, seq: u16, timestamp: u32, at: Instant, epoch: Instant) {
        let max = self.seqs.highest();
        let ext = self.seqs.update(seq);
        match max {
            None => self.base_seq = ext,
            Some(max) if ext > max => {
                if self.nack && ext - max > 1 {
                    let from = (max + 1).max(ext.saturating_sub(NACK_WINDOW));
                    for missing in from..ext {
                        self.missing.insert(missing, (at, 0, None));
                    }
                }
            }
            Some(_) => {
                self.missing.remove(&ext);
            }
        }
        self.received = self.received.wrapping_add(1);
        self.jitter.on_packet(
            at.saturating_duration_since(epoch),
            self.clock_rate,
            timestamp,
        );
    }

    /// The reception report for this stream (RFC 3550 6.4.1), resetting the interval counters.
    pub(super) fn report(&mut self, ssrc: u32, now: Instant) -> Option<ReceptionReport> {
        let max = self.seqs.highest()?;
        let expected = (max - self.base_seq + 1) as u32;
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
            // The RFC's extended number counts cycles from 0; ours start one cycle in.
            last_sequence_number: (max - (1 << 16)) as u32,
            jitter: self.jitter.timestamp_units(),
            last_sender_report,
            delay,
        })
    }

    /// Sequence numbers to NACK now; forgets what is too old or asked for too often.
    pub(super) fn due_nacks(&mut self, now: Instant, out: &mut Vec<u16>) {
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
    pub(super) fn take_pli(&mut self, now: Instant) -> bool {
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
    pub(super) fn next_nack(&self) -> Option<Instant> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
