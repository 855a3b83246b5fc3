//! Bounds on what one client can make the signaling layer do: WebSocket connection caps
//! (overall and per source address), a per-connection message rate (token bucket), and a log of
//! refused requests that cannot itself be flooded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::SignalConfig;

/// Open WebSockets, overall and per source address. Cloning shares the counts.
#[derive(Clone, Default)]
pub struct ConnectionLimiter {
    inner: Arc<Mutex<ConnCounts>>,
}

#[derive(Default)]
struct ConnCounts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// `signal.max_connections` are open.
    Total,
    /// `signal.max_connections_per_ip` are open from this address.
    PerIp,
}

/// One open connection's place in the counts; dropping it frees the place.
pub struct ConnSlot {
    limiter: ConnectionLimiter,
    /// The address counted against its per-address cap (`None`: exempt or unknown).
    ip: Option<IpAddr>,
}

impl ConnectionLimiter {
    /// Takes a place for a connection from `ip` (unknown: only the overall cap applies), or
    /// says which cap is reached.
    pub fn acquire(
        &self,
        ip: Option<IpAddr>,
        config: &SignalConfig,
    ) -> Result<ConnSlot, ConnRefusal> {
        let ip = ip.filter(|ip| !config.per_ip_exempt.contains(ip));
        let Ok(mut counts) = self.inner.lock() else {
            return Err(ConnRefusal::Total);
        };
        if counts.total >= config.max_connections {
            return Err(ConnRefusal::Total);
        }
        if let Some(ip) = ip {
            let n = counts.per_ip.entry(ip).or_insert(0);
            if *n >= config.max_connections_per_ip {
                return Err(ConnRefusal::PerIp);
            }
            *n += 1;
        }
        counts.total += 1;
        Ok(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Connections holding a place now.
    pub fn open(&self) -> usize {
        self.inner.lock().map(|c| c.total).unwrap_or(0)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let Ok(mut counts) = self.limiter.inner.lock() else {
            return;
        };
        counts.total = counts.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = counts.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A token bucket: `burst` messages at once, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        Self {
            capacity: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            rate: f64::from(rate_per_sec),
            last: now,
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How many refusals are logged per [`REFUSAL_LOG_WINDOW`]; the rest are only counted, and
/// their number logged when the next window opens.
pub const REFUSALS_LOGGED_PER_WINDOW: u32 = 10;
/// The window of [`REFUSALS_LOGGED_PER_WINDOW`].
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Logs refused requests (bad tokens, caps reached) at a bounded rate, so a flood of them
/// cannot flood the log. Metrics still count every one.
pub struct RefusalLog {
    window: Mutex<Window>,
}

struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }
}

impl RefusalLog {
    /// Records a refusal of `what` (e.g. `websocket join`) for `reason` (fixed text, never
    /// client input) from `peer`; returns whether it was logged.
    pub fn refused(&self, what: &str, reason: &str, peer: Option<IpAddr>) -> bool {
        self.refused_at(Instant::now(), what, reason, peer)
    }

    fn refused_at(&self, now: Instant, what: &str, reason: &str, peer: Option<IpAddr>) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        if now.saturating_duration_since(w.start) >= REFUSAL_LOG_WINDOW {
            if w.suppressed > 0 {
                warn!(
                    suppressed = w.suppressed,
                    "more refused requests in the last {REFUSAL_LOG_WINDOW:?}, not logged"
                );
            }
            w.start = now;
            w.logged = 0;
            w.suppressed = 0;
        }
        if w.logged < REFUSALS_LOGGED_PER_WINDOW {
            w.logged += 1;
            match peer {
                Some(peer) => warn!(what, reason, %peer, "request refused"),
                None => warn!(what, reason, "request refused"),
            }
            true
        } else {
            w.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(total: usize, per_ip: usize) -> SignalConfig {
        SignalConfig {
            max_connections: total,
            max_connections_per_ip: per_ip,
            per_ip_exempt: vec!["127.0.0.1".parse().expect("ip")],
            ..SignalConfig::default()
        }
    }

    #[test]
    fn connection_caps_hold_and_free_on_drop() {
        let limiter = ConnectionLimiter::default();
        let c = config(3, 2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let s1 = limiter.acquire(Some(a), &c).expect("first");
        let _s2 = limiter.acquire(Some(a), &c).expect("second");
        assert_eq!(limiter.acquire(Some(a), &c).err(), Some(ConnRefusal::PerIp));
        let _s3 = limiter.acquire(Some(b), &c).expect("other address");
        assert_eq!(limiter.acquire(Some(b), &c).err(), Some(ConnRefusal::Total));
        assert_eq!(limiter.open(), 3);
        drop(s1);
        assert_eq!(limiter.open(), 2);
        let _s4 = limiter.acquire(Some(a), &c).expect("a place was freed");
    }

    #[test]
    fn exempt_addresses_count_only_toward_the_total() {
        let limiter = ConnectionLimiter::default();
        let c = config(4, 1);
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let slots: Vec<ConnSlot> = (0..4)
            .map(|_| limiter.acquire(Some(local), &c).expect("exempt"))
            .collect();
        assert_eq!(
            limiter.acquire(Some(local), &c).err(),
            Some(ConnRefusal::Total)
        );
        drop(slots);
        assert_eq!(limiter.open(), 0);
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            assert!(bucket.take(t0));
        }
        assert!(!bucket.take(t0), "burst used up");
        // 10 per second: one more after 100 ms, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert!(bucket.take(t1));
        assert!(!bucket.take(t1));
        // Refill never exceeds the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(bucket.take(t2));
        }
        assert!(!bucket.take(t2));
    }

    #[test]
    fn refusals_are_logged_at_a_bounded_rate() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let logged = (0..1000)
            .filter(|_| log.refused_at(t0, "test", "bad", None))
            .count();
        assert_eq!(logged, REFUSALS_LOGGED_PER_WINDOW as usize);
        // The next window logs again.
        assert!(log.refused_at(t0 + REFUSAL_LOG_WINDOW, "test", "bad", None));
    }
}
