//! Aggregation of bot results into the end report (JSON, table, thresholds).

use crate::bot::{BotResult, Role};
use chorus_client::{LatencyHistogram, TrackKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// p50/p95/p99/max of a distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Quantiles {
    fn of(h: &LatencyHistogram) -> Option<Self> {
        let ms = |q: f64| {
            h.quantile(q)
                .map_or(0.0, |d| round(d.as_secs_f64() * 1000.0))
        };
        (!h.is_empty()).then(|| Quantiles {
            count: h.len(),
            p50: ms(0.5),
            p95: ms(0.95),
            p99: ms(0.99),
            max: ms(1.0),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Video freezes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Freezes {
    /// Number of freezes (including one in progress at the end).
    pub count: u64,
    /// Their total duration in milliseconds.
    pub total_ms: f64,
}

/// What the bots of one role (or all bots) experienced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleReport {
    /// Bot sessions (churn replacements included).
    pub sessions: u64,
    /// Sessions whose `join` succeeded.
    pub joined: u64,
    /// Sessions whose peer connections connected.
    pub connected: u64,
    /// `join` sent -> `joined` received.
    pub signaling_ms: Option<Quantiles>,
    /// `join` sent -> first complete video keyframe.
    pub join_video_ms: Option<Quantiles>,
    /// `join` sent -> first audio packet.
    pub join_audio_ms: Option<Quantiles>,
    /// Capture -> complete frame received, video.
    pub latency_video_ms: Option<Quantiles>,
    /// Capture -> packet received, audio.
    pub latency_audio_ms: Option<Quantiles>,
    /// Received tracks.
    pub tracks: u64,
    /// Packets expected on received tracks.
    pub packets_expected: u64,
    /// Packets never received (after retransmissions).
    pub packets_lost: u64,
    /// `packets_lost / packets_expected` in percent.
    pub loss_percent: f64,
    /// Mean RFC 3550 jitter of received video tracks.
    pub jitter_video_ms: Option<f64>,
    /// Mean RFC 3550 jitter of received audio tracks.
    pub jitter_audio_ms: Option<f64>,
    /// Mean received payload bitrate per session.
    pub bitrate_in_kbps: f64,
    /// Mean sent payload bitrate per publishing session.
    pub bitrate_out_kbps: f64,
    /// Received video per layer, i.e. per frame size (simulcast shows one entry per layer
    /// the subscribers received).
    #[serde(default)]
    pub layers_in: Vec<LayerIn>,
    /// Sent video per simulcast encoding (publishers).
    #[serde(default)]
    pub layers_out: Vec<LayerOut>,
    /// Received video tracks per negotiated codec (MIME type).
    #[serde(default)]
    pub video_codecs_in: BTreeMap<String, u64>,
    /// Mean complete frames per second of received video tracks.
    pub fps: Option<f64>,
    /// Video freezes over all received video tracks.
    pub freezes: Freezes,
    /// NACK packets sent.
    pub nacks_sent: u64,
    /// Packets those NACKs asked to be retransmitted.
    #[serde(default)]
    pub nacked_packets: u64,
    /// Decode check (`--decode-sample`): frames decoded with libvpx.
    #[serde(default)]
    pub frames_decoded: u64,
    /// Decode check: frames libvpx rejected.
    #[serde(default)]
    pub decode_errors: u64,
    /// Decode check: sampled groups of pictures abandoned because a frame never completed.
    #[serde(default)]
    pub decode_skipped: u64,
    /// PLIs sent.
    pub plis_sent: u64,
    /// Keyframe requests publishers received from the server.
    pub keyframe_requests_received: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Distributions as `(quantile, milliseconds)` points from 0 to 1, for CDF plots:
    /// `signaling`, `join_video`, `join_audio`, `latency_video`, `latency_audio`.
    #[serde(default)]
    pub distributions: BTreeMap<String, Vec<(f64, f64)>>,
}

/// The quantiles a distribution is sampled at for [`RoleReport::distributions`].
const CDF_QUANTILES: &[f64] = &[
    0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9,
    0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0,
];

/// `(quantile, ms)` points of `h`, empty when it is.
fn cdf(h: &LatencyHistogram) -> Vec<(f64, f64)> {
    CDF_QUANTILES
        .iter()
        .filter_map(|&q| h.quantile(q).map(|d| (q, round(d.as_secs_f64() * 1000.0))))
        .collect()
}

/// Received video at one frame size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerIn {
    /// `WIDTHxHEIGHT`, from the keyframes (VP8, VP9, AV1).
    pub size: String,
    /// Received video tracks that got frames of this size.
    pub tracks: u64,
    /// Mean payload bitrate per such track while receiving it.
    pub kbps_per_track: f64,
    /// Track-seconds of video received at this size (sampled every 0.5 s per bot).
    #[serde(default)]
    pub seconds: f64,
}

/// Sent video of one simulcast encoding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerOut {
    /// The encoding's `rid`.
    pub rid: String,
    /// Publishing sessions that sent it.
    pub publishers: u64,
    /// Mean payload bitrate per publisher.
    pub kbps_per_publisher: f64,
    /// Keyframe requests the server sent for it, over all publishers.
    pub keyframe_requests: u64,
}

/// Server resource use, from its `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    /// The window the figures cover, in seconds (steady state: after the ramp).
    pub window_s: f64,
    /// Mean CPU in percent of one core.
    pub cpu_percent: f64,
    /// Peak resident memory.
    pub rss_mb_max: f64,
    /// Resident memory before the first join.
    pub rss_mb_idle: f64,
    /// Participants at the end of the window.
    pub participants: f64,
    /// RTP packets forwarded per second.
    pub packets_out_per_s: f64,
    /// RTP packets received per second.
    pub packets_in_per_s: f64,
    /// Server CPU microseconds per forwarded RTP packet.
    pub cpu_us_per_packet_out: Option<f64>,
    /// CPU percent per participant.
    pub cpu_percent_per_participant: Option<f64>,
    /// (Peak RSS - idle RSS) per participant, in MiB.
    pub rss_mb_per_participant: Option<f64>,
}

/// The bots' own cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BotsReport {
    /// Mean CPU of the load process in percent of one core, over the run.
    pub cpu_percent: f64,
    /// Peak resident memory of the load process.
    pub rss_mb_max: f64,
    /// Peak bots alive at once.
    pub bots: u64,
    /// CPU percent per bot.
    pub cpu_percent_per_bot: Option<f64>,
    /// Mean CPU in the server report's steady window (after the ramp), percent of one core.
    #[serde(default)]
    pub steady_cpu_percent: Option<f64>,
    /// Steady-state bot CPU over the server's steady-state CPU: what one unit of server work
    /// costs the load generator.
    #[serde(default)]
    pub cpu_ratio_to_server: Option<f64>,
    /// Of [`steady_cpu_percent`](Self::steady_cpu_percent), what the shared engine's thread
    /// spent: every connection on it, receiving and (looped media) publishing
    /// (`--engine shared`).
    #[serde(default)]
    pub steady_engine_cpu_percent: Option<f64>,
    /// The shared engine's steady-state CPU over the server's.
    #[serde(default)]
    pub engine_cpu_ratio_to_server: Option<f64>,
}

/// One point of the timeline (every second).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    /// Bots with connected peer connections.
    pub connected: u64,
    /// Received payload bitrate, all bots.
    pub in_kbps: f64,
    /// Sent payload bitrate, all bots.
    pub out_kbps: f64,
    /// Loss in this interval, percent.
    pub loss_percent: f64,
    /// Errors so far.
    pub errors: u64,
    /// Server CPU percent in this interval.
    pub server_cpu_percent: Option<f64>,
    /// Server resident memory.
    pub server_rss_mb: Option<f64>,
    /// Server packets forwarded per second in this interval.
    pub server_packets_out_per_s: Option<f64>,
    /// Load process CPU percent in this interval.
    pub bots_cpu_percent: f64,
}

/// A threshold check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// The limit.
    pub limit: f64,
    /// The measured value (`None`: nothing measured, which fails).
    pub value: Option<f64>,
    /// Whether it passed.
    pub passed: bool,
}

/// The whole report (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Run name (the results directory).
    pub run: String,
    /// The scenario as run (after command-line overrides).
    pub scenario: serde_json::Value,
    /// Server URL.
    pub url: String,
    /// Wall-clock start, Unix seconds.
    pub started_unix: u64,
    /// Seconds from the first join to the stop.
    pub elapsed_s: f64,
    /// Seconds the ramp took.
    pub ramp_s: f64,
    /// Per role.
    pub roles: BTreeMap<String, RoleReport>,
    /// All bots.
    pub overall: RoleReport,
    /// Server resources (when `/metrics` was reachable).
    pub server: Option<ServerReport>,
    /// The load process.
    pub bots: BotsReport,
    /// Threshold checks.
    pub checks: Vec<Check>,
    /// Whether every check passed.
    pub passed: bool,
    /// Once a second.
    pub timeline: Vec<Sample>,
}

/// Per-room facts needed to judge a bot (does anybody publish what it should receive?).
#[derive(Debug, Clone, Copy, Default)]
pub struct RoomMedia {
    /// Publishers sending video.
    pub video_publishers: u32,
    /// Publishers with live audio.
    pub talkers: u32,
}

/// Aggregates bot results.
pub fn aggregate<'a>(
    results: impl Iterator<Item = &'a BotResult> + Clone,
    rooms: &[RoomMedia],
    end: Instant,
) -> RoleReport {
    let mut r = RoleReport::default();
    let (mut sig, mut jv, mut ja, mut lv, mut la) = (
        LatencyHistogram::new(),
        LatencyHistogram::new(),
        LatencyHistogram::new(),
        LatencyHistogram::new(),
        LatencyHistogram::new(),
    );
    let (mut jit_v, mut jit_a, mut fps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut kbps_in, mut kbps_out) = (Vec::new(), Vec::new());
    // size -> (tracks, bytes, seconds); rid -> (publishers, bytes, seconds, keyframe requests)
    let mut sizes: BTreeMap<(u16, u16), (u64, u64, f64)> = BTreeMap::new();
    let mut rids: Vec<(String, u64, u64, f64, u64)> = Vec::new();
    let mut layer_time: BTreeMap<(u16, u16), Duration> = BTreeMap::new();
    for b in results {
        r.sessions += 1;
        for (size, d) in &b.layer_time {
            *layer_time.entry(*size).or_default() += *d;
        }
        for (k, v) in &b.errors {
            *r.errors.entry(k.clone()).or_insert(0) += v;
        }
        let Some(s) = b.signaled else { continue };
        r.joined += 1;
        sig.record(s);
        if b.connected.is_some() {
            r.connected += 1;
        }
        let room = rooms.get(b.spec.room_index).copied().unwrap_or_default();
        let own_video = u32::from(b.spec.role == Role::Publisher && b.spec.video);
        let own_talk = u32::from(b.spec.role == Role::Publisher && b.spec.audio && !b.spec.muted);
        let lived = b.stopped_at.saturating_duration_since(b.join_sent);
        match b.join_video() {
            Some(d) => jv.record(d),
            None if b.spec.receives
                && room.video_publishers > own_video
                && lived > Duration::from_secs(5) =>
            {
                *r.errors.entry("no_video".into()).or_insert(0) += 1
            }
            None => {}
        }
        match b.join_audio() {
            Some(d) => ja.record(d),
            None if b.spec.receives
                && room.talkers > own_talk
                && lived > Duration::from_secs(5) =>
            {
                *r.errors.entry("no_audio".into()).or_insert(0) += 1
            }
            None => {}
        }
        let mut bytes_in = 0u64;
        let mut first_in: Option<Instant> = None;
        for t in &b.received {
            r.tracks += 1;
            r.packets_expected += t.seq.expected();
            r.packets_lost += t.lost();
            bytes_in += t.bytes;
            first_in = match (first_in, t.first_packet_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if t.packets() < 2 {
                continue;
            }
            let jitter_ms = t.jitter().as_secs_f64() * 1000.0;
            let track_secs = t.first_packet_at.map_or(0.0, |f| {
                b.stopped_at.saturating_duration_since(f).as_secs_f64()
            });
            for (size, bytes) in &t.bytes_by_size {
                let e = sizes.entry(*size).or_default();
                e.0 += 1;
                e.1 += bytes;
                e.2 += track_secs;
            }
            match t.kind {
                TrackKind::Video => {
                    if let Some(mime) = &t.mime_type {
                        *r.video_codecs_in.entry(mime.clone()).or_insert(0) += 1;
                    }
                    lv.merge(&t.latency);
                    jit_v.push(jitter_ms);
                    if let Some(f) = t.frame_rate() {
                        fps.push(f);
                    }
                    r.frames_decoded += t.decode.decoded;
                    r.decode_errors += t.decode.errors;
                    r.decode_skipped += t.decode.skipped;
                    r.freezes.count += t.freezes;
                    r.freezes.total_ms += t.freeze_duration.as_secs_f64() * 1000.0;
                    if t.active {
                        if let Some(f) = t.ongoing_freeze(b.stopped_at) {
                            r.freezes.count += 1;
                            r.freezes.total_ms += f.as_secs_f64() * 1000.0;
                        }
                    }
                }
                TrackKind::Audio => {
                    la.merge(&t.latency);
                    jit_a.push(jitter_ms);
                }
            }
        }
        if let Some(first) = first_in {
            let secs = b.stopped_at.saturating_duration_since(first).as_secs_f64();
            if secs > 0.5 {
                kbps_in.push(bytes_in as f64 * 8.0 / 1000.0 / secs);
            }
        }
        let bytes_out: u64 = b.sent.iter().map(|s| s.bytes).sum();
        if !b.sent.is_empty() {
            let secs = b
                .stopped_at
                .saturating_duration_since(b.join_sent + b.connected.unwrap_or(lived))
                .as_secs_f64();
            if secs > 0.5 {
                kbps_out.push(bytes_out as f64 * 8.0 / 1000.0 / secs);
                for l in b.sent.iter().flat_map(|s| &s.layers) {
                    let i = match rids.iter().position(|r| r.0 == l.rid) {
                        Some(i) => i,
                        None => {
                            rids.push((l.rid.clone(), 0, 0, 0.0, 0));
                            rids.len() - 1
                        }
                    };
                    rids[i].1 += 1;
                    rids[i].2 += l.bytes;
                    rids[i].3 += secs;
                    rids[i].4 += l.keyframe_requests;
                }
            }
        }
        r.nacks_sent += b.rtcp.nacks;
        r.nacked_packets += b.rtcp.nacked_packets;
        r.plis_sent += b.rtcp.plis + b.rtcp.firs;
        r.keyframe_requests_received += b.sent.iter().map(|s| s.keyframe_requests).sum::<u64>();
    }
    let _ = end;
    for (name, h) in [
        ("signaling", &sig),
        ("join_video", &jv),
        ("join_audio", &ja),
        ("latency_video", &lv),
        ("latency_audio", &la),
    ] {
        if !h.is_empty() {
            r.distributions.insert(name.to_owned(), cdf(h));
        }
    }
    r.signaling_ms = Quantiles::of(&sig);
    r.join_video_ms = Quantiles::of(&jv);
    r.join_audio_ms = Quantiles::of(&ja);
    r.latency_video_ms = Quantiles::of(&lv);
    r.latency_audio_ms = Quantiles::of(&la);
    r.loss_percent = if r.packets_expected > 0 {
        round(r.packets_lost as f64 * 100.0 / r.packets_expected as f64)
    } else {
        0.0
    };
    let mean = |v: &[f64]| (!v.is_empty()).then(|| round(v.iter().sum::<f64>() / v.len() as f64));
    r.jitter_video_ms = mean(&jit_v);
    r.jitter_audio_ms = mean(&jit_a);
    r.fps = mean(&fps);
    r.bitrate_in_kbps = mean(&kbps_in).unwrap_or(0.0);
    r.bitrate_out_kbps = mean(&kbps_out).unwrap_or(0.0);
    r.freezes.total_ms = round(r.freezes.total_ms);
    let kbps = |bytes: u64, secs: f64| {
        if secs > 0.0 {
            round(bytes as f64 * 8.0 / 1000.0 / secs)
        } else {
            0.0
        }
    };
    r.layers_in = sizes
        .into_iter()
        .map(|((w, h), (tracks, bytes, secs))| LayerIn {
            size: format!("{w}x{h}"),
            tracks,
            kbps_per_track: kbps(bytes, secs),
            seconds: round(layer_time.get(&(w, h)).map_or(0.0, |d| d.as_secs_f64())),
        })
        .collect();
    r.layers_out = rids
        .into_iter()
        .map(
            |(rid, publishers, bytes, secs, keyframe_requests)| LayerOut {
                rid,
                publishers,
                kbps_per_publisher: kbps(bytes, secs),
                keyframe_requests,
            },
        )
        .collect();
    r
}

/// Threshold limits from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Maximum loss in percent.
    pub max_loss: Option<f64>,
    /// Maximum video join time p95 (audio when nothing publishes video).
    pub max_join_p95_ms: Option<f64>,
    /// Maximum video latency p95 (audio when nothing publishes video).
    pub max_latency_p95_ms: Option<f64>,
}

/// Evaluates the limits against the overall figures.
pub fn checks(overall: &RoleReport, limits: &Limits) -> Vec<Check> {
    let mut out = Vec::new();
    let mut check = |name: &str, limit: Option<f64>, value: Option<f64>| {
        if let Some(limit) = limit {
            out.push(Check {
                name: name.into(),
                limit,
                value,
                passed: value.is_some_and(|v| v <= limit),
            });
        }
    };
    check("loss_percent", limits.max_loss, Some(overall.loss_percent));
    let join = overall
        .join_video_ms
        .or(overall.join_audio_ms)
        .map(|q| q.p95);
    check("join_p95_ms", limits.max_join_p95_ms, join);
    let latency = overall
        .latency_video_ms
        .or(overall.latency_audio_ms)
        .map(|q| q.p95);
    check("latency_p95_ms", limits.max_latency_p95_ms, latency);
    out
}

/// `p50/p95/p99` of a distribution, or `-`.
fn q3(x: &Option<Quantiles>) -> String {
    x.map_or("-".to_owned(), |q| {
        format!("{:.0}/{:.0}/{:.0}", q.p50, q.p95, q.p99)
    })
}

/// A value with one decimal and a unit, or `-`.
pub(crate) fn opt(x: Option<f64>, unit: &str) -> String {
    x.map_or("-".to_owned(), |v| format!("{v:.1}{unit}"))
}

/// A row of the per-role table: its label and how to show a role's figure.
pub(crate) type Row = (&'static str, fn(&RoleReport) -> String);

/// The rows of the per-role table (stdout and HTML).
pub(crate) fn role_rows() -> Vec<Row> {
    vec![
        ("sessions (joined/connected)", |r: &RoleReport| {
            format!("{} ({}/{})", r.sessions, r.joined, r.connected)
        }),
        ("join->joined ms p50/95/99", |r: &RoleReport| {
            q3(&r.signaling_ms)
        }),
        ("join->video ms p50/95/99", |r: &RoleReport| {
            q3(&r.join_video_ms)
        }),
        ("join->audio ms p50/95/99", |r: &RoleReport| {
            q3(&r.join_audio_ms)
        }),
        ("video latency ms p50/95/99", |r: &RoleReport| {
            q3(&r.latency_video_ms)
        }),
        ("audio latency ms p50/95/99", |r: &RoleReport| {
            q3(&r.latency_audio_ms)
        }),
        ("loss % (lost/expected)", |r: &RoleReport| {
            format!(
                "{:.2} ({}/{})",
                r.loss_percent, r.packets_lost, r.packets_expected
            )
        }),
        ("jitter video/audio ms", |r: &RoleReport| {
            format!(
                "{} / {}",
                opt(r.jitter_video_ms, ""),
                opt(r.jitter_audio_ms, "")
            )
        }),
        ("bitrate in/out kbit/s per bot", |r: &RoleReport| {
            format!("{:.0} / {:.0}", r.bitrate_in_kbps, r.bitrate_out_kbps)
        }),
        ("video in per layer: tracks@kbit/s", |r: &RoleReport| {
            if r.layers_in.is_empty() {
                return "-".to_owned();
            }
            r.layers_in
                .iter()
                .map(|l| format!("{}:{}@{:.0}", l.size, l.tracks, l.kbps_per_track))
                .collect::<Vec<_>>()
                .join(" ")
        }),
        ("video fps", |r: &RoleReport| opt(r.fps, "")),
        ("freezes (total ms)", |r: &RoleReport| {
            format!("{} ({:.0})", r.freezes.count, r.freezes.total_ms)
        }),
        ("NACK / PLI sent", |r: &RoleReport| {
            format!("{} / {}", r.nacks_sent, r.plis_sent)
        }),
        ("decoded / decode errors", |r: &RoleReport| {
            format!("{} / {}", r.frames_decoded, r.decode_errors)
        }),
        ("errors", |r: &RoleReport| {
            if r.errors.is_empty() {
                "0".to_owned()
            } else {
                r.errors
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        }),
    ]
}

/// The report's columns: each role, then every bot.
pub(crate) fn columns(report: &Report) -> Vec<(&str, &RoleReport)> {
    let mut cols: Vec<(&str, &RoleReport)> =
        report.roles.iter().map(|(k, v)| (k.as_str(), v)).collect();
    cols.push(("overall", &report.overall));
    cols
}

/// The stdout table.
pub fn table(report: &Report) -> String {
    let cols = columns(report);
    let rows = role_rows();
    let width = 30;
    let colw = 22;
    let mut s = format!("{:width$}", "");
    for (name, _) in &cols {
        s += &format!(" {name:>colw$}");
    }
    s.push('\n');
    for (label, f) in &rows {
        s += &format!("{label:width$}");
        for (_, r) in &cols {
            s += &format!(" {:>colw$}", f(r));
        }
        s.push('\n');
    }
    if let Some(srv) = &report.server {
        s += &format!(
            "server (steady {:.0}s): cpu {:.1}% of a core, rss {:.1} MiB (idle {:.1}), {:.0} pkt/s out, {} us CPU/packet out, {} %CPU and {} MiB per participant ({:.0} participants)\n",
            srv.window_s, srv.cpu_percent, srv.rss_mb_max, srv.rss_mb_idle, srv.packets_out_per_s,
            opt(srv.cpu_us_per_packet_out, ""), opt(srv.cpu_percent_per_participant, ""),
            srv.rss_mb_per_participant.map_or("-".into(), |v| format!("{v:.2}")), srv.participants
        );
    } else {
        s += "server: /metrics not reachable\n";
    }
    s += &format!(
        "bots: cpu {:.1}% of a core over the run ({} per bot), {} in the steady window ({} x the server's), rss {:.1} MiB, {} bots\n",
        report.bots.cpu_percent,
        opt(report.bots.cpu_percent_per_bot, "%"),
        opt(report.bots.steady_cpu_percent, "%"),
        opt(report.bots.cpu_ratio_to_server, ""),
        report.bots.rss_mb_max,
        report.bots.bots
    );
    if let Some(cpu) = report.bots.steady_engine_cpu_percent {
        s += &format!(
            "bots' shared engine thread: {cpu:.1}% of a core in the steady window ({} x the server's)\n",
            opt(report.bots.engine_cpu_ratio_to_server, "")
        );
    }
    for l in &report.overall.layers_out {
        s += &format!(
            "sent layer {}: {:.0} kbit/s per publisher ({} publishers), {} keyframe requests\n",
            l.rid, l.kbps_per_publisher, l.publishers, l.keyframe_requests
        );
    }
    for c in &report.checks {
        s += &format!(
            "check {}: {} <= {} {}\n",
            c.name,
            c.value.map_or("none".into(), |v| format!("{v:.2}")),
            c.limit,
            if c.passed { "ok" } else { "FAILED" }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_fail_above_the_limit_or_without_data() {
        let q = |p95| Quantiles {
            count: 1,
            p50: p95,
            p95,
            p99: p95,
            max: p95,
        };
        let r = RoleReport {
            loss_percent: 0.5,
            join_video_ms: Some(q(800.0)),
            ..RoleReport::default()
        };
        let limits = Limits {
            max_loss: Some(1.0),
            max_join_p95_ms: Some(500.0),
            max_latency_p95_ms: Some(100.0),
        };
        let c = checks(&r, &limits);
        let passed: Vec<(&str, bool)> = c.iter().map(|c| (c.name.as_str(), c.passed)).collect();
        assert_eq!(
            passed,
            vec![
                ("loss_percent", true),
                ("join_p95_ms", false),
                ("latency_p95_ms", false)
            ]
        );
        assert!(checks(&r, &Limits::default()).is_empty());
    }
}
