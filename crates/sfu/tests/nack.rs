//! Loss repair through the core on a lossy virtual network: the core NACKs what the publisher's
//! leg lost, answers the subscribers' NACKs from its downtracks, and a subscriber ends up with
//! (nearly) every packet. Seeded: the same datagrams are lost on every run.

mod harness;

use std::time::Duration;

#[test]
fn nacks_repair_random_loss_on_both_legs() {
    const PACKETS: usize = 300;
    let mut net = harness::Net::new(3);
    for (c, _, _) in &mut net.subscribers {
        c.seqs.clear();
    }
    // 5 % of datagrams lost in each direction, publisher and subscriber legs alike.
    net.set_loss(0x5eed_1234, 0.05);
    for i in 0..PACKETS {
        net.send_video(i % 90 == 0, 1000);
        net.pump();
        net.advance(Duration::from_millis(33));
    }
    let lost = net.link.lost;
    // The network heals; outstanding NACKs get their answers.
    net.set_loss(1, 0.0);
    for _ in 0..100 {
        net.pump();
        net.advance(Duration::from_millis(10));
    }
    // Without repair a subscriber would miss ~10 % (two lossy hops).
    assert!(lost > (PACKETS as u64) / 10, "the network lost only {lost}");
    for (c, _, _) in &net.subscribers {
        let got = c.seqs.len();
        let missing = PACKETS.saturating_sub(got);
        assert!(
            missing * 100 <= PACKETS,
            "subscriber {} still misses {missing} of {PACKETS} packets after repair",
            c.addr
        );
    }
}
