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
        let now = net.now;
        net.core.handle_datagram(now, &datagram, from);
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

/// NTP time as a `f64` of seconds since the Unix epoch.
fn ntp_to_unix_secs(ntp: u64) -> f64 {
    const NTP_UNIX_OFFSET: f64 = 2_208_988_800.0;
    (ntp >> 32) as f64 + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0 - NTP_UNIX_OFFSET
}

#[test]
fn downtrack_sender_reports_map_wallclock_to_the_rewritten_timestamps() {
    let mut net = harness::Net::new(2);
    // Media at a 30 fps pace for 2.5 s of virtual time, so sender reports go out.
    let start = net.now;
    while net.now < start + Duration::from_millis(2500) {
        net.send_video(false, 800);
        net.pump();
        net.advance(Duration::from_millis(33));
    }
    for (c, _, _) in &net.subscribers {
        let reports: Vec<_> = c
            .sender_reports
            .iter()
            .filter(|(_, rtp, _)| rtp.is_some())
            .collect();
        assert!(
            !reports.is_empty(),
            "subscriber {} got no sender report for its video",
            c.addr
        );
        for (sr, last_rtp, at) in reports {
            let (ssrc, ts, rtp_at) = last_rtp.expect("filtered");
            // The report is about the SSRC this subscriber receives (the downtrack's own).
            assert_eq!(sr.ssrc, ssrc, "sender report for another SSRC");
            // Its RTP time is the last forwarded timestamp advanced by the time since, on the
            // 90 kHz clock: within 50 ms.
            let expected =
                ts.wrapping_add((at.duration_since(rtp_at).as_secs_f64() * 90_000.0) as u32);
            let skew = (sr.rtp_time.wrapping_sub(expected) as i32).unsigned_abs();
            assert!(
                skew < 4_500,
                "SR rtp_time {} vs expected {expected} (skew {skew} ticks)",
                sr.rtp_time
            );
            // Its NTP time is the wallclock now.
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs_f64();
            let ntp = ntp_to_unix_secs(sr.ntp_time);
            assert!((unix - ntp).abs() < 5.0, "SR NTP {ntp} vs wallclock {unix}");
        }
    }
}
