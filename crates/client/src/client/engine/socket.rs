//! The engine's sockets: non-blocking UDP sockets read in `recvmmsg` batches (`quinn-udp`),
//! each datagram's arrival time from the kernel's receive timestamp, and the loopback
//! addresses (127.1.x.y) connections on the shared loopback socket are told apart by.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};

use super::super::accounting::Arrival;
use super::super::error::ClientError;

/// Receive buffer per batch slot: a UDP GRO read may coalesce several datagrams.
pub(super) const RECV_BUF: usize = 64 * 1024;
/// The shared loopback socket's receive buffer (capped by `net.core.rmem_max`).
pub(super) const LOOPBACK_RECV_BUFFER: usize = 16 << 20;
/// A non-blocking UDP socket with batched reads.
pub(super) struct Socket {
    pub(super) io: mio::net::UdpSocket,
    pub(super) state: UdpSocketState,
    pub(super) port: u16,
}

impl Socket {
    /// Binds a non-blocking socket at `addr`.
    pub(super) fn bind(addr: SocketAddr) -> Result<Socket, ClientError> {
        let socket = std::net::UdpSocket::bind(addr).map_err(ClientError::Io)?;
        socket.set_nonblocking(true).map_err(ClientError::Io)?;
        let state = UdpSocketState::new((&socket).into()).map_err(ClientError::Io)?;
        let port = socket.local_addr().map_err(ClientError::Io)?.port();
        Ok(Socket {
            io: mio::net::UdpSocket::from_std(socket),
            state,
            port,
        })
    }

    /// Reads until the socket's queue is empty, handing over every datagram.
    pub(super) fn read(
        &self,
        bufs: &mut [[u8; RECV_BUF]],
        metas: &mut [RecvMeta; BATCH_SIZE],
        now: Instant,
        mut on_datagram: impl FnMut(&RecvMeta, &[u8], Arrival),
    ) {
        loop {
            let mut slots = bufs.iter_mut();
            let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
                IoSliceMut::new(slots.next().map_or(&mut [][..], |b| &mut b[..]))
            });
            let n = match self.state.recv((&self.io).into(), &mut iovs, metas) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // e.g. ICMP port unreachable reported on the socket: not fatal.
                    tracing::debug!(error = %e, "subscriber socket read");
                    return;
                }
            };
            let wall = SystemTime::now();
            for (buf, meta) in iovs.iter().zip(metas.iter()).take(n) {
                let arrival = arrival(meta.timestamp, now, wall);
                let stride = meta.stride.max(1);
                for datagram in buf[..meta.len.min(buf.len())].chunks(stride) {
                    on_datagram(meta, datagram, arrival);
                }
            }
            // A short batch emptied the queue; a datagram arriving later wakes us again.
            if n < BATCH_SIZE {
                return;
            }
        }
    }
}

/// The `n`th loopback address handed out: 127.1.0.1 upward, skipping .0 and .255 in the last
/// byte (about 16 million addresses, all of them local on Linux); `None` past the last.
pub(super) fn loopback_ip(n: u32) -> Option<Ipv4Addr> {
    let last = 1 + (n % 254) as u8;
    let rest = n / 254;
    let second = u8::try_from(1 + rest / 256).ok()?;
    Some(Ipv4Addr::new(127, second, (rest % 256) as u8, last))
}

/// When a datagram arrived: the kernel's receive timestamp (`SO_TIMESTAMPNS`) mapped onto both
/// clocks, else the time of the read.
fn arrival(stamp: Option<Duration>, now: Instant, wall: SystemTime) -> Arrival {
    let Some(stamp) = stamp else {
        return Arrival { at: now, wall };
    };
    let stamped = SystemTime::UNIX_EPOCH + stamp;
    // A stamp from the future (clock step) counts as now.
    let age = wall.duration_since(stamped).unwrap_or(Duration::ZERO);
    Arrival {
        at: now.checked_sub(age).unwrap_or(now),
        wall: wall - age,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_distinct_and_skip_broadcast_bytes() {
        assert_eq!(loopback_ip(0), Some(Ipv4Addr::new(127, 1, 0, 1)));
        assert_eq!(loopback_ip(253), Some(Ipv4Addr::new(127, 1, 0, 254)));
        assert_eq!(loopback_ip(254), Some(Ipv4Addr::new(127, 1, 1, 1)));
        assert_eq!(loopback_ip(254 * 256), Some(Ipv4Addr::new(127, 2, 0, 1)));
        assert_eq!(
            loopback_ip(254 * 256 * 255 - 1),
            Some(Ipv4Addr::new(127, 255, 255, 254))
        );
        assert_eq!(loopback_ip(254 * 256 * 255), None);
        let ips: std::collections::HashSet<_> = (0..100_000).filter_map(loopback_ip).collect();
        assert_eq!(ips.len(), 100_000);
    }

    #[test]
    fn arrival_comes_from_the_kernel_stamp() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let since_epoch = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        let a = arrival(Some(since_epoch - Duration::from_millis(3)), now, wall);
        assert_eq!(now - a.at, Duration::from_millis(3));
        assert_eq!(
            wall.duration_since(a.wall).ok(),
            Some(Duration::from_millis(3))
        );
        // No stamp, or one from the future: the read time.
        let a = arrival(None, now, wall);
        assert_eq!((a.at, a.wall), (now, wall));
        let future = Some(since_epoch + Duration::from_secs(1));
        assert_eq!(arrival(future, now, wall).at, now);
    }
}
