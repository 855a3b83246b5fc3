//! The data-channel relay bounds the bytes it holds for a slow receiver: a publisher floods
//! its data channel while one subscriber reads fast, one stops reading (its SCTP receive
//! window closes) and one vanishes (not yet timed out, it acknowledges nothing). The server's
//! unacknowledged bytes toward the slow two never exceed `media.data_channel_max_buffered_bytes`,
//! the copies beyond it are dropped as `data_backlog`, and the fast one gets every message.
//! Real `rtc` peers (SCTP over DTLS over ICE) on the harness's virtual network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::time::Duration;

use harness::Net;

/// The bound under test (the smallest allowed, so a flood of a few hundred KiB crosses it).
const BOUND: usize = 64 * 1024;
/// Messages the publisher sends, and their size: about ten times the bound in all.
const MESSAGES: u64 = 640;
const SIZE: usize = 1000;

const FAST: usize = 0;
const NOT_READING: usize = 1;
const GONE: usize = 2;

#[test]
fn a_slow_or_gone_receiver_holds_at_most_the_bound_and_others_get_everything() {
    // The receiver that stops reading has a 16 KiB receive window (the default is 1 MiB).
    let window = |i: usize| (i == NOT_READING).then_some(16 * 1024);
    let mut net = Net::with_data(3, window, |c| {
        c.data_channel_max_buffered_bytes = BOUND;
        c.data_messages_per_sec = 100_000;
        c.data_message_burst = 100_000;
    });
    net.subscribers[NOT_READING].0.reading = false;
    let gone = net.subscribers[GONE].0.addr;
    net.cut.push(gone);
    let keys: Vec<u64> = net.subscribers.iter().map(|(_, k, _)| *k).collect();

    let text = "x".repeat(SIZE);
    let mut most = [0usize; 3];
    // 200 messages a second (about 200 KB/s) for 3.2 s of virtual time: within the silence
    // timeout, so the vanished receiver is still a member throughout.
    for _ in 0..MESSAGES {
        assert!(
            net.send_data(&text),
            "the publisher's channel refused a message"
        );
        net.pump();
        net.advance(Duration::from_millis(5));
        for (i, key) in keys.iter().enumerate() {
            let backlog = net.core.data_backlog(*key).expect("channel open");
            most[i] = most[i].max(backlog);
        }
    }
    net.run_until(Duration::from_secs(2), |n| {
        n.subscribers[FAST].0.data_received >= MESSAGES
    });

    println!(
        "most bytes held: {most:?}; data_backlog drops {}",
        net.dropped("data_backlog")
    );
    assert_eq!(net.subscribers[FAST].0.data_received, MESSAGES);
    let last = net.subscribers[FAST]
        .0
        .last_data
        .as_ref()
        .expect("a message");
    let envelope: serde_json::Value = serde_json::from_slice(&last.data).expect("JSON");
    assert_eq!(envelope["text"].as_str(), Some(text.as_str()));
    assert!(envelope["from"].is_string(), "{envelope}");
    for slow in [NOT_READING, GONE] {
        assert!(
            most[slow] <= BOUND,
            "receiver {slow}: {} bytes held, over the bound {BOUND}",
            most[slow]
        );
        // The flood did fill it: the bound, not the flood's size, is what held it.
        assert!(
            most[slow] > BOUND - 2 * SIZE,
            "receiver {slow}: only {} bytes held",
            most[slow]
        );
    }
    assert!(
        most[FAST] < BOUND / 2,
        "the fast receiver backed up: {most:?}"
    );
    assert_eq!(net.dropped("data_send_failed"), 0);
    let dropped = net.dropped("data_backlog");
    assert!(
        dropped > MESSAGES,
        "both slow receivers should miss most of the flood: {dropped} dropped"
    );
    assert_eq!(
        net.metrics.data_messages.with_label_values(&["out"]).get() + dropped,
        3 * MESSAGES,
        "every copy was sent or dropped as data_backlog"
    );

    // The slow reader catches up: it gets what the server held, and new messages again.
    net.subscribers[NOT_READING].0.reading = true;
    let key = keys[NOT_READING];
    for _ in 0..1000 {
        if net.core.data_backlog(key) == Some(0) {
            break;
        }
        net.pump();
        net.advance(Duration::from_millis(5));
    }
    assert_eq!(
        net.core.data_backlog(key),
        Some(0),
        "the reader did not catch up"
    );
    let caught_up = net.subscribers[NOT_READING].0.data_received;
    assert!(caught_up > 0 && caught_up < MESSAGES, "{caught_up}");
    assert!(net.send_data(&text));
    net.run_until(Duration::from_secs(2), |n| {
        n.subscribers[NOT_READING].0.data_received == caught_up + 1
            && n.subscribers[FAST].0.data_received == MESSAGES + 1
    });
}
