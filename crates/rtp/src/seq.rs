//! Extended RTP sequence numbers: `u16` on the wire, `u64` inside, so that comparisons and
//! differences never have to think about the wrap at 65535.

/// Extends 16-bit sequence numbers to 64 bits, relative to the highest seen so far.
///
/// The first number lands one cycle in (`seq + 2^16`) so that packets reordered before it
/// still extend to a value above zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqExtender {
    highest: Option<u64>,
}

impl SeqExtender {
    /// The extended value of `seq` (the one within half a cycle of the highest so far),
    /// without recording it.
    pub fn extend(&self, seq: u16) -> u64 {
        match self.highest {
            None => u64::from(seq) + (1 << 16),
            Some(highest) => {
                let diff = i64::from(seq.wrapping_sub(highest as u16) as i16);
                highest.saturating_add_signed(diff)
            }
        }
    }

    /// Extends `seq` and records it if it is the highest so far.
    pub fn update(&mut self, seq: u16) -> u64 {
        let ext = self.extend(seq);
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        ext
    }

    /// The highest extended sequence number recorded; `None` before the first.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extends_across_rollover_in_both_directions() {
        let mut e = SeqExtender::default();
        let table: [(u16, u64); 7] = [
            (65534, 65536 + 65534),
            (65535, 65536 + 65535),
            (0, 2 * 65536),
            (65533, 65536 + 65533), // late packet from before the rollover
            (1, 2 * 65536 + 1),
            (30000, 2 * 65536 + 30000),
            (1000, 2 * 65536 + 1000),
        ];
        for (seq, want) in table {
            assert_eq!(e.update(seq), want, "seq {seq}");
        }
        assert_eq!(e.highest(), Some(2 * 65536 + 30000));
        // Half a cycle ahead still counts as ahead; further is behind.
        assert_eq!(e.extend(30000 + 32767), 2 * 65536 + 30000 + 32767);
        assert_eq!(
            e.extend(30000u16.wrapping_sub(32768)),
            2 * 65536 + 30000 - 32768
        );
    }

    #[test]
    fn early_reordering_stays_above_zero() {
        let mut e = SeqExtender::default();
        assert_eq!(e.update(0), 65536);
        assert_eq!(e.update(65535), 65535);
        assert_eq!(e.update(2), 65538);
        assert_eq!(e.highest(), Some(65538));
        assert_eq!(SeqExtender::default().extend(7), 65543);
    }
}
