//! Whole calls on the in-process network: the core forwards one publisher's video to every
//! subscriber with continuous sequence numbers, no sockets involved.

mod harness;

use std::time::Duration;

#[test]
fn one_publisher_reaches_every_subscriber_without_gaps() {
    let mut net = harness::Net::new(4);
    let before: Vec<u64> = net
        .subscribers
        .iter()
        .map(|(c, _, _)| c.rtp_received)
        .collect();
    for i in 0..200 {
        net.send_video(i % 50 == 0, 1100);
        net.pump();
    }
    net.run_until(Duration::from_secs(2), |n| {
        n.subscribers
            .iter()
            .zip(&before)
            .all(|((c, _, _), b)| c.rtp_received >= b + 200)
    });
    for (c, _, _) in &net.subscribers {
        assert_eq!(c.seq_gaps, 0, "subscriber {} saw gaps", c.addr);
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[test]
fn garbage_from_connected_peers_harms_nothing() {
    let mut net = harness::Net::new(2);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let senders: Vec<std::net::SocketAddr> = std::iter::once(net.publisher.addr)
        .chain(net.subscribers.iter().map(|(c, _, _)| c.addr))
        .collect();
    for round in 0..3000usize {
        let from = senders[round % senders.len()];
        let len = 1 + (round * 7) % 1300;
        let mut datagram = noise(&mut seed, len);
        // Steer the first byte into each demultiplexing range (RFC 7983): STUN, DTLS, RTP/RTCP.
        datagram[0] = match round % 4 {
            0 => datagram[0] % 4,
            1 => 20 + datagram[0] % 44,
            2 => 128 + datagram[0] % 64,
            _ => datagram[0],
        };
        if round % 4 == 2 && len > 2 {
            // Half of these look like RTCP (payload types 200..=206).
            if round % 8 == 2 {
                datagram[1] = 200 + datagram[1] % 7;
            }
        }
        net.core
            .handle_datagram(std::time::Instant::now(), &datagram, from);
    }
    // The call goes on: media still reaches every subscriber without gaps.
    let before: Vec<u64> = net
        .subscribers
        .iter()
        .map(|(c, _, _)| c.rtp_received)
        .collect();
    for _ in 0..50 {
        net.send_video(false, 900);
        net.pump();
    }
    net.run_until(Duration::from_secs(2), |n| {
        n.subscribers
            .iter()
            .zip(&before)
            .all(|((c, _, _), b)| c.rtp_received >= b + 50)
    });
    for (c, _, _) in &net.subscribers {
        assert_eq!(c.seq_gaps, 0, "subscriber {} saw gaps", c.addr);
    }
}
