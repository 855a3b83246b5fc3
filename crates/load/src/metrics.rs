//! The bots' live figures as Prometheus metrics (`chorus_load_*`, per role), served on
//! `http://<--metrics-bind>/metrics` while a run lasts, as k6 and Locust do: Prometheus scrapes
//! the load tool beside the server, and the Grafana dashboard
//! (`deploy/grafana/dashboards/chorus.json`) shows what the bots feel beside what the server
//! reports. The end report stays the exact record; these are the live view.
//!
//! Bots feed a [`BotMetrics`] each tick (their cumulative stats; it turns them into counter
//! increments and histogram observations).

use crate::role::Role;
use chorus_client::{ReceivedTrackStats, RtcpSentStats, SentTrackStats, TrackKind};
use prometheus::{
    Counter, CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Join-time buckets, seconds.
const JOIN_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0,
];
/// Capture-to-receive latency buckets, seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0,
];

/// Every `chorus_load_*` metric, in a registry of the load tool's own.
pub struct LoadMetrics {
    registry: Registry,
    roles: [BotMetricsHandles; 2],
}

/// The metric handles of one role, resolved once.
#[derive(Clone)]
pub struct BotMetricsHandles {
    connected: IntGauge,
    sessions: IntCounter,
    errors: IntCounter,
    join_joined: Histogram,
    join_connected: Histogram,
    join_first_audio: Histogram,
    join_first_video: Histogram,
    latency_audio: Histogram,
    latency_video: Histogram,
    expected: IntCounter,
    lost: IntCounter,
    received_bytes: IntCounter,
    sent_bytes: IntCounter,
    freezes: IntCounter,
    freeze_seconds: Counter,
    nacks: IntCounter,
    plis: IntCounter,
}

impl LoadMetrics {
    /// Creates and registers the metrics, every series present (at zero) for both roles, plus
    /// the process's own CPU and memory (`process_*`).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let role = &["role"];
        let connected = IntGaugeVec::new(
            Opts::new(
                "chorus_load_bots_connected",
                "Bots whose peer connections are connected",
            ),
            role,
        )?;
        let sessions = IntCounterVec::new(
            Opts::new("chorus_load_sessions_total", "Bot sessions started"),
            role,
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "chorus_load_errors_total",
                "Bot errors (join refused or timed out, connection failed, ...)",
            ),
            role,
        )?;
        let join = HistogramVec::new(
            HistogramOpts::new(
                "chorus_load_join_seconds",
                "Join sent -> joined, connected, first audio packet, first complete video keyframe",
            )
            .buckets(JOIN_BUCKETS.to_vec()),
            &["role", "until"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "chorus_load_latency_seconds",
                "Capture -> receive latency of complete video frames and audio packets",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["role", "kind"],
        )?;
        let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), role);
        let expected = counter(
            "chorus_load_packets_expected_total",
            "RTP packets expected on received tracks",
        )?;
        let lost = counter(
            "chorus_load_packets_lost_total",
            "RTP packets missing on received tracks at a tick (each bot's high-water mark: a \
             packet repaired later still counts)",
        )?;
        let received = counter(
            "chorus_load_received_bytes_total",
            "RTP payload bytes received",
        )?;
        let sent = counter("chorus_load_sent_bytes_total", "RTP payload bytes sent")?;
        let freezes = counter("chorus_load_freezes_total", "Video freezes seen")?;
        let freeze_seconds = CounterVec::new(
            Opts::new(
                "chorus_load_freeze_seconds_total",
                "Time received video spent frozen",
            ),
            role,
        )?;
        let nacks = counter("chorus_load_nacks_sent_total", "NACKs the bots sent")?;
        let plis = counter(
            "chorus_load_plis_sent_total",
            "Keyframe requests (PLI, FIR) the bots sent",
        )?;
        for c in [
            &sessions, &errors, &expected, &lost, &received, &sent, &freezes, &nacks, &plis,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(join.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(freeze_seconds.clone()))?;
        let handles = |r: Role| {
            let r = r.as_str();
            BotMetricsHandles {
                connected: connected.with_label_values(&[r]),
                sessions: sessions.with_label_values(&[r]),
                errors: errors.with_label_values(&[r]),
                join_joined: join.with_label_values(&[r, "joined"]),
                join_connected: join.with_label_values(&[r, "connected"]),
                join_first_audio: join.with_label_values(&[r, "first_audio"]),
                join_first_video: join.with_label_values(&[r, "first_video"]),
                latency_audio: latency.with_label_values(&[r, "audio"]),
                latency_video: latency.with_label_values(&[r, "video"]),
                expected: expected.with_label_values(&[r]),
                lost: lost.with_label_values(&[r]),
                received_bytes: received.with_label_values(&[r]),
                sent_bytes: sent.with_label_values(&[r]),
                freezes: freezes.with_label_values(&[r]),
                freeze_seconds: freeze_seconds.with_label_values(&[r]),
                nacks: nacks.with_label_values(&[r]),
                plis: plis.with_label_values(&[r]),
            }
        };
        Ok(Self {
            registry,
            roles: [handles(Role::Publisher), handles(Role::Subscriber)],
        })
    }

    /// A fresh per-bot feeder for a bot of `role`.
    pub fn bot(&self, role: Role) -> BotMetrics {
        let handles = match role {
            Role::Publisher => &self.roles[0],
            Role::Subscriber => &self.roles[1],
        };
        handles.sessions.inc();
        BotMetrics {
            m: handles.clone(),
            seen: Seen::default(),
        }
    }

    /// The exposition text.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// What a bot has already reported (its stats are cumulative).
#[derive(Default)]
struct Seen {
    connected: bool,
    first_audio: bool,
    first_video: bool,
    expected: u64,
    lost: u64,
    received_bytes: u64,
    sent_bytes: u64,
    freezes: u64,
    freeze: Duration,
    nacks: u64,
    plis: u64,
    /// Latency histograms of each received track at the last tick, by (participant, track).
    latency: HashMap<(String, String), chorus_client::LatencyHistogram>,
}

/// One bot's feed into [`LoadMetrics`].
pub struct BotMetrics {
    m: BotMetricsHandles,
    seen: Seen,
}

/// The earliest `at` over the received tracks of `kind`.
fn first(
    received: &[ReceivedTrackStats],
    kind: TrackKind,
    at: fn(&ReceivedTrackStats) -> Option<Instant>,
) -> Option<Instant> {
    received
        .iter()
        .filter(|t| t.kind == kind)
        .filter_map(at)
        .min()
}

fn raise(now: u64, seen: &mut u64, counter: &IntCounter) {
    if now > *seen {
        counter.inc_by(now - *seen);
        *seen = now;
    }
}

impl BotMetrics {
    /// The bot's `join` was answered after `took`.
    pub fn joined(&mut self, took: Duration) {
        self.m.join_joined.observe(took.as_secs_f64());
    }

    /// The role's error counter (the bot increments it with each error it records).
    pub fn errors(&self) -> IntCounter {
        self.m.errors.clone()
    }

    /// The bot's connections came up (`true`, after `took` from the join) or went down.
    pub fn connected(&mut self, up: bool, took: Duration) {
        if up && !self.seen.connected {
            self.m.join_connected.observe(took.as_secs_f64());
            self.m.connected.inc();
        } else if !up && self.seen.connected {
            self.m.connected.dec();
        }
        self.seen.connected = up;
    }

    /// One tick of the bot's cumulative stats; `join_sent` dates its join.
    pub fn tick(
        &mut self,
        join_sent: Instant,
        received: &[ReceivedTrackStats],
        sent: &[SentTrackStats],
        rtcp: &RtcpSentStats,
    ) {
        let since = |at: Instant| at.saturating_duration_since(join_sent).as_secs_f64();
        if !self.seen.first_audio {
            if let Some(at) = first(received, TrackKind::Audio, |t| t.first_packet_at) {
                self.seen.first_audio = true;
                self.m.join_first_audio.observe(since(at));
            }
        }
        if !self.seen.first_video {
            if let Some(at) = first(received, TrackKind::Video, |t| t.first_frame_at) {
                self.seen.first_video = true;
                self.m.join_first_video.observe(since(at));
            }
        }
        let s = &mut self.seen;
        raise(
            received.iter().map(|t| t.seq.expected()).sum(),
            &mut s.expected,
            &self.m.expected,
        );
        raise(
            received.iter().map(|t| t.lost()).sum(),
            &mut s.lost,
            &self.m.lost,
        );
        raise(
            received.iter().map(|t| t.bytes).sum(),
            &mut s.received_bytes,
            &self.m.received_bytes,
        );
        raise(
            sent.iter().map(|t| t.bytes).sum(),
            &mut s.sent_bytes,
            &self.m.sent_bytes,
        );
        raise(
            received.iter().map(|t| t.freezes).sum(),
            &mut s.freezes,
            &self.m.freezes,
        );
        raise(rtcp.nacks, &mut s.nacks, &self.m.nacks);
        raise(rtcp.plis + rtcp.firs, &mut s.plis, &self.m.plis);
        let freeze: Duration = received.iter().map(|t| t.freeze_duration).sum();
        if freeze > s.freeze {
            self.m
                .freeze_seconds
                .inc_by((freeze - s.freeze).as_secs_f64());
            s.freeze = freeze;
        }
        // Latency: what each track's histogram gained since the last tick.
        for t in received {
            let key = (t.participant_id.clone(), t.track_id.clone());
            let hist = match t.kind {
                TrackKind::Audio => &self.m.latency_audio,
                TrackKind::Video => &self.m.latency_video,
            };
            let mut gained = t.latency.histogram().clone();
            if let Some(before) = s.latency.get(&key) {
                if gained.subtract(before.histogram()).is_err() {
                    continue;
                }
            }
            for v in gained.iter_recorded() {
                let secs = v.value_iterated_to() as f64 / 1e6;
                for _ in 0..v.count_at_value() {
                    hist.observe(secs);
                }
            }
            s.latency.insert(key, t.latency.clone());
        }
    }
}

impl Drop for BotMetrics {
    fn drop(&mut self) {
        if self.seen.connected {
            self.m.connected.dec();
        }
    }
}

/// Serves `metrics` on `http://<bind>/metrics` until the process ends; returns the bound
/// address (`bind` may have port 0).
pub async fn serve(bind: SocketAddr, metrics: Arc<LoadMetrics>) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    use axum::http::header;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("--metrics-bind {bind}"))?;
    let addr = listener.local_addr().context("--metrics-bind")?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    metrics.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(addr)
}
