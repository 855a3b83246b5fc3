//! `chorus-load`: runs a load-test scenario of simulated participants against a Chorus server
//! and reports what users would feel (join time, latency, loss, jitter, freezes) next to what
//! the server paid for it (CPU, memory).
//!
//! ```text
//! chorus-load fanout-1x50 --url http://127.0.0.1:7880 --duration 30s
//! ```
//!
//! See `docs/benchmarks.md`.

mod bot;
mod html;
mod metrics;
mod probe;
mod report;
mod role;
mod scenario;

use anyhow::{bail, Context};
use bot::{BotResult, BotSpec, Live, Role};
use chorus_client::generate::{encode_audio_loop, encode_video_loop, GeneratedVideo};
use chorus_client::{AudioSource, Impairment, SharedEngine, VideoSource};
use chorus_signal::auth::{claims, mint, Grants};
use clap::Parser;
use report::{Limits, Report, RoomMedia, Sample, ServerReport};
use scenario::Scenario;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The WebRTC stack allocates per packet (queues, headers, buffers) on every runtime thread;
/// mimalloc's thread-local free lists cost less than glibc's allocator, as in the server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio::task::JoinHandle;

/// The dev-mode API key of `chorus serve --dev` (duplicated from chorus-server's config).
const DEV_API_KEY: &str = "devkey";
/// The dev-mode API secret of `chorus serve --dev` (duplicated from chorus-server's config).
const DEV_API_SECRET: &str = "chorus-dev-secret-do-not-use-in-production";
/// Exit status when a threshold fails.
const EXIT_THRESHOLD: i32 = 2;

/// Load-test a Chorus server with simulated participants.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Scenario: a TOML file, or the name of one in `loadtest/scenarios/` (e.g. `fanout-1x50`).
    #[arg(
        required_unless_present = "scenario_flag",
        conflicts_with = "scenario_flag"
    )]
    scenario: Option<String>,
    /// The scenario given as a flag (`--scenario loadtest/scenarios/fanout-1x50.toml`), the same
    /// as the positional argument.
    #[arg(long = "scenario", value_name = "SCENARIO")]
    scenario_flag: Option<String>,
    /// Server base URL (signaling is `<url>/ws`; with `--protocol whip-whep`, `<url>/whip/<room>`
    /// and `<url>/whep/<room>`).
    #[arg(long, env = "CHORUS_LOAD_URL", default_value = "http://127.0.0.1:7880")]
    url: String,
    /// Where to scrape `/metrics` (default: `--url`). Plain HTTP only.
    #[arg(long)]
    metrics_url: Option<String>,
    /// Serve the bots' live figures (join times, latency, loss, freezes, bitrate, per role) as
    /// Prometheus metrics on `http://<ADDR>/metrics` while the run lasts, e.g.
    /// `127.0.0.1:9465` (port 0: any free port, printed at the start).
    #[arg(long, value_name = "ADDR")]
    metrics_bind: Option<std::net::SocketAddr>,
    /// PID of a server on this machine: its CPU and memory are then read from `/proc/<pid>`
    /// (10 ms resolution) instead of `/metrics` (whole CPU seconds).
    #[arg(long)]
    server_pid: Option<u32>,
    /// API key tokens are signed with.
    #[arg(long, env = "CHORUS_API_KEY", default_value = DEV_API_KEY)]
    api_key: String,
    /// API secret tokens are signed with (default: the dev-mode secret).
    #[arg(long, env = "CHORUS_API_SECRET", default_value = DEV_API_SECRET, hide_default_value = true)]
    api_secret: String,
    /// Override `protocol`: `ws` (the WebSocket protocol) or `whip-whep` (publishers use WHIP,
    /// subscribers play the room's most recent publisher with WHEP; plain http:// only).
    #[arg(long, value_enum)]
    protocol: Option<scenario::Protocol>,
    /// Override: steady-state duration after the ramp (e.g. `30s`, `2m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Override: number of rooms.
    #[arg(long)]
    rooms: Option<u32>,
    /// Override: publishers per room.
    #[arg(long)]
    publishers: Option<u32>,
    /// Override: subscribers per room.
    #[arg(long)]
    subscribers: Option<u32>,
    /// Override: initial joins per second.
    #[arg(long)]
    ramp_up: Option<f64>,
    /// Override: leaves (and replacement joins) per second after the ramp.
    #[arg(long)]
    churn: Option<f64>,
    /// Override: publishers per room whose audio is live.
    #[arg(long)]
    talkers: Option<u32>,
    /// Override `media.listeners_publish`: listeners publish a muted microphone (`true`) or
    /// no audio (`false`).
    #[arg(long)]
    listeners_publish: Option<bool>,
    /// Override `media.source`: `clip` (built-in 160x120 VP8 clip, Opus silence),
    /// `generated` (libvpx test pattern, libopus talk/silence) or `file`.
    #[arg(long, value_enum)]
    media: Option<scenario::MediaSource>,
    /// Override `media.cheap` (generated media): `true` encodes a few seconds once and loops
    /// them in every bot, `false` runs an encoder per bot.
    #[arg(long)]
    cheap: Option<bool>,
    /// Override `media.width`x`media.height` of generated video, e.g. `1280x720`.
    #[arg(long, value_parser = parse_resolution)]
    resolution: Option<(u32, u32)>,
    /// Override `media.fps` of generated video.
    #[arg(long)]
    fps: Option<u32>,
    /// Override `media.codec` of generated video: `vp8` or `vp9`.
    #[arg(long, value_enum)]
    codec: Option<scenario::VideoCodec>,
    /// Override `media.simulcast`: publish generated video as simulcast layers
    /// (`media.layers`).
    #[arg(long)]
    simulcast: Option<bool>,
    /// Override `quality`: the layer subscribers ask for (`low`, `medium`, `high`, `mixed`).
    #[arg(long, value_enum)]
    quality: Option<scenario::SubscriberQuality>,
    /// Override `media.bitrate_kbps` of generated video.
    #[arg(long)]
    bitrate_kbps: Option<u32>,
    /// Override `media.keyframe_interval` of generated video (e.g. `2s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    keyframe_interval: Option<Duration>,
    /// Loop this VP8 IVF file (implies `--media file`).
    #[arg(long)]
    video_file: Option<PathBuf>,
    /// Loop this Ogg Opus file (implies `--media file`).
    #[arg(long)]
    audio_file: Option<PathBuf>,
    /// Override `media.decode_sample`: decode every Nth group of pictures of every received
    /// VP8 track with libvpx (0: off).
    #[arg(long)]
    decode_sample: Option<u32>,
    /// Override `impairment.loss_percent`: drop this percentage of incoming RTP per bot.
    #[arg(long)]
    loss_percent: Option<f64>,
    /// Override `impairment.jitter_ms`: delay incoming RTP by a random 0..=N ms per bot.
    #[arg(long)]
    jitter_ms: Option<u32>,
    /// Prefix of room names (a run id is appended).
    #[arg(long, default_value = "load")]
    room_prefix: String,
    /// Directory for `<run>/report.json` and `<run>/index.html`.
    #[arg(long, default_value = "loadtest/results")]
    results_dir: PathBuf,
    /// Run name (default: `<scenario>-<UTC time>`).
    #[arg(long)]
    run: Option<String>,
    /// Fail (exit 2) when overall loss exceeds this percentage.
    #[arg(long)]
    max_loss: Option<f64>,
    /// Fail (exit 2) when the p95 join time (to first video frame, else first audio packet)
    /// exceeds this many milliseconds.
    #[arg(long, alias = "max-join-p95")]
    max_join_p95_ms: Option<f64>,
    /// Fail (exit 2) when the p95 capture-to-receive latency (video, else audio) exceeds this
    /// many milliseconds.
    #[arg(long, alias = "max-latency-p95")]
    max_latency_p95_ms: Option<f64>,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
    /// Runtime worker threads for the bots; 0 runs every bot on one thread (fewest wake-ups,
    /// one core at most). Default: one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// Where bots run their connections: `shared` puts every bot's subscriber connection, and
    /// its publisher connection when it loops pre-encoded media, on one engine thread (a lean
    /// endpoint each, a fraction of the CPU); `per-bot` gives each bot async connections of its
    /// own (as `chorus_client::Client` does by default). `--receive` is the old name.
    #[arg(long, alias = "receive", value_enum, default_value_t = EngineMode::Shared)]
    engine: EngineMode,
    /// With `--engine shared`: engine threads to spread the bots over (round robin), for loads
    /// one core cannot drive (the report's engine CPU is their sum, so up to N x 100 %).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    engines: u16,
}

/// See [`Args::engine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineMode {
    Shared,
    PerBot,
}

impl Args {
    fn scenario(&self) -> anyhow::Result<Scenario> {
        let name = self
            .scenario
            .as_deref()
            .or(self.scenario_flag.as_deref())
            .context("no scenario given")?;
        let direct = PathBuf::from(name);
        let path = if direct.exists() || name.ends_with(".toml") {
            direct
        } else {
            PathBuf::from(format!("loadtest/scenarios/{name}.toml"))
        };
        let mut s = Scenario::load(&path)?;
        let mut overridden = Vec::new();
        macro_rules! set {
            ($flag:literal, $field:expr, $value:expr) => {
                if let Some(v) = $value {
                    $field = v;
                    overridden.push($flag);
                }
            };
        }
        set!("--protocol", s.protocol, self.protocol);
        set!("--duration", s.duration, self.duration);
        set!("--rooms", s.rooms, self.rooms);
        set!("--publishers", s.publishers, self.publishers);
        set!("--subscribers", s.subscribers, self.subscribers);
        set!("--ramp-up", s.ramp_up, self.ramp_up);
        set!("--churn", s.churn, self.churn);
        if let Some(t) = self.talkers {
            s.media.talkers = Some(t);
            overridden.push("--talkers");
        }
        set!(
            "--listeners-publish",
            s.media.listeners_publish,
            self.listeners_publish
        );
        set!("--media", s.media.source, self.media);
        set!("--cheap", s.media.cheap, self.cheap);
        if let Some((w, h)) = self.resolution {
            (s.media.width, s.media.height) = (w, h);
            overridden.push("--resolution");
        }
        set!("--fps", s.media.fps, self.fps);
        set!("--simulcast", s.media.simulcast, self.simulcast);
        set!("--codec", s.media.codec, self.codec);
        set!("--quality", s.quality, self.quality);
        set!(
            "--bitrate-kbps",
            s.media.bitrate_kbps,
            self.bitrate_kbps.map(Some)
        );
        set!(
            "--keyframe-interval",
            s.media.keyframe_interval,
            self.keyframe_interval
        );
        let file = |p: &Option<PathBuf>| p.as_ref().map(|p| Some(p.display().to_string()));
        set!("--video-file", s.media.video_file, file(&self.video_file));
        set!("--audio-file", s.media.audio_file, file(&self.audio_file));
        if (self.video_file.is_some() || self.audio_file.is_some()) && self.media.is_none() {
            s.media.source = scenario::MediaSource::File;
        }
        set!("--decode-sample", s.media.decode_sample, self.decode_sample);
        set!(
            "--loss-percent",
            s.impairment.loss_percent,
            self.loss_percent
        );
        set!("--jitter-ms", s.impairment.jitter_ms, self.jitter_ms);
        if let Err((key, msg)) = s.validate() {
            bail!(
                "{} (with {}): key `{key}`: {msg}",
                path.display(),
                if overridden.is_empty() {
                    "no overrides".to_owned()
                } else {
                    overridden.join(", ")
                }
            );
        }
        Ok(s)
    }
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,rtc_ice=error,webrtc=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match args.threads {
        Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Runtime::new(),
    };
    let code = match runtime
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(args)))
    {
        Ok(true) => 0,
        Ok(false) => EXIT_THRESHOLD,
        Err(e) => {
            eprintln!("chorus-load: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// `WIDTHxHEIGHT`.
fn parse_resolution(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?}: expected WIDTHxHEIGHT, e.g. 640x360"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|e| format!("{s:?}: {v:?}: {e}"))
    };
    Ok((n(w)?, n(h)?))
}

/// What every publisher sends, prepared once per process.
#[derive(Clone)]
struct MediaPlan {
    /// `None`: the client's built-in clip.
    video: Option<VideoSource>,
    /// `None`: live-encoded generated audio with a fresh seed per bot.
    audio: Option<AudioSource>,
}

impl MediaPlan {
    /// Generated simulcast video: one libvpx encoding per layer (looped when cheap, live per
    /// bot otherwise), and generated audio.
    fn simulcast(s: &Scenario) -> anyhow::Result<Self> {
        let m = &s.media;
        let mut layers = Vec::with_capacity(m.layers.len());
        for l in &m.layers {
            let settings = GeneratedVideo {
                codec: m.codec.vpx(),
                width: l.width,
                height: l.height,
                fps: m.fps,
                bitrate_kbps: l.bitrate_kbps,
                keyframe_interval: m.keyframe_interval,
            };
            settings
                .validate()
                .with_context(|| format!("media.layers {:?}", l.rid))?;
            let source = if m.cheap && s.publishers > 0 {
                let t = Instant::now();
                let clip = encode_video_loop(
                    settings,
                    (m.keyframe_interval * 2).max(Duration::from_secs(4)),
                )
                .with_context(|| format!("encoding simulcast layer {:?}", l.rid))?;
                let bytes: usize = clip.frames.iter().map(|f| f.data.len()).sum();
                let secs = clip.frames.len() as f64 / f64::from(m.fps);
                eprintln!(
                    "chorus-load: simulcast layer {} {}x{}: {} frames, {:.0} kbit/s, encoded in \
                     {:.2} s (cheap mode)",
                    l.rid,
                    l.width,
                    l.height,
                    clip.frames.len(),
                    bytes as f64 * 8.0 / 1000.0 / secs,
                    t.elapsed().as_secs_f64()
                );
                VideoSource::Clip(Arc::new(clip))
            } else {
                VideoSource::Live(settings)
            };
            layers.push(chorus_client::SimulcastLayer {
                rid: l.rid.clone(),
                source,
            });
        }
        let audio = if m.cheap && m.audio && s.publishers > 0 {
            let clip = encode_audio_loop(rand::random(), Duration::from_secs(20))
                .context("encoding the generated audio loop")?;
            Some(AudioSource::Clip(Arc::new(clip)))
        } else {
            None
        };
        Ok(Self {
            video: Some(VideoSource::Simulcast(layers)),
            audio,
        })
    }

    fn prepare(s: &Scenario) -> anyhow::Result<Self> {
        let m = &s.media;
        match m.source {
            scenario::MediaSource::Clip => Ok(Self {
                video: None,
                audio: Some(AudioSource::Silence),
            }),
            scenario::MediaSource::Generated => {
                let settings = GeneratedVideo {
                    codec: m.codec.vpx(),
                    width: m.width,
                    height: m.height,
                    fps: m.fps,
                    bitrate_kbps: m.bitrate_kbps.unwrap_or(500),
                    keyframe_interval: m.keyframe_interval,
                };
                settings.validate().context("media")?;
                if m.simulcast && m.video {
                    return Self::simulcast(s);
                }
                if !m.cheap {
                    return Ok(Self {
                        video: Some(VideoSource::Live(settings)),
                        audio: None,
                    });
                }
                let t = Instant::now();
                // Two keyframe intervals, at least 4 s, of video; 20 s of audio so that bots
                // starting at random offsets talk at different times.
                let video = (m.video && s.publishers > 0)
                    .then(|| {
                        encode_video_loop(
                            settings,
                            (m.keyframe_interval * 2).max(Duration::from_secs(4)),
                        )
                    })
                    .transpose()
                    .context("encoding the generated video loop")?;
                let audio = (m.audio && s.publishers > 0)
                    .then(|| encode_audio_loop(rand::random(), Duration::from_secs(20)))
                    .transpose()
                    .context("encoding the generated audio loop")?;
                if let Some(v) = &video {
                    let bytes: usize = v.frames.iter().map(|f| f.data.len()).sum();
                    let secs = v.frames.len() as f64 / f64::from(m.fps);
                    eprintln!(
                        "chorus-load: generated {}x{} VP8 loop: {} frames, {:.0} kbit/s, \
                         encoded in {:.2} s (cheap mode)",
                        m.width,
                        m.height,
                        v.frames.len(),
                        bytes as f64 * 8.0 / 1000.0 / secs,
                        t.elapsed().as_secs_f64()
                    );
                }
                Ok(Self {
                    video: video.map(|v| VideoSource::Clip(Arc::new(v))),
                    audio: Some(
                        audio.map_or(AudioSource::Silence, |a| AudioSource::Clip(Arc::new(a))),
                    ),
                })
            }
            scenario::MediaSource::File => {
                let video = match &m.video_file {
                    Some(path) => {
                        let data = std::fs::read(path)
                            .with_context(|| format!("reading video file {path}"))?;
                        let clip = chorus_client::ivf::IvfClip::parse(&data)
                            .with_context(|| format!("video file {path}"))?;
                        if clip.codec().is_none() {
                            bail!(
                                "video file {path}: codec {:?} is not supported: IVF with VP8, \
                                 VP9 or AV1 (FourCC VP80, VP90, AV01)",
                                String::from_utf8_lossy(&clip.header.fourcc)
                            );
                        }
                        if clip.keyframe_indices().first() != Some(&0) {
                            bail!("video file {path}: the first frame is not a keyframe");
                        }
                        Some(VideoSource::Clip(Arc::new(clip)))
                    }
                    None => None,
                };
                let audio = match &m.audio_file {
                    Some(path) => {
                        let data = std::fs::read(path)
                            .with_context(|| format!("reading audio file {path}"))?;
                        let clip = chorus_client::ogg::parse_opus(&data)
                            .with_context(|| format!("audio file {path}"))?;
                        AudioSource::Clip(Arc::new(clip))
                    }
                    None => AudioSource::Silence,
                };
                Ok(Self {
                    video,
                    audio: Some(audio),
                })
            }
        }
    }

    fn audio_for_bot(&self) -> AudioSource {
        self.audio
            .clone()
            .unwrap_or_else(|| AudioSource::Live(rand::random()))
    }
}

/// `http(s)://host:port/prefix` -> `ws(s)://host:port/prefix/ws`.
fn ws_url(base: &url::Url) -> anyhow::Result<String> {
    let scheme = match base.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => bail!("--url: unsupported scheme {other:?} (use http:// or https://)"),
    };
    let host = base.host_str().context("--url has no host")?;
    let port = base.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = base.path().trim_end_matches('/');
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Ok(format!("{scheme}://{host}{port}{path}/ws"))
}

/// `http://host:port/prefix` -> `http://host:port/prefix/<endpoint>/<room>` (`endpoint`: `whip` or
/// `whep`). WHIP/WHEP bots speak plain HTTP only.
fn http_endpoint(base: &url::Url, endpoint: &str, room: &str) -> anyhow::Result<String> {
    if base.scheme() != "http" {
        bail!(
            "--url: --protocol whip-whep needs an http:// URL, got {:?}",
            base.scheme()
        );
    }
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--url cannot be a base URL"))?
        .pop_if_empty()
        .extend([endpoint, room]);
    Ok(url.to_string())
}

fn run_name(scenario: &Scenario) -> String {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_owned();
    format!("{}-{stamp}", scenario.name)
}

struct Ctx {
    scenario: Scenario,
    args: Args,
    ws_url: String,
    /// The server base URL (`--url`).
    base: url::Url,
    run_id: String,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
    leave: watch::Receiver<bool>,
    next_id: AtomicU64,
    media: MediaPlan,
    /// The shared engines (`--engine shared`, `--engines`); none with `--engine per-bot`.
    engines: Vec<SharedEngine>,
    /// The live Prometheus figures (`--metrics-bind`).
    metrics: Option<Arc<metrics::LoadMetrics>>,
}

impl Ctx {
    fn token(&self, room: &str, identity: &str, publish: bool) -> anyhow::Result<String> {
        let grants = Grants {
            room: room.into(),
            can_publish: publish,
            can_subscribe: true,
            can_publish_data: false,
        };
        let ttl = self.scenario.duration + Duration::from_secs(3600);
        mint(
            &self.args.api_key,
            &self.args.api_secret,
            &claims(identity, room, ttl, grants),
        )
        .context("minting a token")
    }

    fn room_name(&self, index: usize) -> String {
        format!("{}-{}-{index}", self.args.room_prefix, self.run_id)
    }

    /// A bot of `role` in room `room_index`; `slot` is its index among the room's publishers.
    fn spec(&self, room_index: usize, role: Role, slot: u32) -> anyhow::Result<BotSpec> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let identity = format!("bot-{}-{n}", role.as_str());
        let room = self.room_name(room_index);
        let media = &self.scenario.media;
        let http = self.scenario.protocol == scenario::Protocol::WhipWhep;
        // WHIP has no mute: every WHIP publisher talks.
        let listener =
            !http && role == Role::Publisher && media.audio && slot >= self.scenario.talkers();
        let http_url = match (http, role) {
            (false, _) => None,
            (true, Role::Publisher) => Some(http_endpoint(&self.base, "whip", &room)?),
            (true, Role::Subscriber) => Some(http_endpoint(&self.base, "whep", &room)?),
        };
        Ok(BotSpec {
            token: self.token(&room, &identity, role == Role::Publisher)?,
            identity,
            room_index,
            room,
            role,
            slot,
            // Listeners publish no audio unless `listeners_publish`; then they mute it.
            audio: media.audio && (!listener || media.listeners_publish),
            video: media.video,
            muted: listener && media.listeners_publish,
            // WHIP publishers receive nothing.
            receives: !(http && role == Role::Publisher),
            ws_url: self.ws_url.clone(),
            http_url,
            video_source: self.media.video.clone(),
            audio_source: self.media.audio_for_bot(),
            quality: self.scenario.quality.for_slot(slot),
            decode_sample: media.decode_sample,
            impairment: Impairment {
                loss_percent: self.scenario.impairment.loss_percent,
                jitter: Duration::from_millis(u64::from(self.scenario.impairment.jitter_ms)),
            },
            engine: (!self.engines.is_empty())
                .then(|| self.engines[n as usize % self.engines.len()].clone()),
        })
    }

    fn spawn(&self, spec: BotSpec) -> Running {
        let (churn_tx, churn_rx) = watch::channel(false);
        let mut global = self.stop.clone();
        let mut stop_rx = churn_rx.clone();
        let (stop_tx, stop) = watch::channel(false);
        // A bot stops on the global stop or its own churn signal.
        tokio::spawn(async move {
            tokio::select! {
                _ = global.wait_for(|s| *s) => {}
                _ = stop_rx.wait_for(|s| *s) => {}
            }
            let _ = stop_tx.send(true);
        });
        // A churned bot leaves at once; the others wait for the global leave.
        let mut global_leave = self.leave.clone();
        let (leave_tx, leave) = watch::channel(false);
        let mut churned = churn_rx;
        tokio::spawn(async move {
            tokio::select! {
                _ = global_leave.wait_for(|s| *s) => {}
                _ = churned.wait_for(|s| *s) => {}
            }
            let _ = leave_tx.send(true);
        });
        let role = spec.role;
        let room = spec.room_index;
        let slot = spec.slot;
        let metrics = self.metrics.as_ref().map(|m| m.bot(role));
        let handle = tokio::spawn(bot::run(spec, Arc::clone(&self.live), metrics, stop, leave));
        Running {
            role,
            room,
            slot,
            churn: churn_tx,
            handle,
        }
    }
}

struct Running {
    role: Role,
    room: usize,
    slot: u32,
    churn: watch::Sender<bool>,
    handle: JoinHandle<BotResult>,
}

#[derive(Default)]
struct Probes {
    timeline: Vec<Sample>,
    server: Vec<(f64, probe::ServerSample)>,
    bots: Vec<(f64, probe::SelfSample)>,
    peak_connected: u64,
}

async fn server_sample(
    metrics_url: &Option<url::Url>,
    pid: Option<u32>,
) -> Option<probe::ServerSample> {
    let mut s = match metrics_url {
        Some(u) => probe::scrape(u).await,
        None => None,
    };
    if let Some(p) = pid.and_then(|pid| probe::proc_sample(Some(pid))) {
        let s = s.get_or_insert_with(probe::ServerSample::default);
        s.cpu_seconds = p.cpu_seconds;
        s.rss_bytes = p.rss_bytes;
    }
    s
}

async fn sample_loop(
    live: Arc<Live>,
    metrics_url: Option<url::Url>,
    server_pid: Option<u32>,
    start: Instant,
    total: u64,
    progress: indicatif::ProgressBar,
    mut done: watch::Receiver<bool>,
) -> Probes {
    let mut p = Probes::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(f64, u64, u64, u64, u64)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.wait_for(|d| *d) => break,
        }
        let t = start.elapsed().as_secs_f64();
        let server = server_sample(&metrics_url, server_pid).await;
        let me = probe::self_sample();
        let connected = live.connected.load(Ordering::Relaxed);
        p.peak_connected = p.peak_connected.max(connected);
        let (bin, bout, exp, lost) = (
            live.bytes_in.load(Ordering::Relaxed),
            live.bytes_out.load(Ordering::Relaxed),
            live.expected.load(Ordering::Relaxed),
            live.lost.load(Ordering::Relaxed),
        );
        let errors = live.errors.load(Ordering::Relaxed);
        let mut s = Sample {
            t: (t * 10.0).round() / 10.0,
            connected,
            errors,
            ..Sample::default()
        };
        if let Some((t0, bin0, bout0, exp0, lost0)) = last {
            let dt = (t - t0).max(1e-3);
            s.in_kbps = bin.saturating_sub(bin0) as f64 * 8.0 / 1000.0 / dt;
            s.out_kbps = bout.saturating_sub(bout0) as f64 * 8.0 / 1000.0 / dt;
            let de = exp.saturating_sub(exp0);
            s.loss_percent = if de > 0 {
                lost.saturating_sub(lost0) as f64 * 100.0 / de as f64
            } else {
                0.0
            };
        }
        if let Some((t0, b0)) = p.bots.last() {
            s.bots_cpu_percent = (me.cpu_seconds - b0.cpu_seconds) * 100.0 / (t - t0).max(1e-3);
        }
        if let Some(srv) = server {
            s.server_rss_mb = Some(srv.rss_bytes / 1048576.0);
            if let Some((t0, s0)) = p.server.last() {
                let dt = (t - t0).max(1e-3);
                s.server_cpu_percent = Some((srv.cpu_seconds - s0.cpu_seconds) * 100.0 / dt);
                s.server_packets_out_per_s = Some((srv.packets_out - s0.packets_out) / dt);
            }
            p.server.push((t, srv));
        }
        p.bots.push((t, me));
        last = Some((t, bin, bout, exp, lost));
        progress.set_message(format!(
            "{:>4.0}s  bots {connected}/{total}  in {:.1} Mb/s  out {:.1} Mb/s  loss {:.2}%  errors {errors}{}",
            t,
            s.in_kbps / 1000.0,
            s.out_kbps / 1000.0,
            s.loss_percent,
            s.server_cpu_percent
                .map(|c| format!("  server cpu {c:.0}%"))
                .unwrap_or_default(),
        ));
        p.timeline.push(s);
    }
    progress.finish_and_clear();
    p
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let scenario = args.scenario()?;
    let base = url::Url::parse(&args.url).with_context(|| format!("--url {:?}", args.url))?;
    let ws = ws_url(&base)?;
    let metrics_url = match &args.metrics_url {
        Some(u) => Some(url::Url::parse(u).with_context(|| format!("--metrics-url {u:?}"))?),
        None => Some(base.clone()),
    };
    let run = args.run.clone().unwrap_or_else(|| run_name(&scenario));
    let out_dir = args.results_dir.join(&run);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let media = MediaPlan::prepare(&scenario)?;
    let live_metrics = match args.metrics_bind {
        Some(bind) => {
            let m = Arc::new(metrics::LoadMetrics::new().context("creating the metrics")?);
            let addr = metrics::serve(bind, Arc::clone(&m)).await?;
            eprintln!("chorus-load: live metrics on http://{addr}/metrics");
            Some(m)
        }
        None => None,
    };
    let run_id = format!("{:08x}", rand::random::<u32>());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (leave_tx, leave_rx) = watch::channel(false);
    let live = Arc::new(Live::default());
    let ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        ws_url: ws,
        base: base.clone(),
        run_id,
        live: Arc::clone(&live),
        stop: stop_rx,
        leave: leave_rx,
        next_id: AtomicU64::new(0),
        media,
        engines: match args.engine {
            EngineMode::Shared => (0..args.engines)
                .map(|_| SharedEngine::start().context("starting a shared engine"))
                .collect::<anyhow::Result<_>>()?,
            EngineMode::PerBot => Vec::new(),
        },
        metrics: live_metrics,
        args,
    });
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let total = u64::from(scenario.participants());
    let progress = if ctx.args.no_progress {
        indicatif::ProgressBar::hidden()
    } else {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(250));
        pb
    };

    // Idle server figures before the first join.
    let idle = server_sample(&metrics_url, ctx.args.server_pid).await;
    let start = Instant::now();
    let (done_tx, done_rx) = watch::channel(false);
    let sampler = tokio::spawn(sample_loop(
        Arc::clone(&live),
        metrics_url.clone(),
        ctx.args.server_pid,
        start,
        total,
        progress.clone(),
        done_rx,
    ));

    // Ramp: publishers of every room first, then subscribers, round-robin over rooms.
    let rooms = scenario.rooms as usize;
    let mut order = Vec::new();
    for slot in 0..scenario.publishers {
        for room in 0..rooms {
            order.push((room, Role::Publisher, slot));
        }
    }
    for slot in 0..scenario.subscribers {
        for room in 0..rooms {
            order.push((room, Role::Subscriber, slot));
        }
    }
    let interval = Duration::from_secs_f64(1.0 / scenario.ramp_up);
    let mut running: Vec<Running> = Vec::new();
    let mut finished: Vec<JoinHandle<BotResult>> = Vec::new();
    let mut next = tokio::time::Instant::now();
    for (room, role, slot) in order {
        tokio::time::sleep_until(next).await;
        next += interval;
        running.push(ctx.spawn(ctx.spec(room, role, slot)?));
    }
    let ramp = start.elapsed();
    let steady_from =
        start.elapsed().as_secs_f64() + (scenario.duration.as_secs_f64() / 4.0).min(5.0);

    // Steady state, with churn.
    let end = tokio::time::Instant::now() + scenario.duration;
    if scenario.churn > 0.0 {
        let every = Duration::from_secs_f64(1.0 / scenario.churn);
        let mut next = tokio::time::Instant::now() + every;
        while next < end {
            tokio::time::sleep_until(next).await;
            next += every;
            // Replace a subscriber (a publisher only in rooms without subscribers).
            let pick = {
                let subs: Vec<usize> = (0..running.len())
                    .filter(|&i| running[i].role == Role::Subscriber)
                    .collect();
                let pool: Vec<usize> = if subs.is_empty() {
                    (0..running.len()).collect()
                } else {
                    subs
                };
                (!pool.is_empty()).then(|| pool[rand::random_range(0..pool.len())])
            };
            if let Some(i) = pick {
                let old = running.swap_remove(i);
                let _ = old.churn.send(true);
                // Same slot: a talker is replaced by a talker.
                running.push(ctx.spawn(ctx.spec(old.room, old.role, old.slot)?));
                finished.push(old.handle);
            }
        }
    }
    tokio::time::sleep_until(end).await;

    // Stop: every bot snapshots, then everybody leaves.
    let _ = stop_tx.send(true);
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = done_tx.send(true);
    let probes = sampler.await.unwrap_or_default();
    let _ = leave_tx.send(true);
    let mut results = Vec::new();
    for h in finished
        .into_iter()
        .chain(running.into_iter().map(|r| r.handle))
    {
        match h.await {
            Ok(r) => results.push(r),
            Err(e) => tracing::warn!(error = %e, "bot task failed"),
        }
    }
    let elapsed = stopped.duration_since(start);

    // Report.
    // With WHEP, a subscriber plays one publisher (the room's most recent), who cannot mute.
    let (publishers, talkers) = match scenario.protocol {
        scenario::Protocol::Ws => (scenario.publishers, scenario.talkers()),
        scenario::Protocol::WhipWhep => (scenario.publishers.min(1), scenario.publishers.min(1)),
    };
    let room_media: Vec<RoomMedia> = (0..rooms)
        .map(|_| RoomMedia {
            video_publishers: if scenario.media.video { publishers } else { 0 },
            talkers: if scenario.media.audio { talkers } else { 0 },
        })
        .collect();
    let mut roles = BTreeMap::new();
    for role in [Role::Publisher, Role::Subscriber] {
        if results.iter().any(|r| r.spec.role == role) {
            roles.insert(
                role.as_str().to_owned(),
                report::aggregate(
                    results.iter().filter(move |r| r.spec.role == role),
                    &room_media,
                    stopped,
                ),
            );
        }
    }
    let overall = report::aggregate(results.iter(), &room_media, stopped);
    let server = server_report(&probes, idle, steady_from);
    let mut bots = bots_report(&probes, probes.peak_connected.max(total));
    // Bots' CPU over the server report's window, so the two compare like with like.
    if let Some(srv) = &server {
        let from = probes
            .bots
            .iter()
            .find(|(t, _)| *t >= steady_from)
            .or_else(|| probes.bots.first());
        if let (Some(a), Some(b)) = (from, probes.bots.last()) {
            let window = b.0 - a.0;
            if window > 0.0 {
                let cpu = (b.1.cpu_seconds - a.1.cpu_seconds) * 100.0 / window;
                bots.steady_cpu_percent = Some((cpu * 100.0).round() / 100.0);
                bots.cpu_ratio_to_server = (srv.cpu_percent > 0.0)
                    .then(|| (cpu / srv.cpu_percent * 100.0).round() / 100.0);
                if let (Some(r0), Some(r1)) = (a.1.engine_cpu_seconds, b.1.engine_cpu_seconds) {
                    let cpu = (r1 - r0) * 100.0 / window;
                    bots.steady_engine_cpu_percent = Some((cpu * 100.0).round() / 100.0);
                    bots.engine_cpu_ratio_to_server = (srv.cpu_percent > 0.0)
                        .then(|| (cpu / srv.cpu_percent * 100.0).round() / 100.0);
                }
            }
        }
    }
    let limits = Limits {
        max_loss: ctx.args.max_loss,
        max_join_p95_ms: ctx.args.max_join_p95_ms,
        max_latency_p95_ms: ctx.args.max_latency_p95_ms,
    };
    let checks = report::checks(&overall, &limits);
    let passed = checks.iter().all(|c| c.passed);
    let report = Report {
        run: run.clone(),
        scenario: serde_json::to_value(&scenario)?,
        url: ctx.args.url.clone(),
        started_unix,
        elapsed_s: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        ramp_s: (ramp.as_secs_f64() * 10.0).round() / 10.0,
        roles,
        overall,
        server,
        bots,
        checks,
        passed,
        timeline: probes.timeline,
    };
    let table = report::table(&report);
    println!(
        "chorus-load {run}: {} ({} bots, {:.0}s)",
        ctx.args.url,
        total,
        elapsed.as_secs_f64()
    );
    print!("{table}");
    write(
        &out_dir.join("report.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    write(&out_dir.join("index.html"), &html::render(&report, &table))?;
    println!("report: {}", out_dir.join("report.json").display());
    if !passed {
        eprintln!("chorus-load: thresholds failed");
    }
    Ok(passed)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn server_report(
    probes: &Probes,
    idle: Option<probe::ServerSample>,
    steady_from: f64,
) -> Option<ServerReport> {
    let samples = &probes.server;
    let first = samples
        .iter()
        .find(|(t, _)| *t >= steady_from)
        .or_else(|| samples.first())?;
    let last = samples.last()?;
    let window = last.0 - first.0;
    if window <= 0.0 {
        return None;
    }
    let (a, b) = (&first.1, &last.1);
    let cpu = b.cpu_seconds - a.cpu_seconds;
    let out = b.packets_out - a.packets_out;
    let rss_max = samples
        .iter()
        .map(|(_, s)| s.rss_bytes)
        .fold(0.0f64, f64::max);
    let idle_rss = idle.map_or(samples[0].1.rss_bytes, |s| s.rss_bytes);
    let participants = b.participants;
    let mib = |x: f64| (x / 1048576.0 * 100.0).round() / 100.0;
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let cpu_percent = cpu * 100.0 / window;
    Some(ServerReport {
        window_s: r2(window),
        cpu_percent: r2(cpu_percent),
        rss_mb_max: mib(rss_max),
        rss_mb_idle: mib(idle_rss),
        participants,
        packets_out_per_s: r2(out / window),
        packets_in_per_s: r2((b.packets_in - a.packets_in) / window),
        cpu_us_per_packet_out: (out > 0.0).then(|| r2(cpu * 1e6 / out)),
        cpu_percent_per_participant: (participants > 0.0).then(|| r2(cpu_percent / participants)),
        rss_mb_per_participant: (participants > 0.0)
            .then(|| (mib(rss_max - idle_rss) / participants * 1000.0).round() / 1000.0),
    })
}

fn bots_report(probes: &Probes, bots: u64) -> report::BotsReport {
    let (Some(first), Some(last)) = (probes.bots.first(), probes.bots.last()) else {
        return report::BotsReport::default();
    };
    let window = (last.0 - first.0).max(1e-3);
    let cpu = (last.1.cpu_seconds - first.1.cpu_seconds) * 100.0 / window;
    let rss = probes
        .bots
        .iter()
        .map(|(_, s)| s.rss_bytes)
        .fold(0.0f64, f64::max);
    report::BotsReport {
        cpu_percent: (cpu * 100.0).round() / 100.0,
        rss_mb_max: (rss / 1048576.0 * 100.0).round() / 100.0,
        bots,
        cpu_percent_per_bot: (bots > 0).then(|| (cpu / bots as f64 * 1000.0).round() / 1000.0),
        steady_cpu_percent: None,
        cpu_ratio_to_server: None,
        steady_engine_cpu_percent: None,
        engine_cpu_ratio_to_server: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signaling_url_from_base() {
        let u = |s: &str| ws_url(&url::Url::parse(s).expect("url")).expect("ws");
        assert_eq!(u("http://127.0.0.1:7880"), "ws://127.0.0.1:7880/ws");
        assert_eq!(
            u("https://sfu.example.com/chorus/"),
            "wss://sfu.example.com/chorus/ws"
        );
        assert!(ws_url(&url::Url::parse("ftp://x").expect("url")).is_err());
    }

    #[test]
    fn whip_and_whep_urls_from_base() {
        let u = |s: &str, e: &str| {
            http_endpoint(&url::Url::parse(s).expect("url"), e, "load-1-0").expect("endpoint")
        };
        assert_eq!(
            u("http://127.0.0.1:7880", "whip"),
            "http://127.0.0.1:7880/whip/load-1-0"
        );
        assert_eq!(
            u("http://sfu.example.com/chorus/?x=1", "whep"),
            "http://sfu.example.com/chorus/whep/load-1-0"
        );
        assert!(http_endpoint(&url::Url::parse("https://x").expect("url"), "whip", "r").is_err());
    }
}
