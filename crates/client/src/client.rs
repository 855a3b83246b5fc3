//! The [`Client`]: signaling, the two peer connections, media tasks and receive accounting.

pub mod engine;
mod publisher;
mod receiver;
mod sdp;
mod transport;
pub mod whip;

use crate::ivf::{IvfClip, IvfError};
use crate::keyframe::RtcpSent;
use crate::media::{self, AudioSource, LocalTrack, SentTrackStats, VideoSource};
use crate::stats::PacketMeta;
use crate::stats::{offered_tracks, OfferedTrack, ReceivedTrackStats};
use chorus_signal::protocol::{
    ClientMessage, ErrorCode, IceCandidate, IceServer, ParticipantInfo, Quality, ServerMessage,
    Target, TrackKind, PROTOCOL_VERSION,
};
use engine::EngineConn;
pub use engine::SharedEngine;
use futures::{SinkExt, StreamExt};
use publisher::{LoopSource, PublishLayer, PublishTrack};
use rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    Registry,
};
use webrtc::rtp_transceiver::{
    RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender, RtpTransceiver,
};

/// How often the client pings the server to keep the WebSocket alive.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long [`Client::leave`] waits for the `leave` message to be flushed and the connections
/// to close.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors from the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The signaling URL could not be parsed.
    #[error("invalid signaling URL: {0}")]
    InvalidUrl(#[from] url::ParseError),
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// A message could not be encoded or decoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The server refused the join (or reported another error while joining).
    #[error("server error {}: {message}", code.as_str())]
    Rejected {
        /// The server's error code.
        code: ErrorCode,
        /// The server's detail.
        message: String,
    },
    /// The server sent something that does not fit the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The WebRTC stack failed.
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    /// The configured video clip is not a usable IVF file.
    #[error("video clip: {0}")]
    Ivf(#[from] IvfError),
    /// A peer connection failed or closed while waiting for it.
    #[error("{0:?} connection is {1}")]
    ConnectionFailed(Target, RTCPeerConnectionState),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The signaling connection is closed.
    #[error("signaling connection closed")]
    Closed,
    /// A WHIP/WHEP HTTP exchange failed: unsupported URL, connection, I/O or an unparsable
    /// response.
    #[error("http: {0}")]
    Http(String),
    /// A WHIP/WHEP endpoint answered with an unexpected status.
    #[error("{endpoint} answered HTTP {status}: {body}")]
    HttpStatus {
        /// `whip` or `whep`.
        endpoint: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (the server's explanation).
        body: String,
    },
    /// A local socket could not be opened or used.
    #[error("socket: {0}")]
    Io(std::io::Error),
    /// A WHIP/WHEP `201 Created` without a `Location` header.
    #[error("{0} answer has no Location header")]
    MissingLocation(&'static str),
}

/// How to join.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// WebSocket signaling URL, e.g. `ws://127.0.0.1:7880/ws`.
    pub url: String,
    /// Join token (JWT).
    pub token: String,
    /// Ask the server to subscribe to everyone else's tracks automatically.
    pub auto_subscribe: bool,
    /// The simulcast quality to receive (see [`Client::set_quality`] to change it per track).
    pub quality: Quality,
    /// Publish the audio track muted (a participant joining with the microphone off): it
    /// sends only a silence frame every 400 ms, as Opus DTX does, until [`Client::mute`]
    /// unmutes it. Tell the room with [`Client::mute`] once the track is published.
    pub audio_muted: bool,
    /// Publish an Opus track ([`audio_source`](Self::audio_source)).
    pub publish_audio: bool,
    /// Publish a VP8 track ([`video_source`](Self::video_source), else the looped
    /// [`video_clip`](Self::video_clip)).
    pub publish_video: bool,
    /// VP8 IVF clip to loop when [`video_source`](Self::video_source) is `None`; `None` uses
    /// the built-in 160x120 clip ([`media::DEFAULT_VP8_CLIP`]).
    pub video_clip: Option<Arc<IvfClip>>,
    /// What to send on the video track; overrides [`video_clip`](Self::video_clip).
    pub video_source: Option<VideoSource>,
    /// What to send on the audio track (default: Opus silence frames every 20 ms).
    pub audio_source: AudioSource,
    /// Decode check: when `n > 0`, decode every `n`th group of pictures (a keyframe and the
    /// frames up to the next one) of every received VP8 track with libvpx and count decode
    /// errors ([`ReceivedTrackStats::decode`]). 0 turns it off.
    pub decode_sample: u32,
    /// Impairment of incoming media on the subscriber connection (loss, extra delay), applied
    /// below NACK handling so retransmissions repair it.
    pub impairment: crate::impair::Impairment,
    /// Local UDP address for both peer connections. `None` picks `127.0.0.1:0` when the
    /// signaling host is a loopback address and `0.0.0.0:0` (every non-loopback interface)
    /// otherwise.
    pub udp_addr: Option<String>,
    /// Limit for connecting the WebSocket and receiving `joined`.
    pub join_timeout: Duration,
    /// Run the connections on this shared engine (lean endpoints built from webrtc-rs's STUN,
    /// DTLS and SRTP parts, one thread for many clients) instead of on async connections of
    /// their own: what the load bots do, so that a bot costs a fraction of the CPU. The
    /// subscriber connection always moves there; the publisher connection does when every
    /// source is pre-encoded (a clip, silence, cheap mode), since live encoders run on the
    /// async path. Host candidates only; the data channel is never opened.
    pub engine: Option<SharedEngine>,
    /// Deliver server messages to [`Client::next_event`] (the default). A client that never
    /// reads them (the load bots) turns this off: unread messages would queue without limit,
    /// a renegotiation offer for every change in the room.
    pub events: bool,
}

impl ClientOptions {
    /// Options that publish audio and video and auto-subscribe.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            ..Self::default()
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            url: String::new(),
            token: String::new(),
            auto_subscribe: true,
            quality: Quality::High,
            audio_muted: false,
            publish_audio: true,
            publish_video: true,
            video_clip: None,
            video_source: None,
            audio_source: AudioSource::Silence,
            decode_sample: 0,
            impairment: crate::impair::Impairment::default(),
            udp_addr: None,
            join_timeout: Duration::from_secs(10),
            engine: None,
            events: true,
        }
    }
}

/// The state of both peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStates {
    /// Publisher connection state.
    pub publisher: RTCPeerConnectionState,
    /// Subscriber connection state.
    pub subscriber: RTCPeerConnectionState,
    /// Whether the server's answer to the publisher offer has been applied.
    pub publisher_answered: bool,
    /// Subscriber offers applied so far (each answered).
    pub subscriber_offers: u32,
}

impl Default for ConnectionStates {
    fn default() -> Self {
        Self {
            publisher: RTCPeerConnectionState::New,
            subscriber: RTCPeerConnectionState::New,
            publisher_answered: false,
            subscriber_offers: 0,
        }
    }
}

/// RTCP feedback the client has sent (both connections; in practice the subscriber
/// connection's NACKs and keyframe requests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcpSentStats {
    /// NACK packets sent.
    pub nacks: u64,
    /// Packets those NACKs asked for.
    pub nacked_packets: u64,
    /// Picture loss indications sent.
    pub plis: u64,
    /// Full intra requests sent.
    pub firs: u64,
}

/// What the signaling writer sends.
enum Outgoing {
    Message(ClientMessage),
    /// Flush, close the WebSocket and acknowledge.
    Close(oneshot::Sender<()>),
}

/// Holds a connection's local ICE candidates until its first local description has been sent,
/// so the server never sees a candidate before the SDP it belongs to.
struct CandidateGate {
    target: Target,
    queued: Mutex<Option<Vec<IceCandidate>>>,
}

impl CandidateGate {
    fn new(target: Target) -> Self {
        Self {
            target,
            queued: Mutex::new(Some(Vec::new())),
        }
    }

    fn send(&self, candidate: IceCandidate, out: &mpsc::UnboundedSender<Outgoing>) {
        let mut queued = lock(&self.queued);
        match queued.as_mut() {
            Some(q) => q.push(candidate),
            None => {
                let _ = out.send(Outgoing::Message(ClientMessage::Candidate {
                    target: self.target,
                    candidate,
                }));
            }
        }
    }

    fn open(&self, out: &mpsc::UnboundedSender<Outgoing>) {
        let mut queued = lock(&self.queued);
        for candidate in queued.take().unwrap_or_default() {
            let _ = out.send(Outgoing::Message(ClientMessage::Candidate {
                target: self.target,
                candidate,
            }));
        }
    }
}

/// State shared by the client handle, the signaling tasks and the peer connection handlers.
struct Shared {
    out: mpsc::UnboundedSender<Outgoing>,
    states: watch::Sender<ConnectionStates>,
    publisher_gate: CandidateGate,
    subscriber_gate: CandidateGate,
    received: Mutex<Vec<Arc<Mutex<ReceivedTrackStats>>>>,
    offered: Mutex<Vec<OfferedTrack>>,
    room: Mutex<BTreeMap<String, ParticipantInfo>>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// The `abs-send-time` extension id of the latest subscriber offer (0: none).
    abs_send_time_id: AtomicU8,
    /// The `abs-capture-time` extension id of the latest subscriber offer (0: none).
    abs_capture_time_id: AtomicU8,
    /// See [`ClientOptions::decode_sample`].
    decode_sample: u32,
    rtcp_sent: Arc<RtcpSent>,
    /// Turns true once a connection's ICE gathering is complete (WHIP/WHEP wait for it).
    gathered: watch::Sender<bool>,
}

impl Shared {
    fn new(
        out: mpsc::UnboundedSender<Outgoing>,
        room: BTreeMap<String, ParticipantInfo>,
        decode_sample: u32,
    ) -> Arc<Self> {
        Arc::new(Shared {
            out,
            states: watch::Sender::new(ConnectionStates::default()),
            publisher_gate: CandidateGate::new(Target::Publisher),
            subscriber_gate: CandidateGate::new(Target::Subscriber),
            received: Mutex::new(Vec::new()),
            offered: Mutex::new(Vec::new()),
            room: Mutex::new(room),
            tasks: Mutex::new(Vec::new()),
            abs_send_time_id: AtomicU8::new(0),
            abs_capture_time_id: AtomicU8::new(0),
            decode_sample,
            rtcp_sent: Arc::new(RtcpSent::default()),
            gathered: watch::Sender::new(false),
        })
    }

    /// Remembers the capture-stamp extension ids of the SDP that describes received media.
    fn set_extension_ids(&self, sdp: &str) {
        let ext_id = crate::capture_clock::extmap_id(sdp).unwrap_or(0);
        self.abs_send_time_id.store(ext_id, Ordering::Relaxed);
        let ext_id =
            crate::capture_clock::extmap_id_of(sdp, crate::capture_clock::ABS_CAPTURE_TIME_URI)
                .unwrap_or(0);
        self.abs_capture_time_id.store(ext_id, Ordering::Relaxed);
    }

    /// Per remote track, what has been received so far (see [`Client::received`]).
    fn received(&self) -> Vec<ReceivedTrackStats> {
        let offered = lock(&self.offered).clone();
        let entries = lock(&self.received).clone();
        entries
            .iter()
            .map(|e| {
                let mut s = lock(e).clone();
                s.active = offered
                    .iter()
                    .any(|o| o.track_id == s.track_id && o.participant_id == s.participant_id);
                s
            })
            .collect()
    }

    /// RTCP feedback sent so far.
    fn rtcp_sent(&self) -> RtcpSentStats {
        let s = &self.rtcp_sent;
        RtcpSentStats {
            nacks: s.nacks.load(Ordering::Relaxed),
            nacked_packets: s.nacked_packets.load(Ordering::Relaxed),
            plis: s.plis.load(Ordering::Relaxed),
            firs: s.firs.load(Ordering::Relaxed),
        }
    }

    fn abort_tasks(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
    fn send(&self, msg: ClientMessage) -> Result<(), ClientError> {
        self.out
            .send(Outgoing::Message(msg))
            .map_err(|_| ClientError::Closed)
    }

    fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(fut);
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle.abort_handle());
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Peer connection callbacks.
struct Handler {
    target: Target,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let init = match event.candidate.to_json() {
            Ok(init) => init,
            Err(e) => {
                tracing::debug!(error = %e, "cannot serialize local candidate");
                return;
            }
        };
        let candidate = IceCandidate {
            candidate: init.candidate,
            sdp_mid: init.sdp_mid.filter(|m| !m.is_empty()),
            sdp_m_line_index: init.sdp_mline_index,
            username_fragment: init.username_fragment,
        };
        let gate = match self.target {
            Target::Publisher => &self.shared.publisher_gate,
            Target::Subscriber => &self.shared.subscriber_gate,
        };
        gate.send(candidate, &self.shared.out);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(target = ?self.target, %state, "peer connection state");
        self.shared.states.send_modify(|s| match self.target {
            Target::Publisher => s.publisher = state,
            Target::Subscriber => s.subscriber = state,
        });
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.shared.gathered.send_replace(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = Arc::clone(&self.shared);
        self.shared.spawn(read_remote_track(track, shared));
    }
}

/// Accounts every RTP packet of one remote track until it ends.
async fn read_remote_track(track: Arc<dyn TrackRemote>, shared: Arc<Shared>) {
    let kind = match track.kind().await {
        RtpCodecKind::Audio => TrackKind::Audio,
        _ => TrackKind::Video,
    };
    let mut mime = None;
    if let Some(ssrc) = track.ssrcs().await.first().copied() {
        mime = track.codec(ssrc).await.map(|c| c.mime_type);
    }
    let mut reader = TrackReader::new(
        &shared,
        track.stream_id().await,
        track.track_id().await,
        kind,
        mime,
    );
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(p) => reader.on_packet(&p, &shared, Arrival::now()),
            TrackRemoteEvent::OnOpen(init) => {
                if let Some(codec) = track.codec(init.ssrc).await {
                    lock(&reader.entry).set_mime_type(codec.mime_type);
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

/// When a packet arrived, on both clocks (the monotonic one for intervals, the wall clock for
/// capture-to-arrival latency).
#[derive(Debug, Clone, Copy)]
struct Arrival {
    at: Instant,
    wall: SystemTime,
}

impl Arrival {
    fn now() -> Arrival {
        Arrival {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Accounts one remote track's packets ([`ReceivedTrackStats`], capture latency, the optional
/// decode check); shared by the async connection and the [`SharedEngine`].
struct TrackReader {
    entry: Arc<Mutex<ReceivedTrackStats>>,
    decode: Option<crate::decode::TrackDecoder>,
}

impl TrackReader {
    /// Starts accounting a track and lists it in the client's received tracks.
    fn new(
        shared: &Shared,
        participant_id: String,
        track_id: String,
        kind: TrackKind,
        mime: Option<String>,
    ) -> TrackReader {
        let mut stats = ReceivedTrackStats::new(participant_id, track_id, kind);
        if let Some(mime) = mime {
            stats.set_mime_type(mime);
        }
        tracing::debug!(participant = %stats.participant_id, track = %stats.track_id, ?kind, "remote track");
        let decode_wanted = shared.decode_sample > 0 && kind == TrackKind::Video;
        stats.keep_frames = decode_wanted;
        let entry = Arc::new(Mutex::new(stats));
        let decode = decode_wanted
            .then(|| crate::decode::TrackDecoder::new(shared.decode_sample, Arc::clone(&entry)))
            .flatten();
        lock(&shared.received).push(Arc::clone(&entry));
        TrackReader { entry, decode }
    }

    fn on_packet(&mut self, p: &rtc::rtp::Packet, shared: &Shared, arrival: Arrival) {
        let now = arrival.at;
        let latency = capture_latency(&p.header, shared, arrival.wall);
        let meta = PacketMeta {
            ssrc: p.header.ssrc,
            payload_type: p.header.payload_type,
            sequence_number: p.header.sequence_number,
            timestamp: p.header.timestamp,
            marker: p.header.marker,
            latency,
        };
        let (frame, vp8) = {
            let mut e = lock(&self.entry);
            let frame = e.on_rtp(meta, &p.payload, now);
            (frame, e.format == crate::stats::VideoFormat::Vp8)
        };
        // The decode check is VP8 (libvpx's VP8 decoder) only, on a decode thread.
        if let (Some(frame), Some(decoder), true) = (frame, self.decode.as_ref(), vp8) {
            decoder.submit(frame);
        }
    }
}

/// Capture-to-arrival latency from `abs-capture-time`, else `abs-send-time`.
fn capture_latency(
    header: &rtc::rtp::header::Header,
    shared: &Shared,
    now: SystemTime,
) -> Option<Duration> {
    let ext = |id: u8| (id != 0).then(|| header.get_extension(id)).flatten();
    if let Some(stamp) = ext(shared.abs_capture_time_id.load(Ordering::Relaxed))
        .and_then(|b| crate::capture_clock::parse_capture_time(&b))
    {
        return Some(crate::capture_clock::elapsed_since_ntp(stamp, now));
    }
    ext(shared.abs_send_time_id.load(Ordering::Relaxed))
        .and_then(|b| crate::capture_clock::parse(&b))
        .map(|stamp| crate::capture_clock::elapsed_since(stamp, now))
}

/// A local track with the sender and transceiver it was added with.
struct PendingTrack {
    local: Arc<LocalTrack>,
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    transceiver: Arc<dyn RtpTransceiver>,
}

/// Media the publisher starts once the server has answered.
struct PendingMedia {
    tracks: Vec<PendingTrack>,
    /// What to send on the video track (present when publishing video).
    video: Option<VideoSource>,
    audio: AudioSource,
}

impl PendingMedia {
    fn start(self, shared: &Arc<Shared>) {
        for PendingTrack {
            local,
            track,
            sender,
            transceiver,
        } in self.tracks
        {
            for (index, layer) in local.layers.iter().enumerate() {
                let mut states = shared.states.subscribe();
                let video = match &self.video {
                    Some(VideoSource::Simulcast(layers)) => {
                        layers.get(index).map(|l| l.source.clone())
                    }
                    other => other.clone(),
                };
                let audio_source = self.audio.clone();
                let (local, track, sender, transceiver) = (
                    Arc::clone(&local),
                    Arc::clone(&track),
                    Arc::clone(&sender),
                    Arc::clone(&transceiver),
                );
                let (rid, ssrc, counters) =
                    (layer.rid.clone(), layer.ssrc, Arc::clone(&layer.counters));
                shared.spawn(async move {
                    // Wait for DTLS before writing: earlier samples would only be dropped.
                    let connected = states
                        .wait_for(|s| s.publisher == RTCPeerConnectionState::Connected)
                        .await
                        .is_ok();
                    if !connected {
                        return;
                    }
                    let (fallback, audio) = match local.kind {
                        TrackKind::Audio => (media::OPUS_PAYLOAD_TYPE, true),
                        TrackKind::Video => {
                            (media::video_codec_for(video.as_ref()).payload_type, false)
                        }
                    };
                    // Stamp only what the answer accepted.
                    let mut extensions = media::Extensions::negotiated(&sender).await;
                    if !rid.is_empty() {
                        let mid = transceiver.mid().await.ok().flatten().unwrap_or_default();
                        extensions.mid_rid = Some((mid.into(), rid.into()));
                    }
                    let out = media::Output {
                        track,
                        ssrc,
                        payload_type: media::negotiated_payload_type(&sender, fallback).await,
                        extensions,
                        counters,
                    };
                    match (audio, video) {
                        (true, _) => media::send_audio(out, audio_source).await,
                        (false, Some(video)) => media::send_video(out, video).await,
                        (false, None) => {}
                    }
                });
            }
        }
    }
}

/// A participant in a Chorus room.
///
/// Dropping the client aborts its tasks and closes its peer connections without telling the
/// server; [`leave`](Self::leave) says goodbye first.
pub struct Client {
    room: String,
    participant: ParticipantInfo,
    ice_servers: Vec<IceServer>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<ServerMessage>,
    publisher: Arc<PublisherConn>,
    subscriber: Arc<SubscriberConn>,
    local_tracks: Vec<Arc<LocalTrack>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("room", &self.room)
            .field("participant_id", &self.participant.id)
            .field("states", &*self.shared.states.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects, joins, and starts publishing.
    ///
    /// Returns once the server has sent `joined` and the publisher offer has been sent;
    /// media flows as soon as the publisher connection is up.
    pub async fn join(opts: ClientOptions) -> Result<Client, ClientError> {
        let url = url::Url::parse(&opts.url)?;
        let video = video_to_publish(&opts)?;

        let (ws, _) = tokio::time::timeout(
            opts.join_timeout,
            tokio_tungstenite::connect_async(opts.url.as_str()),
        )
        .await
        .map_err(|_| ClientError::Timeout("the websocket to connect"))?
        .map_err(Box::new)?;
        let (mut sink, mut stream) = ws.split();

        let join = ClientMessage::Join {
            version: PROTOCOL_VERSION,
            token: opts.token.clone(),
            auto_subscribe: opts.auto_subscribe,
            quality: opts.quality,
        };
        sink.send(Message::text(serde_json::to_string(&join)?))
            .await
            .map_err(Box::new)?;

        let joined = tokio::time::timeout(opts.join_timeout, async {
            while let Some(msg) = stream.next().await {
                let text = match msg.map_err(Box::new)? {
                    Message::Text(t) => t,
                    Message::Close(_) => return Err(ClientError::Closed),
                    _ => continue,
                };
                match serde_json::from_str::<ServerMessage>(text.as_str())? {
                    ServerMessage::Error { code, message } => {
                        return Err(ClientError::Rejected { code, message })
                    }
                    m @ ServerMessage::Joined { .. } => return Ok(m),
                    other => {
                        return Err(ClientError::Protocol(format!(
                            "expected joined, got {other:?}"
                        )))
                    }
                }
            }
            Err(ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout("joined"))??;
        let ServerMessage::Joined {
            room,
            participant,
            participants,
            ice_servers,
            version,
        } = joined
        else {
            return Err(ClientError::Protocol("expected joined".into()));
        };
        if version != PROTOCOL_VERSION {
            tracing::warn!(version, "server speaks another protocol version");
        }

        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut room_map = BTreeMap::new();
        for p in participants.iter().chain(std::iter::once(&participant)) {
            room_map.insert(p.id.clone(), p.clone());
        }
        let shared = Shared::new(out_tx, room_map, opts.decode_sample);

        let udp_addr = opts
            .udp_addr
            .clone()
            .unwrap_or_else(|| default_udp_addr(&url));
        let rtc_ice_servers: Vec<RTCIceServer> = ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();

        let subscriber = Arc::new(match &opts.engine {
            Some(engine) => {
                let bind = engine_bind_addr(&url, opts.udp_addr.as_deref()).await?;
                SubscriberConn::Engine(
                    engine
                        .open(Arc::clone(&shared), bind, opts.impairment)
                        .await?,
                )
            }
            None => {
                let mut sub_engine = MediaEngine::default();
                sub_engine.register_default_codecs()?;
                SubscriberConn::Own(
                    build_pc(
                        sub_engine,
                        &rtc_ice_servers,
                        &udp_addr,
                        Handler {
                            target: Target::Subscriber,
                            shared: Arc::clone(&shared),
                        },
                        Arc::clone(&shared.rtcp_sent),
                        opts.impairment,
                    )
                    .await?,
                )
            }
        });

        // Local tracks; the msid stream id is our participant id, like a browser would pick
        // any id, the server maps it via `publisher_track_id`.
        let local_tracks = local_tracks(&opts, video.as_ref());
        let (publisher, pending) = open_publisher(
            &opts,
            &url,
            &rtc_ice_servers,
            &udp_addr,
            video,
            &local_tracks,
            &participant.id,
            &shared,
        )
        .await?;
        let publisher = Arc::new(publisher);

        shared.spawn(write_signaling(sink, out_rx));
        let publishing = !local_tracks.is_empty();
        shared.spawn(read_signaling(
            stream,
            SignalingContext {
                shared: Arc::clone(&shared),
                publisher: Arc::clone(&publisher),
                subscriber: Arc::clone(&subscriber),
                events: opts.events.then_some(events_tx),
                pending_media: pending,
                pending_publisher: Vec::new(),
                pending_subscriber: Vec::new(),
            },
        ));

        if publishing {
            let sdp = publisher.offer().await?;
            shared.send(ClientMessage::Offer { sdp })?;
            shared.publisher_gate.open(&shared.out);
        }

        Ok(Client {
            room,
            participant,
            ice_servers,
            shared,
            events: events_rx,
            publisher,
            subscriber,
            local_tracks,
        })
    }

    /// My participant id.
    pub fn participant_id(&self) -> &str {
        &self.participant.id
    }

    /// The room's name.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// My participant as of `joined` (tracks published later appear in
    /// [`local_participant`](Self::local_participant)).
    pub fn joined_participant(&self) -> &ParticipantInfo {
        &self.participant
    }

    /// The ICE servers the server handed out.
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    /// My participant as the room currently sees it, tracks included.
    pub fn local_participant(&self) -> ParticipantInfo {
        lock(&self.shared.room)
            .get(&self.participant.id)
            .cloned()
            .unwrap_or_else(|| self.participant.clone())
    }

    /// Everyone else in the room, kept current from the room events.
    pub fn participants(&self) -> Vec<ParticipantInfo> {
        lock(&self.shared.room)
            .values()
            .filter(|p| p.id != self.participant.id)
            .cloned()
            .collect()
    }

    /// The next server message, in order. Every message is delivered except ICE candidates
    /// and pongs (the client handles those). SDP offers and answers are delivered after the
    /// client has applied them. `None` once the signaling connection is closed and drained.
    ///
    /// Messages queue without limit until read; a client that never reads them turns
    /// [`ClientOptions::events`] off, and then this returns `None` at once.
    pub async fn next_event(&mut self) -> Option<ServerMessage> {
        self.events.recv().await
    }

    /// Reads events until one matches `pred`, discarding the others.
    pub async fn wait_event<F>(
        &mut self,
        timeout: Duration,
        mut pred: F,
    ) -> Result<ServerMessage, ClientError>
    where
        F: FnMut(&ServerMessage) -> bool,
    {
        tokio::time::timeout(timeout, async {
            while let Some(ev) = self.events.recv().await {
                if pred(&ev) {
                    return Ok(ev);
                }
            }
            Err(ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout("a matching event"))?
    }

    /// Both peer connections' current state.
    pub fn connection_states(&self) -> ConnectionStates {
        *self.shared.states.borrow()
    }

    /// Waits until the publisher connection is connected (when publishing) and the
    /// subscriber connection is connected (once the server has offered it).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let publishing = !self.local_tracks.is_empty();
        let mut rx = self.shared.states.subscribe();
        let bad = |s: RTCPeerConnectionState| {
            matches!(
                s,
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            )
        };
        let states = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| {
                bad(s.publisher)
                    || bad(s.subscriber)
                    || ((!publishing || s.publisher == RTCPeerConnectionState::Connected)
                        && (s.subscriber_offers == 0
                            || s.subscriber == RTCPeerConnectionState::Connected))
            })
            .await
            .map(|s| *s)
            .map_err(|_| ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout("the peer connections to connect"))??;
        if bad(states.publisher) {
            return Err(ClientError::ConnectionFailed(
                Target::Publisher,
                states.publisher,
            ));
        }
        if bad(states.subscriber) {
            return Err(ClientError::ConnectionFailed(
                Target::Subscriber,
                states.subscriber,
            ));
        }
        Ok(())
    }

    /// Polls `pred` every 20 ms until it holds.
    pub async fn wait_until<F>(&self, timeout: Duration, mut pred: F) -> Result<(), ClientError>
    where
        F: FnMut(&Client) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(self) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout("a condition"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Per remote track, what has been received so far, in the order tracks appeared.
    pub fn received(&self) -> Vec<ReceivedTrackStats> {
        self.shared.received()
    }

    /// The tracks the latest subscriber offer carries in active media sections.
    pub fn offered_tracks(&self) -> Vec<OfferedTrack> {
        lock(&self.shared.offered).clone()
    }

    /// RTCP feedback sent so far (NACKs, PLIs, FIRs).
    pub fn rtcp_sent(&self) -> RtcpSentStats {
        self.shared.rtcp_sent()
    }

    /// Per published track, what has been sent so far.
    pub fn sent(&self) -> Vec<SentTrackStats> {
        self.local_tracks.iter().map(|t| t.stats()).collect()
    }

    /// Asks to receive these tracks.
    pub fn subscribe<I, S>(&self, track_ids: I) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let track_ids = track_ids.into_iter().map(Into::into).collect();
        self.shared.send(ClientMessage::Subscribe { track_ids })
    }

    /// Asks to stop receiving these tracks.
    pub fn unsubscribe<I, S>(&self, track_ids: I) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let track_ids = track_ids.into_iter().map(Into::into).collect();
        self.shared.send(ClientMessage::Unsubscribe { track_ids })
    }

    /// Chooses the simulcast layer received of these tracks (server track ids); the server
    /// switches on the layer's next keyframe.
    pub fn set_quality<I, S>(&self, track_ids: I, quality: Quality) -> Result<(), ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let track_ids = track_ids.into_iter().map(Into::into).collect();
        self.shared
            .send(ClientMessage::TrackSettings { track_ids, quality })
    }

    /// Stops (`false`) or resumes sending one simulcast encoding of my video, by `rid`, as a
    /// browser's `RTCRtpSender.setParameters` with `encodings[i].active` does (e.g. when its
    /// uplink cannot carry the top layer). Returns whether such an encoding exists.
    pub fn set_layer_active(&self, rid: &str, active: bool) -> bool {
        let mut found = false;
        for l in self
            .local_tracks
            .iter()
            .flat_map(|t| &t.layers)
            .filter(|l| !l.rid.is_empty() && l.rid == rid)
        {
            l.counters
                .paused
                .store(!active, std::sync::atomic::Ordering::Relaxed);
            found = true;
        }
        found
    }

    /// Mutes or unmutes one of my published tracks (server track id). When the room already
    /// knows which local track that is, sending media on it pauses while muted (audio keeps a
    /// silence frame every 400 ms, as Opus DTX does; the server forwards none of it).
    pub fn mute(&self, track_id: &str, muted: bool) -> Result<(), ClientError> {
        let local_id = self
            .local_participant()
            .tracks
            .into_iter()
            .find(|t| t.id == track_id)
            .map(|t| t.publisher_track_id);
        if let Some(local_id) = local_id {
            for t in self.local_tracks.iter().filter(|t| t.track_id == local_id) {
                t.set_paused(muted);
            }
        }
        self.shared.send(ClientMessage::Mute {
            track_id: track_id.to_owned(),
            muted,
        })
    }

    /// Sends a keep-alive ping (answered with a pong the client swallows).
    pub fn ping(&self) -> Result<(), ClientError> {
        self.shared.send(ClientMessage::Ping {
            timestamp: unix_millis(),
        })
    }

    /// Leaves the room: sends `leave`, closes the WebSocket and both peer connections.
    pub async fn leave(self) {
        let _ = self.shared.send(ClientMessage::Leave {});
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.shared.out.send(Outgoing::Close(ack_tx)).is_ok() {
            let _ = tokio::time::timeout(LEAVE_TIMEOUT, ack_rx).await;
        }
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
            self.publisher.close().await;
            self.subscriber.close().await;
        })
        .await;
        // Drop aborts the tasks.
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.abort_tasks();
        // Closing is async; do it in the background when a runtime is around. Closing an
        // already closed connection is harmless.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (publisher, subscriber) =
                (Arc::clone(&self.publisher), Arc::clone(&self.subscriber));
            rt.spawn(async move {
                publisher.close().await;
                subscriber.close().await;
            });
        }
    }
}

/// What to send on the video track: `None` when not publishing video.
fn video_to_publish(opts: &ClientOptions) -> Result<Option<VideoSource>, ClientError> {
    Ok(
        match (&opts.video_source, &opts.video_clip, opts.publish_video) {
            (_, _, false) => None,
            (Some(source), _, true) => Some(source.clone()),
            (None, Some(clip), true) => Some(VideoSource::Clip(Arc::clone(clip))),
            (None, None, true) => Some(VideoSource::Clip(Arc::new(IvfClip::parse(
                media::DEFAULT_VP8_CLIP,
            )?))),
        },
    )
}

/// The tracks to publish (audio, then video) with their encodings; none when not publishing.
fn local_tracks(opts: &ClientOptions, video: Option<&VideoSource>) -> Vec<Arc<LocalTrack>> {
    let mut tracks = Vec::new();
    if opts.publish_audio {
        let audio = LocalTrack::new(TrackKind::Audio, &[]);
        if opts.audio_muted {
            audio.set_paused(true);
        }
        tracks.push(Arc::new(audio));
    }
    if opts.publish_video {
        let rids = video.map(VideoSource::rids).unwrap_or_default();
        tracks.push(Arc::new(LocalTrack::new(TrackKind::Video, &rids)));
    }
    tracks
}

/// The publisher connection for `local_tracks`: on the engine when the client has one and
/// every source is pre-encoded (a loop the engine paces), else an async connection of its own
/// with the media to start once answered. No connection when there is nothing to publish.
#[allow(clippy::too_many_arguments)]
async fn open_publisher(
    opts: &ClientOptions,
    url: &url::Url,
    ice_servers: &[RTCIceServer],
    udp_addr: &str,
    video: Option<VideoSource>,
    local_tracks: &[Arc<LocalTrack>],
    stream_id: &str,
    shared: &Arc<Shared>,
) -> Result<(PublisherConn, Option<PendingMedia>), ClientError> {
    if local_tracks.is_empty() {
        return Ok((PublisherConn::None, None));
    }
    if let Some(engine) = &opts.engine {
        if let Some(tracks) = publish_loops(opts, video.as_ref(), local_tracks, stream_id) {
            let bind = engine_bind_addr(url, opts.udp_addr.as_deref()).await?;
            let conn = engine
                .open_publisher(Arc::clone(shared), bind, tracks)
                .await?;
            return Ok((PublisherConn::Engine(conn), None));
        }
    }
    let mut media_engine = MediaEngine::default();
    media_engine.register_codec(media::opus_codec(), RtpCodecKind::Audio)?;
    media_engine.register_codec(media::video_codec_for(video.as_ref()), RtpCodecKind::Video)?;
    let pc = build_pc(
        media_engine,
        ice_servers,
        udp_addr,
        Handler {
            target: Target::Publisher,
            shared: Arc::clone(shared),
        },
        Arc::clone(&shared.rtcp_sent),
        crate::impair::Impairment::default(),
    )
    .await?;
    let pending = add_transceivers(&pc, local_tracks, video, opts, stream_id, shared).await?;
    Ok((PublisherConn::Own(pc), Some(pending)))
}

/// The engine publisher's tracks: each local track's encodings with the loop it sends;
/// `None` when a source is encoded live.
fn publish_loops(
    opts: &ClientOptions,
    video: Option<&VideoSource>,
    local_tracks: &[Arc<LocalTrack>],
    stream_id: &str,
) -> Option<Vec<PublishTrack>> {
    local_tracks
        .iter()
        .map(|local| {
            let loops = match local.kind {
                TrackKind::Audio => vec![LoopSource::audio(&opts.audio_source)?],
                TrackKind::Video => LoopSource::video(video?)?,
            };
            if loops.len() != local.layers.len() {
                return None;
            }
            Some(PublishTrack {
                kind: local.kind,
                stream_id: stream_id.to_owned(),
                track_id: local.track_id.clone(),
                layers: local
                    .layers
                    .iter()
                    .zip(loops)
                    .map(|(layer, source)| PublishLayer {
                        rid: layer.rid.clone(),
                        ssrc: layer.ssrc,
                        counters: Arc::clone(&layer.counters),
                        source,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Adds a `sendonly` transceiver per local track (audio, then video) to `publisher`, with
/// `stream_id` as the msid stream id. Returns the media to start once the publisher
/// connection is answered.
async fn add_transceivers(
    publisher: &Arc<dyn PeerConnection>,
    local_tracks: &[Arc<LocalTrack>],
    video: Option<VideoSource>,
    opts: &ClientOptions,
    stream_id: &str,
    shared: &Arc<Shared>,
) -> Result<PendingMedia, ClientError> {
    let video_codec = media::video_codec_for(video.as_ref());
    let mut pending = PendingMedia {
        tracks: Vec::new(),
        video,
        audio: opts.audio_source.clone(),
    };
    for local in local_tracks {
        let track = local.sample_track(stream_id, &video_codec)?;
        // `sendonly`, as the protocol describes (a browser's addTrack would offer sendrecv).
        let transceiver = publisher
            .add_transceiver_from_track(
                Arc::clone(&track) as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![stream_id.to_owned()],
                    send_encodings: vec![],
                }),
            )
            .await?;
        let sender = transceiver
            .sender()
            .await?
            .ok_or_else(|| ClientError::Protocol("transceiver has no sender".into()))?;
        shared.spawn(media::read_local_rtcp(
            Arc::clone(&track),
            local
                .layers
                .iter()
                .map(|l| (l.ssrc, Arc::clone(&l.counters)))
                .collect(),
        ));
        pending.tracks.push(PendingTrack {
            local: Arc::clone(local),
            track,
            sender,
            transceiver,
        });
    }
    Ok(pending)
}

async fn build_pc(
    media_engine: MediaEngine,
    ice_servers: &[RTCIceServer],
    udp_addr: &str,
    handler: Handler,
    rtcp_sent: Arc<RtcpSent>,
    impairment: crate::impair::Impairment,
) -> Result<Arc<dyn PeerConnection>, ClientError> {
    let (media_engine, registry) =
        configure_stack(media_engine, handler.target, rtcp_sent, impairment)?;
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(ice_servers.to_vec())
        .build();
    let mut builder = PeerConnectionBuilder::new();
    if impairment.loss_percent > 0.0 {
        // Loss is injected below SRTP, on the socket: dropping after SRTP would make its replay
        // window reject the (same-index) retransmissions that repair the loss.
        builder = builder.with_runtime(crate::impair::lossy_runtime(impairment.loss_percent)?);
    }
    let pc = builder
        .with_configuration(config)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(handler))
        .with_udp_addrs(vec![udp_addr.to_owned()])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// The header extensions and interceptor chain of a client connection: the stack's defaults,
/// the capture stamps, and per role only the interceptors that have work there.
fn configure_stack(
    mut media_engine: MediaEngine,
    target: Target,
    rtcp_sent: Arc<RtcpSent>,
    impairment: crate::impair::Impairment,
) -> Result<(MediaEngine, Registry), ClientError> {
    let registry = match target {
        // Send-only: NACK responses, sender reports and transport-wide sequence numbers (a
        // browser's sender stamps them and the server answers with feedback, work a load test
        // must cause); nothing that only reads media (the default NACK generator, receiver
        // reports and transport-wide feedback are hops every sent packet would take for
        // nothing).
        Target::Publisher => {
            for parameter in ["", "pli"] {
                media_engine.register_feedback(
                    rtc::rtp_transceiver::rtp_sender::RTCPFeedback {
                        typ: "nack".to_owned(),
                        parameter: parameter.to_owned(),
                    },
                    RtpCodecKind::Video,
                );
            }
            let registry = Registry::new()
                .with(
                    rtc::interceptor::Slot::NackResponder,
                    rtc::interceptor::NackResponderBuilder::new().build(),
                )
                .with(
                    rtc::interceptor::Slot::SenderReport,
                    rtc::interceptor::SenderReportBuilder::new().build(),
                );
            rtc::peer_connection::configuration::interceptor_registry::configure_twcc_sender_only(
                registry,
                &mut media_engine,
            )?
        }
        Target::Subscriber => register_default_interceptors(Registry::new(), &mut media_engine)?,
    };
    register_measured_extensions(&mut media_engine)?;
    // Simulcast publishing: every packet names its track (mid) and encoding (rid).
    rtc::peer_connection::configuration::interceptor_registry::configure_simulcast_extension_headers(
        &mut media_engine,
    )?;
    // Each interceptor is a hop every packet takes through the chain (the bots' largest cost
    // after the stack itself): register only where it has work.
    let registry = match target {
        // Keyframe requests arrive for local tracks; VP9 is sent from here.
        Target::Publisher => registry
            .with(
                rtc::interceptor::Slot::from(crate::keyframe::SLOT),
                crate::keyframe::KeyframeRequestForwarder::default(),
            )
            .with(
                rtc::interceptor::Slot::from(crate::vp9::SLOT),
                crate::vp9::Vp9InterFrames::default(),
            ),
        // NACK and PLI go out from here.
        Target::Subscriber => registry.with(
            rtc::interceptor::Slot::from(crate::keyframe::COUNTER_SLOT),
            crate::keyframe::RtcpCounter::new(rtcp_sent),
        ),
    };
    Ok((media_engine, with_impairment(registry, impairment)))
}

/// Adds the impairment interceptor when there is an impairment.
fn with_impairment(registry: Registry, impairment: crate::impair::Impairment) -> Registry {
    if impairment.is_active() {
        registry.with(
            rtc::interceptor::Slot::from(crate::impair::SLOT),
            crate::impair::Impairer::new(impairment),
        )
    } else {
        registry
    }
}

/// The header extensions the client reads or writes: the capture stamps for latency
/// measurement (see `capture_clock`) and the audio level. Registered after the stack's own so
/// those keep their ids.
fn register_measured_extensions(media_engine: &mut MediaEngine) -> Result<(), ClientError> {
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        for uri in [
            crate::capture_clock::ABS_SEND_TIME_URI,
            crate::capture_clock::ABS_CAPTURE_TIME_URI,
        ] {
            media_engine.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                kind,
                None,
            )?;
        }
    }
    media_engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: media::AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    Ok(())
}

/// `127.0.0.1:0` for a loopback signaling host (the wildcard skips loopback interfaces), else
/// `0.0.0.0:0`.
fn default_udp_addr(url: &url::Url) -> String {
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    if loopback { "127.0.0.1:0" } else { "0.0.0.0:0" }.to_owned()
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn write_signaling(
    mut sink: futures::stream::SplitSink<WsStream, Message>,
    mut out: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut keepalive = tokio::time::interval(KEEPALIVE_INTERVAL);
    keepalive.tick().await;
    loop {
        let msg = tokio::select! {
            m = out.recv() => match m {
                Some(Outgoing::Message(m)) => m,
                Some(Outgoing::Close(ack)) => {
                    let _ = sink.close().await;
                    let _ = ack.send(());
                    return;
                }
                None => return,
            },
            _ = keepalive.tick() => ClientMessage::Ping { timestamp: unix_millis() },
        };
        let text = match serde_json::to_string(&msg) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode client message");
                continue;
            }
        };
        if let Err(e) = sink.send(Message::text(text)).await {
            tracing::debug!(error = %e, "signaling write failed");
            return;
        }
    }
}

struct SignalingContext {
    shared: Arc<Shared>,
    publisher: Arc<PublisherConn>,
    subscriber: Arc<SubscriberConn>,
    /// Where server messages go; `None` when [`ClientOptions::events`] is off.
    events: Option<mpsc::UnboundedSender<ServerMessage>>,
    pending_media: Option<PendingMedia>,
    /// Remote candidates that arrived before the connection's remote description.
    pending_publisher: Vec<RTCIceCandidateInit>,
    pending_subscriber: Vec<RTCIceCandidateInit>,
}

async fn read_signaling(
    mut stream: futures::stream::SplitStream<WsStream>,
    mut ctx: SignalingContext,
) {
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "signaling read failed");
                break;
            }
        };
        let msg = match serde_json::from_str::<ServerMessage>(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable server message");
                continue;
            }
        };
        if let Err(e) = ctx.handle(&msg).await {
            tracing::warn!(error = %e, "handling a server message failed");
        }
        if let (Some(events), false) = (
            &ctx.events,
            matches!(
                msg,
                ServerMessage::Candidate { .. } | ServerMessage::Pong { .. }
            ),
        ) {
            let _ = events.send(msg);
        }
    }
}

impl SignalingContext {
    async fn handle(&mut self, msg: &ServerMessage) -> Result<(), ClientError> {
        match msg {
            ServerMessage::Answer { sdp } => {
                self.publisher.apply_answer(sdp.clone()).await?;
                for c in std::mem::take(&mut self.pending_publisher) {
                    self.publisher.add_candidate(c).await;
                }
                self.shared
                    .states
                    .send_modify(|s| s.publisher_answered = true);
                if let Some(media) = self.pending_media.take() {
                    media.start(&self.shared);
                }
            }
            ServerMessage::Offer { sdp } => {
                self.shared.set_extension_ids(sdp);
                let answer = self.subscriber.answer(sdp.clone()).await?;
                self.shared.send(ClientMessage::Answer { sdp: answer })?;
                self.shared.subscriber_gate.open(&self.shared.out);
                *lock(&self.shared.offered) = offered_tracks(sdp);
                for c in std::mem::take(&mut self.pending_subscriber) {
                    self.subscriber.add_candidate(c).await;
                }
                self.shared.states.send_modify(|s| s.subscriber_offers += 1);
            }
            ServerMessage::Candidate { target, candidate } => {
                if candidate.candidate.is_empty() {
                    return Ok(());
                }
                let init = RTCIceCandidateInit {
                    candidate: candidate.candidate.clone(),
                    sdp_mid: candidate.sdp_mid.clone(),
                    sdp_mline_index: candidate.sdp_m_line_index,
                    username_fragment: candidate.username_fragment.clone(),
                    url: None,
                };
                let states = *self.shared.states.borrow();
                match target {
                    Target::Publisher if states.publisher_answered => {
                        self.publisher.add_candidate(init).await
                    }
                    Target::Publisher => self.pending_publisher.push(init),
                    Target::Subscriber if states.subscriber_offers > 0 => {
                        self.subscriber.add_candidate(init).await
                    }
                    Target::Subscriber => self.pending_subscriber.push(init),
                }
            }
            ServerMessage::ParticipantJoined { participant } => {
                lock(&self.shared.room).insert(participant.id.clone(), participant.clone());
            }
            ServerMessage::ParticipantLeft { participant_id } => {
                lock(&self.shared.room).remove(participant_id);
            }
            ServerMessage::TrackPublished {
                participant_id,
                track,
            } => {
                if let Some(p) = lock(&self.shared.room).get_mut(participant_id) {
                    p.tracks.retain(|t| t.id != track.id);
                    p.tracks.push(track.clone());
                }
            }
            ServerMessage::TrackUnpublished {
                participant_id,
                track_id,
            } => {
                if let Some(p) = lock(&self.shared.room).get_mut(participant_id) {
                    p.tracks.retain(|t| &t.id != track_id);
                }
            }
            ServerMessage::TrackMuted {
                participant_id,
                track_id,
                muted,
            } => {
                if let Some(p) = lock(&self.shared.room).get_mut(participant_id) {
                    for t in p.tracks.iter_mut().filter(|t| &t.id == track_id) {
                        t.muted = *muted;
                    }
                }
            }
            ServerMessage::Joined { .. } => {
                return Err(ClientError::Protocol("second joined".into()));
            }
            ServerMessage::Pong { .. } | ServerMessage::Error { .. } => {}
        }
        Ok(())
    }
}

async fn add_candidate(pc: &Arc<dyn PeerConnection>, init: RTCIceCandidateInit) {
    if let Err(e) = pc.add_ice_candidate(init).await {
        tracing::debug!(error = %e, "remote candidate rejected");
    }
}

/// The publisher connection: an async connection of its own, one on a shared
/// [`SharedEngine`], or none when there is nothing to publish.
enum PublisherConn {
    None,
    Own(Arc<dyn PeerConnection>),
    Engine(EngineConn),
}

impl PublisherConn {
    /// Our offer (set as the local description).
    async fn offer(&self) -> Result<String, ClientError> {
        match self {
            PublisherConn::None => Err(ClientError::Protocol("nothing to publish".into())),
            PublisherConn::Own(pc) => {
                let offer = pc.create_offer(None).await?;
                pc.set_local_description(offer.clone()).await?;
                Ok(offer.sdp)
            }
            PublisherConn::Engine(conn) => conn.offer().await,
        }
    }

    /// Applies the server's answer.
    async fn apply_answer(&self, sdp: String) -> Result<(), ClientError> {
        match self {
            PublisherConn::None => Err(ClientError::Protocol("an answer without an offer".into())),
            PublisherConn::Own(pc) => {
                pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
                    .await?;
                Ok(())
            }
            PublisherConn::Engine(conn) => conn.apply_answer(sdp).await,
        }
    }

    async fn add_candidate(&self, init: RTCIceCandidateInit) {
        match self {
            PublisherConn::None => {}
            PublisherConn::Own(pc) => add_candidate(pc, init).await,
            PublisherConn::Engine(conn) => conn.add_candidate(init),
        }
    }

    async fn close(&self) {
        match self {
            PublisherConn::None => {}
            PublisherConn::Own(pc) => {
                let _ = pc.close().await;
            }
            PublisherConn::Engine(conn) => conn.close(),
        }
    }
}

/// The subscriber connection: an async connection of its own, or one on a shared
/// [`SharedEngine`].
enum SubscriberConn {
    Own(Arc<dyn PeerConnection>),
    Engine(EngineConn),
}

impl SubscriberConn {
    /// Applies the server's offer; returns the answer.
    async fn answer(&self, sdp: String) -> Result<String, ClientError> {
        match self {
            SubscriberConn::Own(pc) => {
                pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
                    .await?;
                let answer = pc.create_answer(None).await?;
                pc.set_local_description(answer.clone()).await?;
                Ok(answer.sdp)
            }
            SubscriberConn::Engine(conn) => conn.answer(sdp).await,
        }
    }

    async fn add_candidate(&self, init: RTCIceCandidateInit) {
        match self {
            SubscriberConn::Own(pc) => add_candidate(pc, init).await,
            SubscriberConn::Engine(conn) => conn.add_candidate(init),
        }
    }

    async fn close(&self) {
        match self {
            SubscriberConn::Own(pc) => {
                let _ = pc.close().await;
            }
            SubscriberConn::Engine(conn) => conn.close(),
        }
    }
}

/// The address an engine connection's socket binds: `udp_addr` if given, else the local
/// address that routes to the signaling host (a host candidate must be a real address).
async fn engine_bind_addr(
    url: &url::Url,
    udp_addr: Option<&str>,
) -> Result<std::net::SocketAddr, ClientError> {
    if let Some(addr) = udp_addr {
        return addr
            .parse()
            .map_err(|_| ClientError::Protocol(format!("bad UDP address {addr:?}")));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ClientError::Protocol("signaling URL has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(80);
    let server = tokio::net::lookup_host((host, port))
        .await
        .map_err(ClientError::Io)?
        .next()
        .ok_or_else(|| ClientError::Protocol(format!("{host} does not resolve")))?;
    let probe = std::net::UdpSocket::bind(match server {
        std::net::SocketAddr::V4(_) => "0.0.0.0:0",
        std::net::SocketAddr::V6(_) => "[::]:0",
    })
    .map_err(ClientError::Io)?;
    // Connecting a UDP socket sends nothing; it only picks the route's source address.
    probe.connect(server).map_err(ClientError::Io)?;
    let mut local = probe.local_addr().map_err(ClientError::Io)?;
    local.set_port(0);
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_address_follows_the_signaling_host() {
        let parse = |s: &str| url::Url::parse(s).expect("url");
        assert_eq!(
            default_udp_addr(&parse("ws://127.0.0.1:1/ws")),
            "127.0.0.1:0"
        );
        assert_eq!(
            default_udp_addr(&parse("ws://localhost:1/ws")),
            "127.0.0.1:0"
        );
        assert_eq!(default_udp_addr(&parse("ws://[::1]:1/ws")), "127.0.0.1:0");
        assert_eq!(
            default_udp_addr(&parse("wss://sfu.example.com/ws")),
            "0.0.0.0:0"
        );
    }

    #[test]
    fn candidates_wait_for_the_gate() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let gate = CandidateGate::new(Target::Subscriber);
        let cand = |c: &str| IceCandidate {
            candidate: c.into(),
            sdp_mid: None,
            sdp_m_line_index: Some(0),
            username_fragment: None,
        };
        gate.send(cand("a"), &tx);
        assert!(rx.try_recv().is_err());
        gate.open(&tx);
        gate.send(cand("b"), &tx);
        gate.open(&tx);
        let mut got = Vec::new();
        while let Ok(Outgoing::Message(ClientMessage::Candidate { target, candidate })) =
            rx.try_recv()
        {
            assert_eq!(target, Target::Subscriber);
            got.push(candidate.candidate);
        }
        assert_eq!(got, vec!["a", "b"]);
    }
}
