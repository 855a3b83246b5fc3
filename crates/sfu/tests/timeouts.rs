//! Nothing leaked: a participant whose connection never comes up, or whose client vanishes
//! mid-call, is removed by the core's timeouts, and the others' calls go on.

mod harness;

use std::time::Duration;

use chorus_sfu::RoomEvent;
use tokio::sync::mpsc::Receiver;

fn closed(events: &mut Receiver<RoomEvent>) -> Option<String> {
    std::iter::from_fn(|| events.try_recv().ok()).find_map(|e| match e {
        RoomEvent::Closed { reason } => Some(reason),
        _ => None,
    })
}

/// Media at 30 fps for `secs` of virtual time, handling timers as it goes.
fn call_for(net: &mut harness::Net, secs: u64) {
    for _ in 0..secs * 30 {
        net.send_video(false, 800);
        net.pump();
        net.advance(Duration::from_millis(33));
        let now = net.now;
        net.core.handle_timeout(now);
    }
}

#[test]
fn a_vanished_client_is_removed_and_the_call_goes_on() {
    let mut net = harness::Net::new(2);
    let gone = net.subscribers[1].0.addr;
    net.cut.push(gone);
    call_for(&mut net, 10);
    assert_eq!(
        closed(&mut net.subscribers[1].2),
        None,
        "not yet: silent for 10 s"
    );
    call_for(&mut net, 8);
    let reason = closed(&mut net.subscribers[1].2).expect("removed after 15 s of silence");
    assert!(reason.contains("silent"), "{reason}");
    // The one still there was never in doubt and still receives without gaps.
    assert_eq!(closed(&mut net.subscribers[0].2), None);
    let before = net.subscribers[0].0.rtp_received;
    call_for(&mut net, 2);
    assert!(net.subscribers[0].0.rtp_received >= before + 50);
    assert_eq!(net.subscribers[0].0.seq_gaps, 0);
}

#[test]
fn a_participant_that_never_connects_is_removed() {
    let mut net = harness::Net::new(1);
    let mut idle = net.join_idle("idle");
    call_for(&mut net, 25);
    assert_eq!(
        closed(&mut idle),
        None,
        "still within the 30 s connect timeout"
    );
    call_for(&mut net, 7);
    let reason = closed(&mut idle).expect("removed after the connect timeout");
    assert!(reason.contains("connect"), "{reason}");
    assert_eq!(closed(&mut net.subscribers[0].2), None);
}
