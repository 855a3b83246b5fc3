//! ICE-TCP on a media engine (RFC 6544): the engine's TCP listener, its connections and the
//! RFC 4571 framing (a 2-byte big-endian length before every STUN, DTLS, RTP or RTCP packet).
//!
//! Each engine listens on TCP at its UDP socket's address and port (`media.ice_tcp`), and
//! every peer connection hands out a passive TCP host candidate there beside the UDP one. A
//! client whose UDP is blocked connects, and the connection is one more way into the same
//! [`Core`]: each frame is handed to the core like a datagram, tagged TCP, and what the core
//! queues for a TCP path ([`Core::take_tcp_transmits`]) goes back framed on the connection.
//!
//! [`TcpTransport`] owns the listener and the connections' routing state: a connection's first
//! frame must be a STUN check naming a known ufrag whose MESSAGE-INTEGRITY verifies
//! ([`Core::authenticate_tcp`]), within [`AUTH_TIMEOUT`] of the accept, or it is closed; from
//! then on the connection is bound to that peer connection (the connection is the route; no
//! address is learned). A peer connection that goes closes its connections; a connection that
//! closes takes its route with it. Bounds: `media.max_tcp_connections` per engine, at most
//! [`MAX_FRAME`] bytes buffered per frame (longer frames are skipped, never buffered), and
//! [`WRITE_QUEUE`] packets queued per connection (beyond it packets are dropped, counted
//! `tcp_backlog`, as a full UDP buffer would drop them).
//!
//! Each connection is a task on the engine's own (single-threaded) runtime that reads frames
//! ([`FrameDecoder`]) into one channel the engine drains in batches, and writes the packets
//! queued for it, framed, in batches.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::debug;

use crate::core::Core;
use crate::metrics::Metrics;
use crate::router::Unroutable;
use crate::types::PeerKey;

/// Largest frame handed to the core. A browser's packets over ICE-TCP are the size of its UDP
/// datagrams (about 1,200 bytes); a longer frame (RFC 4571 allows 65,535) is skipped as its
/// bytes stream by and counted `tcp_oversize`.
pub const MAX_FRAME: usize = 8 * 1024;
/// Time a new connection has to send its authenticated STUN check.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Packets queued per connection before new ones are dropped (`tcp_backlog`): about a second
/// of a 2.5 Mbit/s video layer; older media is useless to a real-time receiver.
pub const WRITE_QUEUE: usize = 256;
/// A connection whose peer does not take a batch of writes within this long is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;
/// Frames the engine takes from its connections per batch.
const INBOUND_BATCH: usize = 256;
/// Packets a connection writes per system call, at most.
const WRITE_BATCH: usize = 64;

/// What a [`FrameDecoder`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame's payload.
    Packet(BytesMut),
    /// A frame longer than [`MAX_FRAME`], with its length: its bytes are skipped.
    Oversize(usize),
}

/// RFC 4571 deframing over a byte stream, in place: reads go into [`FrameDecoder::read_buf`],
/// frames come out of [`FrameDecoder::next_frame`] as views of the same buffer (no copy).
/// Never holds more than one partial frame of at most [`MAX_FRAME`] bytes plus one read.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// Bytes of an oversize frame still to be skipped.
    skip: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The buffer to read into, with room for at least one more read.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        &mut self.buf
    }

    /// Appends bytes as a read would (tests).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held (a partial frame).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, if the bytes read so far hold one. Empty frames are skipped.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len());
                self.buf.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return None;
                }
            }
            if self.buf.len() < 2 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
            if len > MAX_FRAME {
                self.buf.advance(2);
                let held = len.min(self.buf.len());
                self.buf.advance(held);
                self.skip = len - held;
                return Some(Frame::Oversize(len));
            }
            if self.buf.len() < 2 + len {
                return None;
            }
            self.buf.advance(2);
            let packet = self.buf.split_to(len);
            if len > 0 {
                return Some(Frame::Packet(packet));
            }
        }
    }
}

/// Appends `packet` to `out` with its RFC 4571 length prefix; false (nothing written) if it
/// is too long to frame.
pub fn frame_into(out: &mut BytesMut, packet: &[u8]) -> bool {
    let Ok(len) = u16::try_from(packet.len()) else {
        return false;
    };
    out.reserve(2 + packet.len());
    out.put_u16(len);
    out.extend_from_slice(packet);
    true
}

type ConnId = u64;

/// What a connection task tells the engine.
enum Inbound {
    Frame(ConnId, Frame),
    Closed(ConnId),
}

/// One connection, as the engine sees it.
struct Conn {
    from: SocketAddr,
    /// The peer connection it is bound to, once its first check verified.
    peer: Option<PeerKey>,
    /// Its write queue; dropping it ends the connection once the queue is written.
    tx: mpsc::Sender<BytesMut>,
}

/// What woke the engine up on the TCP side.
pub enum TcpEvent {
    /// A connection was accepted (or accepting failed).
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    /// Frames (or closes) arrived from connections.
    Inbound,
    /// An unauthenticated connection's deadline passed.
    Deadline,
}

/// Counters resolved once.
struct TcpCounters {
    /// Live connection tasks: the per-engine gauge is also the count the limit is checked
    /// against (each task decrements it when it ends).
    connections: IntGauge,
    frames_in: IntCounter,
    frames_out: IntCounter,
    backlog: IntCounter,
    no_connection: IntCounter,
    oversize: IntCounter,
    unauthenticated: IntCounter,
    auth_timeout: IntCounter,
    refused: IntCounter,
}

/// One engine's ICE-TCP side. See the module docs.
pub struct TcpTransport {
    listener: TcpListener,
    max_connections: usize,
    next_id: ConnId,
    conns: HashMap<ConnId, Conn>,
    by_addr: HashMap<SocketAddr, ConnId>,
    /// Unauthenticated connections by deadline (accept order, so deadlines are ordered).
    pending: VecDeque<(Instant, ConnId)>,
    inbound_tx: mpsc::Sender<Inbound>,
    inbound_rx: mpsc::Receiver<Inbound>,
    batch: Vec<Inbound>,
    closed_peers: Vec<PeerKey>,
    counters: TcpCounters,
}

impl TcpTransport {
    /// Wraps engine `engine`'s bound listener (inside the runtime that will drive it).
    pub fn new(
        listener: std::net::TcpListener,
        max_connections: usize,
        metrics: &Metrics,
        engine: usize,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let engine = engine.to_string();
        let drop = |reason: &str| metrics.dropped.with_label_values(&[reason]);
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        Ok(Self {
            listener,
            max_connections,
            next_id: 0,
            conns: HashMap::new(),
            by_addr: HashMap::new(),
            pending: VecDeque::new(),
            inbound_tx,
            inbound_rx,
            batch: Vec::with_capacity(INBOUND_BATCH),
            closed_peers: Vec::new(),
            counters: TcpCounters {
                connections: metrics.engine_tcp_connections.with_label_values(&[&engine]),
                frames_in: metrics
                    .engine_tcp_frames
                    .with_label_values(&[&engine, "in"]),
                frames_out: metrics
                    .engine_tcp_frames
                    .with_label_values(&[&engine, "out"]),
                backlog: drop("tcp_backlog"),
                no_connection: drop("tcp_no_connection"),
                oversize: drop("tcp_oversize"),
                unauthenticated: drop("tcp_unauthenticated"),
                auth_timeout: drop("tcp_auth_timeout"),
                refused: drop("tcp_over_limit"),
            },
        })
    }

    /// The listener's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connections held (authenticated or not).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Waits for the next thing to do: a connection to accept, frames to route, a deadline.
    /// Cancel-safe (the engine selects over it).
    pub async fn next_event(&mut self) -> TcpEvent {
        let Self {
            listener,
            inbound_rx,
            batch,
            pending,
            ..
        } = self;
        let deadline = pending.front().map(|(t, _)| *t);
        tokio::select! {
            accepted = listener.accept() => TcpEvent::Accepted(accepted),
            _ = inbound_rx.recv_many(batch, INBOUND_BATCH) => TcpEvent::Inbound,
            _ = sleep_until(deadline) => TcpEvent::Deadline,
        }
    }

    /// Handles what [`TcpTransport::next_event`] returned: accepts, routes frames into `core`
    /// (drained once after the batch), closes expired connections.
    pub fn handle(&mut self, event: TcpEvent, core: &mut Core, now: Instant) {
        match event {
            TcpEvent::Accepted(Ok((stream, from))) => self.accept(stream, from, now),
            TcpEvent::Accepted(Err(e)) => debug!("tcp accept: {e}"),
            TcpEvent::Inbound => {
                let mut batch = std::mem::take(&mut self.batch);
                let mut frames = 0;
                for msg in batch.drain(..) {
                    match msg {
                        Inbound::Closed(id) => self.close(id),
                        Inbound::Frame(id, frame) => {
                            frames += 1;
                            self.route(core, now, id, frame);
                        }
                    }
                }
                self.batch = batch;
                self.counters.frames_in.inc_by(frames);
                if frames > 0 {
                    core.drain(now);
                }
            }
            TcpEvent::Deadline => self.expire(now),
        }
    }

    /// Sends what the core queued for TCP paths, each packet onto the connection its address
    /// names (`transmits` is emptied); then closes the connections of peers the core closed.
    pub fn send(&mut self, core: &mut Core, transmits: &mut Vec<(SocketAddr, BytesMut)>) {
        core.take_tcp_transmits(transmits);
        let mut sent = 0;
        for (to, packet) in transmits.drain(..) {
            let conn = self.by_addr.get(&to).and_then(|id| self.conns.get(id));
            match conn {
                Some(Conn {
                    peer: Some(_), tx, ..
                }) => match tx.try_send(packet) {
                    Ok(()) => sent += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => self.counters.backlog.inc(),
                    Err(mpsc::error::TrySendError::Closed(_)) => self.counters.no_connection.inc(),
                },
                _ => self.counters.no_connection.inc(),
            }
        }
        self.counters.frames_out.inc_by(sent);
        let mut closed = std::mem::take(&mut self.closed_peers);
        core.take_closed_tcp_peers(&mut closed);
        if !closed.is_empty() {
            let gone: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.peer.is_some_and(|p| closed.contains(&p)))
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                self.close(id);
            }
        }
        self.closed_peers = closed;
    }

    fn accept(&mut self, stream: TcpStream, from: SocketAddr, now: Instant) {
        // Each task decrements the gauge when it ends, so it counts live connections.
        if self.counters.connections.get() >= self.max_connections as i64 {
            self.counters.refused.inc();
            return; // dropping the stream closes it
        }
        let _ = stream.set_nodelay(true);
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        self.counters.connections.inc();
        let live = LiveGuard(self.counters.connections.clone());
        tokio::spawn(connection(id, stream, self.inbound_tx.clone(), rx, live));
        if let Some(old) = self.by_addr.insert(from, id) {
            self.conns.remove(&old);
        }
        self.conns.insert(
            id,
            Conn {
                from,
                peer: None,
                tx,
            },
        );
        self.pending.push_back((now + AUTH_TIMEOUT, id));
    }

    fn route(&mut self, core: &mut Core, now: Instant, id: ConnId, frame: Frame) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return; // closed meanwhile
        };
        let packet = match frame {
            Frame::Packet(p) => p,
            Frame::Oversize(len) => {
                self.counters.oversize.inc();
                if conn.peer.is_none() {
                    debug!(from = %conn.from, len, "tcp: oversize first frame");
                    self.counters.unauthenticated.inc();
                    self.close(id);
                }
                return;
            }
        };
        let peer = match conn.peer {
            Some(peer) => peer,
            None => match core.authenticate_tcp(&packet) {
                Ok(peer) => {
                    conn.peer = Some(peer);
                    peer
                }
                Err(why) => {
                    let why: Unroutable = why;
                    debug!(from = %conn.from, reason = why.reason(), "tcp: first frame refused");
                    self.counters.unauthenticated.inc();
                    self.close(id);
                    return;
                }
            },
        };
        if !core.receive_tcp(now, peer, conn.from, packet) {
            self.close(id);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.pending.front() {
            if deadline > now {
                break;
            }
            self.pending.pop_front();
            if self.conns.get(&id).is_some_and(|c| c.peer.is_none()) {
                self.counters.auth_timeout.inc();
                self.close(id);
            }
        }
    }

    /// Forgets a connection: its route goes, and its task ends once its queue is written.
    fn close(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.remove(&id) {
            if self.by_addr.get(&conn.from) == Some(&id) {
                self.by_addr.remove(&conn.from);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Decrements the live-connection gauge when a connection task ends.
struct LiveGuard(IntGauge);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One connection: reads frames to the engine, writes what the engine queues, until either
/// side ends (the peer closes, an error, a write that takes too long, or the engine drops the
/// queue's sender).
async fn connection(
    id: ConnId,
    stream: TcpStream,
    inbound: mpsc::Sender<Inbound>,
    mut outbound: mpsc::Receiver<BytesMut>,
    live: LiveGuard,
) {
    let (mut rd, mut wr) = stream.into_split();
    let reading = async {
        let mut decoder = FrameDecoder::new();
        loop {
            match rd.read_buf(decoder.read_buf()).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            while let Some(frame) = decoder.next_frame() {
                if inbound.send(Inbound::Frame(id, frame)).await.is_err() {
                    return;
                }
            }
        }
    };
    let writing = async {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        while outbound.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            buf.clear();
            for packet in batch.drain(..) {
                frame_into(&mut buf, &packet);
            }
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&buf)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.shutdown()).await;
    };
    tokio::select! {
        _ = reading => {}
        _ = writing => {}
    }
    drop(live);
    let _ = inbound.send(Inbound::Closed(id)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(packets: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for p in packets {
            assert!(frame_into(&mut out, p));
        }
        out.to_vec()
    }

    fn drain(d: &mut FrameDecoder) -> Vec<Frame> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    fn packet(bytes: &[u8]) -> Frame {
        Frame::Packet(BytesMut::from(bytes))
    }

    #[test]
    fn several_frames_in_one_read_come_out_in_order() {
        let mut d = FrameDecoder::new();
        d.extend_from_slice(&framed(&[b"one", b"two!", &[7u8; 1200]]));
        assert_eq!(
            drain(&mut d),
            [packet(b"one"), packet(b"two!"), packet(&[7u8; 1200])]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn a_frame_split_at_every_byte_comes_out_once_whole() {
        let stream = framed(&[b"hello", &[1u8; 300], b"x"]);
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for b in &stream {
            d.extend_from_slice(&[*b]);
            out.extend(drain(&mut d));
        }
        assert_eq!(out, [packet(b"hello"), packet(&[1u8; 300]), packet(b"x")]);
        // A header split from its body, and a body split in two.
        let mut d = FrameDecoder::new();
        d.extend_from_slice(&stream[..1]);
        assert_eq!(d.next_frame(), None);
        d.extend_from_slice(&stream[1..4]);
        assert_eq!(d.next_frame(), None);
        d.extend_from_slice(&stream[4..]);
        assert_eq!(drain(&mut d).len(), 3);
    }

    #[test]
    fn oversize_frames_are_skipped_without_being_buffered_and_the_stream_goes_on() {
        let big = vec![9u8; MAX_FRAME + 1];
        let max = vec![8u8; MAX_FRAME];
        let mut stream = framed(&[b"before", &big, &max, &[]]);
        stream.extend(framed(&[b"after"]));
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        let mut most = 0;
        for chunk in stream.chunks(1000) {
            d.extend_from_slice(chunk);
            out.extend(drain(&mut d));
            most = most.max(d.buffered());
        }
        assert_eq!(
            out,
            [
                packet(b"before"),
                Frame::Oversize(MAX_FRAME + 1),
                packet(&max),
                packet(b"after")
            ],
            "the oversize frame is reported, the empty one skipped"
        );
        assert!(most <= MAX_FRAME + 2, "held {most} bytes");
        // The largest length a header can name.
        let mut d = FrameDecoder::new();
        d.extend_from_slice(&[0xff, 0xff, 1, 2, 3]);
        assert_eq!(d.next_frame(), Some(Frame::Oversize(65_535)));
        assert_eq!(d.buffered(), 0, "what arrived of it is dropped at once");
    }

    #[test]
    fn garbage_never_panics_and_is_bounded() {
        // A deterministic byte soup: every frame it yields is at most MAX_FRAME bytes.
        let mut x: u32 = 0x1234_5678;
        let soup: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let mut d = FrameDecoder::new();
        let (mut packets, mut oversize) = (0, 0);
        for chunk in soup.chunks(777) {
            d.read_buf().extend_from_slice(chunk);
            while let Some(f) = d.next_frame() {
                match f {
                    Frame::Packet(p) => {
                        assert!(!p.is_empty() && p.len() <= MAX_FRAME);
                        packets += 1;
                    }
                    Frame::Oversize(n) => {
                        assert!(n > MAX_FRAME);
                        oversize += 1;
                    }
                }
            }
            assert!(d.buffered() <= MAX_FRAME + 2 + 777);
        }
        assert!(packets + oversize > 0);
    }

    #[test]
    fn framing_writes_the_length_and_refuses_what_cannot_be_framed() {
        let mut out = BytesMut::new();
        assert!(frame_into(&mut out, &[0xab; 300]));
        assert_eq!(&out[..3], &[0x01, 0x2c, 0xab]);
        assert_eq!(out.len(), 302);
        assert!(!frame_into(&mut out, &vec![0; 70_000]));
        assert_eq!(out.len(), 302, "nothing written");
    }
}
