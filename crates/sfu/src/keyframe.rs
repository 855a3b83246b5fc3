//! Keyframe request throttling: many subscribers asking at once cost the publisher one keyframe.

use std::time::{Duration, Instant};

/// Decides whether a keyframe request (PLI) should go to the publisher now.
#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    interval: Duration,
    last_sent: Option<Instant>,
}

impl KeyframeThrottle {
    /// At most one request per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
        }
    }

    /// Records a request at `now`; true when it should be sent, false when it is absorbed.
    pub fn request(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(last) if now.saturating_duration_since(last) < self.interval => false,
            _ => {
                self.last_sent = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crowd_of_requests_sends_one_per_interval() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(Duration::from_millis(500));
        let ms = |n| t0 + Duration::from_millis(n);
        let sent: Vec<bool> = [0, 1, 100, 499, 500, 700, 1000, 1001]
            .map(|n| k.request(ms(n)))
            .to_vec();
        assert_eq!(sent, [true, false, false, false, true, false, true, false]);
    }
}
