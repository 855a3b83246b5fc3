//! The retransmission budget of one connection: which sequence numbers a subscriber's NACKs may
//! have resent. Without it one ~1 KB NACK (hundreds of pairs, each naming 17 packets) could
//! make the server resend thousands of packets, and a client repeating its NACKs could make it
//! resend the same packet again and again.
//!
//! Per media SSRC (one downtrack): a sequence number asked for again within [`REPEAT`] is not
//! resent twice, and resends are a token bucket of [`BURST`] packets refilled at [`RATE`] per
//! second. What is cut is counted, never an error. Sans-IO: time is an argument.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};

/// Resends allowed per second per downtrack, sustained: twice the packet rate of a 2.5 Mbit/s
/// video stream.
pub const RATE: f64 = 500.0;
/// Resends allowed at once per downtrack.
pub const BURST: f64 = 250.0;
/// A packet asked for again within this is not resent again.
pub const REPEAT: Duration = Duration::from_millis(100);
/// Downtracks (media SSRCs) tracked per connection; NACKs for further ones are dropped.
pub const MAX_STREAMS: usize = 64;
/// Recently resent sequence numbers remembered per downtrack.
const MAX_RECENT: usize = 1024;

/// What [`NackBudget::filter`] did with one NACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filtered {
    /// The NACK to hand on (same SSRCs, only the sequence numbers allowed), if any remain.
    pub nack: Option<TransportLayerNack>,
    /// Sequence numbers allowed.
    pub allowed: usize,
    /// Sequence numbers cut because they were asked for (and resent) lately.
    pub duplicate: usize,
    /// Sequence numbers cut by the budget.
    pub over_budget: usize,
}

struct Stream {
    tokens: f64,
    refilled: Instant,
    /// Sequence numbers allowed lately, oldest first.
    recent: VecDeque<(u16, Instant)>,
}

/// One connection's retransmission budget. See the module docs.
#[derive(Default)]
pub struct NackBudget {
    streams: HashMap<u32, Stream>,
}

impl NackBudget {
    /// Filters one NACK received at `now`.
    pub fn filter(&mut self, now: Instant, nack: &TransportLayerNack) -> Filtered {
        let mut out = Filtered::default();
        let requested = nack.nacks.iter().flat_map(|p| p.into_iter());
        if !self.streams.contains_key(&nack.media_ssrc) && self.streams.len() >= MAX_STREAMS {
            out.over_budget = requested.count();
            return out;
        }
        let stream = self.streams.entry(nack.media_ssrc).or_insert(Stream {
            tokens: BURST,
            refilled: now,
            recent: VecDeque::new(),
        });
        let elapsed = now.saturating_duration_since(stream.refilled).as_secs_f64();
        stream.tokens = (stream.tokens + elapsed * RATE).min(BURST);
        stream.refilled = now;
        while stream
            .recent
            .front()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) >= REPEAT)
        {
            stream.recent.pop_front();
        }
        let mut keep = Vec::new();
        for seq in requested {
            if stream.recent.iter().any(|(s, _)| *s == seq) || keep.contains(&seq) {
                out.duplicate += 1;
            } else if stream.tokens >= 1.0 {
                stream.tokens -= 1.0;
                keep.push(seq);
            } else {
                out.over_budget += 1;
            }
        }
        for &seq in &keep {
            if stream.recent.len() >= MAX_RECENT {
                stream.recent.pop_front();
            }
            stream.recent.push_back((seq, now));
        }
        out.allowed = keep.len();
        if !keep.is_empty() {
            out.nack = Some(TransportLayerNack {
                sender_ssrc: nack.sender_ssrc,
                media_ssrc: nack.media_ssrc,
                nacks: nack_pairs_from_sequence_numbers(&keep),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nack(ssrc: u32, seqs: &[u16]) -> TransportLayerNack {
        TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: ssrc,
            nacks: nack_pairs_from_sequence_numbers(seqs),
        }
    }

    fn seqs(f: &Filtered) -> Vec<u16> {
        f.nack
            .as_ref()
            .map(|n| n.nacks.iter().flat_map(|p| p.into_iter()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_packet_asked_for_again_soon_is_not_resent_twice() {
        let t0 = Instant::now();
        let mut b = NackBudget::default();
        let f = b.filter(t0, &nack(7, &[10, 11, 12]));
        assert_eq!((seqs(&f), f.duplicate), (vec![10, 11, 12], 0));
        let f = b.filter(t0 + Duration::from_millis(20), &nack(7, &[11, 12, 13]));
        assert_eq!((seqs(&f), f.duplicate), (vec![13], 2));
        // Another downtrack has its own memory.
        let f = b.filter(t0 + Duration::from_millis(20), &nack(8, &[11]));
        assert_eq!(seqs(&f), vec![11]);
        // After REPEAT the client may ask again (the resend was lost too).
        let f = b.filter(t0 + REPEAT + Duration::from_millis(1), &nack(7, &[11]));
        assert_eq!((seqs(&f), f.duplicate), (vec![11], 0));
    }

    #[test]
    fn a_nack_flood_costs_a_bounded_number_of_resends() {
        let t0 = Instant::now();
        let mut b = NackBudget::default();
        let mut allowed = 0;
        let mut cut = 0;
        // One second of floods: every 10 ms a NACK naming 17 x 60 fresh sequence numbers.
        for i in 0..100u16 {
            let now = t0 + Duration::from_millis(10 * u64::from(i));
            let seqs: Vec<u16> = (0..1020u16)
                .map(|k| i.wrapping_mul(1020).wrapping_add(k))
                .collect();
            let f = b.filter(now, &nack(7, &seqs));
            allowed += f.allowed;
            cut += f.over_budget + f.duplicate;
        }
        assert_eq!(allowed + cut, 102_000, "every number accounted");
        let limit = (BURST + RATE) as usize + 1;
        assert!(
            allowed <= limit,
            "{allowed} resends allowed in one second, limit {limit}"
        );
        assert!(allowed >= limit - 10, "the budget is used: {allowed}");
    }

    #[test]
    fn random_ssrcs_cannot_grow_the_state() {
        let t0 = Instant::now();
        let mut b = NackBudget::default();
        for ssrc in 0..(MAX_STREAMS as u32 + 100) {
            let f = b.filter(t0, &nack(ssrc, &[1]));
            assert_eq!(f.allowed, usize::from(ssrc < MAX_STREAMS as u32));
        }
        assert_eq!(b.streams.len(), MAX_STREAMS);
    }
}
