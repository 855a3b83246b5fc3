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
