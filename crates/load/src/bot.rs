//! One simulated participant: joins, publishes or only receives, reports live counters, and
//! hands back its final statistics.

use crate::metrics::BotMetrics;
pub use crate::role::Role;
use chorus_client::{
    AudioSource, Client, ClientError, ClientOptions, ConnectionStates, Impairment, Quality,
    RTCPeerConnectionState, ReceivedTrackStats, RtcpSentStats, SentTrackStats, SharedEngine,
    TrackKind, VideoSource, WhipKind, WhipSession,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a bot may take to get its peer connections connected.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a bot publishes its counters.
const TICK: Duration = Duration::from_millis(500);

/// What one bot is.
#[derive(Debug, Clone)]
pub struct BotSpec {
    /// Unique identity.
    pub identity: String,
    /// Room index.
    pub room_index: usize,
    /// Room name.
    pub room: String,
    /// Role.
    pub role: Role,
    /// Index among the room's bots of this role.
    pub slot: u32,
    /// Publish audio (publishers).
    pub audio: bool,
    /// Publish video (publishers).
    pub video: bool,
    /// Mute the audio track after joining (publishers that do not talk).
    pub muted: bool,
    /// Signed join token.
    pub token: String,
    /// Whether the bot receives media (every bot but a WHIP publisher).
    pub receives: bool,
    /// Signaling WebSocket URL.
    pub ws_url: String,
    /// `--protocol whip-whep`: the WHIP (publishers) or WHEP (subscribers) endpoint; `None`:
    /// the WebSocket protocol.
    pub http_url: Option<String>,
    /// Video to publish (`None`: the client's built-in clip).
    pub video_source: Option<VideoSource>,
    /// Audio to publish.
    pub audio_source: AudioSource,
    /// The simulcast layer to ask for (WebSocket bots; WHEP has no way to ask).
    pub quality: Quality,
    /// Decode every Nth group of pictures of received VP8 (0: off).
    pub decode_sample: u32,
    /// Receive-side impairment.
    pub impairment: Impairment,
    /// Where WebSocket bots run their connections (`None`: their own).
    pub engine: Option<SharedEngine>,
}

/// Counters every bot adds its deltas to, for the live view.
#[derive(Debug, Default)]
pub struct Live {
    /// Bots with connected peer connections.
    pub connected: AtomicU64,
    /// Payload bytes received.
    pub bytes_in: AtomicU64,
    /// Payload bytes sent.
    pub bytes_out: AtomicU64,
    /// Packets expected on received tracks.
    pub expected: AtomicU64,
    /// Packets lost on received tracks.
    pub lost: AtomicU64,
    /// Errors recorded.
    pub errors: AtomicU64,
}

/// What a bot hands back.
#[derive(Debug, Clone)]
pub struct BotResult {
    /// The bot.
    pub spec: BotSpec,
    /// When `join` was sent.
    pub join_sent: Instant,
    /// `join` sent -> `joined` received.
    pub signaled: Option<Duration>,
    /// `join` sent -> both peer connections connected.
    pub connected: Option<Duration>,
    /// When the bot stopped measuring.
    pub stopped_at: Instant,
    /// Received tracks at the end.
    pub received: Vec<ReceivedTrackStats>,
    /// Published tracks at the end.
    pub sent: Vec<SentTrackStats>,
    /// RTCP feedback sent.
    pub rtcp: RtcpSentStats,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Time received video tracks spent at each frame size (simulcast layer), summed over the
    /// bot's tracks; sampled at each 0.5 s tick (a track counts when a packet arrived since
    /// the previous tick, at the size of its latest keyframe).
    pub layer_time: BTreeMap<(u16, u16), Duration>,
}

impl BotResult {
    /// `join` sent -> first complete keyframe of any received video track.
    pub fn join_video(&self) -> Option<Duration> {
        self.first(TrackKind::Video, |t| t.first_frame_at)
    }

    /// `join` sent -> first packet of any received audio track.
    pub fn join_audio(&self) -> Option<Duration> {
        self.first(TrackKind::Audio, |t| t.first_packet_at)
    }

    fn first(
        &self,
        kind: TrackKind,
        at: impl Fn(&ReceivedTrackStats) -> Option<Instant>,
    ) -> Option<Duration> {
        self.received
            .iter()
            .filter(|t| t.kind == kind)
            .filter_map(at)
            .min()
            .map(|i| i.saturating_duration_since(self.join_sent))
    }
}

/// A bot's connection to the server: a WebSocket [`Client`] or a WHIP/WHEP session.
enum Session {
    Ws(Client),
    Http(WhipSession),
}

impl Session {
    async fn join(spec: &BotSpec, opts: ClientOptions) -> Result<Self, ClientError> {
        match (&spec.http_url, spec.role) {
            (None, _) => Client::join(opts).await.map(Session::Ws),
            (Some(url), role) => {
                let opts = ClientOptions {
                    url: url.clone(),
                    ..opts
                };
                match role {
                    Role::Publisher => WhipSession::publish(opts).await,
                    Role::Subscriber => WhipSession::play(opts).await,
                }
                .map(Session::Http)
            }
        }
    }

    fn received(&self) -> Vec<ReceivedTrackStats> {
        match self {
            Session::Ws(c) => c.received(),
            Session::Http(s) => s.received(),
        }
    }

    fn sent(&self) -> Vec<SentTrackStats> {
        match self {
            Session::Ws(c) => c.sent(),
            Session::Http(s) => s.sent(),
        }
    }

    fn rtcp_sent(&self) -> RtcpSentStats {
        match self {
            Session::Ws(c) => c.rtcp_sent(),
            Session::Http(s) => s.rtcp_sent(),
        }
    }

    fn connection_states(&self) -> ConnectionStates {
        match self {
            Session::Ws(c) => c.connection_states(),
            Session::Http(s) => s.connection_states(),
        }
    }

    /// Whether every connection the bot needs is connected.
    fn up(&self, spec: &BotSpec) -> bool {
        match self {
            Session::Ws(c) => {
                let states = c.connection_states();
                let publishing = spec.role == Role::Publisher && (spec.audio || spec.video);
                (!publishing || states.publisher == RTCPeerConnectionState::Connected)
                    && states.subscriber_offers > 0
                    && states.subscriber == RTCPeerConnectionState::Connected
            }
            Session::Http(s) => s.connection_state() == RTCPeerConnectionState::Connected,
        }
    }

    /// Leaves; a failed WHIP/WHEP `DELETE` is returned as an error kind.
    async fn leave(self) -> Option<String> {
        match self {
            Session::Ws(c) => {
                c.leave().await;
                None
            }
            Session::Http(s) => {
                let kind = s.kind();
                match s.leave().await {
                    Ok(()) => None,
                    // The server may already have ended the session (e.g. a WHEP session whose
                    // publisher left first).
                    Err(ClientError::HttpStatus { status: 404, .. }) => None,
                    Err(ClientError::HttpStatus { status, .. }) => {
                        Some(format!("{}_delete_status_{status}", kind.as_str()))
                    }
                    Err(ClientError::Timeout(_)) => {
                        Some(format!("{}_delete_timeout", kind.as_str()))
                    }
                    Err(_) => Some(format!("{}_delete_http", kind.as_str())),
                }
            }
        }
    }
}

fn error_kind(e: &ClientError, http: Option<WhipKind>) -> String {
    if let Some(kind) = http {
        let kind = kind.as_str();
        match e {
            ClientError::HttpStatus {
                endpoint, status, ..
            } => return format!("{endpoint}_status_{status}"),
            ClientError::MissingLocation(endpoint) => return format!("{endpoint}_no_location"),
            ClientError::Http(_) | ClientError::InvalidUrl(_) => return format!("{kind}_http"),
            ClientError::Timeout(_) => return format!("{kind}_timeout"),
            _ => {}
        }
    }
    match e {
        ClientError::Rejected { code, .. } => format!("join_rejected_{}", code.as_str()),
        ClientError::Timeout(_) => "join_timeout".into(),
        ClientError::WebSocket(_) | ClientError::Closed => "join_signaling".into(),
        ClientError::WebRtc(_) => "join_webrtc".into(),
        _ => "join_other".into(),
    }
}

struct Reported {
    bytes_in: u64,
    bytes_out: u64,
    expected: u64,
    lost: u64,
    /// The previous tick.
    at: Instant,
    /// See [`BotResult::layer_time`].
    layer_time: BTreeMap<(u16, u16), Duration>,
}

/// Runs one bot until `stop` turns true; leaves once `leave` turns true. With `metrics`
/// (`--metrics-bind`), it also feeds the live Prometheus figures.
pub async fn run(
    spec: BotSpec,
    live: Arc<Live>,
    mut metrics: Option<BotMetrics>,
    mut stop: watch::Receiver<bool>,
    mut leave: watch::Receiver<bool>,
) -> BotResult {
    let mut errors = BTreeMap::new();
    let error_metric = metrics.as_ref().map(BotMetrics::errors);
    let error = |kind: String, errors: &mut BTreeMap<String, u64>| {
        live.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &error_metric {
            m.inc();
        }
        *errors.entry(kind).or_insert(0) += 1;
    };
    let opts = ClientOptions {
        publish_audio: spec.role == Role::Publisher && spec.audio,
        publish_video: spec.role == Role::Publisher && spec.video,
        join_timeout: Duration::from_secs(20),
        video_source: spec.video_source.clone(),
        audio_source: spec.audio_source.clone(),
        decode_sample: spec.decode_sample,
        impairment: spec.impairment,
        quality: spec.quality,
        // Listeners join with the microphone off, as in a large call.
        audio_muted: spec.muted,
        engine: spec.engine.clone(),
        // Bots watch states and counters, never the event stream: nothing may queue there.
        events: false,
        ..ClientOptions::new(spec.ws_url.clone(), spec.token.clone())
    };
    let join_sent = Instant::now();
    let mut result = BotResult {
        spec: spec.clone(),
        join_sent,
        signaled: None,
        connected: None,
        stopped_at: join_sent,
        received: Vec::new(),
        sent: Vec::new(),
        rtcp: RtcpSentStats::default(),
        errors: BTreeMap::new(),
        layer_time: BTreeMap::new(),
    };
    let http = spec.http_url.as_ref().map(|_| match spec.role {
        Role::Publisher => WhipKind::Publish,
        Role::Subscriber => WhipKind::Play,
    });
    let client = tokio::select! {
        c = Session::join(&spec, opts) => c,
        _ = stop.wait_for(|s| *s) => {
            result.stopped_at = Instant::now();
            return result;
        }
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(identity = %spec.identity, room = %spec.room, error = %e, "join failed");
            error(error_kind(&e, http), &mut errors);
            result.errors = errors;
            result.stopped_at = Instant::now();
            return result;
        }
    };
    result.signaled = Some(join_sent.elapsed());
    if let Some(m) = &mut metrics {
        m.joined(join_sent.elapsed());
    }
    let mut muted = false;
    let mut reported = Reported {
        bytes_in: 0,
        bytes_out: 0,
        expected: 0,
        lost: 0,
        at: Instant::now(),
        layer_time: BTreeMap::new(),
    };
    let mut failed = false;
    let mut connect_timed_out = false;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let states = client.connection_states();
        let up = client.up(&spec);
        let down = |s: RTCPeerConnectionState| {
            matches!(
                s,
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            )
        };
        if up && result.connected.is_none() {
            result.connected = Some(join_sent.elapsed());
            live.connected.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &mut metrics {
                m.connected(true, join_sent.elapsed());
            }
        }
        if !failed && (down(states.publisher) || down(states.subscriber)) {
            failed = true;
            error("connection_failed".into(), &mut errors);
            if result.connected.is_some() {
                live.connected.fetch_sub(1, Ordering::Relaxed);
            }
            if let Some(m) = &mut metrics {
                m.connected(false, join_sent.elapsed());
            }
        }
        if result.connected.is_none() && !connect_timed_out && join_sent.elapsed() > CONNECT_TIMEOUT
        {
            connect_timed_out = true;
            error("connect_timeout".into(), &mut errors);
        }
        if let (true, false, Session::Ws(client)) = (spec.muted, muted, &client) {
            let audio = client
                .local_participant()
                .tracks
                .into_iter()
                .find(|t| t.kind == TrackKind::Audio);
            if let Some(t) = audio {
                muted = true;
                if client.mute(&t.id, true).is_err() {
                    error("mute_failed".into(), &mut errors);
                }
            }
        }
        report_live(&client, &live, &mut reported, metrics.as_mut(), join_sent);
    }
    // Snapshot first, leave when everyone has snapshotted (a publisher leaving must not look
    // like a freeze to a subscriber that is still measuring).
    result.stopped_at = Instant::now();
    report_live(&client, &live, &mut reported, metrics.as_mut(), join_sent);
    result.received = client.received();
    result.sent = client.sent();
    result.rtcp = client.rtcp_sent();
    let write_errors: u64 = result.sent.iter().map(|s| s.write_errors).sum();
    if write_errors > 0 {
        *errors.entry("write_error".into()).or_insert(0) += write_errors;
    }
    result.errors = errors;
    result.layer_time = std::mem::take(&mut reported.layer_time);
    if result.connected.is_some() && !failed {
        live.connected.fetch_sub(1, Ordering::Relaxed);
    }
    if let Some(m) = &mut metrics {
        m.connected(false, join_sent.elapsed());
    }
    let _ = leave.wait_for(|l| *l).await;
    if let Ok(Some(kind)) = tokio::time::timeout(Duration::from_secs(5), client.leave()).await {
        live.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &error_metric {
            m.inc();
        }
        *result.errors.entry(kind).or_insert(0) += 1;
    }
    result
}

fn report_live(
    client: &Session,
    live: &Live,
    reported: &mut Reported,
    metrics: Option<&mut BotMetrics>,
    join_sent: Instant,
) {
    let received = client.received();
    let sent = client.sent();
    if let Some(m) = metrics {
        m.tick(join_sent, &received, &sent, &client.rtcp_sent());
    }
    let now = Instant::now();
    for t in received.iter().filter(|t| t.kind == TrackKind::Video) {
        if let (Some(size), Some(last)) = (t.frame_size, t.last_packet_at) {
            if last > reported.at {
                *reported.layer_time.entry(size).or_default() += now - reported.at;
            }
        }
    }
    reported.at = now;
    let bytes_in: u64 = received.iter().map(|t| t.bytes).sum();
    let expected: u64 = received.iter().map(|t| t.seq.expected()).sum();
    let lost: u64 = received.iter().map(|t| t.lost()).sum();
    let bytes_out: u64 = sent.iter().map(|t| t.bytes).sum();
    let delta = |now: u64, before: &mut u64, counter: &AtomicU64| {
        if now > *before {
            counter.fetch_add(now - *before, Ordering::Relaxed);
        } else if now < *before {
            counter.fetch_sub(*before - now, Ordering::Relaxed);
        }
        *before = now;
    };
    delta(bytes_in, &mut reported.bytes_in, &live.bytes_in);
    delta(bytes_out, &mut reported.bytes_out, &live.bytes_out);
    delta(expected, &mut reported.expected, &live.expected);
    delta(lost, &mut reported.lost, &live.lost);
}
