//! Loss repair through the core on a lossy virtual network: the core NACKs what the publisher's
//! leg lost, answers the subscribers' NACKs from its downtracks, and a subscriber ends up with
//! (nearly) every packet. Seeded: the same datagrams are lost on every run. A subscriber that
//! floods NACKs gets a bounded number of resends.

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

#[test]
fn a_nack_flood_costs_bounded_retransmissions() {
    let mut net = harness::Net::new(2);
    // Fill the downtracks' send history: 400 video packets at 30 fps.
    for i in 0..400 {
        net.send_video(i % 90 == 0, 1000);
        net.pump();
        net.advance(Duration::from_millis(33));
    }
    let last = net.subscribers[0].0.last_seq.expect("received video");
    let before = [net.sent_to(0), net.sent_to(1)];
    // One second of floods from subscriber 0: every 10 ms a NACK naming the last 300 packets
    // (they are all in the history; every one was already received).
    let seqs: Vec<u16> = (0..300u16).rev().map(|k| last.wrapping_sub(k)).collect();
    for _ in 0..100 {
        assert!(net.send_nack(0, &seqs));
        net.pump();
        net.advance(Duration::from_millis(10));
    }
    let resent = net.sent_to(0) - before[0];
    // Unbudgeted that would be 30,000 resends; the budget allows the burst and one second of
    // its rate, and no packet twice within 100 ms.
    let limit = (chorus_sfu::nack::BURST + chorus_sfu::nack::RATE) as u64 + 50;
    assert!(
        resent <= limit,
        "{resent} datagrams to the flooding subscriber, limit {limit}"
    );
    assert!(resent >= 100, "NACKs are still answered: {resent}");
    // The other subscriber is untouched.
    assert!(
        net.sent_to(1) - before[1] < 50,
        "{}",
        net.sent_to(1) - before[1]
    );
}
