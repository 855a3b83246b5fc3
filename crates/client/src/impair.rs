//! Receive-side impairment, so the NACK generator asks for what was dropped, the server
//! retransmits, and loss after retransmission, NACK counts and jitter show the effect (as
//! they would behind a lossy, jittery network):
//!
//! - **Loss** on the UDP socket, below SRTP (a [`Runtime`] wrapping the tokio one whose UDP
//!   sockets drop a share of incoming RTP datagrams). Dropping any higher would let SRTP's
//!   replay window see the packet once and reject the retransmission, which reuses its index.
//! - **Delay** (jitter) in an interceptor at the wire end of the chain, below the NACK
//!   generator and receive statistics: packets are held for a random time and so also
//!   reordered.
//!
//! RTCP, STUN and DTLS are never touched: only media is impaired.

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    Transmit,
};

/// The slot of the [`Impairer`]: closest to the wire, below the RTCP counter.
pub(crate) const SLOT: usize = 400;

/// What to inflict on incoming RTP.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Percentage (0-100) of incoming RTP packets dropped, retransmissions included.
    pub loss_percent: f64,
    /// Each incoming RTP packet is held for a uniformly random 0..=`jitter` (so packets are
    /// also reordered).
    pub jitter: Duration,
}

impl Impairment {
    /// Whether anything is impaired.
    pub fn is_active(&self) -> bool {
        self.loss_percent > 0.0 || !self.jitter.is_zero()
    }

    /// A random hold for one packet: uniformly 0..=`jitter`.
    pub(crate) fn delay(&self) -> Duration {
        self.jitter.mul_f64(rand::random::<f64>())
    }
}

/// Items held back until their release time, released in time order (equal times in the
/// order they came).
pub(crate) struct DelayLine<T> {
    held: BinaryHeap<Reverse<Held<T>>>,
    order: u64,
}

/// An item held back until `at`; `order` keeps equal release times in arrival order.
struct Held<T> {
    at: Instant,
    order: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

impl<T> Default for DelayLine<T> {
    fn default() -> Self {
        Self {
            held: BinaryHeap::new(),
            order: 0,
        }
    }
}

impl<T> DelayLine<T> {
    /// Holds `item` until `at`.
    pub(crate) fn push(&mut self, at: Instant, item: T) {
        self.order += 1;
        self.held.push(Reverse(Held {
            at,
            order: self.order,
            item,
        }));
    }

    /// The next item whose time has come by `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.held.peek().is_some_and(|h| h.0.at <= now) {
            self.held.pop().map(|h| h.0.item)
        } else {
            None
        }
    }

    /// When the next item is due.
    pub(crate) fn next_release(&self) -> Option<Instant> {
        self.held.peek().map(|h| h.0.at)
    }
}

/// Delays incoming RTP per [`Impairment::jitter`]; passes everything else through.
pub(crate) struct Impairer {
    impairment: Impairment,
    held: DelayLine<TaggedPacket>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl Impairer {
    pub fn new(impairment: Impairment) -> Self {
        Self {
            impairment,
            held: DelayLine::default(),
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Impairer {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if !self.impairment.is_active() || !matches!(msg.message.packet, Packet::Rtp(_)) {
            self.read_queue.push_back(msg);
            return Ok(());
        }
        if self.impairment.jitter.is_zero() {
            self.read_queue.push_back(msg);
            return Ok(());
        }
        self.held.push(msg.now + self.impairment.delay(), msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        while let Some(mut packet) = self.held.pop_due(now) {
            // It "arrives" now, as far as everything above is concerned.
            packet.now = now;
            self.read_queue.push_back(packet);
        }
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.held.next_release()
    }
}

impl Interceptor for Impairer {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// The tokio runtime, except that its UDP sockets drop `loss_percent` of incoming RTP.
pub(crate) fn lossy_runtime(loss_percent: f64) -> Result<Arc<dyn Runtime>, crate::ClientError> {
    let inner = webrtc::runtime::default_runtime().ok_or_else(|| {
        crate::ClientError::Protocol("no async runtime for the lossy socket".into())
    })?;
    Ok(Arc::new(LossyRuntime {
        inner,
        loss_percent,
    }))
}

#[derive(Debug)]
struct LossyRuntime {
    inner: Arc<dyn Runtime>,
    loss_percent: f64,
}

impl Runtime for LossyRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(LossySocket {
            inner: self.inner.wrap_udp_socket(socket)?,
            loss_percent: self.loss_percent,
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "lossy"
    }
}

/// Whether a datagram is RTP (RFC 7983 demultiplexing: first byte 128..=191, and RFC 5761:
/// payload type outside the RTCP range 64..=95).
pub(crate) fn is_rtp(datagram: &[u8]) -> bool {
    match datagram {
        [b0, b1, ..] => (128..=191).contains(b0) && !(64..=95).contains(&(b1 & 0x7F)),
        _ => false,
    }
}

#[derive(Debug)]
struct LossySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    loss_percent: f64,
}

impl AsyncUdpSocket for LossySocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    /// Receives one message at a time and drops RTP ones at random.
    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if bufs.is_empty() || meta.is_empty() {
            return self.inner.poll_recv(cx, bufs, meta);
        }
        loop {
            match self.inner.poll_recv(cx, &mut bufs[..1], &mut meta[..1]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    let len = meta[0].len.min(bufs[0].len());
                    let drop = is_rtp(&bufs[0][..len])
                        && rand::random::<f64>() * 100.0 < self.loss_percent;
                    if !drop {
                        return Poll::Ready(Ok(n));
                    }
                    // Dropped: poll again (registers the waker when nothing is pending).
                }
                other => return other,
            }
        }
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_line_releases_in_time_order_and_ties_in_arrival_order() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut line = DelayLine::default();
        line.push(ms(5), "c");
        line.push(ms(2), "a");
        line.push(ms(2), "b");
        assert_eq!(line.next_release(), Some(ms(2)));
        assert_eq!(line.pop_due(ms(1)), None);
        assert_eq!(line.pop_due(ms(3)), Some("a"));
        assert_eq!(line.pop_due(ms(3)), Some("b"));
        assert_eq!(line.pop_due(ms(3)), None);
        assert_eq!(line.pop_due(ms(5)), Some("c"));
        assert_eq!(line.next_release(), None);
    }

    #[test]
    fn tells_rtp_from_rtcp_stun_and_dtls() {
        assert!(is_rtp(&[0x80, 96, 0, 1]));
        assert!(is_rtp(&[0x90, 0x80 | 111, 0, 1]));
        assert!(!is_rtp(&[0x81, 200, 0, 1]), "RTCP sender report");
        assert!(!is_rtp(&[0x81, 206, 0, 1]), "RTCP PLI");
        assert!(!is_rtp(&[0x00, 0x01, 0, 0]), "STUN");
        assert!(!is_rtp(&[22, 0xFE, 0xFD]), "DTLS");
        assert!(!is_rtp(&[0x80]));
    }
}
