//! The media plane's state machine, sans I/O: every peer connection, room, participant and
//! track, fed with datagrams, commands and the clock, producing datagrams to send.
//!
//! [`Core`] owns no socket, task or clock. The driver ([`crate::engine`]) feeds it
//! (`handle_datagram`, `handle_command`, `handle_timeout`), sends what
//! [`Core::take_transmits`] returns, and sleeps until [`Core::poll_timeout`]. Each input is
//! handed to the peer connection it belongs to; the core then drains that peer (datagrams to
//! send, events, received RTP/RTCP) and every peer the input touched (a forwarded packet
//! touches each subscriber). Tests and benchmarks drive it directly, without a network.
//!
//! Routing: a datagram from a known address goes to that address's peer; from an unknown one,
//! only a STUN check naming a known local ufrag is accepted, and its address is learned.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use rtc::data_channel::{RTCDataChannelId, RTCDataChannelMessage};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{
    RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit,
};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection};
use rtc::sansio::Protocol;
use rtc::sdp::extmap::{
    SDES_MID_URI, SDES_REPAIR_RTP_STREAM_ID_URI, SDES_RTP_STREAM_ID_URI, TRANSPORT_CC_URI,
};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, info_span, warn};

use crate::codec::VideoCodec;
use crate::metrics::{KindCounters, PathDrops};
use crate::munger::{Munged, RtpMunger};
use crate::peer::{add_local_candidates, build_peer_connection};
use crate::session::{
    CandidateInit, EngineStats, JoinRequest, Origin, ParticipantDesc, PeerRole, RoomEvent,
    TrackDesc, TrackKind,
};
use crate::simulcast::{
    order_rids, Decision, Layer, LayerSelector, Quality, LAYER_TIMEOUT, MAX_LAYERS,
};
use crate::vp8::{Vp8Descriptor, Vp8Munger};
use crate::{stun, MediaConfig, Metrics, SfuError};

/// Capacity of each participant's event queue; a client that falls this far behind is dropped.
const EVENT_QUEUE: usize = 256;
/// STUN checks kept per peer while its remote description is not known yet.
const MAX_EARLY_CHECKS: usize = 16;
/// Label of the data channel the server opens on each subscriber connection.
pub const DATA_CHANNEL_LABEL: &str = "chorus";
/// Largest relayed data message (the JSON envelope), in bytes: the default SCTP
/// `max-message-size` every browser accepts.
const MAX_DATA_MESSAGE: usize = 64 * 1024;

type Reply<T> = oneshot::Sender<Result<T, SfuError>>;

/// Requests from sessions to the engine.
pub(crate) enum Command {
    Join {
        request: JoinRequest,
        reply: Reply<Joined>,
    },
    PublisherOffer {
        participant: u64,
        sdp: String,
        reply: Reply<String>,
    },
    SubscriberAnswer {
        participant: u64,
        sdp: String,
        reply: Reply<()>,
    },
    PlaybackOffer {
        participant: u64,
        sdp: String,
        identity: Option<String>,
        reply: Reply<String>,
    },
    Candidate {
        participant: u64,
        role: PeerRole,
        candidate: CandidateInit,
        reply: Reply<()>,
    },
    Subscribe {
        participant: u64,
        track_ids: Vec<String>,
        subscribe: bool,
        reply: Reply<()>,
    },
    SetQuality {
        participant: u64,
        track_ids: Vec<String>,
        quality: Quality,
        reply: Reply<()>,
    },
    Mute {
        participant: u64,
        track_id: String,
        muted: bool,
        reply: Reply<()>,
    },
    Leave {
        participant: u64,
    },
    Stats {
        reply: oneshot::Sender<EngineStats>,
    },
}

/// What a successful join returns.
pub struct Joined {
    /// The participant's key in the core.
    pub key: u64,
    /// The participant as the room sees it.
    pub me: ParticipantDesc,
    /// Everyone else in the room.
    pub others: Vec<ParticipantDesc>,
    /// Room events for this participant.
    pub events: mpsc::Receiver<RoomEvent>,
}

type PeerKey = u64;
type ParticipantKey = u64;
type TrackKey = u64;

/// One sans-IO peer connection and what the engine knows about it.
struct Peer {
    pc: RTCPeerConnection,
    participant: ParticipantKey,
    role: PeerRole,
    ufrag: String,
    addrs: Vec<SocketAddr>,
    connected: bool,
    candidates_added: bool,
    /// Publisher: how many tracks the client's offer announced.
    expected_inbound: usize,
    /// Publisher: the rtc track id of each inbound track -> published track.
    inbound: HashMap<String, TrackKey>,
    /// Subscriber: the local track id of each downtrack -> published track.
    outbound: HashMap<String, TrackKey>,
    /// Subscriber: an offer is out and its answer has not come back.
    awaiting_answer: bool,
    /// Subscriber: something changed while an offer was out.
    renegotiate: bool,
    /// Subscriber: when the last offer went out.
    last_offer: Option<Instant>,
    /// Subscriber: a change is waiting for the offer window to pass (see `offer_interval`).
    offer_due: Option<Instant>,
    /// STUN checks that arrived before the remote description (a client starts checking as
    /// soon as it has answered, racing its answer over the WebSocket); replayed once it is
    /// applied instead of being rejected and retried by the client much later.
    early_checks: Vec<(SocketAddr, BytesMut)>,
    /// Whether the remote description (so the client's ICE credentials) is known.
    remote_known: bool,
    /// Subscriber: the server's `chorus` data channel, once open.
    data_channel: Option<RTCDataChannelId>,
    /// Timer entry in the engine's timer set.
    timer: Option<Instant>,
    dirty: bool,
}

struct Participant {
    id: String,
    identity: String,
    name: String,
    room: String,
    request: JoinRequest,
    publisher: Option<PeerKey>,
    subscriber: Option<PeerKey>,
    events: Option<mpsc::Sender<RoomEvent>>,
    published: Vec<TrackKey>,
    subscriptions: Vec<TrackKey>,
    /// The quality asked for per track (absent: [`Quality::High`]), kept across
    /// unsubscribing and subscribing again.
    qualities: HashMap<TrackKey, Quality>,
    join_started: Instant,
    join_reported: bool,
}

/// A subscriber's copy of a published track.
struct DownTrack {
    participant: ParticipantKey,
    peer: PeerKey,
    sender: RTCRtpSenderId,
    munger: RtpMunger,
    /// Set once the subscriber's answer covering this downtrack is applied.
    negotiated: bool,
    /// The layer forwarded and the one wanted. Video starts (and switches layer) only on a
    /// keyframe, so the decoder starts clean.
    selector: LayerSelector,
    /// When the last packet was forwarded: a layer switch continues timestamps from there.
    last_forward: Option<Instant>,
    /// The next forwarded packet continues the numbering after a pause (the track was muted
    /// and its packets dropped), so the subscriber sees no gap to NACK.
    rebase: bool,
    /// VP8 picture id / TL0PICIDX continuity across layer switches.
    vp8: Vp8Munger,
    /// Resolved on the first packet after negotiation.
    params: Option<LegParams>,
}

/// Header mappings from the publisher's leg to one subscriber's leg.
struct LegParams {
    /// The SSRC the sender currently sends with (the stack may renumber on renegotiation).
    ssrc: u32,
    /// Incoming payload type -> outgoing payload type.
    pt: Vec<(u8, u8)>,
    /// Incoming extension id -> outgoing extension id.
    ext: Vec<(u8, u8)>,
    /// The `sdes:mid` extension id and value on the subscriber's leg.
    mid: Option<(u8, bytes::Bytes)>,
}

struct PublishedTrack {
    id: String,
    kind: TrackKind,
    publisher: ParticipantKey,
    peer: PeerKey,
    receiver: RTCRtpReceiverId,
    codec: RTCRtpCodec,
    /// Payload type -> MIME type on the publisher's leg.
    pt_mime: Vec<(u8, String, String)>,
    /// Extension id -> URI on the publisher's leg.
    ext_uri: Vec<(u8, String)>,
    publisher_track_id: String,
    /// Set for video codecs whose keyframes we recognise.
    video_codec: Option<VideoCodec>,
    /// The encodings, lowest quality first: one without simulcast, one per `rid` with it.
    layers: Vec<Layer>,
    muted: bool,
    counters: KindCounters,
    downtracks: Vec<DownTrack>,
}

impl PublishedTrack {
    fn desc(&self) -> TrackDesc {
        TrackDesc {
            id: self.id.clone(),
            kind: self.kind,
            mime_type: self.codec.mime_type.clone(),
            publisher_track_id: self.publisher_track_id.clone(),
            muted: self.muted,
            layers: if self.layers.len() > 1 {
                self.layers.iter().map(|l| l.rid.clone()).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The layer index of a packet's SSRC, binding a simulcast layer's SSRC on its first
    /// packet (the stack has matched it to its `rid` by then).
    fn layer_of(&mut self, ssrc: u32, pc: Option<&mut RTCPeerConnection>) -> Option<u8> {
        if let Some(i) = self.layers.iter().position(|l| l.ssrc == ssrc) {
            return Some(i as u8);
        }
        let rid = if self.layers.len() == 1 && self.layers[0].rid.is_empty() {
            String::new()
        } else {
            let receiver = pc?.rtp_receiver(self.receiver)?;
            receiver.track().rid(ssrc)?.to_owned()
        };
        let i = self
            .layers
            .iter()
            .position(|l| l.rid == rid && l.ssrc == 0)?;
        self.layers[i].ssrc = ssrc;
        Some(i as u8)
    }
}

#[derive(Default)]
struct Room {
    participants: Vec<ParticipantKey>,
    /// Tracks in publication order (most recent last).
    tracks: Vec<TrackKey>,
}

/// The media plane's state. See the module docs.
pub struct Core {
    advertised: Vec<SocketAddr>,
    config: MediaConfig,
    metrics: Metrics,
    drops: PathDrops,
    next_key: u64,
    peers: HashMap<PeerKey, Peer>,
    by_addr: HashMap<SocketAddr, PeerKey>,
    by_ufrag: HashMap<String, PeerKey>,
    participants: HashMap<ParticipantKey, Participant>,
    tracks: HashMap<TrackKey, PublishedTrack>,
    track_ids: HashMap<String, TrackKey>,
    rooms: HashMap<String, Room>,
    timers: BTreeSet<(Instant, PeerKey)>,
    dirty: Vec<PeerKey>,
    outbox: Vec<(SocketAddr, BytesMut)>,
    /// Scratch for messages drained from one peer before they are acted on.
    reads: Vec<RTCMessage>,
    events: Vec<RTCPeerConnectionEvent>,
}

fn random_id(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 12)
    )
}

impl Core {
    /// A core whose media socket is bound at `local_addr`.
    pub fn new(config: MediaConfig, metrics: Metrics, local_addr: SocketAddr) -> Core {
        let advertised = config.advertised_addrs(local_addr);
        Core {
            advertised,
            config,
            drops: PathDrops::new(&metrics),
            metrics,
            next_key: 1,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            participants: HashMap::new(),
            tracks: HashMap::new(),
            track_ids: HashMap::new(),
            rooms: HashMap::new(),
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            outbox: Vec::new(),
            reads: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The addresses written into our ICE candidates.
    pub fn advertised(&self) -> &[SocketAddr] {
        &self.advertised
    }

    /// The earliest instant [`Core::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Drains every peer touched by a direct call ([`Core::join`], [`Core::publisher_offer`],
    /// [`Core::subscriber_answer`]); the `handle_*` inputs do this themselves.
    pub fn drain(&mut self) {
        self.drain_dirty();
    }

    /// Moves every datagram waiting to be sent into `out` (which is cleared first).
    pub fn take_transmits(&mut self, out: &mut Vec<(SocketAddr, BytesMut)>) {
        out.clear();
        std::mem::swap(out, &mut self.outbox);
    }

    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn drop_reason(&self, reason: &str) {
        self.metrics.dropped.with_label_values(&[reason]).inc();
    }

    /// Handles one datagram received on the media socket from `from`.
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8], from: SocketAddr) {
        self.route_datagram(now, data, from);
        self.drain_dirty();
    }

    fn route_datagram(&mut self, now: Instant, data: &[u8], from: SocketAddr) {
        self.metrics.udp_datagrams_in.inc();
        let is_stun = stun::classify(data) == stun::DatagramKind::Stun;
        let routed = if is_stun {
            // A check names its peer: follow it even from a known address (NAT rebinding).
            stun::local_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied())
        } else {
            None
        };
        let key = match (routed, self.by_addr.get(&from).copied()) {
            (Some(key), known) => {
                if known != Some(key) {
                    self.learn_addr(key, from);
                }
                key
            }
            (None, Some(key)) => key,
            (None, None) => {
                self.drop_reason(if is_stun {
                    "unknown_ufrag"
                } else {
                    "unknown_source"
                });
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            self.drop_reason("unknown_source");
            return;
        };
        if is_stun && !peer.remote_known {
            if peer.early_checks.len() < MAX_EARLY_CHECKS {
                peer.early_checks.push((from, BytesMut::from(data)));
            } else {
                self.drop_reason("early_check");
            }
            return;
        }
        self.read_into_peer(now, key, from, BytesMut::from(data));
    }

    /// Hands one datagram to a peer connection.
    fn read_into_peer(&mut self, now: Instant, key: PeerKey, from: SocketAddr, data: BytesMut) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                // ICE matches this against our candidate, so it is the advertised address
                // (the socket may be bound to 0.0.0.0, or sit behind 1:1 NAT).
                local_addr: self.advertised[0],
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: data,
        };
        // A panic inside the WebRTC stack on hostile input must not take every room down:
        // contain it to the peer that sent the datagram, whose state is no longer trusted.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| peer.pc.handle_read(msg)));
        match read {
            Ok(Ok(())) => self.mark_dirty(key),
            Ok(Err(e)) => {
                debug!(%from, "datagram rejected: {e}");
                self.metrics.dropped.with_label_values(&["malformed"]).inc();
                self.mark_dirty(key);
            }
            Err(_) => {
                error!(%from, "the WebRTC stack panicked on a datagram; dropping its participant");
                self.metrics
                    .dropped
                    .with_label_values(&["stack_panic"])
                    .inc();
                let participant = peer.participant;
                self.remove_participant(participant, "internal error on malformed input");
            }
        }
    }

    fn learn_addr(&mut self, key: PeerKey, addr: SocketAddr) {
        if let Some(old) = self.by_addr.insert(addr, key) {
            if let Some(p) = self.peers.get_mut(&old) {
                p.addrs.retain(|a| *a != addr);
            }
        }
        if let Some(p) = self.peers.get_mut(&key) {
            p.addrs.push(addr);
        }
    }

    /// Runs every peer timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timers(now);
        self.drain_dirty();
    }

    fn handle_timers(&mut self, now: Instant) {
        while let Some(&(t, key)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, key));
            let mut offer_for = None;
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.timer = None;
                if let Err(e) = peer.pc.handle_timeout(now) {
                    debug!("peer timeout error: {e}");
                }
                if peer.offer_due.is_some_and(|t| t <= now) {
                    peer.offer_due = None;
                    offer_for = Some(peer.participant);
                }
                self.mark_dirty(key);
            }
            if let Some(participant) = offer_for {
                self.negotiate(now, participant);
            }
        }
    }

    fn mark_dirty(&mut self, key: PeerKey) {
        if let Some(peer) = self.peers.get_mut(&key) {
            if !peer.dirty {
                peer.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Drains every peer touched since the last call, and every peer that touched.
    fn drain_dirty(&mut self) {
        // One clock read per input, not one per touched peer.
        let now = Instant::now();
        while let Some(key) = self.dirty.pop() {
            self.drain_peer(now, key);
        }
    }

    fn drain_peer(&mut self, now: Instant, key: PeerKey) {
        let mut reads = std::mem::take(&mut self.reads);
        let mut events = std::mem::take(&mut self.events);
        {
            let Some(peer) = self.peers.get_mut(&key) else {
                return;
            };
            peer.dirty = false;
            while let Some(out) = peer.pc.poll_write() {
                self.outbox.push((out.transport.peer_addr, out.message));
            }
            while let Some(ev) = peer.pc.poll_event() {
                events.push(ev);
            }
            while let Some(msg) = peer.pc.poll_read() {
                reads.push(msg.message);
            }
            let next = match (peer.pc.poll_timeout(), peer.offer_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if next != peer.timer {
                if let Some(old) = peer.timer.take() {
                    self.timers.remove(&(old, key));
                }
                if let Some(t) = next {
                    self.timers.insert((t, key));
                }
                peer.timer = next;
            }
        }
        for ev in events.drain(..) {
            self.on_peer_event(now, key, ev);
        }
        for msg in reads.drain(..) {
            self.on_peer_message(now, key, msg);
        }
        self.reads = reads;
        self.events = events;
    }

    fn on_peer_event(&mut self, now: Instant, key: PeerKey, ev: RTCPeerConnectionEvent) {
        match ev {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(peer) = self.peers.get_mut(&key) else {
                    return;
                };
                let participant = peer.participant;
                let role = peer.role;
                debug!(?role, %state, "peer connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        peer.connected = true;
                        if let Some(p) = self.participants.get_mut(&participant) {
                            if !p.join_reported {
                                p.join_reported = true;
                                self.metrics
                                    .join_latency
                                    .observe(p.join_started.elapsed().as_secs_f64());
                            }
                        }
                        if role == PeerRole::Subscriber {
                            // Anything sent before the connection came up was dropped.
                            let subs = self
                                .participants
                                .get(&participant)
                                .map(|p| p.subscriptions.clone())
                                .unwrap_or_default();
                            for tk in subs {
                                self.downtrack_keyframe(now, tk, key);
                            }
                        }
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        peer.connected = false;
                        self.remove_participant(participant, "connection failed");
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                if let Some(peer) = self.peers.get_mut(&key) {
                    if peer.role == PeerRole::Subscriber {
                        peer.data_channel = Some(id);
                    }
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(id)) => {
                if let Some(peer) = self.peers.get_mut(&key) {
                    if peer.data_channel == Some(id) {
                        peer.data_channel = None;
                    }
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.publish_track(now, key, init);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                let tk = self
                    .peers
                    .get_mut(&key)
                    .and_then(|p| p.inbound.remove(&track_id));
                if let Some(tk) = tk {
                    self.unpublish_track(tk);
                }
            }
            _ => {}
        }
    }

    fn on_peer_message(&mut self, now: Instant, key: PeerKey, msg: RTCMessage) {
        match msg {
            RTCMessage::RtpPacket(track_id, packet) => self.forward(now, key, &track_id, packet),
            RTCMessage::DataChannelMessage(_, msg) => self.relay_data(now, key, msg),
            RTCMessage::RtcpPacket(track_id, _packets) => {
                // Only keyframe requests are delivered here (see `feedback`): relay them.
                let tk = self
                    .peers
                    .get(&key)
                    .and_then(|p| p.outbound.get(&track_id))
                    .copied();
                if let Some(tk) = tk {
                    self.downtrack_keyframe(now, tk, key);
                }
            }
            _ => {}
        }
    }

    /// The packet path: one publisher packet to every downtrack of its track.
    fn forward(&mut self, now: Instant, key: PeerKey, track_id: &str, packet: rtc::rtp::Packet) {
        let Some(tk) = self
            .peers
            .get(&key)
            .and_then(|p| p.inbound.get(track_id))
            .copied()
        else {
            self.drop_reason("unknown_track");
            return;
        };
        let Some(track) = self.tracks.get_mut(&tk) else {
            return;
        };
        if track.muted {
            // What a muted track still sends (comfort noise, black frames) reaches nobody.
            self.drops.muted.inc();
            return;
        }
        let publisher_pc = self.peers.get_mut(&key).map(|p| &mut p.pc);
        let Some(layer) = track.layer_of(packet.header.ssrc, publisher_pc) else {
            // An SSRC the negotiated layers do not account for.
            self.drops.other_layer.inc();
            return;
        };
        track.counters.packets_in.inc();
        track.counters.bytes_in.inc_by(packet.payload.len() as u64);
        // Simulcast: which layers are flowing, so a downtrack whose layer paused falls back.
        let flowing = if track.layers.len() > 1 {
            track.layers[usize::from(layer)].last_packet = Some(now);
            track
                .layers
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    l.last_packet
                        .is_some_and(|t| now.saturating_duration_since(t) < LAYER_TIMEOUT)
                })
                .fold(0u8, |m, (i, _)| m | (1 << i))
        } else {
            0
        };
        let mut wanted_keyframe = false;
        // Whether this packet starts a keyframe: worked out at most once, and only when a
        // downtrack waits for one.
        let mut keyframe: Option<bool> = None;
        let video_codec = track.video_codec;
        let clock_rate = track.codec.clock_rate;
        let vp8 = (video_codec == Some(VideoCodec::Vp8))
            .then(|| Vp8Descriptor::parse(&packet.payload))
            .flatten();
        for dt in &mut track.downtracks {
            let Some(sub) = self.peers.get_mut(&dt.peer) else {
                continue;
            };
            if !sub.connected || !dt.negotiated {
                self.drops.not_ready.inc();
                continue;
            }
            if dt.params.is_none() {
                // Once per negotiation; a video downtrack that still waits for its first
                // keyframe asks for one below.
                dt.params = resolve_leg(&mut sub.pc, dt.sender, &track.pt_mime, &track.ext_uri);
            }
            let Some(params) = &dt.params else {
                self.drops.not_negotiated.inc();
                continue;
            };
            let Some(&(_, out_pt)) = params
                .pt
                .iter()
                .find(|(i, _)| *i == packet.header.payload_type)
            else {
                self.drops.unknown_payload_type.inc();
                continue;
            };
            dt.selector.retarget(flowing);
            let decision = dt.selector.decide(layer, || {
                *keyframe.get_or_insert_with(|| {
                    video_codec.is_some_and(|c| c.starts_keyframe(&packet.payload))
                })
            });
            // A new source (another layer, or the same one after a pause) continues the
            // numbering where the subscriber's stream left off.
            let new_source = match decision {
                Decision::Forward => std::mem::take(&mut dt.rebase),
                Decision::Switch => {
                    dt.rebase = false;
                    self.metrics.layer_switches.inc();
                    true
                }
                Decision::WantKeyframe | Decision::Skip => false,
            };
            if new_source {
                let gap = dt.last_forward.map_or(1, |t| {
                    let ticks =
                        now.saturating_duration_since(t).as_secs_f64() * f64::from(clock_rate);
                    ticks as u32
                });
                dt.munger.switch_source(gap);
                if let Some(d) = &vp8 {
                    dt.vp8.switch_source(d);
                }
            }
            match decision {
                Decision::Forward | Decision::Switch => {}
                Decision::WantKeyframe => {
                    self.drops.waiting_keyframe.inc();
                    wanted_keyframe = true;
                    continue;
                }
                Decision::Skip => continue,
            }
            let (seq, timestamp) = match dt
                .munger
                .munge(packet.header.sequence_number, packet.header.timestamp)
            {
                Munged::Forward { seq, timestamp } => (seq, timestamp),
                Munged::TooOld => {
                    self.drops.too_old.inc();
                    continue;
                }
            };
            let out = rtc::rtp::Packet {
                header: downtrack_header(
                    &packet.header,
                    params,
                    params.ssrc,
                    out_pt,
                    seq,
                    timestamp,
                ),
                // Shared, not copied, unless a layer switch made this downtrack's VP8 picture
                // ids differ from the publisher's.
                payload: match &vp8 {
                    Some(d) => dt.vp8.munge(d, &packet.payload),
                    None => packet.payload.clone(),
                },
            };
            let bytes = out.payload.len() as u64;
            let written = sub
                .pc
                .rtp_sender(dt.sender)
                .map(|mut s| s.write_rtp(now, out));
            match written {
                Some(Ok(())) => {
                    dt.last_forward = Some(now);
                    track.counters.packets_out.inc();
                    track.counters.bytes_out.inc_by(bytes);
                    if !sub.dirty {
                        sub.dirty = true;
                        self.dirty.push(dt.peer);
                    }
                }
                Some(Err(e)) => {
                    // The leg no longer accepts what we resolved (its payload types or
                    // extension ids changed): resolve again on the next packet.
                    debug!(track = %track.id, "write_rtp refused: {e}");
                    dt.params = None;
                    self.drops.write_failed.inc();
                }
                None => self.drops.write_failed.inc(),
            }
        }
        if wanted_keyframe {
            self.request_keyframe(now, tk, layer);
        }
    }

    /// Relays a data message from a publisher connection to everyone else in the room, wrapped
    /// in a JSON envelope naming the sender.
    fn relay_data(&mut self, now: Instant, key: PeerKey, msg: RTCDataChannelMessage) {
        let Some(peer) = self.peers.get(&key) else {
            return;
        };
        if peer.role != PeerRole::Publisher {
            self.drop_reason("data_on_subscriber");
            return;
        }
        let sender = peer.participant;
        let Some(p) = self.participants.get(&sender) else {
            return;
        };
        if !p.request.permissions.publish_data {
            self.drop_reason("data_not_permitted");
            return;
        }

        if msg.data.len() > MAX_DATA_MESSAGE {
            self.drop_reason("data_too_large");
            return;
        }
        let envelope = if msg.is_string {
            match std::str::from_utf8(&msg.data) {
                Ok(text) => serde_json::json!({ "from": p.id, "text": text }),
                Err(_) => {
                    self.drop_reason("data_malformed");
                    return;
                }
            }
        } else {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&msg.data);
            serde_json::json!({ "from": p.id, "binary": b64 })
        }
        .to_string();
        // The envelope is what must fit the receivers' SCTP message size (RFC 8841 default).
        if envelope.len() > MAX_DATA_MESSAGE {
            self.drop_reason("data_too_large");
            return;
        }
        self.metrics.data_messages.with_label_values(&["in"]).inc();
        let members = self.room_members(&p.room);
        for m in members {
            if m == sender {
                continue;
            }
            let Some(sub) = self.participants.get(&m).and_then(|p| p.subscriber) else {
                continue;
            };
            let Some(peer) = self.peers.get_mut(&sub) else {
                continue;
            };
            let Some(dc) = peer.data_channel else {
                self.drop_reason("data_channel_not_open");
                continue;
            };
            let sent = peer
                .pc
                .data_channel(dc)
                .map(|mut c| c.send_text(now, envelope.clone()));
            match sent {
                Some(Ok(())) => {
                    self.metrics.data_messages.with_label_values(&["out"]).inc();
                    self.mark_dirty(sub);
                }
                _ => self.drop_reason("data_send_failed"),
            }
        }
    }

    /// Asks the publisher of `tk` for a keyframe, at most once per throttle interval.
    /// Asks for a keyframe of the layer the downtrack of `tk` on subscriber peer `peer`
    /// forwards (or wants, if it forwards nothing yet).
    fn downtrack_keyframe(&mut self, now: Instant, tk: TrackKey, peer: PeerKey) {
        let layer = self.tracks.get(&tk).and_then(|t| {
            t.downtracks
                .iter()
                .find(|d| d.peer == peer)
                .map(|d| d.selector.current().unwrap_or(d.selector.target()))
        });
        if let Some(layer) = layer {
            self.request_keyframe(now, tk, layer);
        }
    }

    fn request_keyframe(&mut self, now: Instant, tk: TrackKey, layer: u8) {
        let Some(track) = self.tracks.get_mut(&tk) else {
            return;
        };
        if track.kind != TrackKind::Video {
            return;
        }
        let Some(l) = track.layers.get_mut(usize::from(layer)) else {
            return;
        };
        if l.ssrc == 0 || !l.throttle.request(now) {
            return;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: l.ssrc,
        };
        let peer_key = track.peer;
        if let Some(peer) = self.peers.get_mut(&peer_key) {
            if let Some(mut receiver) = peer.pc.rtp_receiver(track.receiver) {
                if let Err(e) = receiver.write_rtcp(now, vec![Box::new(pli)]) {
                    debug!("PLI write failed: {e}");
                }
            }
            self.mark_dirty(peer_key);
        }
    }

    fn send_event(&mut self, participant: ParticipantKey, event: RoomEvent) {
        let Some(p) = self.participants.get_mut(&participant) else {
            return;
        };
        if p.request.origin != Origin::WebSocket {
            return; // WHIP/WHEP sessions hear only `Closed`, sent on removal
        }
        let Some(tx) = &p.events else { return };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => p.events = None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(participant = %p.id, "event queue full, dropping slow participant");
                self.remove_participant(participant, "too slow to read room events");
            }
        }
    }

    fn broadcast(&mut self, room: &str, except: Option<ParticipantKey>, event: RoomEvent) {
        let members = self.room_members(room);
        for m in members {
            if Some(m) != except {
                self.send_event(m, event.clone());
            }
        }
    }

    /// A snapshot of a room's participants (empty for an unknown room), to iterate while
    /// mutating the engine.
    fn room_members(&self, room: &str) -> Vec<ParticipantKey> {
        self.rooms
            .get(room)
            .map(|r| r.participants.clone())
            .unwrap_or_default()
    }

    fn participant_desc(&self, key: ParticipantKey) -> Option<ParticipantDesc> {
        let p = self.participants.get(&key)?;
        Some(ParticipantDesc {
            id: p.id.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            tracks: p
                .published
                .iter()
                .filter_map(|t| self.tracks.get(t))
                .map(|t| t.desc())
                .collect(),
        })
    }

    /// Handles one command from a session.
    pub(crate) fn handle_command(&mut self, command: Command) {
        self.apply_command(command);
        self.drain_dirty();
    }

    fn apply_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Join { request, reply } => {
                let _ = reply.send(self.join(now, request));
            }
            Command::PublisherOffer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.publisher_offer(now, participant, sdp));
            }
            Command::SubscriberAnswer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.subscriber_answer(now, participant, sdp));
            }
            Command::PlaybackOffer {
                participant,
                sdp,
                identity,
                reply,
            } => {
                let _ = reply.send(self.playback_offer(now, participant, sdp, identity));
            }
            Command::Candidate {
                participant,
                role,
                candidate,
                reply,
            } => {
                let _ = reply.send(self.add_candidate(participant, role, candidate));
            }
            Command::Subscribe {
                participant,
                track_ids,
                subscribe,
                reply,
            } => {
                let _ = reply.send(self.set_subscribed(now, participant, track_ids, subscribe));
            }
            Command::SetQuality {
                participant,
                track_ids,
                quality,
                reply,
            } => {
                let _ = reply.send(self.set_quality(now, participant, track_ids, quality));
            }
            Command::Mute {
                participant,
                track_id,
                muted,
                reply,
            } => {
                let _ = reply.send(self.mute(participant, track_id, muted));
            }
            Command::Leave { participant } => self.remove_participant(participant, "left"),
            Command::Stats { reply } => {
                let _ = reply.send(EngineStats {
                    rooms: self.rooms.len(),
                    participants: self.participants.len(),
                    peers: self.peers.len(),
                    tracks: self.tracks.len(),
                });
            }
        }
    }

    fn new_peer(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        role: PeerRole,
    ) -> Result<PeerKey, SfuError> {
        let ufrag = Alphanumeric.sample_string(&mut rand::rng(), 16);
        let pwd = Alphanumeric.sample_string(&mut rand::rng(), 32);
        let pc = build_peer_connection(&ufrag, &pwd, &self.metrics, now)?;
        let key = self.key();
        self.by_ufrag.insert(ufrag.clone(), key);
        self.peers.insert(
            key,
            Peer {
                pc,
                participant,
                role,
                ufrag,
                addrs: Vec::new(),
                connected: false,
                candidates_added: false,
                expected_inbound: 0,
                inbound: HashMap::new(),
                outbound: HashMap::new(),
                awaiting_answer: false,
                renegotiate: false,
                last_offer: None,
                offer_due: None,
                data_channel: None,
                early_checks: Vec::new(),
                remote_known: false,
                timer: None,
                dirty: false,
            },
        );
        Ok(key)
    }

    /// See [`crate::SessionHandle`].
    pub fn join(&mut self, now: Instant, request: JoinRequest) -> Result<Joined, SfuError> {
        let room_len = self.rooms.get(&request.room).map(|r| r.participants.len());
        // A second join with the same identity replaces the first (a reconnecting client).
        let replaced = self.rooms.get(&request.room).and_then(|r| {
            r.participants.iter().copied().find(|k| {
                self.participants
                    .get(k)
                    .is_some_and(|p| p.identity == request.identity)
            })
        });
        match room_len {
            None if self.rooms.len() >= self.config.max_rooms => return Err(SfuError::RoomFull),
            Some(n) if n >= self.config.max_participants_per_room && replaced.is_none() => {
                return Err(SfuError::RoomFull)
            }
            _ => {}
        }
        if let Some(old) = replaced {
            self.remove_participant(old, "replaced by a new connection with the same identity");
        }
        let key = self.key();
        let id = random_id("PA_");
        let span = info_span!("participant", room = %request.room, participant = %id);
        let _enter = span.enter();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let events = Some(tx);
        let publisher = if request.permissions.publish && request.origin != Origin::Whep {
            Some(self.new_peer(now, key, PeerRole::Publisher)?)
        } else {
            None
        };
        let subscriber = if request.permissions.subscribe && request.origin != Origin::Whip {
            match self.new_peer(now, key, PeerRole::Subscriber) {
                Ok(k) => Some(k),
                Err(e) => {
                    if let Some(p) = publisher {
                        self.remove_peer(p);
                    }
                    return Err(e);
                }
            }
        } else {
            None
        };
        if let (Some(sub), Origin::WebSocket) = (subscriber, request.origin) {
            // Relayed data messages reach the client on this channel.
            if let Some(peer) = self.peers.get_mut(&sub) {
                if let Err(e) = peer.pc.create_data_channel(DATA_CHANNEL_LABEL, None) {
                    warn!("cannot create data channel: {e}");
                }
            }
        }
        let room_name = request.room.clone();
        let auto_subscribe = request.auto_subscribe && request.origin == Origin::WebSocket;
        self.participants.insert(
            key,
            Participant {
                id: id.clone(),
                identity: request.identity.clone(),
                name: request.name.clone(),
                room: room_name.clone(),
                request,
                publisher,
                subscriber,
                events,
                published: Vec::new(),
                subscriptions: Vec::new(),
                qualities: HashMap::new(),
                join_started: now,
                join_reported: false,
            },
        );
        if !self.rooms.contains_key(&room_name) {
            self.metrics.rooms.inc();
            info!("room opened");
        }
        self.metrics.participants.inc();
        let others_keys = {
            let room = self.rooms.entry(room_name.clone()).or_default();
            let others = room.participants.clone();
            room.participants.push(key);
            others
        };
        let others: Vec<ParticipantDesc> = others_keys
            .iter()
            .filter_map(|k| self.participant_desc(*k))
            .collect();
        let me = self.participant_desc(key).ok_or(SfuError::Gone)?;
        self.broadcast(
            &room_name,
            Some(key),
            RoomEvent::ParticipantJoined(me.clone()),
        );
        info!(identity = %me.identity, "joined");
        if auto_subscribe {
            let tracks: Vec<TrackKey> = self
                .rooms
                .get(&room_name)
                .map(|r| r.tracks.clone())
                .unwrap_or_default();
            for tk in tracks {
                self.add_downtrack(key, tk);
            }
        }
        // The first subscriber offer carries the data channel and any tracks so far.
        self.negotiate(now, key);
        Ok(Joined {
            key,
            me,
            others,
            events: rx,
        })
    }

    fn peer_of(&self, participant: ParticipantKey, role: PeerRole) -> Result<PeerKey, SfuError> {
        let p = self.participants.get(&participant).ok_or(SfuError::Gone)?;
        match role {
            PeerRole::Publisher => p.publisher.ok_or(SfuError::NotPermitted("publish")),
            PeerRole::Subscriber => p.subscriber.ok_or(SfuError::NotPermitted("subscribe")),
        }
    }

    /// See [`crate::SessionHandle`].
    pub fn publisher_offer(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        sdp: String,
    ) -> Result<String, SfuError> {
        let key = self.peer_of(participant, PeerRole::Publisher)?;
        let advertised = self.advertised.clone();
        let peer = self.peers.get_mut(&key).ok_or(SfuError::Gone)?;
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        peer.pc
            .set_remote_description(now, offer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        peer.remote_known = true;
        let early = std::mem::take(&mut peer.early_checks);
        peer.expected_inbound = peer
            .pc
            .get_transceivers()
            .collect::<Vec<_>>()
            .into_iter()
            .filter(|t| {
                peer.pc
                    .rtp_transceiver(*t)
                    .is_some_and(|t| t.direction().has_recv())
            })
            .count();
        let mut trickle = Vec::new();
        if !peer.candidates_added {
            trickle = add_local_candidates(&mut peer.pc, &advertised)?;
            peer.candidates_added = true;
        }
        let sdp = local_answer(&mut peer.pc, now)?;
        let ufrag = peer.ufrag.clone();
        self.mark_dirty(key);
        self.trickle(participant, PeerRole::Publisher, &sdp, &ufrag, trickle);
        for (from, data) in early {
            self.read_into_peer(now, key, from, data);
        }
        Ok(sdp)
    }

    /// Sends our candidates as trickle messages too (they are already in the SDP), tagged with
    /// the first media section of `sdp`.
    fn trickle(
        &mut self,
        participant: ParticipantKey,
        role: PeerRole,
        sdp: &str,
        ufrag: &str,
        candidates: Vec<RTCIceCandidateInit>,
    ) {
        let mid = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(|m| m.trim().to_owned());
        for c in candidates {
            let candidate = CandidateInit {
                candidate: c.candidate,
                sdp_mid: mid.clone(),
                sdp_mline_index: Some(0),
                username_fragment: Some(ufrag.to_owned()),
            };
            self.send_event(participant, RoomEvent::Candidate { role, candidate });
        }
    }

    /// See [`crate::SessionHandle`].
    pub fn subscriber_answer(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        sdp: String,
    ) -> Result<(), SfuError> {
        let key = self.peer_of(participant, PeerRole::Subscriber)?;
        let peer = self.peers.get_mut(&key).ok_or(SfuError::Gone)?;
        if !peer.awaiting_answer {
            return Err(SfuError::InvalidState("no subscriber offer is outstanding"));
        }
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        peer.pc
            .set_remote_description(now, answer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        debug!(sdp = %peer.pc.remote_description().map(|d| d.sdp.as_str()).unwrap_or(""), "subscriber answer");
        peer.awaiting_answer = false;
        peer.remote_known = true;
        let early = std::mem::take(&mut peer.early_checks);
        let again = std::mem::take(&mut peer.renegotiate);
        let outbound: Vec<TrackKey> = peer.outbound.values().copied().collect();
        for tk in outbound {
            if let Some(t) = self.tracks.get_mut(&tk) {
                // Every answer may renumber payload types or extension ids on this leg:
                // resolve each downtrack's mapping again on its next packet.
                for dt in t.downtracks.iter_mut().filter(|d| d.peer == key) {
                    dt.negotiated = true;
                    dt.params = None;
                }
            }
        }
        for (from, data) in early {
            self.read_into_peer(now, key, from, data);
        }
        self.mark_dirty(key);
        if again {
            self.negotiate(now, participant);
        }
        Ok(())
    }

    fn playback_offer(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        sdp: String,
        identity: Option<String>,
    ) -> Result<String, SfuError> {
        let key = self.peer_of(participant, PeerRole::Subscriber)?;
        let room = self
            .participants
            .get(&participant)
            .ok_or(SfuError::Gone)?
            .room
            .clone();
        let tracks = self
            .rooms
            .get(&room)
            .map(|r| r.tracks.clone())
            .unwrap_or_default();
        let publisher = match &identity {
            Some(identity) => self
                .participants
                .iter()
                .find(|(_, p)| p.room == room && &p.identity == identity && !p.published.is_empty())
                .map(|(k, _)| *k)
                .ok_or_else(|| SfuError::NotFound(format!("no publisher {identity:?} in room")))?,
            None => tracks
                .iter()
                .rev()
                .filter_map(|tk| self.tracks.get(tk))
                .map(|t| t.publisher)
                .find(|p| *p != participant)
                .ok_or_else(|| SfuError::NotFound("no publisher in room".into()))?,
        };
        let (published, expected) = self
            .participants
            .get(&publisher)
            .and_then(|p| {
                Some((
                    p.published.len(),
                    self.peers.get(&p.publisher?)?.expected_inbound,
                ))
            })
            .unwrap_or((0, 0));
        if published < expected {
            return Err(SfuError::NotReady(format!(
                "publisher has {published} of its {expected} tracks flowing"
            )));
        }
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        {
            let peer = self.peers.get_mut(&key).ok_or(SfuError::Gone)?;
            peer.pc
                .set_remote_description(now, offer)
                .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
            // The player checks only after our answer, so nothing can be waiting here.
            peer.remote_known = true;
        }
        let published = self
            .participants
            .get(&publisher)
            .map(|p| p.published.clone());
        for tk in published.unwrap_or_default() {
            self.add_downtrack(participant, tk);
        }
        let advertised = self.advertised.clone();
        let peer = self.peers.get_mut(&key).ok_or(SfuError::Gone)?;
        add_local_candidates(&mut peer.pc, &advertised)?;
        peer.candidates_added = true;
        let sdp = local_answer(&mut peer.pc, now)?;
        for t in self.tracks.values_mut() {
            for dt in t.downtracks.iter_mut().filter(|d| d.peer == key) {
                dt.negotiated = true;
            }
        }
        self.mark_dirty(key);
        Ok(sdp)
    }

    fn add_candidate(
        &mut self,
        participant: ParticipantKey,
        role: PeerRole,
        candidate: CandidateInit,
    ) -> Result<(), SfuError> {
        let key = self.peer_of(participant, role)?;
        let peer = self.peers.get_mut(&key).ok_or(SfuError::Gone)?;
        if candidate.candidate.is_empty() {
            return Ok(()); // end of candidates
        }
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_mline_index,
            username_fragment: candidate.username_fragment,
            url: None,
        };
        // ICE-lite does not need remote candidates to connect (checks come to us), so a
        // candidate the stack cannot use is reported but harmless.
        peer.pc
            .add_remote_candidate(init)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))
    }

    fn set_subscribed(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        track_ids: Vec<String>,
        subscribe: bool,
    ) -> Result<(), SfuError> {
        self.peer_of(participant, PeerRole::Subscriber)?;
        let keys = self.room_tracks(participant, &track_ids)?;
        for tk in keys {
            if subscribe {
                self.add_downtrack(participant, tk);
            } else {
                self.remove_downtrack(participant, tk);
            }
        }
        self.negotiate(now, participant);
        Ok(())
    }

    /// The keys of `track_ids`, each of which must be a track in `participant`'s room.
    fn room_tracks(
        &self,
        participant: ParticipantKey,
        track_ids: &[String],
    ) -> Result<Vec<TrackKey>, SfuError> {
        let room = &self
            .participants
            .get(&participant)
            .ok_or(SfuError::Gone)?
            .room;
        track_ids
            .iter()
            .map(|id| {
                self.track_ids
                    .get(id)
                    .copied()
                    .filter(|tk| {
                        self.tracks.get(tk).is_some_and(|t| {
                            self.participants
                                .get(&t.publisher)
                                .is_some_and(|p| &p.room == room)
                        })
                    })
                    .ok_or_else(|| SfuError::UnknownTrack(id.clone()))
            })
            .collect()
    }

    /// Sets the quality `participant` wants for each of `track_ids`: a subscribed simulcast
    /// track switches to the matching layer on that layer's next keyframe (one is requested).
    fn set_quality(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        track_ids: Vec<String>,
        quality: Quality,
    ) -> Result<(), SfuError> {
        let keys = self.room_tracks(participant, &track_ids)?;
        for tk in keys {
            if let Some(p) = self.participants.get_mut(&participant) {
                p.qualities.insert(tk, quality);
            }
            let Some(track) = self.tracks.get_mut(&tk) else {
                continue;
            };
            let layers = track.layers.len();
            let Some(dt) = track
                .downtracks
                .iter_mut()
                .find(|d| d.participant == participant)
            else {
                continue;
            };
            let wanted = quality.layer(layers);
            if dt.selector.wanted() != wanted {
                dt.selector.set_wanted(wanted);
                self.request_keyframe(now, tk, wanted);
            }
        }
        Ok(())
    }

    fn mute(
        &mut self,
        participant: ParticipantKey,
        track_id: String,
        muted: bool,
    ) -> Result<(), SfuError> {
        let tk = self
            .track_ids
            .get(&track_id)
            .copied()
            .filter(|tk| {
                self.tracks
                    .get(tk)
                    .is_some_and(|t| t.publisher == participant)
            })
            .ok_or_else(|| SfuError::UnknownTrack(track_id.clone()))?;
        let Some(track) = self.tracks.get_mut(&tk) else {
            return Err(SfuError::UnknownTrack(track_id));
        };
        if track.muted == muted {
            return Ok(());
        }
        track.muted = muted;
        if !muted {
            // Packets were dropped while muted: continue the numbering, and restart video on a
            // keyframe, since what follows may reference frames nobody received.
            let video = track.video_codec.is_some();
            for dt in &mut track.downtracks {
                dt.rebase = true;
                if video {
                    dt.selector.restart();
                }
            }
        }
        let (pid, room) = match self.participants.get(&participant) {
            Some(p) => (p.id.clone(), p.room.clone()),
            None => return Err(SfuError::Gone),
        };
        self.broadcast(
            &room,
            None,
            RoomEvent::TrackMuted {
                participant_id: pid,
                track_id,
                muted,
            },
        );
        Ok(())
    }

    fn publish_track(&mut self, now: Instant, key: PeerKey, init: RTCTrackEventInit) {
        let tk = self.key();
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.role != PeerRole::Publisher || peer.inbound.contains_key(&init.track_id) {
            return; // a further simulcast layer of a known track: bound on its first packet
        }
        let participant = peer.participant;
        let Some(mut receiver) = peer.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let kind = match receiver.track().kind() {
            RtpCodecKind::Audio => TrackKind::Audio,
            _ => TrackKind::Video,
        };
        let params = receiver.get_parameters().rtp_parameters.clone();
        let Some(codec) = params.codecs.first().map(|c| c.rtp_codec.clone()) else {
            warn!("published track has no negotiated codec");
            return;
        };
        let id = random_id("TR_");
        let video_codec = (kind == TrackKind::Video)
            .then(|| VideoCodec::from_mime(&codec.mime_type))
            .flatten();
        let rids: Vec<String> = receiver
            .track()
            .codings()
            .iter()
            .map(|c| c.rtp_coding_parameters.rid.clone())
            .filter(|r| !r.is_empty())
            .collect();
        let pli_interval = self.config.pli_throttle();
        let layers = if rids.len() > 1 {
            order_rids(&rids)
                .into_iter()
                // Layer sets are bit masks of a byte; more than a few layers is no real sender.
                .take(MAX_LAYERS)
                .map(|rid| {
                    let ssrc = if init.rid.as_deref() == Some(rid.as_str()) {
                        init.ssrc
                    } else {
                        0
                    };
                    Layer::new(rid, ssrc, pli_interval)
                })
                .collect()
        } else {
            vec![Layer::new(String::new(), init.ssrc, pli_interval)]
        };
        let track = PublishedTrack {
            id: id.clone(),
            kind,
            publisher: participant,
            peer: key,
            receiver: init.receiver_id,
            codec,
            pt_mime: params
                .codecs
                .iter()
                .map(|c| {
                    (
                        c.payload_type,
                        c.rtp_codec.mime_type.to_ascii_lowercase(),
                        c.rtp_codec.sdp_fmtp_line.clone(),
                    )
                })
                .collect(),
            ext_uri: params
                .header_extensions
                .iter()
                .map(|h| (h.id as u8, h.uri.clone()))
                .collect(),
            publisher_track_id: init.track_id.clone(),
            video_codec,
            layers,
            muted: false,
            counters: KindCounters::new(&self.metrics, kind.as_str()),
            downtracks: Vec::new(),
        };
        let desc = track.desc();
        peer.inbound.insert(init.track_id, tk);
        self.tracks.insert(tk, track);
        self.track_ids.insert(id, tk);
        self.metrics
            .published_tracks
            .with_label_values(&[kind.as_str()])
            .inc();
        let Some(p) = self.participants.get_mut(&participant) else {
            return;
        };
        p.published.push(tk);
        let (pid, room) = (p.id.clone(), p.room.clone());
        info!(participant = %pid, track = %desc.id, kind = kind.as_str(), mime = %desc.mime_type, "track published");
        if let Some(r) = self.rooms.get_mut(&room) {
            r.tracks.push(tk);
        }
        self.broadcast(
            &room,
            None,
            RoomEvent::TrackPublished {
                participant_id: pid,
                track: desc,
            },
        );
        let members = self.room_members(&room);
        for m in members {
            let auto = self.participants.get(&m).is_some_and(|p| {
                m != participant
                    && p.request.auto_subscribe
                    && p.request.origin == Origin::WebSocket
            });
            if auto && self.add_downtrack(m, tk) {
                self.negotiate(now, m);
            }
        }
    }

    /// Adds `subscriber`'s downtrack of `tk`; false if it was there already or cannot be.
    fn add_downtrack(&mut self, subscriber: ParticipantKey, tk: TrackKey) -> bool {
        let Some(p) = self.participants.get(&subscriber) else {
            return false;
        };
        let Some(sub_key) = p.subscriber else {
            return false;
        };
        if p.subscriptions.contains(&tk) {
            return false;
        }
        let Some(track) = self.tracks.get(&tk) else {
            return false;
        };
        if track.publisher == subscriber {
            return false;
        }
        let Some(publisher_id) = self
            .participants
            .get(&track.publisher)
            .map(|p| p.id.clone())
        else {
            return false;
        };
        let ssrc: u32 = rand::rng().random();
        let kind = match track.kind {
            TrackKind::Audio => RtpCodecKind::Audio,
            TrackKind::Video => RtpCodecKind::Video,
        };
        let local = MediaStreamTrack::new(
            publisher_id,
            track.id.clone(),
            track.id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: track.codec.clone(),
                ..Default::default()
            }],
        );
        let track_id = track.id.clone();
        let kind_label = track.kind.as_str();
        let Some(peer) = self.peers.get_mut(&sub_key) else {
            return false;
        };
        let sender = match peer.pc.add_track(local) {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot add downtrack: {e}");
                return false;
            }
        };
        // add_track makes a new transceiver sendrecv; the server only ever sends on it.
        if let Some(mut t) = peer.pc.rtp_transceiver(sender.into()) {
            t.set_direction(RTCRtpTransceiverDirection::Sendonly);
        }
        peer.outbound.insert(track_id, tk);
        let mut rng = rand::rng();
        let quality = self
            .participants
            .get(&subscriber)
            .and_then(|p| p.qualities.get(&tk).copied().or(Some(p.request.quality)))
            .unwrap_or_default();
        let dt = DownTrack {
            participant: subscriber,
            peer: sub_key,
            sender,
            munger: RtpMunger::new(rng.random(), rng.random()),
            negotiated: false,
            selector: LayerSelector::new(
                quality.layer(track.layers.len()),
                track.video_codec.is_some(),
            ),
            last_forward: None,
            rebase: false,
            vp8: Vp8Munger::default(),
            params: None,
        };
        if let Some(t) = self.tracks.get_mut(&tk) {
            t.downtracks.push(dt);
        }
        if let Some(p) = self.participants.get_mut(&subscriber) {
            p.subscriptions.push(tk);
        }
        self.metrics
            .subscribed_tracks
            .with_label_values(&[kind_label])
            .inc();
        true
    }

    fn remove_downtrack(&mut self, subscriber: ParticipantKey, tk: TrackKey) {
        let Some(track) = self.tracks.get_mut(&tk) else {
            return;
        };
        let Some(pos) = track
            .downtracks
            .iter()
            .position(|d| d.participant == subscriber)
        else {
            return;
        };
        let dt = track.downtracks.swap_remove(pos);
        let track_id = track.id.clone();
        self.metrics
            .subscribed_tracks
            .with_label_values(&[track.kind.as_str()])
            .dec();
        if let Some(peer) = self.peers.get_mut(&dt.peer) {
            peer.outbound.remove(&track_id);
            if let Err(e) = peer.pc.remove_track(dt.sender) {
                debug!("remove_track: {e}");
            }
        }
        if let Some(p) = self.participants.get_mut(&subscriber) {
            p.subscriptions.retain(|t| *t != tk);
        }
    }

    /// Sends a new subscriber offer, or notes that one is due once the outstanding one is
    /// answered.
    fn negotiate(&mut self, now: Instant, participant: ParticipantKey) {
        let Some(p) = self.participants.get(&participant) else {
            return;
        };
        if p.request.origin != Origin::WebSocket {
            return; // WHEP cannot renegotiate
        }
        let Some(key) = p.subscriber else { return };
        let advertised = self.advertised.clone();
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.awaiting_answer {
            peer.renegotiate = true;
            return;
        }
        // Every offer carries every track, so offers cost O(tracks) and a busy room would
        // cost O(n²) per join: space them out in proportion to their size, coalescing the
        // changes that arrive meanwhile.
        let interval = offer_interval(peer.outbound.len());
        if let Some(last) = peer.last_offer {
            if now < last + interval {
                if peer.offer_due.is_none() {
                    peer.offer_due = Some(last + interval);
                    self.mark_dirty(key); // re-arms the peer's timer
                }
                return;
            }
        }
        peer.offer_due = None;
        peer.last_offer = Some(now);
        let mut trickle = Vec::new();
        let result = (|| -> Result<String, SfuError> {
            if !peer.candidates_added {
                trickle = add_local_candidates(&mut peer.pc, &advertised)?;
                peer.candidates_added = true;
            }
            let offer = peer.pc.create_offer(None).map_err(SfuError::rtc)?;
            apply_local(&mut peer.pc, now, offer)
        })();
        match result {
            Ok(sdp) => {
                debug!(%sdp, "subscriber offer");
                peer.awaiting_answer = true;
                let ufrag = peer.ufrag.clone();
                self.mark_dirty(key);
                self.send_event(participant, RoomEvent::SubscriberOffer(sdp.clone()));
                self.trickle(participant, PeerRole::Subscriber, &sdp, &ufrag, trickle);
            }
            Err(e) => warn!("subscriber offer failed: {e}"),
        }
    }

    fn unpublish_track(&mut self, tk: TrackKey) {
        let Some(track) = self.tracks.remove(&tk) else {
            return;
        };
        self.track_ids.remove(&track.id);
        self.metrics
            .published_tracks
            .with_label_values(&[track.kind.as_str()])
            .dec();
        let now = Instant::now();
        let mut renegotiate = Vec::new();
        for dt in &track.downtracks {
            self.metrics
                .subscribed_tracks
                .with_label_values(&[track.kind.as_str()])
                .dec();
            if let Some(peer) = self.peers.get_mut(&dt.peer) {
                peer.outbound.remove(&track.id);
                if let Err(e) = peer.pc.remove_track(dt.sender) {
                    debug!("remove_track: {e}");
                }
            }
            if let Some(p) = self.participants.get_mut(&dt.participant) {
                p.subscriptions.retain(|t| *t != tk);
            }
            renegotiate.push(dt.participant);
        }
        let Some(p) = self.participants.get_mut(&track.publisher) else {
            return;
        };
        p.published.retain(|t| *t != tk);
        let (pid, room) = (p.id.clone(), p.room.clone());
        if let Some(r) = self.rooms.get_mut(&room) {
            r.tracks.retain(|t| *t != tk);
        }
        self.broadcast(
            &room,
            Some(track.publisher),
            RoomEvent::TrackUnpublished {
                participant_id: pid,
                track_id: track.id.clone(),
            },
        );
        for sub in renegotiate {
            self.negotiate(now, sub);
        }
    }

    fn remove_peer(&mut self, key: PeerKey) {
        let Some(mut peer) = self.peers.remove(&key) else {
            return;
        };
        if let Err(e) = peer.pc.close() {
            debug!("close: {e}");
        }
        // Flush what close() queued (DTLS close_notify) so the client learns promptly.
        while let Some(out) = peer.pc.poll_write() {
            self.outbox.push((out.transport.peer_addr, out.message));
        }
        self.by_ufrag.remove(&peer.ufrag);
        for a in &peer.addrs {
            if self.by_addr.get(a) == Some(&key) {
                self.by_addr.remove(a);
            }
        }
        if let Some(t) = peer.timer {
            self.timers.remove(&(t, key));
        }
    }

    fn remove_participant(&mut self, key: ParticipantKey, reason: &str) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let published = p.published.clone();
        let subscriptions = p.subscriptions.clone();
        for tk in published {
            self.unpublish_track(tk);
        }
        for tk in subscriptions {
            self.remove_downtrack(key, tk);
        }
        let Some(p) = self.participants.remove(&key) else {
            return;
        };
        for peer in [p.publisher, p.subscriber].into_iter().flatten() {
            self.remove_peer(peer);
        }
        if let Some(tx) = &p.events {
            let _ = tx.try_send(RoomEvent::Closed {
                reason: reason.to_owned(),
            });
        }
        self.metrics.participants.dec();
        info!(room = %p.room, participant = %p.id, reason, "participant left");
        let empty = match self.rooms.get_mut(&p.room) {
            Some(r) => {
                r.participants.retain(|k| *k != key);
                r.participants.is_empty()
            }
            None => false,
        };
        if empty {
            self.rooms.remove(&p.room);
            self.metrics.rooms.dec();
            info!(room = %p.room, "room closed");
        } else {
            self.broadcast(
                &p.room,
                None,
                RoomEvent::ParticipantLeft {
                    participant_id: p.id,
                },
            );
        }
    }
}

/// Least time between two subscriber offers for a connection sending `tracks` tracks: 20 ms,
/// plus 2 ms per track, at most one second.
fn offer_interval(tracks: usize) -> Duration {
    Duration::from_millis((20 + 10 * tracks as u64).min(3000))
}

/// Creates an answer, applies it locally and returns its SDP.
fn local_answer(pc: &mut RTCPeerConnection, now: Instant) -> Result<String, SfuError> {
    let answer = pc.create_answer(None).map_err(SfuError::rtc)?;
    apply_local(pc, now, answer)
}

/// Applies a local description and returns the SDP as applied (with our candidates).
fn apply_local(
    pc: &mut RTCPeerConnection,
    now: Instant,
    description: RTCSessionDescription,
) -> Result<String, SfuError> {
    pc.set_local_description(now, description)
        .map_err(SfuError::rtc)?;
    pc.local_description().map(|d| d.sdp).ok_or(SfuError::Rtc(
        "no local description after setting it".into(),
    ))
}

/// The header a downtrack sends for an incoming one: its own SSRC, payload type, sequence
/// number and timestamp; extensions remapped by URI to the subscriber leg's ids (those the leg
/// did not negotiate are dropped) and `sdes:mid` set to the leg's mid. Built fresh, with one
/// allocation for the extension list, through `set_extension` so the profile and padding stay
/// consistent for marshalling.
fn downtrack_header(
    incoming: &rtc::rtp::header::Header,
    params: &LegParams,
    ssrc: u32,
    payload_type: u8,
    sequence_number: u16,
    timestamp: u32,
) -> rtc::rtp::header::Header {
    let mut header = rtc::rtp::header::Header {
        version: 2,
        padding: incoming.padding,
        marker: incoming.marker,
        payload_type,
        sequence_number,
        timestamp,
        ssrc,
        csrc: incoming.csrc.clone(),
        extensions: Vec::with_capacity(params.ext.len() + 1),
        ..Default::default()
    };
    for e in &incoming.extensions {
        if let Some(&(_, out_id)) = params.ext.iter().find(|(i, _)| *i == e.id) {
            // Ids come from our own negotiation (1..=14), so this cannot fail in practice;
            // an extension that does not fit is dropped rather than the packet.
            let _ = header.set_extension(out_id, e.payload.clone());
        }
    }
    if let Some((id, mid)) = &params.mid {
        let _ = header.set_extension(*id, mid.clone());
    }
    header
}

/// Works out how packets of a published track map onto one subscriber's negotiated leg.
fn resolve_leg(
    pc: &mut RTCPeerConnection,
    sender: RTCRtpSenderId,
    pt_mime: &[(u8, String, String)],
    ext_uri: &[(u8, String)],
) -> Option<LegParams> {
    let mid = pc
        .rtp_transceiver(sender.into())
        .and_then(|t| t.mid().clone());
    let mut s = pc.rtp_sender(sender)?;
    let ssrc = s.track().ssrcs().next()?;
    let params = s.get_parameters();
    let codecs = &params.rtp_parameters.codecs;
    let pt: Vec<(u8, u8)> = pt_mime
        .iter()
        .filter_map(|(in_pt, mime, fmtp)| {
            let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
                c.rtp_codec.mime_type.eq_ignore_ascii_case(mime)
            };
            // Prefer the same profile (H264 profile, VP9 profile-id); else any of the codec.
            codecs
                .iter()
                .filter(same_mime)
                .find(|c| crate::codec::same_profile(mime, fmtp, &c.rtp_codec.sdp_fmtp_line))
                .or_else(|| codecs.iter().find(same_mime))
                .map(|c| (*in_pt, c.payload_type))
        })
        .collect();
    if pt.is_empty() {
        return None;
    }
    let exts = &params.rtp_parameters.header_extensions;
    let ext: Vec<(u8, u8)> = ext_uri
        .iter()
        // mid is per leg (set separately); transport-wide sequence numbers are per transport
        // and must not leak from the publisher's leg.
        // The publisher's rid names its layer, not the subscriber's single stream.
        .filter(|(_, uri)| {
            ![
                SDES_MID_URI,
                TRANSPORT_CC_URI,
                SDES_RTP_STREAM_ID_URI,
                SDES_REPAIR_RTP_STREAM_ID_URI,
            ]
            .contains(&uri.as_str())
        })
        .filter_map(|(in_id, uri)| {
            exts.iter()
                .find(|h| &h.uri == uri)
                .map(|h| (*in_id, h.id as u8))
        })
        .collect();
    let mid = mid.and_then(|m| {
        exts.iter()
            .find(|h| h.uri == SDES_MID_URI)
            .map(|h| (h.id as u8, bytes::Bytes::from(m.into_bytes())))
    });
    Some(LegParams { ssrc, pt, ext, mid })
}
