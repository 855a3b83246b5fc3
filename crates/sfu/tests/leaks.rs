//! Nothing leaked: 1,000 cycles of a participant joining, publishing and leaving (half of them
//! leave cleanly, half vanish and are removed by the silence timeout) bring the core back to
//! its idle counts, and memory stays flat.

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

const CYCLES: u32 = 1000;

/// This process's resident set size in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

#[test]
fn a_thousand_join_publish_leave_cycles_leak_nothing() {
    let mut net = harness::Net::new_with(1, |c| {
        c.silence_timeout_secs = 5;
    });
    let idle = net.core.counts();
    let mut rss_after_warmup = 0;
    for i in 0..CYCLES {
        let addr: SocketAddr = format!("127.0.0.{}:{}", 2 + i % 200, 40_000 + i % 20_000)
            .parse()
            .expect("addr");
        let g = net.add_publisher(&format!("guest{i}"), addr, 0x5000_0000 + i);
        let key = net.guests[g].1;
        assert!(
            net.core.counts()[3] > idle[3],
            "cycle {i}: the guest's track is published"
        );
        if i % 2 == 0 {
            let now = net.now;
            net.core.leave(now, key);
        } else {
            // Vanishes: nothing more from it; the rest of the call goes on until the silence
            // timeout removes it.
            net.cut.push(addr);
            for _ in 0..24 {
                net.send_video(false, 600);
                net.pump();
                net.advance(Duration::from_millis(250));
                let now = net.now;
                net.core.handle_timeout(now);
            }
            net.cut.clear();
        }
        net.guests.clear();
        net.pump();
        net.answer_offers();
        net.pump();
        let counts = net.core.counts();
        // Timers come and go with the peers that remain; everything else is exactly idle.
        assert_eq!(
            counts[..6],
            idle[..6],
            "cycle {i}: {counts:?} vs idle {idle:?}"
        );
        assert!(
            counts[6] <= idle[6] + 1,
            "cycle {i}: timers {counts:?} vs {idle:?}"
        );
        if i == 100 {
            rss_after_warmup = rss_kib();
        }
    }
    let grown = rss_kib().saturating_sub(rss_after_warmup);
    // Allocator noise stays well under this; a leak of a peer connection per cycle (hundreds
    // of KiB each) does not.
    assert!(
        grown < 16 * 1024,
        "RSS grew {grown} KiB over {} cycles",
        CYCLES - 100
    );
    // The permanent subscriber still receives the permanent publisher without gaps.
    let before = net.subscribers[0].0.rtp_received;
    for _ in 0..30 {
        net.send_video(false, 600);
        net.pump();
    }
    assert!(net.subscribers[0].0.rtp_received >= before + 30);
}
