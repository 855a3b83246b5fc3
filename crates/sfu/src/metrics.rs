//! Prometheus metrics of the media plane. Labels are low-cardinality only (kind, direction,
//! reason): room and participant ids go into tracing spans, never into labels.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric the media plane updates. Cloning shares the underlying counters.
#[derive(Clone)]
pub struct Metrics {
    /// Open rooms.
    pub rooms: IntGauge,
    /// Connected participants.
    pub participants: IntGauge,
    /// Published tracks, by kind.
    pub published_tracks: IntGaugeVec,
    /// Subscribed tracks (downtracks), by kind.
    pub subscribed_tracks: IntGaugeVec,
    /// RTP packets, by direction (`in`/`out`) and kind.
    pub rtp_packets: IntCounterVec,
    /// RTP payload bytes, by direction and kind.
    pub rtp_bytes: IntCounterVec,
    /// Datagrams or packets dropped, by reason.
    pub dropped: IntCounterVec,
    /// RTCP feedback, by type (`nack`, `pli`, `fir`) and direction (`in` from clients, `out`).
    pub rtcp_feedback: IntCounterVec,
    /// Join request to first connected peer connection, seconds.
    pub join_latency: Histogram,
    /// WHIP and WHEP sessions open, by kind.
    pub http_sessions: IntGaugeVec,
    /// UDP datagrams received on the media port.
    pub udp_datagrams_in: IntCounter,
    /// Data-channel messages relayed, by direction (`in` from a sender, `out` to each receiver).
    pub data_messages: IntCounterVec,
    /// Simulcast layer switches made by downtracks.
    pub layer_switches: IntCounter,
    /// Packets subscribers' NACKs asked for (within the budget), by `result`: `resent` from
    /// the downtrack's history, or `missed` (no longer held).
    pub nack_packets: IntCounterVec,
    /// Per engine: datagrams received, and sent (`direction`).
    pub engine_datagrams: IntCounterVec,
    /// Per engine: UDP messages sent (one destination each; a GSO message carries several
    /// datagrams).
    pub engine_messages: IntCounterVec,
    /// Per engine: send system calls (`sendmmsg`).
    pub engine_send_calls: IntCounterVec,
    /// Per engine: participants placed on it.
    pub engine_participants: IntGaugeVec,
    /// Per engine: ICE-TCP connections open (authenticated or not).
    pub engine_tcp_connections: IntGaugeVec,
    /// Per engine: ICE-TCP frames received and sent (`direction`).
    pub engine_tcp_frames: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            rooms: IntGauge::new("chorus_rooms", "Open rooms")?,
            participants: IntGauge::new("chorus_participants", "Connected participants")?,
            published_tracks: IntGaugeVec::new(
                Opts::new("chorus_published_tracks", "Published tracks"),
                &["kind"],
            )?,
            subscribed_tracks: IntGaugeVec::new(
                Opts::new("chorus_subscribed_tracks", "Subscribed tracks (downtracks)"),
                &["kind"],
            )?,
            rtp_packets: IntCounterVec::new(
                Opts::new(
                    "chorus_rtp_packets_total",
                    "RTP packets by direction and kind",
                ),
                &["direction", "kind"],
            )?,
            rtp_bytes: IntCounterVec::new(
                Opts::new(
                    "chorus_rtp_bytes_total",
                    "RTP payload bytes by direction and kind",
                ),
                &["direction", "kind"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "chorus_packets_dropped_total",
                    "Packets and datagrams dropped, by reason",
                ),
                &["reason"],
            )?,
            rtcp_feedback: IntCounterVec::new(
                Opts::new(
                    "chorus_rtcp_feedback_total",
                    "NACK, PLI and FIR by direction",
                ),
                &["type", "direction"],
            )?,
            join_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "chorus_join_latency_seconds",
                    "Join request to first connected peer connection",
                )
                .buckets(vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0]),
            )?,
            http_sessions: IntGaugeVec::new(
                Opts::new("chorus_http_sessions", "Open WHIP and WHEP sessions"),
                &["kind"],
            )?,
            udp_datagrams_in: IntCounter::new(
                "chorus_udp_datagrams_received_total",
                "UDP datagrams received on the media port",
            )?,
            data_messages: IntCounterVec::new(
                Opts::new(
                    "chorus_data_messages_total",
                    "Data messages relayed, by direction",
                ),
                &["direction"],
            )?,
            layer_switches: IntCounter::new(
                "chorus_layer_switches_total",
                "Simulcast layer switches made by downtracks",
            )?,
            nack_packets: IntCounterVec::new(
                Opts::new(
                    "chorus_nack_packets_total",
                    "Packets asked for by subscribers' NACKs, by result (resent, missed)",
                ),
                &["result"],
            )?,
            engine_datagrams: IntCounterVec::new(
                Opts::new(
                    "chorus_engine_datagrams_total",
                    "UDP datagrams per media engine, by direction",
                ),
                &["engine", "direction"],
            )?,
            engine_messages: IntCounterVec::new(
                Opts::new(
                    "chorus_engine_messages_sent_total",
                    "UDP messages sent per media engine (a GSO message carries several datagrams)",
                ),
                &["engine"],
            )?,
            engine_send_calls: IntCounterVec::new(
                Opts::new(
                    "chorus_engine_send_calls_total",
                    "Send system calls (sendmmsg) per media engine",
                ),
                &["engine"],
            )?,
            engine_participants: IntGaugeVec::new(
                Opts::new(
                    "chorus_engine_participants",
                    "Participants per media engine",
                ),
                &["engine"],
            )?,
            engine_tcp_connections: IntGaugeVec::new(
                Opts::new(
                    "chorus_engine_tcp_connections",
                    "ICE-TCP connections open per media engine",
                ),
                &["engine"],
            )?,
            engine_tcp_frames: IntCounterVec::new(
                Opts::new(
                    "chorus_engine_tcp_frames_total",
                    "ICE-TCP frames (packets) per media engine, by direction",
                ),
                &["engine", "direction"],
            )?,
        };
        registry.register(Box::new(m.engine_tcp_connections.clone()))?;
        registry.register(Box::new(m.engine_tcp_frames.clone()))?;
        registry.register(Box::new(m.engine_datagrams.clone()))?;
        registry.register(Box::new(m.engine_messages.clone()))?;
        registry.register(Box::new(m.engine_send_calls.clone()))?;
        registry.register(Box::new(m.engine_participants.clone()))?;
        registry.register(Box::new(m.layer_switches.clone()))?;
        registry.register(Box::new(m.nack_packets.clone()))?;
        registry.register(Box::new(m.data_messages.clone()))?;
        registry.register(Box::new(m.rooms.clone()))?;
        registry.register(Box::new(m.participants.clone()))?;
        registry.register(Box::new(m.published_tracks.clone()))?;
        registry.register(Box::new(m.subscribed_tracks.clone()))?;
        registry.register(Box::new(m.rtp_packets.clone()))?;
        registry.register(Box::new(m.rtp_bytes.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.rtcp_feedback.clone()))?;
        registry.register(Box::new(m.join_latency.clone()))?;
        registry.register(Box::new(m.http_sessions.clone()))?;
        registry.register(Box::new(m.udp_datagrams_in.clone()))?;
        Ok(m)
    }

    /// Metrics registered in a private registry (tests, benchmarks).
    pub fn unregistered() -> Self {
        // Registration in a fresh registry cannot collide.
        #[allow(clippy::expect_used)]
        Self::new(&Registry::new()).expect("fresh registry")
    }
}

/// Drop counters of the packet path, resolved once so a dropped packet costs no label lookup.
#[derive(Clone)]
pub struct PathDrops {
    /// An SSRC that none of the track's negotiated layers accounts for.
    pub other_layer: IntCounter,
    /// The publisher muted the track.
    pub muted: IntCounter,
    /// The subscriber connection is not connected, or its answer not applied yet.
    pub not_ready: IntCounter,
    /// No codec of the subscriber's leg matches the publisher's.
    pub not_negotiated: IntCounter,
    /// A payload type the publisher's leg did not negotiate.
    pub unknown_payload_type: IntCounter,
    /// A new video downtrack waiting for its first keyframe.
    pub waiting_keyframe: IntCounter,
    /// Older than the first packet a downtrack forwarded.
    pub too_old: IntCounter,
    /// The stack refused the packet for this leg.
    pub write_failed: IntCounter,
}

impl PathDrops {
    /// The counters of `chorus_packets_dropped_total` the packet path uses.
    pub fn new(m: &Metrics) -> Self {
        let c = |reason: &str| m.dropped.with_label_values(&[reason]);
        Self {
            other_layer: c("other_layer"),
            muted: c("muted"),
            not_ready: c("not_ready"),
            not_negotiated: c("not_negotiated"),
            unknown_payload_type: c("unknown_payload_type"),
            waiting_keyframe: c("waiting_keyframe"),
            too_old: c("too_old"),
            write_failed: c("write_failed"),
        }
    }
}

/// Counters resolved once per track kind, so the packet path touches no label lookup.
#[derive(Clone)]
pub struct KindCounters {
    /// Packets in.
    pub packets_in: IntCounter,
    /// Bytes in.
    pub bytes_in: IntCounter,
    /// Packets out.
    pub packets_out: IntCounter,
    /// Bytes out.
    pub bytes_out: IntCounter,
}

impl KindCounters {
    /// The counters for `kind` (`audio` or `video`).
    pub fn new(m: &Metrics, kind: &str) -> Self {
        Self {
            packets_in: m.rtp_packets.with_label_values(&["in", kind]),
            bytes_in: m.rtp_bytes.with_label_values(&["in", kind]),
            packets_out: m.rtp_packets.with_label_values(&["out", kind]),
            bytes_out: m.rtp_bytes.with_label_values(&["out", kind]),
        }
    }
}

/// One engine's I/O counters, resolved once so a batch costs no label lookup.
#[derive(Clone)]
pub struct EngineCounters {
    /// Datagrams received.
    pub datagrams_in: IntCounter,
    /// Datagrams sent.
    pub datagrams_out: IntCounter,
    /// Messages sent (GSO messages count once).
    pub messages_out: IntCounter,
    /// Send system calls.
    pub send_calls: IntCounter,
    /// Datagrams the kernel refused.
    pub send_failed: IntCounter,
}

impl EngineCounters {
    /// The counters of engine `index`.
    pub fn new(m: &Metrics, index: usize) -> Self {
        let engine = index.to_string();
        Self {
            datagrams_in: m.engine_datagrams.with_label_values(&[&engine, "in"]),
            datagrams_out: m.engine_datagrams.with_label_values(&[&engine, "out"]),
            messages_out: m.engine_messages.with_label_values(&[&engine]),
            send_calls: m.engine_send_calls.with_label_values(&[&engine]),
            send_failed: m.dropped.with_label_values(&["send_failed"]),
        }
    }

    /// Accounts one flush.
    pub fn record(&self, f: &crate::socket::Flushed) {
        self.datagrams_out.inc_by(f.datagrams);
        self.messages_out.inc_by(f.messages);
        self.send_calls.inc_by(f.calls);
        self.send_failed.inc_by(f.failed);
    }
}
