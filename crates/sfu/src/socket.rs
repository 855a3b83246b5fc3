//! The media socket's batched I/O: what one engine sends and receives, in as few system calls
//! as the kernel allows.
//!
//! - Receive: `recvmmsg` batches (quinn-udp), with UDP GRO where the kernel offers it (one
//!   buffer may then hold several datagrams of one source, `stride` bytes apart).
//! - Send: at each flush the outbox is planned ([`plan`]) into messages: the datagrams grouped
//!   by destination (each destination's order kept), a run of equal-size datagrams to one
//!   destination (the last may be shorter) becoming one UDP GSO datagram (`UDP_SEGMENT`); then
//!   every message of one segment size goes out in one `sendmmsg` (nix), so a fan-out of one
//!   video frame to fifty subscribers is one or two system calls, not hundreds.
//!
//! [`plan`] is pure and unit-tested; [`MediaSocket`] owns the socket and the reusable buffers.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use bytes::BytesMut;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams one GSO send carries (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Most bytes one GSO send carries (an IP datagram's limit, with room for headers).
const MAX_GSO_BYTES: usize = 65_000;
/// Messages per `sendmmsg` call.
const SEND_BATCH: usize = 256;
/// Receive buffer per batch slot: a GRO-coalesced read can fill 64 KiB.
const RECV_BUF: usize = 64 * 1024;
/// Kernel socket buffers asked for (capped by `net.core.rmem_max`/`wmem_max`): a busy engine
/// that pauses a few milliseconds must not lose what arrives meanwhile.
const KERNEL_BUFFER: usize = 4 << 20;

/// One message of a planned flush: `count` datagrams (in the plan's order, from `first`) to
/// `dest`, every one `segment` bytes but the last, which may be shorter. More than one is a
/// GSO send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// Where it goes.
    pub dest: SocketAddr,
    /// Index of its first datagram in the plan's order.
    pub first: usize,
    /// How many datagrams.
    pub count: usize,
    /// The size of every datagram but the last.
    pub segment: usize,
    /// Its place among its destination's messages (0 first): messages are sent round by
    /// round, so a destination's datagrams never overtake each other.
    pub round: usize,
}

/// Plans a flush of `outbox`: `order` gets the outbox's indices grouped by destination (each
/// destination's datagrams in their order), `messages` the runs to send, at most
/// `max_segments` datagrams each (1: no GSO).
pub fn plan(
    outbox: &[(SocketAddr, BytesMut)],
    max_segments: usize,
    order: &mut Vec<usize>,
    messages: &mut Vec<Message>,
) {
    order.clear();
    messages.clear();
    order.extend(0..outbox.len());
    // Stable: a destination's datagrams keep their order.
    order.sort_by_key(|&i| outbox[i].0);
    let max_segments = max_segments.clamp(1, MAX_SEGMENTS);
    let mut current: Option<(Message, usize, bool)> = None; // (message, bytes, closed)
    for (pos, &i) in order.iter().enumerate() {
        let (dest, data) = (&outbox[i].0, outbox[i].1.len());
        if let Some((m, bytes, closed)) = &mut current {
            let fits = m.dest == *dest
                && !*closed
                && m.count < max_segments
                && *bytes + data <= MAX_GSO_BYTES
                && data <= m.segment;
            if fits {
                m.count += 1;
                *bytes += data;
                // A shorter datagram can only end a run.
                *closed = data < m.segment;
                continue;
            }
            messages.push(*m);
        }
        let round = match &current {
            Some((m, _, _)) if m.dest == *dest => m.round + 1,
            _ => 0,
        };
        let m = Message {
            dest: *dest,
            first: pos,
            count: 1,
            segment: data,
            round,
        };
        current = Some((m, data, false));
    }
    if let Some((m, _, _)) = current {
        messages.push(m);
    }
}

/// What one flush did, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams (segments) handed to the kernel.
    pub datagrams: u64,
    /// Messages (one destination each; a GSO message carries several datagrams).
    pub messages: u64,
    /// System calls made.
    pub calls: u64,
    /// Datagrams the kernel refused (other than a full buffer).
    pub failed: u64,
}

/// One engine's UDP socket with its batching state.
pub struct MediaSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Receive slots (`RECV_BUF` bytes each) and their metadata.
    recv_bufs: Vec<Vec<u8>>,
    recv_meta: Vec<RecvMeta>,
    /// Send: the plan, and preallocated `sendmmsg` headers with and without a GSO cmsg.
    order: Vec<usize>,
    messages: Vec<Message>,
    gso_headers: MultiHeaders<SockaddrStorage>,
    plain_headers: MultiHeaders<SockaddrStorage>,
    max_segments: usize,
}

impl MediaSocket {
    /// Wraps a bound socket (inside the tokio runtime that will drive it).
    pub fn new(socket: std::net::UdpSocket) -> io::Result<MediaSocket> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // Best effort: the kernel may cap (or refuse) larger buffers; the defaults still work.
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), KERNEL_BUFFER);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), KERNEL_BUFFER);
        let socket = UdpSocket::from_std(socket)?;
        let batch = quinn_udp::BATCH_SIZE.max(1);
        Ok(MediaSocket {
            socket,
            max_segments: state.max_gso_segments().min(MAX_SEGMENTS),
            state,
            recv_bufs: vec![vec![0; RECV_BUF]; batch],
            recv_meta: vec![RecvMeta::default(); batch],
            order: Vec::new(),
            messages: Vec::new(),
            gso_headers: MultiHeaders::preallocate(SEND_BATCH, Some(nix::cmsg_space!(u16))),
            plain_headers: MultiHeaders::preallocate(SEND_BATCH, None),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Datagrams per GSO send this socket allows (1: no GSO).
    pub fn max_segments(&self) -> usize {
        self.max_segments
    }

    /// Waits until the socket is readable.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Reads one batch without waiting, calling `each(datagram, from)` for every datagram;
    /// returns how many it read (0: nothing was waiting).
    pub fn recv_batch(&mut self, mut each: impl FnMut(&[u8], SocketAddr)) -> io::Result<usize> {
        let Self {
            socket,
            state,
            recv_bufs,
            recv_meta,
            ..
        } = self;
        let read = socket.try_io(Interest::READABLE, || {
            let mut slices: Vec<IoSliceMut<'_>> =
                recv_bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            state.recv(UdpSockRef::from(&*socket), &mut slices, recv_meta)
        });
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut datagrams = 0;
        for (meta, buf) in recv_meta.iter().zip(recv_bufs.iter()).take(n) {
            if meta.len == 0 {
                // An empty datagram is still a datagram (and counted as one).
                each(&[], meta.addr);
                datagrams += 1;
                continue;
            }
            let stride = meta.stride.max(1);
            for d in buf[..meta.len].chunks(stride) {
                each(d, meta.addr);
                datagrams += 1;
            }
        }
        Ok(datagrams)
    }

    /// Sends every datagram of `outbox` (then cleared), batched as the module docs say.
    /// Waits only while the kernel's send buffer is full.
    pub async fn flush(&mut self, outbox: &mut Vec<(SocketAddr, BytesMut)>) -> Flushed {
        let mut done = Flushed::default();
        if outbox.is_empty() {
            return done;
        }
        plan(
            outbox,
            self.max_segments,
            &mut self.order,
            &mut self.messages,
        );
        // Round by round (a destination's first message, then its second, ...), one sendmmsg
        // per segment size within a round: GSO messages by size, then single datagrams.
        let key = |m: &Message| {
            if m.count == 1 {
                (m.round, true, 0)
            } else {
                (m.round, false, m.segment)
            }
        };
        self.messages.sort_by_key(key);
        let mut start = 0;
        while start < self.messages.len() {
            let first = key(&self.messages[start]);
            let end = self.messages[start..]
                .iter()
                .position(|m| key(m) != first)
                .map_or(self.messages.len(), |p| start + p);
            let mut at = start;
            while at < end {
                let chunk = (end - at).min(SEND_BATCH);
                match self.send_group(outbox, at, chunk).await {
                    Ok(sent) => {
                        done.calls += 1;
                        for m in &self.messages[at..at + sent] {
                            done.messages += 1;
                            done.datagrams += m.count as u64;
                        }
                        at += sent.max(1);
                    }
                    Err(_) => {
                        // The first message of the call was refused (e.g. an unreachable
                        // destination): count it and go on with the rest.
                        done.calls += 1;
                        done.failed += self.messages[at].count as u64;
                        at += 1;
                    }
                }
            }
            start = end;
        }
        outbox.clear();
        done
    }

    /// Sends messages `at..at + count` (one segment size) in one `sendmmsg`; returns how many
    /// the kernel took.
    async fn send_group(
        &mut self,
        outbox: &[(SocketAddr, BytesMut)],
        at: usize,
        count: usize,
    ) -> io::Result<usize> {
        let messages = &self.messages[at..at + count];
        let slices: Vec<Vec<IoSlice<'_>>> = messages
            .iter()
            .map(|m| {
                self.order[m.first..m.first + m.count]
                    .iter()
                    .map(|&i| IoSlice::new(&outbox[i].1))
                    .collect()
            })
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = messages
            .iter()
            .map(|m| Some(SockaddrStorage::from(m.dest)))
            .collect();
        let gso = messages[0].count > 1;
        let segment = u16::try_from(messages[0].segment).unwrap_or(u16::MAX);
        let fd = self.socket.as_raw_fd();
        let headers = if gso {
            &mut self.gso_headers
        } else {
            &mut self.plain_headers
        };
        loop {
            let cmsg_gso = [ControlMessage::UdpGsoSegments(&segment)];
            let cmsgs: &[ControlMessage<'_>] = if gso { &cmsg_gso } else { &[] };
            let sent = self.socket.try_io(Interest::WRITABLE, || {
                sendmmsg(fd, headers, &slices, &addrs, cmsgs, MsgFlags::empty())
                    .map(|r| r.count())
                    .map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.socket.writable().await?;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(port: u16, len: usize) -> (SocketAddr, BytesMut) {
        (
            SocketAddr::from(([127, 0, 0, 1], port)),
            BytesMut::from(&vec![port as u8; len][..]),
        )
    }

    /// (port, first, count, segment, round) per message.
    type Planned = Vec<(u16, usize, usize, usize, usize)>;

    fn planned(outbox: &[(SocketAddr, BytesMut)], max: usize) -> (Vec<usize>, Planned) {
        let (mut order, mut messages) = (Vec::new(), Vec::new());
        plan(outbox, max, &mut order, &mut messages);
        let m = messages
            .iter()
            .map(|m| (m.dest.port(), m.first, m.count, m.segment, m.round))
            .collect();
        (order, m)
    }

    #[test]
    fn runs_of_equal_size_to_one_destination_become_one_gso_message() {
        // A frame of three packets (the last shorter) to two subscribers, interleaved as the
        // fan-out writes them, then an audio packet to the first.
        let outbox = vec![
            dg(1, 1200),
            dg(2, 1200),
            dg(1, 1200),
            dg(2, 1200),
            dg(1, 700),
            dg(2, 700),
            dg(1, 90),
        ];
        let (order, messages) = planned(&outbox, 64);
        assert_eq!(
            order,
            [0, 2, 4, 6, 1, 3, 5],
            "grouped, each destination in order"
        );
        assert_eq!(
            messages,
            [(1, 0, 3, 1200, 0), (1, 3, 1, 90, 1), (2, 4, 3, 1200, 0)],
            "the shorter packet ends a run; a datagram after it starts a new one"
        );
    }

    #[test]
    fn larger_datagrams_segment_limits_and_no_gso_split_runs() {
        let outbox = vec![dg(1, 500), dg(1, 900), dg(1, 900), dg(1, 900)];
        let (_, messages) = planned(&outbox, 64);
        // A larger datagram cannot join a run of smaller segments.
        assert_eq!(messages, [(1, 0, 1, 500, 0), (1, 1, 3, 900, 1)]);
        let (_, messages) = planned(&outbox, 2);
        assert_eq!(
            messages,
            [(1, 0, 1, 500, 0), (1, 1, 2, 900, 1), (1, 3, 1, 900, 2)]
        );
        let (_, messages) = planned(&outbox, 1);
        assert_eq!(messages.len(), 4, "without GSO every datagram is a message");
        // The byte limit: 60 datagrams of 1200 bytes exceed 65,000 bytes.
        let big: Vec<_> = (0..60).map(|_| dg(3, 1200)).collect();
        let (_, messages) = planned(&big, 64);
        assert_eq!(messages, [(3, 0, 54, 1200, 0), (3, 54, 6, 1200, 1)]);
        let (order, messages) = planned(&[], 64);
        assert!(order.is_empty() && messages.is_empty());
    }

    #[tokio::test]
    async fn a_flush_delivers_every_datagram_in_order_per_destination() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut socket = MediaSocket::new(server).expect("socket");
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for s in [&a, &b] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .expect("timeout");
        }
        let (pa, pb) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        let mut outbox = Vec::new();
        for i in 0..10u8 {
            let len = if i == 9 { 300 } else { 1000 };
            for (to, tag) in [(pa, 0xa0), (pb, 0xb0)] {
                let mut d = BytesMut::from(&vec![tag; len][..]);
                d[0] = i;
                outbox.push((to, d));
            }
        }
        let flushed = socket.flush(&mut outbox).await;
        assert!(outbox.is_empty());
        let gso = socket.max_segments() > 1;
        assert_eq!(
            (
                flushed.datagrams,
                flushed.messages,
                flushed.calls,
                flushed.failed
            ),
            if gso { (20, 2, 1, 0) } else { (20, 20, 1, 0) },
            "one sendmmsg; with GSO one message per destination"
        );
        for (s, tag) in [(&a, 0xa0u8), (&b, 0xb0)] {
            let mut buf = [0u8; 2048];
            for i in 0..10u8 {
                let (n, _) = s.recv_from(&mut buf).expect("every datagram arrives");
                assert_eq!(buf[0], i, "in order");
                assert_eq!(n, if i == 9 { 300 } else { 1000 }, "segmented back");
                assert_eq!(buf[1], tag);
            }
        }
    }
}
