//! [`Transport`]: the ICE, DTLS and SRTP half of the engine's lean endpoints, sans-IO.
//!
//! Both of a bot's connections on the engine ([`Receiver`](super::receiver::Receiver) for the
//! subscriber side, [`Publisher`](super::publisher::Publisher) for the publisher side) reach the
//! server the same way, built from webrtc-rs's STUN, DTLS and SRTP parts wired directly. The
//! server is ICE-lite, so this side is controlling: it sends checks with USE-CANDIDATE to the
//! server's candidates until one answers, answers the server's own checks (webrtc-rs's agent
//! checks a pair before it accepts a nomination on it), then sends consent checks and fails
//! after [`CONSENT_TIMEOUT`] without an answer. It is the DTLS client unless the server's answer
//! to our offer takes that role; either way the peer's certificate must match the fingerprint
//! its description named. Once the handshake completes, the SRTP contexts are the owner's to
//! use for media.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chorus_signal::protocol::Target;
use rtc::dtls::endpoint::{Endpoint as DtlsEndpoint, EndpointEvent};
use rtc::ice::attributes::control::AttrControlling;
use rtc::ice::attributes::priority::PriorityAttr;
use rtc::ice::attributes::use_candidate::UseCandidateAttr;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::shared::TransportProtocol;
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{Message, BINDING_REQUEST, BINDING_SUCCESS, CLASS_SUCCESS_RESPONSE};
use rtc::stun::message::{Setter, TransactionId};
use rtc::stun::textattrs::Username;
use rtc::stun::xoraddr::XorMappedAddress;

use super::error::ClientError;
use super::sdp::{self, Ours, Remote};
use dtls::srtp_contexts;
pub(super) use dtls::{Identity, Srtp};

mod dtls;

/// Connectivity checks until one succeeds.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Consent checks once connected (RFC 7675 asks for 4-6 s on average).
const CONSENT_INTERVAL: Duration = Duration::from_secs(2);
/// No answer to any check for this long: the connection has failed.
pub(super) const CONSENT_TIMEOUT: Duration = Duration::from_secs(15);

/// What a datagram was, once [`Transport::handle_read`] has seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Demuxed {
    /// SRTP (for the owner to decrypt).
    Rtp,
    /// SRTCP (for the owner to decrypt).
    Rtcp,
    /// STUN or DTLS, handled; or nothing we know.
    Handled,
}

/// What a connection reports to its client: the endpoints write nothing into the client's
/// state; the engine hands their events over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// The connection (the client's publisher or subscriber one) changed state.
    State(Target, RTCPeerConnectionState),
}

/// One connection's ICE, DTLS and SRTP state, and the datagrams it has to send.
pub(super) struct Transport {
    pub(super) local: SocketAddr,
    /// Which of the client's connections this is (for its state).
    target: Target,
    pub(super) identity: Arc<Identity>,
    /// Our ICE credentials.
    ufrag: String,
    pwd: String,
    tie_breaker: u64,
    remote: Option<Remote>,
    /// The server's candidates; the first to answer a check is the one used.
    candidates: Vec<SocketAddr>,
    selected: Option<SocketAddr>,
    next_check: Option<Instant>,
    last_response: Option<Instant>,
    /// When the transport was created (the consent timeout's start before any answer).
    created: Instant,
    dtls: DtlsEndpoint,
    dtls_started: bool,
    /// We are the DTLS client (`setup:active`), unless the server's answer to our offer
    /// takes that role.
    pub(super) dtls_client: bool,
    pub(super) srtp: Option<Srtp>,
    /// When the handshake completed.
    connected_at: Option<Instant>,
    transmits: VecDeque<(SocketAddr, Bytes)>,
    pub(super) state: RTCPeerConnectionState,
    /// What the client is to be told, oldest first.
    events: VecDeque<Event>,
}

impl Transport {
    pub(super) fn new(
        now: Instant,
        local: SocketAddr,
        target: Target,
        identity: Arc<Identity>,
    ) -> Transport {
        Transport {
            local,
            target,
            identity,
            ufrag: random_token(16),
            pwd: random_token(32),
            tie_breaker: rand::random(),
            remote: None,
            candidates: Vec::new(),
            selected: None,
            next_check: None,
            last_response: None,
            created: now,
            dtls: DtlsEndpoint::new(local, TransportProtocol::UDP, None),
            dtls_started: false,
            dtls_client: true,
            srtp: None,
            connected_at: None,
            transmits: VecDeque::new(),
            state: RTCPeerConnectionState::New,
            events: VecDeque::new(),
        }
    }

    /// Our ICE username fragment (for the host candidate we announce).
    pub(super) fn ufrag(&self) -> &str {
        &self.ufrag
    }

    /// Our side of a media section: ICE credentials and fingerprint.
    pub(super) fn ours(&self) -> Ours {
        Ours {
            ufrag: self.ufrag.clone(),
            pwd: self.pwd.clone(),
            fingerprint: self.identity.fingerprint.to_uppercase(),
        }
    }

    /// Applies the server's side of a description (offer, or answer to our offer). New ICE
    /// credentials with the same DTLS fingerprint are an ICE restart (the server's offer after
    /// a resume): ours change too, and a nominating check goes out at once on the path in use,
    /// DTLS and SRTP going on over it.
    pub(super) fn set_remote(&mut self, now: Instant, remote: Remote) -> Result<(), ClientError> {
        if let Some(current) = &self.remote {
            if current.fingerprint != remote.fingerprint {
                return Err(ClientError::Protocol(
                    "the server changed its DTLS fingerprint".into(),
                ));
            }
            if !current.same_session(&remote) {
                tracing::debug!(target = ?self.target, "ICE restart");
                self.ufrag = random_token(16);
                self.pwd = random_token(32);
                self.last_response = Some(now);
                self.next_check = Some(now);
            }
        }
        for candidate in &remote.candidates {
            self.add_candidate_addr(*candidate);
        }
        self.remote = Some(remote);
        if self.next_check.is_none() && self.selected.is_none() {
            self.next_check = Some(now);
        }
        Ok(())
    }

    /// Takes the DTLS role the server's answer leaves us: `a=setup:active` there makes the
    /// server the client.
    pub(super) fn apply_answer_role(&mut self, answer: &rtc::sdp::SessionDescription) {
        self.dtls_client = !sdp::setup_active(answer);
    }

    /// Adds a trickled server candidate (`candidate:...` attribute value).
    pub(super) fn add_candidate(&mut self, now: Instant, candidate: &str) {
        if let Some(addr) = sdp::parse_candidate(candidate) {
            self.add_candidate_addr(addr);
            if self.selected.is_none() && self.remote.is_some() {
                self.next_check = Some(now);
            }
        }
    }

    fn add_candidate_addr(&mut self, addr: SocketAddr) {
        if addr.is_ipv4() == self.local.is_ipv4() && !self.candidates.contains(&addr) {
            self.candidates.push(addr);
        }
    }

    /// Closes the connection: a DTLS close_notify, if one was established.
    pub(super) fn close(&mut self, now: Instant) {
        if let Some(remote) = self.selected {
            let _ = self.dtls.stop(now, remote);
            self.drain_dtls();
        }
        self.set_state(RTCPeerConnectionState::Closed);
    }

    /// Reports the connection failed and sends nothing more.
    pub(super) fn fail(&mut self) {
        self.transmits.clear();
        self.next_check = None;
        self.set_state(RTCPeerConnectionState::Failed);
    }

    /// When the DTLS handshake completed (media may flow from then on).
    pub(super) fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    /// Handles a STUN or DTLS datagram; says which an RTP or RTCP one is (RFC 7983, RFC 5761).
    pub(super) fn handle_read(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Demuxed {
        match data.first() {
            Some(0..=3) => self.on_stun(now, from, data),
            Some(20..=63) => self.on_dtls(now, from, data),
            // RTCP packet types 192-223 (200 SR, 201 RR, ...) in the second byte.
            Some(128..=191) if Some(from) == self.selected => {
                return if matches!(data.get(1), Some(192..=223)) {
                    Demuxed::Rtcp
                } else {
                    Demuxed::Rtp
                };
            }
            _ => {}
        }
        Demuxed::Handled
    }

    fn on_stun(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let mut message = Message::new();
        if message.unmarshal_binary(data).is_err() {
            return;
        }
        if message.typ == BINDING_REQUEST {
            self.answer_check(&mut message, from);
            return;
        }
        if message.typ.class != CLASS_SUCCESS_RESPONSE {
            return;
        }
        let Some(remote) = &self.remote else {
            return;
        };
        if MessageIntegrity::check(
            &mut message,
            remote.pwd.as_bytes(),
            self.identity.crypto.crypto(),
        )
        .is_err()
        {
            tracing::debug!(%from, "STUN response with a bad integrity check");
            return;
        }
        self.last_response = Some(now);
        if self.selected.is_none() && self.candidates.contains(&from) {
            self.select(now, from);
        }
    }

    fn select(&mut self, now: Instant, server: SocketAddr) {
        self.selected = Some(server);
        self.next_check = Some(now + CONSENT_INTERVAL);
        self.set_state(RTCPeerConnectionState::Connecting);
        self.start_dtls(now, server);
    }

    /// Answers the server's own check of the pair.
    fn answer_check(&mut self, request: &mut Message, from: SocketAddr) {
        if MessageIntegrity::check(request, self.pwd.as_bytes(), self.identity.crypto.crypto())
            .is_err()
        {
            tracing::debug!(%from, "STUN request with a bad integrity check");
            return;
        }
        let key = self.pwd.clone();
        self.send_stun(
            from,
            &[
                Box::new(request.clone()),
                Box::new(BINDING_SUCCESS),
                Box::new(XorMappedAddress {
                    ip: from.ip(),
                    port: from.port(),
                }),
            ],
            key,
        );
    }

    /// Queues a STUN message of `attributes` toward `to`, signed with `key` (short-term
    /// message integrity) and fingerprinted.
    fn send_stun(&mut self, to: SocketAddr, attributes: &[Box<dyn Setter>], key: String) {
        let mut message = Message::new();
        let built = message
            .build(attributes)
            .and_then(|()| {
                MessageIntegrity::new_short_term_integrity_with_provider(
                    key,
                    self.identity.crypto.crypto(),
                )
                .add_to(&mut message)
            })
            .and_then(|()| FINGERPRINT.add_to(&mut message));
        match built {
            Ok(()) => self
                .transmits
                .push_back((to, Bytes::copy_from_slice(&message.raw))),
            Err(e) => tracing::debug!(error = %e, "STUN message"),
        }
    }

    fn start_dtls(&mut self, now: Instant, server: SocketAddr) {
        if self.dtls_started {
            return;
        }
        let Some(remote) = &self.remote else {
            return;
        };
        let config = dtls::handshake_config(
            &self.identity,
            &remote.fingerprint,
            self.dtls_client,
            server,
        );
        let result = config.and_then(|config| {
            if self.dtls_client {
                self.dtls.connect(now, server, Arc::new(config), None)
            } else {
                // The server's ClientHello creates the association.
                self.dtls.set_server_config(Some(Arc::new(config)));
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.dtls_started = true;
                self.drain_dtls();
            }
            Err(e) => {
                tracing::debug!(error = %e, "DTLS handshake cannot start");
                self.set_state(RTCPeerConnectionState::Failed);
            }
        }
    }

    fn on_dtls(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if self.selected.is_none()
            && !self.dtls_client
            && self.remote.is_some()
            && self.candidates.contains(&from)
        {
            // As DTLS server, the ClientHello can overtake the answer to our check: the server
            // has validated the pair.
            self.select(now, from);
        }
        if Some(from) != self.selected {
            return;
        }
        match self.dtls.read(now, from, None, BytesMut::from(data)) {
            Ok(events) => {
                for event in events {
                    match event {
                        EndpointEvent::HandshakeComplete => self.on_handshake(now, from),
                        EndpointEvent::PeerClosed => self.set_state(RTCPeerConnectionState::Closed),
                        _ => {}
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "DTLS");
                if self.srtp.is_none() {
                    self.set_state(RTCPeerConnectionState::Failed);
                }
            }
        }
        self.drain_dtls();
    }

    fn on_handshake(&mut self, now: Instant, server: SocketAddr) {
        let Some(state) = self.dtls.get_connection_state(server) else {
            return;
        };
        match srtp_contexts(state, self.identity.crypto.as_ref()) {
            Ok(srtp) => {
                self.srtp = Some(srtp);
                self.connected_at = Some(now);
                self.set_state(RTCPeerConnectionState::Connected);
            }
            Err(e) => {
                tracing::warn!(error = %e, "SRTP keys");
                self.set_state(RTCPeerConnectionState::Failed);
            }
        }
    }

    fn drain_dtls(&mut self) {
        while let Some(t) = self.dtls.poll_transmit() {
            self.transmits
                .push_back((t.transport.peer_addr, t.message.freeze()));
        }
    }

    /// Runs what is due at `now`: checks and DTLS retransmissions.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        if self.next_check.is_some_and(|at| at <= now) {
            self.check(now);
        }
        if let Some(server) = self.selected.filter(|_| self.srtp.is_none()) {
            if self.dtls.poll_timeout(&server).is_some_and(|at| at <= now) {
                if let Err(e) = self.dtls.handle_timeout(server, now) {
                    tracing::debug!(error = %e, "DTLS handshake timed out");
                    self.set_state(RTCPeerConnectionState::Failed);
                }
                self.drain_dtls();
            }
        }
    }

    /// The earliest instant [`Self::handle_timeout`] has work at.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        // The handshake's retransmission timer; none once it is complete (the per-pass cost
        // of asking would be paid by every connection for nothing).
        let dtls = self
            .selected
            .filter(|_| self.srtp.is_none())
            .and_then(|s| self.dtls.poll_timeout(&s));
        [self.next_check, dtls].into_iter().flatten().min()
    }

    /// The next event for the client (the engine hands it over).
    pub(super) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next datagram to send, and where.
    pub(super) fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.transmits.pop_front()
    }

    /// Queues an SRTP or SRTCP datagram toward the server (dropped before a pair is selected).
    pub(super) fn send(&mut self, datagram: Bytes) {
        if let Some(server) = self.selected {
            self.transmits.push_back((server, datagram));
        }
    }

    /// Decrypts and parses a compound RTCP packet from the server; `None` for anything that
    /// does not authenticate or parse (or before the handshake).
    pub(super) fn read_rtcp(
        &mut self,
        data: &[u8],
    ) -> Option<Vec<Box<dyn rtc::rtcp::packet::Packet>>> {
        let plain = self.srtp.as_mut()?.remote.decrypt_rtcp(data).ok()?;
        rtc::rtcp::packet::unmarshal(&mut &plain[..]).ok()
    }

    /// Encrypts and queues a compound RTCP packet.
    pub(super) fn send_rtcp(&mut self, packets: &[Box<dyn rtc::rtcp::packet::Packet>]) {
        let Some(srtp) = self.srtp.as_mut() else {
            return;
        };
        let encrypted = rtc::rtcp::packet::marshal(packets)
            .map_err(|e| e.to_string())
            .and_then(|plain| srtp.local.encrypt_rtcp(&plain).map_err(|e| e.to_string()));
        match encrypted {
            Ok(datagram) => self.send(datagram.freeze()),
            Err(e) => tracing::debug!(error = %e, "RTCP"),
        }
    }

    /// Sends a connectivity (or consent) check to every candidate, or the selected one.
    fn check(&mut self, now: Instant) {
        if matches!(
            self.state,
            RTCPeerConnectionState::Closed | RTCPeerConnectionState::Failed
        ) {
            self.next_check = None;
            return;
        }
        let Some(remote) = self.remote.as_ref() else {
            self.next_check = None;
            return;
        };
        let last = self.last_response.unwrap_or(self.created);
        if now.saturating_duration_since(last) > CONSENT_TIMEOUT {
            tracing::debug!(target = ?self.target, "no answer to connectivity checks");
            self.set_state(RTCPeerConnectionState::Failed);
            self.next_check = None;
            return;
        }
        let username = format!("{}:{}", remote.ufrag, self.ufrag);
        let pwd = remote.pwd.clone();
        let targets: Vec<SocketAddr> = match self.selected {
            Some(s) => vec![s],
            None => self.candidates.clone(),
        };
        for target in targets {
            let tie_breaker = self.tie_breaker;
            self.send_stun(
                target,
                &[
                    Box::new(BINDING_REQUEST),
                    Box::new(TransactionId::new()),
                    Box::new(Username::new(ATTR_USERNAME, username.clone())),
                    Box::new(AttrControlling(tie_breaker)),
                    // Host candidate priority (type preference 126, one component).
                    Box::new(PriorityAttr((126 << 24) | (65535 << 8) | 255)),
                    Box::new(UseCandidateAttr),
                ],
                pwd.clone(),
            );
        }
        let interval = if self.selected.is_some() {
            CONSENT_INTERVAL
        } else {
            CHECK_INTERVAL
        };
        self.next_check = Some(now + interval);
    }

    fn set_state(&mut self, state: RTCPeerConnectionState) {
        if self.state == state || self.state == RTCPeerConnectionState::Closed {
            return;
        }
        self.state = state;
        tracing::debug!(target = ?self.target, %state, "peer connection state");
        self.events.push_back(Event::State(self.target, state));
    }
}

/// A random token of ICE characters.
pub(super) fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::shared::Shared;
    use super::dtls::SRTP_PROFILES;
    use super::*;
    use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};

    /// A STUN success response to a check, signed with the server's password.
    pub(in crate::client) fn check_response(
        identity: &Identity,
        pwd: &str,
        local: SocketAddr,
    ) -> Vec<u8> {
        let mut response = Message::new();
        response
            .build(&[
                Box::new(TransactionId::new()),
                Box::new(BINDING_SUCCESS),
                Box::new(XorMappedAddress {
                    ip: local.ip(),
                    port: local.port(),
                }),
                Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                    pwd.to_owned(),
                    identity.crypto.crypto(),
                )),
                Box::new(FINGERPRINT),
            ])
            .expect("response");
        response.raw
    }

    /// What every endpoint test starts from: a client's shared state (and its signaling queue,
    /// kept open), our certificate and the server's, the clock's origin, our address (a
    /// loopback one as the engine hands out) and the server's.
    pub(in crate::client) struct Fixture {
        pub shared: Arc<Shared>,
        pub ours: Arc<Identity>,
        pub theirs: Identity,
        pub t0: Instant,
        pub local: SocketAddr,
        pub server: SocketAddr,
        pub _signaling: tokio::sync::mpsc::UnboundedReceiver<super::super::signaling::Outgoing>,
    }

    impl Fixture {
        pub(in crate::client) fn new() -> Fixture {
            let (out, signaling) = tokio::sync::mpsc::unbounded_channel();
            Fixture {
                shared: Shared::new(out, Default::default(), 0),
                ours: Arc::new(Identity::generate().expect("certificate")),
                theirs: Identity::generate().expect("certificate"),
                t0: Instant::now(),
                local: "127.1.0.1:5000".parse().expect("addr"),
                server: "127.0.0.1:7882".parse().expect("addr"),
                _signaling: signaling,
            }
        }
    }

    /// The server's DTLS configuration in either role, presenting `identity`'s certificate.
    fn server_side_config(
        identity: &Identity,
        client: bool,
        peer: Option<SocketAddr>,
    ) -> Arc<rtc::dtls::config::HandshakeConfig> {
        let config = ConfigBuilder::default()
            .with_crypto_provider(Arc::clone(&identity.crypto))
            .with_certificates(vec![identity.certificate.clone()])
            .with_srtp_protection_profiles(SRTP_PROFILES.to_vec())
            .with_insecure_skip_verify(true)
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .build(client, peer)
            .expect("DTLS config");
        Arc::new(config)
    }

    /// The server's side as DTLS client.
    pub(in crate::client) fn dtls_client(
        identity: &Identity,
        now: Instant,
        server: SocketAddr,
        local: SocketAddr,
    ) -> DtlsEndpoint {
        let config = server_side_config(identity, true, Some(local));
        let mut client = DtlsEndpoint::new(server, TransportProtocol::UDP, None);
        client.connect(now, local, config, None).expect("connect");
        client
    }

    /// The server's side as DTLS server.
    pub(in crate::client) fn dtls_server(identity: &Identity, server: SocketAddr) -> DtlsEndpoint {
        let config = server_side_config(identity, false, None);
        DtlsEndpoint::new(server, TransportProtocol::UDP, Some(config))
    }

    /// The peer's SRTP contexts (decrypting what the endpoint sends) from its side of a
    /// completed handshake.
    pub(in crate::client) fn peer_srtp(
        endpoint: &DtlsEndpoint,
        peer: SocketAddr,
        identity: &Identity,
    ) -> Option<Srtp> {
        let state = endpoint.get_connection_state(peer)?;
        srtp_contexts(state, identity.crypto.as_ref()).ok()
    }

    #[test]
    fn state_changes_are_events_for_the_engine_to_hand_over() {
        let f = Fixture::new();
        let mut t = Transport::new(f.t0, f.local, Target::Publisher, f.ours);
        assert_eq!(t.poll_event(), None);
        t.fail();
        t.close(f.t0);
        // Closed after failing; once closed, nothing changes any more.
        t.fail();
        assert_eq!(
            t.poll_event(),
            Some(Event::State(
                Target::Publisher,
                RTCPeerConnectionState::Failed
            ))
        );
        assert_eq!(
            t.poll_event(),
            Some(Event::State(
                Target::Publisher,
                RTCPeerConnectionState::Closed
            ))
        );
        assert_eq!(t.poll_event(), None);
        // Nothing was written into the client's state.
        assert_eq!(
            f.shared.states.borrow().publisher,
            RTCPeerConnectionState::New
        );
    }
}
