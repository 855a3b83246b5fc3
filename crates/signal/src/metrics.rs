//! Signaling metrics: messages by type, errors by code, open WebSockets, resumes and the
//! sessions kept for one.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Signaling counters. Cloning shares them.
#[derive(Clone)]
pub struct SignalMetrics {
    /// Client messages received, by `type`.
    pub messages: IntCounterVec,
    /// Errors sent to clients (WebSocket) or HTTP error responses (WHIP/WHEP), by code.
    pub errors: IntCounterVec,
    /// Open signaling WebSockets.
    pub websockets: IntGauge,
    /// `resume` requests, by `result` (`ok`, `failed`).
    pub resumes: IntCounterVec,
    /// Sessions kept for a resume after their WebSocket was lost.
    pub parked: IntGauge,
}

impl SignalMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            messages: IntCounterVec::new(
                Opts::new(
                    "chorus_signal_messages_total",
                    "Signaling messages received, by type",
                ),
                &["type"],
            )?,
            errors: IntCounterVec::new(
                Opts::new("chorus_signal_errors_total", "Signaling errors, by code"),
                &["code"],
            )?,
            websockets: IntGauge::new("chorus_signal_websockets", "Open signaling WebSockets")?,
            resumes: IntCounterVec::new(
                Opts::new(
                    "chorus_signal_resumes_total",
                    "Session resumes over a new WebSocket, by result (ok, failed)",
                ),
                &["result"],
            )?,
            parked: IntGauge::new(
                "chorus_signal_parked_sessions",
                "Sessions kept for a resume after their WebSocket was lost",
            )?,
        };
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.websockets.clone()))?;
        registry.register(Box::new(m.resumes.clone()))?;
        registry.register(Box::new(m.parked.clone()))?;
        Ok(m)
    }
}
