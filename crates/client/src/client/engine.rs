//! [`SharedEngine`]: many clients' connections driven by one thread.
//!
//! A connection of the async `webrtc` crate pays, for every packet, a socket wake-up, a task
//! switch and its driver's queues: a bot cost more CPU than the server spent on it. Here one
//! thread waits on every connection's socket at once (epoll, through `mio`), reads each ready
//! socket's queue with one `recvmmsg` (`quinn-udp`), and hands each datagram to its
//! connection's endpoint, sans-IO, built from webrtc-rs's STUN, DTLS and SRTP parts — the same
//! shape as the server's engine: a [`Receiver`](super::receiver::Receiver) for a subscriber
//! connection (or WHEP player), a [`Publisher`](super::publisher::Publisher) for a publisher
//! connection (or WHIP publisher) of looped media, whose frames the thread paces by the
//! endpoints' timers. The accounting of received packets
//! ([`ReceivedTrackStats`](crate::ReceivedTrackStats)) and sent frames is the client's own,
//! shared with the async path; connection states are the transports' events, handed over to
//! the client by this thread. Sockets and batched reads are [`socket`]'s.
//!
//! The server tells participants apart by address, so every connection needs one of its own.
//! Toward a loopback server, connections share one socket bound to the wildcard address and each
//! gets its own loopback address (127.1.x.y): datagrams are routed by their destination address
//! (`IP_PKTINFO`), sent with the connection's address as source, and one `recvmmsg` reads many
//! connections' datagrams. Otherwise each connection binds a socket of its own. A connection
//! offers one host candidate, its address. No STUN/TURN gathering: the engine is for servers the
//! bots reach directly (loopback, a LAN, a public address).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_signal::protocol::{IceCandidate, Target};
use mio::{Events, Interest, Poll, Token, Waker};
use quinn_udp::{RecvMeta, Transmit, BATCH_SIZE};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use tokio::sync::oneshot;

use super::accounting::Arrival;
use super::error::ClientError;
use super::publisher::{self, PublishTrack};
use super::receiver;
use super::shared::Shared;
use super::transport::{Event, Identity, Transport};
use crate::impair::Impairment;
use socket::{loopback_ip, Socket, LOOPBACK_RECV_BUFFER, RECV_BUF};

mod socket;

/// The waker's token; connections with sockets of their own use their id.
const WAKE: Token = Token(usize::MAX);
/// The shared loopback socket's token.
const LOOPBACK: Token = Token(usize::MAX - 1);
/// The shortest time between two passes over the ready sockets. Waking for every datagram
/// (the server sends a subscriber's packets one by one) costs a context switch each, the
/// largest cost after the stack itself; gathering for up to 1 ms costs nothing in accuracy,
/// since arrival times come from the kernel's receive timestamps. A publisher's frame leaves
/// up to that late (its RTP timestamp stays exact, its capture stamp is when it leaves).
const MIN_PASS: Duration = Duration::from_millis(1);

/// The name of a shared engine's thread (to find its CPU time in `/proc`).
pub const ENGINE_THREAD: &str = "chorus-engine";

/// A handle to a shared engine thread; clones share it. The thread ends when the last handle
/// (and with it every connection on it) is gone.
///
/// Give it to [`ClientOptions::engine`](super::ClientOptions::engine) to run a
/// client's connections here instead of on async connections of their own.
#[derive(Clone)]
pub struct SharedEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEngine").finish_non_exhaustive()
    }
}

struct Inner {
    commands: Sender<Command>,
    waker: Waker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The sender is dropped right after this: the thread sees the channel disconnected.
        let _ = self.waker.wake();
    }
}

/// Which of a client's connections an engine connection is.
enum Role {
    /// The subscriber connection (or a WHEP player), with the impairment of what it receives.
    Receive(Impairment),
    /// The publisher connection, with the tracks it loops.
    Publish(Vec<PublishTrack>),
}

enum Command {
    Open {
        id: u64,
        shared: Arc<Shared>,
        bind: SocketAddr,
        role: Role,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Offer {
        id: u64,
        sdp: String,
        reply: oneshot::Sender<Result<String, ClientError>>,
    },
    CreateOffer {
        id: u64,
        reply: oneshot::Sender<Result<String, ClientError>>,
    },
    Answer {
        id: u64,
        sdp: String,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Candidate {
        id: u64,
        init: RTCIceCandidateInit,
    },
    Close {
        id: u64,
    },
}

impl SharedEngine {
    /// Starts the engine's thread.
    pub fn start() -> io::Result<SharedEngine> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let (commands, rx) = std::sync::mpsc::channel();
        let mut engine = Engine {
            poll,
            commands: rx,
            conns: HashMap::new(),
            loopback: None,
            routes: HashMap::new(),
            loopback_ips: 0,
            identity: None,
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            bufs: vec![[0u8; RECV_BUF]; BATCH_SIZE],
            metas: [RecvMeta::default(); BATCH_SIZE],
        };
        std::thread::Builder::new()
            .name(ENGINE_THREAD.into())
            .spawn(move || engine.run())?;
        Ok(SharedEngine {
            inner: Arc::new(Inner { commands, waker }),
        })
    }

    fn send(&self, command: Command) -> Result<(), ClientError> {
        self.inner
            .commands
            .send(command)
            .map_err(|_| ClientError::Closed)?;
        self.inner.waker.wake().map_err(|_| ClientError::Closed)
    }

    /// Opens a subscriber connection for `shared`'s client at `bind` (an IP address the server
    /// can reach, port 0 for any). `127.0.0.1:0`, what a client picks toward a loopback server,
    /// puts it on the shared loopback socket; any other address binds a socket of its own.
    pub(super) async fn open(
        &self,
        shared: Arc<Shared>,
        bind: SocketAddr,
        impairment: Impairment,
    ) -> Result<EngineConn, ClientError> {
        self.open_as(shared, bind, Role::Receive(impairment)).await
    }

    /// Opens a publisher connection that loops `tracks`, bound like [`Self::open`]'s. Its
    /// offer ([`EngineConn::offer`]) carries the tracks and our candidate.
    pub(super) async fn open_publisher(
        &self,
        shared: Arc<Shared>,
        bind: SocketAddr,
        tracks: Vec<PublishTrack>,
    ) -> Result<EngineConn, ClientError> {
        self.open_as(shared, bind, Role::Publish(tracks)).await
    }

    async fn open_as(
        &self,
        shared: Arc<Shared>,
        bind: SocketAddr,
        role: Role,
    ) -> Result<EngineConn, ClientError> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (reply, done) = oneshot::channel();
        self.send(Command::Open {
            id,
            shared,
            bind,
            role,
            reply,
        })?;
        done.await.map_err(|_| ClientError::Closed)??;
        Ok(EngineConn {
            id,
            engine: self.clone(),
        })
    }
}

/// One connection on a [`SharedEngine`]; dropping it closes the connection.
pub(super) struct EngineConn {
    id: u64,
    engine: SharedEngine,
}

impl EngineConn {
    /// Applies the server's offer and returns the answer to send.
    pub(super) async fn answer(&self, sdp: String) -> Result<String, ClientError> {
        let (reply, done) = oneshot::channel();
        self.engine.send(Command::Offer {
            id: self.id,
            sdp,
            reply,
        })?;
        done.await.map_err(|_| ClientError::Closed)?
    }

    /// Our offer, host candidate included: to receive one audio and one video track (WHEP),
    /// or a publisher's tracks.
    pub(super) async fn offer(&self) -> Result<String, ClientError> {
        let (reply, done) = oneshot::channel();
        self.engine
            .send(Command::CreateOffer { id: self.id, reply })?;
        done.await.map_err(|_| ClientError::Closed)?
    }

    /// Applies the server's answer to [`Self::offer`].
    pub(super) async fn apply_answer(&self, sdp: String) -> Result<(), ClientError> {
        let (reply, done) = oneshot::channel();
        self.engine.send(Command::Answer {
            id: self.id,
            sdp,
            reply,
        })?;
        done.await.map_err(|_| ClientError::Closed)?
    }

    /// Adds a remote ICE candidate.
    pub(super) fn add_candidate(&self, init: RTCIceCandidateInit) {
        let _ = self.engine.send(Command::Candidate { id: self.id, init });
    }

    /// Closes the connection (again on drop; closing twice is harmless).
    pub(super) fn close(&self) {
        let _ = self.engine.send(Command::Close { id: self.id });
    }
}

impl Drop for EngineConn {
    fn drop(&mut self) {
        self.close();
    }
}

/// The engine thread's state: every connection, its socket and its next deadline.
struct Engine {
    poll: Poll,
    commands: Receiver<Command>,
    conns: HashMap<u64, Conn>,
    /// The socket connections toward a loopback server share (opened on first use).
    loopback: Option<Socket>,
    /// Loopback connections by their address.
    routes: HashMap<IpAddr, u64>,
    /// Loopback addresses handed out so far.
    loopback_ips: u32,
    /// The certificate every connection presents (generated on first use).
    identity: Option<Arc<Identity>>,
    /// Every connection's next `poll_timeout`, earliest first.
    timers: BTreeSet<(Instant, u64)>,
    /// Connections to drain (poll_write / poll_event / poll_read) before waiting again.
    dirty: Vec<u64>,
    bufs: Vec<[u8; RECV_BUF]>,
    metas: [RecvMeta; BATCH_SIZE],
}

impl Engine {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut last_pass = Instant::now();
        loop {
            let since = last_pass.elapsed();
            if since < MIN_PASS {
                std::thread::sleep(MIN_PASS - since);
            }
            let timeout = self
                .timers
                .first()
                .map(|(at, _)| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "shared engine cannot wait for sockets");
                    return;
                }
            }
            let now = Instant::now();
            last_pass = now;
            for event in events.iter() {
                if event.token() != WAKE {
                    self.read(event.token(), now);
                }
            }
            if !self.take_commands(now) {
                return;
            }
            while let Some(&(at, id)) = self.timers.first() {
                if at > now {
                    break;
                }
                self.timers.pop_first();
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.deadline = None;
                    conn.contain("a timer", |endpoint| endpoint.handle_timeout(now));
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(id);
                    }
                }
            }
            for id in std::mem::take(&mut self.dirty) {
                self.drive(id, now);
            }
        }
    }

    /// Reads every datagram waiting on a socket (a connection's own, or the shared loopback
    /// socket) into the peer connections they are for.
    fn read(&mut self, token: Token, now: Instant) {
        let Engine {
            conns,
            loopback,
            routes,
            bufs,
            metas,
            dirty,
            ..
        } = self;
        let mut touched = |id: u64, conn: &mut Conn| {
            if !conn.dirty {
                conn.dirty = true;
                dirty.push(id);
            }
        };
        if token == LOOPBACK {
            let Some(socket) = loopback.as_ref() else {
                return;
            };
            socket.read(bufs, metas, now, |meta, datagram, arrival| {
                let id = meta.dst_ip.and_then(|ip| routes.get(&ip)).copied();
                if let Some((id, conn)) = id.and_then(|id| Some((id, conns.get_mut(&id)?))) {
                    conn.receive(now, datagram, meta.addr, arrival);
                    touched(id, conn);
                }
            });
            return;
        }
        let id = token.0 as u64;
        let Some(conn) = conns.get_mut(&id) else {
            return;
        };
        if let Some(socket) = conn.own.take() {
            socket.read(bufs, metas, now, |meta, datagram, arrival| {
                conn.receive(now, datagram, meta.addr, arrival);
            });
            conn.own = Some(socket);
            touched(id, conn);
        }
    }

    fn mark_dirty(&mut self, id: u64) {
        if let Some(conn) = self.conns.get_mut(&id) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Applies queued commands; false once every handle is gone.
    fn take_commands(&mut self, now: Instant) -> bool {
        loop {
            let command = match self.commands.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
            match command {
                Command::Open {
                    id,
                    shared,
                    bind,
                    role,
                    reply,
                } => {
                    let opened = self.open(now, id, shared, bind, role);
                    let _ = reply.send(opened);
                    self.mark_dirty(id);
                }
                Command::Offer { id, sdp, reply } => {
                    let answer = match self.conns.get_mut(&id).map(|c| &mut c.endpoint) {
                        Some(Endpoint::Receive(rx)) => rx.answer(now, &sdp),
                        Some(Endpoint::Publish(_)) => Err(ClientError::Protocol(
                            "a publisher connection takes no offers".into(),
                        )),
                        None => Err(ClientError::Closed),
                    };
                    let _ = reply.send(answer);
                    self.mark_dirty(id);
                }
                Command::CreateOffer { id, reply } => {
                    let offer = match self.conns.get(&id).map(|c| &c.endpoint) {
                        Some(Endpoint::Receive(rx)) => Ok(rx.offer()),
                        Some(Endpoint::Publish(tx)) => Ok(tx.offer()),
                        None => Err(ClientError::Closed),
                    };
                    let _ = reply.send(offer);
                }
                Command::Answer { id, sdp, reply } => {
                    let applied = match self.conns.get_mut(&id).map(|c| &mut c.endpoint) {
                        Some(Endpoint::Receive(rx)) => rx.apply_answer(now, &sdp),
                        Some(Endpoint::Publish(tx)) => tx.apply_answer(now, &sdp),
                        None => Err(ClientError::Closed),
                    };
                    let _ = reply.send(applied);
                    self.mark_dirty(id);
                }
                Command::Candidate { id, init } => {
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.endpoint
                            .transport()
                            .add_candidate(now, &init.candidate);
                    }
                    self.mark_dirty(id);
                }
                Command::Close { id } => {
                    if let Some(mut conn) = self.conns.remove(&id) {
                        if let Some(at) = conn.deadline {
                            self.timers.remove(&(at, id));
                        }
                        match conn.own.as_mut() {
                            Some(socket) => {
                                let _ = self.poll.registry().deregister(&mut socket.io);
                            }
                            None => {
                                self.routes.remove(&conn.local.ip());
                            }
                        }
                        // The DTLS close_notify (the socket lives until `conn` is dropped).
                        conn.endpoint.transport().close(now);
                        conn.flush(self.loopback.as_ref());
                    }
                }
            }
        }
    }

    fn open(
        &mut self,
        now: Instant,
        id: u64,
        shared: Arc<Shared>,
        bind: SocketAddr,
        role: Role,
    ) -> Result<(), ClientError> {
        let (own, local) = match bind {
            SocketAddr::V4(v4) if *v4.ip() == Ipv4Addr::LOCALHOST && v4.port() == 0 => {
                let port = match &self.loopback {
                    Some(socket) => socket.port,
                    None => {
                        let socket = Socket::bind(
                            "0.0.0.0:0"
                                .parse()
                                .map_err(|_| ClientError::Protocol("wildcard address".into()))?,
                        )?;
                        // Every connection's bursts queue here between passes (a keyframe to
                        // many subscribers at once): as much buffer as the system allows.
                        if let Err(e) = socket
                            .state
                            .set_recv_buffer_size((&socket.io).into(), LOOPBACK_RECV_BUFFER)
                        {
                            tracing::debug!(error = %e, "loopback receive buffer");
                        }
                        let port = socket.port;
                        let socket = self.loopback.insert(socket);
                        self.poll
                            .registry()
                            .register(&mut socket.io, LOOPBACK, Interest::READABLE)
                            .map_err(ClientError::Io)?;
                        port
                    }
                };
                let n = self.loopback_ips;
                let ip = loopback_ip(n)
                    .ok_or_else(|| ClientError::Protocol("out of loopback addresses".into()))?;
                self.loopback_ips += 1;
                self.routes.insert(IpAddr::V4(ip), id);
                (None, SocketAddr::new(IpAddr::V4(ip), port))
            }
            _ => {
                let mut socket = Socket::bind(bind)?;
                self.poll
                    .registry()
                    .register(&mut socket.io, Token(id as usize), Interest::READABLE)
                    .map_err(ClientError::Io)?;
                let local = socket.io.local_addr().map_err(ClientError::Io)?;
                (Some(socket), local)
            }
        };
        let identity = match &self.identity {
            Some(identity) => Arc::clone(identity),
            None => Arc::clone(self.identity.insert(Arc::new(Identity::generate()?))),
        };
        let endpoint = match role {
            Role::Receive(impairment) => {
                let rx =
                    receiver::Receiver::new(now, local, Arc::clone(&shared), identity, impairment);
                let candidate = host_candidate(local, rx.ufrag())?;
                shared.subscriber_gate.send(
                    IceCandidate {
                        candidate: candidate.candidate,
                        sdp_mid: candidate.sdp_mid.filter(|m| !m.is_empty()),
                        sdp_m_line_index: candidate.sdp_mline_index,
                        username_fragment: candidate.username_fragment,
                    },
                    &shared.out,
                );
                Endpoint::Receive(rx)
            }
            // The offer carries the candidate.
            Role::Publish(tracks) => {
                Endpoint::Publish(publisher::Publisher::new(now, local, identity, tracks))
            }
        };
        self.conns.insert(
            id,
            Conn {
                endpoint,
                shared,
                own,
                local,
                deadline: None,
                dirty: false,
                failed: false,
            },
        );
        Ok(())
    }

    /// Sends what a connection has to send, handles its events and received media, and
    /// files its next deadline.
    fn drive(&mut self, id: u64, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.dirty = false;
        conn.flush(self.loopback.as_ref());
        let next = if conn.failed {
            None
        } else {
            conn.endpoint.poll_timeout()
        };
        if next != conn.deadline {
            if let Some(at) = conn.deadline {
                self.timers.remove(&(at, id));
            }
            if let Some(at) = next {
                // A deadline already due runs on the next turn, without waiting.
                self.timers.insert((at.max(now), id));
                conn.deadline = Some(at.max(now));
            } else {
                conn.deadline = None;
            }
        }
    }
}

/// A connection's endpoint.
enum Endpoint {
    /// The subscriber side (or a WHEP player).
    Receive(receiver::Receiver),
    /// The publisher side.
    Publish(publisher::Publisher),
}

impl Endpoint {
    fn handle_read(&mut self, now: Instant, from: SocketAddr, datagram: &[u8], arrival: Arrival) {
        match self {
            Endpoint::Receive(rx) => rx.handle_read(now, from, datagram, arrival),
            Endpoint::Publish(tx) => tx.handle_read(now, from, datagram),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Endpoint::Receive(rx) => rx.handle_timeout(now),
            Endpoint::Publish(tx) => tx.handle_timeout(now),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Endpoint::Receive(rx) => rx.poll_timeout(),
            Endpoint::Publish(tx) => tx.poll_timeout(),
        }
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, bytes::Bytes)> {
        match self {
            Endpoint::Receive(rx) => rx.poll_transmit(),
            Endpoint::Publish(tx) => tx.poll_transmit(),
        }
    }

    /// ICE, DTLS and SRTP: candidates, closing and failing are the transport's alone.
    fn transport(&mut self) -> &mut Transport {
        match self {
            Endpoint::Receive(rx) => &mut rx.transport,
            Endpoint::Publish(tx) => &mut tx.transport,
        }
    }
}

/// One connection.
struct Conn {
    endpoint: Endpoint,
    /// The client's state its events are handed over to.
    shared: Arc<Shared>,
    /// The connection's own socket; `None` on the shared loopback socket.
    own: Option<Socket>,
    /// The connection's address (its host candidate).
    local: SocketAddr,
    deadline: Option<Instant>,
    dirty: bool,
    /// The receiver panicked: its state is no longer trusted, it gets nothing more.
    failed: bool,
}

impl Conn {
    fn receive(&mut self, now: Instant, datagram: &[u8], from: SocketAddr, arrival: Arrival) {
        self.contain("a datagram", |endpoint| {
            endpoint.handle_read(now, from, datagram, arrival)
        });
    }

    /// Runs `f` on the receiver unless it failed; a panic (a bug, or the stack's parsers on
    /// hostile input) fails this connection only, not every bot on the engine.
    fn contain(&mut self, what: &str, f: impl FnOnce(&mut Endpoint)) {
        if self.failed {
            return;
        }
        let endpoint = &mut self.endpoint;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(endpoint))).is_err() {
            tracing::error!(local = %self.local, "engine connection panicked on {what}; failing it");
            self.failed = true;
            self.endpoint.transport().fail();
        }
        self.hand_over_events();
    }

    /// Hands the endpoint's events over to the client: connection states into its watch.
    fn hand_over_events(&mut self) {
        while let Some(event) = self.endpoint.transport().poll_event() {
            match event {
                Event::State(Target::Publisher, state) => {
                    self.shared.states.send_modify(|s| s.publisher = state)
                }
                Event::State(Target::Subscriber, state) => {
                    self.shared.states.send_modify(|s| s.subscriber = state)
                }
            }
        }
    }

    fn flush(&mut self, loopback: Option<&Socket>) {
        self.hand_over_events();
        let Some(socket) = self.own.as_ref().or(loopback) else {
            return;
        };
        let src_ip = self.own.is_none().then(|| self.local.ip());
        while let Some((destination, contents)) = self.endpoint.poll_transmit() {
            let transmit = Transmit {
                destination,
                ecn: None,
                contents: &contents,
                segment_size: None,
                src_ip,
            };
            if let Err(e) = socket.state.try_send((&socket.io).into(), &transmit) {
                // RTCP and ICE only: a full buffer loses one report, as a network would.
                tracing::trace!(error = %e, "subscriber socket write");
            }
        }
    }
}

/// The host candidate for a connection's address and ICE username fragment.
fn host_candidate(addr: SocketAddr, ufrag: &str) -> Result<RTCIceCandidateInit, ClientError> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    let mut init = RTCIceCandidate::from(&candidate).to_json()?;
    init.username_fragment = Some(ufrag.to_owned());
    Ok(init)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_connection_fails_alone() {
        let (out, _rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Shared::new(out, Default::default(), 0);
        let identity = Arc::new(Identity::generate().expect("certificate"));
        let local: SocketAddr = "127.1.0.1:5000".parse().expect("addr");
        let now = Instant::now();
        let mut conn = Conn {
            endpoint: Endpoint::Receive(receiver::Receiver::new(
                now,
                local,
                Arc::clone(&shared),
                identity,
                Impairment::default(),
            )),
            shared: Arc::clone(&shared),
            own: None,
            local,
            deadline: None,
            dirty: false,
            failed: false,
        };
        conn.contain("a test", |_| panic!("a bug"));
        assert!(conn.failed);
        assert_eq!(
            shared.states.borrow().subscriber,
            rtc::peer_connection::state::RTCPeerConnectionState::Failed
        );
        let mut called = false;
        conn.contain("a test", |_| called = true);
        assert!(!called, "a failed connection gets nothing more");
    }
}
