//! Signaling metrics: messages by type, errors by code, open WebSockets.

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
        };
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.websockets.clone()))?;
        Ok(m)
    }
}
