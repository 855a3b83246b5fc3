//! Per-downtrack rewriting of sequence numbers and timestamps.
//!
//! Every subscriber gets its own numbering that starts where it likes and never jumps: the
//! outgoing sequence number is the incoming one plus a fixed offset, so gaps the publisher made
//! (loss) show up as the same gaps, and nothing else does. Sequence numbers are tracked as
//! extended 64-bit counters inside and become `u16` only on the wire.

use chorus_rtp::seq::SeqExtender;

/// What to do with one incoming packet on a downtrack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Munged {
    /// Send it with these header values.
    Forward {
        /// Outgoing sequence number.
        seq: u16,
        /// Outgoing timestamp.
        timestamp: u32,
    },
    /// Older than the first packet this downtrack forwarded: drop it.
    TooOld,
}

/// Sequence number and timestamp rewriting for one downtrack.
#[derive(Debug, Clone)]
pub struct RtpMunger {
    incoming: SeqExtender,
    /// Extended incoming sequence number of the first forwarded packet.
    first_in: Option<u64>,
    /// Outgoing sequence number of the first forwarded packet.
    out_start: u16,
    /// Added (wrapping) to every incoming timestamp.
    ts_offset: u32,
    out_ts_start: u32,
    /// Highest outgoing sequence number and its timestamp so far, where a new source continues.
    last_out: Option<(u16, u32)>,
}

impl RtpMunger {
    /// A munger whose first outgoing packet carries `out_seq` and `out_ts`.
    pub fn new(out_seq: u16, out_ts: u32) -> Self {
        Self {
            incoming: SeqExtender::default(),
            first_in: None,
            out_start: out_seq,
            ts_offset: 0,
            out_ts_start: out_ts,
            last_out: None,
        }
    }

    /// Makes the next packet start a new source (another simulcast layer, with its own
    /// sequence numbers and timestamps): its outgoing sequence number follows the highest sent
    /// so far and its timestamp the last one plus `ts_gap` (the time since, in clock ticks, at
    /// least 1), so the subscriber sees one continuous stream.
    pub fn switch_source(&mut self, ts_gap: u32) {
        if let Some((seq, ts)) = self.last_out {
            self.incoming = SeqExtender::default();
            self.first_in = None;
            self.out_start = seq.wrapping_add(1);
            self.out_ts_start = ts.wrapping_add(ts_gap.max(1));
        }
    }

    /// Rewrites the header of an incoming packet.
    pub fn munge(&mut self, seq: u16, timestamp: u32) -> Munged {
        let ext = self.incoming.update(seq);
        let first = *self.first_in.get_or_insert_with(|| {
            self.ts_offset = self.out_ts_start.wrapping_sub(timestamp);
            ext
        });
        if ext < first {
            return Munged::TooOld;
        }
        let seq = self.out_start.wrapping_add((ext - first) as u16);
        let timestamp = timestamp.wrapping_add(self.ts_offset);
        match self.last_out {
            Some((last, _)) if (seq.wrapping_sub(last) as i16) <= 0 => {}
            _ => self.last_out = Some((seq, timestamp)),
        }
        Munged::Forward { seq, timestamp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_continuous_and_keeps_only_the_publishers_gaps() {
        let mut m = RtpMunger::new(100, 5000);
        let input: [(u16, u32); 6] = [
            (65534, 1_000),
            (65535, 1_000),
            (0, 4_000),
            (2, 7_000),
            (1, 7_000),
            (3, 10_000),
        ];
        let out: Vec<Munged> = input.iter().map(|(s, t)| m.munge(*s, *t)).collect();
        let want = [
            Munged::Forward {
                seq: 100,
                timestamp: 5000,
            },
            Munged::Forward {
                seq: 101,
                timestamp: 5000,
            },
            Munged::Forward {
                seq: 102,
                timestamp: 8000,
            },
            Munged::Forward {
                seq: 104,
                timestamp: 11000,
            },
            Munged::Forward {
                seq: 103,
                timestamp: 11000,
            }, // reordered, same order out
            Munged::Forward {
                seq: 105,
                timestamp: 14000,
            },
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn a_new_source_continues_the_numbering() {
        let mut m = RtpMunger::new(100, 5000);
        assert_eq!(
            m.munge(10, 90_000),
            Munged::Forward {
                seq: 100,
                timestamp: 5000
            }
        );
        m.munge(12, 93_000);
        m.munge(11, 93_000); // late: does not move where the next source continues
        m.switch_source(3000);
        // Another layer: unrelated numbers, continued from seq 102 / ts 8000.
        assert_eq!(
            m.munge(40_000, 7),
            Munged::Forward {
                seq: 103,
                timestamp: 11_000
            }
        );
        assert_eq!(
            m.munge(40_001, 3007),
            Munged::Forward {
                seq: 104,
                timestamp: 14_000
            }
        );
        assert_eq!(m.munge(39_999, 7), Munged::TooOld);
    }

    #[test]
    fn packets_from_before_the_start_are_dropped() {
        let mut m = RtpMunger::new(0xffff, u32::MAX);
        assert_eq!(
            m.munge(10, 0),
            Munged::Forward {
                seq: 0xffff,
                timestamp: u32::MAX
            }
        );
        assert_eq!(m.munge(9, 0), Munged::TooOld);
        assert_eq!(
            m.munge(11, 1),
            Munged::Forward {
                seq: 0,
                timestamp: 0
            }
        );
    }
}
