//! RFC 3550 §6.4.1 interarrival jitter: the smoothed variation of the transit time (arrival
//! minus RTP timestamp), kept in the RFC's fixed-point form (16 times the value).

use std::time::Duration;

/// An interarrival jitter estimate for one RTP stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Jitter {
    /// The estimate in RTP timestamp units, times 16.
    q4: u64,
    /// `arrival - timestamp` of the previous packet, in RTP timestamp units.
    last_transit: Option<i64>,
}

impl Jitter {
    /// Accounts a packet with RTP `timestamp` that arrived `arrival` after a fixed origin (the
    /// same for every packet of the stream), on a `clock_rate` Hz RTP clock.
    pub fn on_packet(&mut self, arrival: Duration, clock_rate: u32, timestamp: u32) {
        let arrival = (arrival.as_secs_f64() * f64::from(clock_rate)) as i64;
        let transit = arrival - i64::from(timestamp);
        if let Some(last) = self.last_transit {
            // RTP timestamps wrap at 2^32: take the difference modulo 2^32, signed.
            let d = u64::from(((transit - last) as i32).unsigned_abs());
            self.q4 = self.q4 + d - self.q4 / 16;
        }
        self.last_transit = Some(transit);
    }

    /// The estimate in RTP timestamp units times 16 (the RFC's fixed-point form).
    pub fn q4(&self) -> u64 {
        self.q4
    }

    /// The estimate in RTP timestamp units, as a receiver report carries it.
    pub fn timestamp_units(&self) -> u32 {
        u32::try_from(self.q4 / 16).unwrap_or(u32::MAX)
    }

    /// The estimate as a duration on a `clock_rate` Hz RTP clock (zero for a zero rate).
    pub fn duration(&self, clock_rate: u32) -> Duration {
        if clock_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.q4 as f64 / 16.0 / f64::from(clock_rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn regular_packets_have_no_jitter_and_late_ones_add_a_sixteenth() {
        let mut j = Jitter::default();
        // 90 kHz: 20 ms = 1800 ticks; perfectly regular.
        for i in 0..10u32 {
            j.on_packet(MS * 20 * i, 90_000, 1800 * i);
        }
        assert_eq!(j.q4(), 0);
        // One packet 10 ms (900 ticks) late: J += 900/16.
        j.on_packet(MS * 210, 90_000, 1800 * 10);
        assert_eq!((j.q4(), j.timestamp_units()), (900, 56));
        assert_eq!(
            j.duration(90_000),
            Duration::from_secs_f64(900.0 / 16.0 / 90_000.0)
        );
        assert_eq!(j.duration(0), Duration::ZERO);
    }

    #[test]
    fn timestamps_wrap() {
        let mut j = Jitter::default();
        j.on_packet(Duration::ZERO, 48_000, u32::MAX - 479);
        j.on_packet(MS * 30, 48_000, 480);
        assert_eq!(j.q4(), 480, "one 10 ms deviation across the wrap");
    }
}
