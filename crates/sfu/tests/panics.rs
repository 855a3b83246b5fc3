//! A bug is contained to the participant it concerns: a command that panics inside the core
//! removes that participant, and everyone else's call goes on.

mod harness;

use std::time::Duration;

#[test]
fn a_panicking_command_removes_only_its_participant() {
    let mut net = harness::Net::new(2);
    let victim = net.subscribers[0].1;
    let now = net.now;
    net.core.inject_panic(now, victim);
    // The victim hears that it was removed.
    let closed = std::iter::from_fn(|| net.subscribers[0].2.try_recv().ok())
        .any(|e| matches!(e, chorus_sfu::RoomEvent::Closed { .. }));
    assert!(closed, "the participant the panic concerned is removed");
    // The publisher and the other subscriber go on without a gap.
    let before = net.subscribers[1].0.rtp_received;
    for _ in 0..60 {
        net.send_video(false, 900);
        net.pump();
        net.advance(Duration::from_millis(33));
    }
    let (other, _, _) = &net.subscribers[1];
    assert!(
        other.rtp_received >= before + 60,
        "{} -> {}",
        before,
        other.rtp_received
    );
    assert_eq!(other.seq_gaps, 0);
    let victim_got = net.subscribers[0].0.rtp_received;
    for _ in 0..10 {
        net.send_video(false, 900);
        net.pump();
    }
    assert_eq!(
        net.subscribers[0].0.rtp_received, victim_got,
        "nothing for the removed one"
    );
}

/// A panic the core cannot contain (in the engine itself) is reported: the server stops
/// instead of serving signaling with a dead media plane.
#[tokio::test]
async fn a_dead_engine_is_reported() {
    let config = chorus_sfu::MediaConfig {
        bind_ip: "127.0.0.1".parse().expect("ip"),
        udp_port: 0,
        engines: 2,
        ..Default::default()
    };
    let sfu = chorus_sfu::Sfu::start(config, chorus_sfu::Metrics::unregistered())
        .await
        .expect("starts");
    assert!(!sfu.is_failed());
    assert!(sfu.stats().await.is_ok());
    sfu.inject_engine_panic(1).await;
    tokio::time::timeout(Duration::from_secs(5), sfu.failed())
        .await
        .expect("the death is reported");
    assert!(sfu.is_failed());
    assert!(
        sfu.stats().await.is_err(),
        "the dead engine answers nothing"
    );
}
