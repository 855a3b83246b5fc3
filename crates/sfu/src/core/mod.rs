//! The media plane's state machine, sans I/O: every peer connection, room, participant and
//! track, fed with datagrams, commands and the clock, producing datagrams to send.
//!
//! [`Core`] owns no socket, task or clock: every input carries the instant it happens at. The
//! driver ([`crate::engine`]) feeds it (`handle_datagram`, `handle_command`, `handle_timeout`;
//! ICE-TCP frames through `authenticate_tcp` and `receive_tcp`), sends what
//! [`Core::take_transmits`] (UDP) and [`Core::take_tcp_transmits`] return, and sleeps until
//! [`Core::poll_timeout`]. Each
//! input is handed to the peer connection it belongs to ([`Router`]); the core then drains that
//! peer (datagrams to send, events, received RTP/RTCP) and every peer the input touched; a
//! forwarded packet goes to the outbox directly ([`crate::egress`]), without touching the
//! subscribers' connections. Tests and benchmarks drive it directly, on a virtual clock,
//! without a network.
//!
//! The state the core holds is defined where it is described: [`crate::router`] (datagram ->
//! peer), [`crate::peer`] (a peer connection and its negotiation state), `room` (rooms and
//! participants), `track` (published tracks), `downtrack` (a subscriber's copy of a track) and
//! [`crate::forwarder`] (its layer choice and rewrite). What the core does with it is split by
//! concern into this module's children: `membership` (join, leave, room events), `negotiate`
//! (offers and answers), `fanout` (publication, mute, the packet path, keyframe requests),
//! `subscribe` (subscriptions and quality), `relay` (data channels), `rtcp` (subscribers'
//! NACKs and keyframe requests, sender reports), `peers` (creating and closing peer
//! connections) and `dispatch` (session commands).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use rand::distr::{Alphanumeric, SampleString};
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tracing::{debug, error};

mod dispatch;
mod fanout;
mod membership;
mod negotiate;
mod peers;
pub(crate) mod relay;
mod rtcp;
mod subscribe;

use crate::metrics::PathDrops;
use crate::peer::{Advertised, Peer, Source};
use crate::room::{Participant, Room};
use crate::router::Router;
use crate::stun;
use crate::track::PublishedTrack;
use crate::types::{ParticipantKey, PeerKey, PeerRole, TrackKey};
use crate::{MediaConfig, Metrics};

/// How often participants are checked for connect and silence timeouts.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How often each downtrack sends a sender report (RTCP's usual interval for one stream).
const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// STUN checks kept per peer while its remote description is not known yet.
const MAX_EARLY_CHECKS: usize = 16;

/// The media plane's state. See the module docs.
pub struct Core {
    /// The engine this core runs in.
    pub(crate) engine: usize,
    /// When participants are next checked for connect and silence timeouts.
    pub(crate) next_sweep: Option<Instant>,
    pub(crate) advertised: Advertised,
    pub(crate) config: MediaConfig,
    pub(crate) metrics: Metrics,
    pub(crate) drops: PathDrops,
    pub(crate) next_key: u64,
    pub(crate) peers: HashMap<PeerKey, Peer>,
    pub(crate) router: Router,
    pub(crate) participants: HashMap<ParticipantKey, Participant>,
    pub(crate) tracks: HashMap<TrackKey, PublishedTrack>,
    pub(crate) track_ids: HashMap<String, TrackKey>,
    pub(crate) rooms: HashMap<String, Room>,
    pub(crate) timers: BTreeSet<(Instant, PeerKey)>,
    pub(crate) dirty: Vec<PeerKey>,
    /// Participants whose event queue overflowed, removed once the current input is handled.
    pub(crate) slow: Vec<ParticipantKey>,
    /// Datagrams to send on the UDP socket.
    pub(crate) outbox: Vec<(SocketAddr, BytesMut)>,
    /// Packets to send on ICE-TCP connections (by their remote address), for peers whose
    /// selected candidate pair is TCP: a queue of its own, so the UDP path stays as it was.
    pub(crate) tcp_outbox: Vec<(SocketAddr, BytesMut)>,
    /// Peers with an ICE-TCP connection that were closed since the driver last asked.
    pub(crate) closed_tcp: Vec<PeerKey>,
    /// Where the egress path marshals a packet before sealing it (reused).
    pub(crate) scratch: Vec<u8>,
    /// What subscriber re-offers may still cost this second (`media.offer_sections_per_sec`).
    pub(crate) offer_budget: negotiate::OfferBudget,
    /// When downtracks next send their sender reports.
    pub(crate) next_reports: Option<Instant>,
    /// Scratch for messages drained from one peer before they are acted on.
    pub(crate) reads: Vec<RTCMessage>,
    pub(crate) events: Vec<RTCPeerConnectionEvent>,
}

/// Queues `datagram` for `dest` on the outbox of its transport.
pub(crate) fn queue_for(
    udp: &mut Vec<(SocketAddr, BytesMut)>,
    tcp: &mut Vec<(SocketAddr, BytesMut)>,
    dest: Source,
    datagram: BytesMut,
) {
    match dest.protocol {
        TransportProtocol::TCP => tcp.push((dest.addr, datagram)),
        _ => udp.push((dest.addr, datagram)),
    }
}

pub(crate) fn random_id(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 12)
    )
}

impl Core {
    /// A core whose media socket is bound at `local_addr`.
    pub fn new(config: MediaConfig, metrics: Metrics, local_addr: SocketAddr) -> Core {
        let advertised = Advertised {
            addrs: config.advertised_addrs(local_addr),
            tcp: config.ice_tcp,
        };
        let offer_budget = negotiate::OfferBudget::new(config.offer_sections_per_sec);
        Core {
            engine: 0,
            next_sweep: None,
            advertised,
            config,
            drops: PathDrops::new(&metrics),
            metrics,
            next_key: 1,
            peers: HashMap::new(),
            router: Router::default(),
            participants: HashMap::new(),
            tracks: HashMap::new(),
            track_ids: HashMap::new(),
            rooms: HashMap::new(),
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            slow: Vec::new(),
            outbox: Vec::new(),
            tcp_outbox: Vec::new(),
            closed_tcp: Vec::new(),
            scratch: Vec::new(),
            next_reports: None,
            offer_budget,
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
        let busy = !self.participants.is_empty();
        [
            self.timers.first().map(|(t, _)| *t),
            self.next_sweep.filter(|_| busy),
            self.next_reports.filter(|_| busy),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Moves every datagram waiting to be sent on the UDP socket into `out` (which is cleared
    /// first).
    pub fn take_transmits(&mut self, out: &mut Vec<(SocketAddr, BytesMut)>) {
        out.clear();
        std::mem::swap(out, &mut self.outbox);
    }

    /// Moves every packet waiting to be sent on an ICE-TCP connection into `out` (cleared
    /// first), each with the connection's remote address.
    pub fn take_tcp_transmits(&mut self, out: &mut Vec<(SocketAddr, BytesMut)>) {
        out.clear();
        std::mem::swap(out, &mut self.tcp_outbox);
    }

    /// Moves the peers closed since the last call that had an ICE-TCP connection bound to
    /// them into `out` (cleared first): their connections are to be closed.
    pub fn take_closed_tcp_peers(&mut self, out: &mut Vec<PeerKey>) {
        out.clear();
        std::mem::swap(out, &mut self.closed_tcp);
    }

    /// The peer connection an ICE-TCP connection's first frame names: a STUN check for a
    /// known ufrag whose MESSAGE-INTEGRITY verifies (see [`Router::authenticate`]).
    pub fn authenticate_tcp(&self, frame: &[u8]) -> Result<PeerKey, crate::router::Unroutable> {
        self.router.authenticate(frame)
    }

    /// Hands one frame of an ICE-TCP connection bound to `peer` (by [`Core::authenticate_tcp`])
    /// to that peer connection, without draining (call [`Core::drain`] after a batch).
    /// Returns false when the peer is gone: the connection is to be closed.
    pub fn receive_tcp(
        &mut self,
        now: Instant,
        peer: PeerKey,
        from: SocketAddr,
        frame: BytesMut,
    ) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        p.tcp = true;
        let from = Source {
            addr: from,
            protocol: TransportProtocol::TCP,
        };
        if !p.remote_known && stun::classify(&frame) == stun::DatagramKind::Stun {
            if p.early_checks.len() < MAX_EARLY_CHECKS {
                p.early_checks.push((from, frame));
            } else {
                self.drop_reason("early_check");
            }
            return true;
        }
        self.read_into_peer(now, peer, from, frame);
        true
    }

    pub(crate) fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    pub(crate) fn drop_reason(&self, reason: &str) {
        self.metrics.dropped.with_label_values(&[reason]).inc();
    }

    /// Handles one datagram received on the media socket from `from`.
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8], from: SocketAddr) {
        self.route_datagram(now, data, from);
        self.drain(now);
    }

    /// Hands one datagram to its peer connection without draining: a driver reading a batch
    /// calls this per datagram and [`Core::drain`] once after the batch.
    pub fn receive(&mut self, now: Instant, data: &[u8], from: SocketAddr) {
        self.route_datagram(now, data, from);
    }

    /// What the core holds, for leak checks: (rooms, participants, peer connections, published
    /// tracks, routed ufrags, learned addresses, armed timers).
    pub fn counts(&self) -> [usize; 7] {
        let (ufrags, addrs) = self.router.len();
        [
            self.rooms.len(),
            self.participants.len(),
            self.peers.len(),
            self.tracks.len(),
            ufrags,
            addrs,
            self.timers.len(),
        ]
    }

    /// Leaves the room (what a session's `leave` does), then drains.
    pub fn leave(&mut self, now: Instant, participant: ParticipantKey) {
        self.remove_participant(now, participant, "left");
        self.drain(now);
    }

    /// Names the engine this core runs in (for logs and metrics).
    pub fn set_engine(&mut self, index: usize) {
        self.engine = index;
    }

    /// The engine this core runs in.
    pub fn engine(&self) -> usize {
        self.engine
    }

    pub(crate) fn route_datagram(&mut self, now: Instant, data: &[u8], from: SocketAddr) {
        self.metrics.udp_datagrams_in.inc();
        let (key, is_stun) = match self.router.route(data, from) {
            Ok(routed) => (routed.peer, routed.is_stun),
            Err(unroutable) => {
                self.drop_reason(unroutable.reason());
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            self.drop_reason("unknown_source");
            return;
        };
        if is_stun && !peer.remote_known {
            if peer.early_checks.len() < MAX_EARLY_CHECKS {
                peer.early_checks.push((from.into(), BytesMut::from(data)));
            } else {
                self.drop_reason("early_check");
            }
            return;
        }
        self.read_into_peer(now, key, from, BytesMut::from(data));
    }

    /// Hands one datagram to a peer connection.
    pub(crate) fn read_into_peer(
        &mut self,
        now: Instant,
        key: PeerKey,
        from: impl Into<Source>,
        data: BytesMut,
    ) {
        let Source {
            addr: from,
            protocol,
        } = from.into();
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        peer.last_rx = Some(now);
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                // ICE matches this against our candidate, so it is the advertised address
                // (the socket may be bound to 0.0.0.0, or sit behind 1:1 NAT).
                local_addr: self.advertised[0],
                peer_addr: from,
                ecn: None,
                transport_protocol: protocol,
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
                self.remove_participant(now, participant, "internal error on malformed input");
            }
        }
    }

    /// Runs every peer timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timers(now);
        if self.next_sweep.is_some_and(|t| now >= t) {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
            self.sweep(now);
        }
        match self.next_reports {
            Some(t) if now >= t => {
                self.next_reports = Some(now + REPORT_INTERVAL);
                self.send_reports(now);
            }
            None => self.next_reports = Some(now + REPORT_INTERVAL),
            _ => {}
        }
        self.drain(now);
    }

    /// Removes participants whose connections never came up within
    /// `media.connect_timeout_secs` of joining, or went silent (no datagram, not even a
    /// consent check) for `media.silence_timeout_secs`: clients that vanished.
    fn sweep(&mut self, now: Instant) {
        let connect = self.config.connect_timeout();
        let silence = self.config.silence_timeout();
        let mut gone = Vec::new();
        for (key, p) in &self.participants {
            let peers = [p.publisher, p.subscriber];
            let peers = peers.iter().flatten().filter_map(|k| self.peers.get(k));
            let mut any = false;
            let mut never_connected = true;
            let mut heard = None::<Instant>;
            for peer in peers {
                any = true;
                never_connected &= !peer.connected;
                heard = heard.max(peer.last_rx);
            }
            if !any {
                continue;
            }
            if never_connected && now.saturating_duration_since(p.join_started) > connect {
                gone.push((*key, "no connection within the connect timeout"));
            } else if !never_connected
                && heard.is_some_and(|t| now.saturating_duration_since(t) > silence)
            {
                gone.push((*key, "connection lost (silent)"));
            }
        }
        for (key, reason) in gone {
            self.drop_reason("participant_timeout");
            self.remove_participant(now, key, reason);
        }
    }

    pub(crate) fn handle_timers(&mut self, now: Instant) {
        while let Some(&(t, key)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, key));
            let participant = self.peers.get(&key).map(|p| p.participant);
            self.contained(now, participant, "timer", |core| core.peer_timer(now, key));
        }
    }

    /// One peer's timer: the connection's own, and a subscriber offer that came due.
    fn peer_timer(&mut self, now: Instant, key: PeerKey) {
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

    /// Runs `f`, containing a panic inside it: logged, counted (`internal_panic`), and the
    /// participant it concerns removed, since its state is no longer trusted. Everyone else
    /// goes on.
    pub(crate) fn contained(
        &mut self,
        now: Instant,
        participant: Option<ParticipantKey>,
        what: &'static str,
        f: impl FnOnce(&mut Core),
    ) {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if run.is_err() {
            error!(
                engine = self.engine,
                what, "panic contained; removing the participant it concerns"
            );
            self.drop_reason("internal_panic");
            if let Some(p) = participant {
                self.remove_participant(now, p, "internal error");
            }
        }
    }

    pub(crate) fn mark_dirty(&mut self, key: PeerKey) {
        if let Some(peer) = self.peers.get_mut(&key) {
            if !peer.dirty {
                peer.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Drains every peer touched since the last call (datagrams to send, events, received
    /// RTP/RTCP), and every peer that touched. The `handle_*` inputs do this themselves; a
    /// caller of a direct method ([`Core::join`], [`Core::publisher_offer`],
    /// [`Core::subscriber_answer`]) calls it after.
    pub fn drain(&mut self, now: Instant) {
        loop {
            while let Some(key) = self.dirty.pop() {
                let participant = self.peers.get(&key).map(|p| p.participant);
                self.contained(now, participant, "peer", |core| core.drain_peer(now, key));
            }
            let Some(slow) = self.slow.pop() else { break };
            self.remove_participant(now, slow, "too slow to read room events");
        }
    }

    pub(crate) fn drain_peer(&mut self, now: Instant, key: PeerKey) {
        let mut reads = std::mem::take(&mut self.reads);
        let mut events = std::mem::take(&mut self.events);
        {
            let Some(peer) = self.peers.get_mut(&key) else {
                return;
            };
            peer.dirty = false;
            if peer.role == PeerRole::Subscriber {
                peer.dest = peer.pc.selected_transport().map(|t| Source {
                    addr: t.peer_addr,
                    protocol: t.transport_protocol,
                });
            }
            while let Some(out) = peer.pc.poll_write() {
                let dest = Source {
                    addr: out.transport.peer_addr,
                    protocol: out.transport.transport_protocol,
                };
                queue_for(&mut self.outbox, &mut self.tcp_outbox, dest, out.message);
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

    pub(crate) fn on_peer_event(&mut self, now: Instant, key: PeerKey, ev: RTCPeerConnectionEvent) {
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
                                let took = now.saturating_duration_since(p.join_started);
                                self.metrics.join_latency.observe(took.as_secs_f64());
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
                        self.remove_participant(now, participant, "connection failed");
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
                    self.unpublish_track(now, tk);
                }
            }
            _ => {}
        }
    }

    pub(crate) fn on_peer_message(&mut self, now: Instant, key: PeerKey, msg: RTCMessage) {
        match msg {
            RTCMessage::RtpPacket(track_id, packet) => self.forward(now, key, &track_id, packet),
            RTCMessage::DataChannelMessage(_, msg) => self.relay_data(now, key, msg),
            RTCMessage::RtcpPacket(_, packets) => self.on_feedback(now, key, &packets),
            _ => {}
        }
    }
}
