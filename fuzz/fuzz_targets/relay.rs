//! The data-channel relay in a running call: the media plane's test harness with data
//! (`crates/sfu/tests/harness`: the core, a publisher with an open data channel and two
//! subscribers with the server's `chorus` channel open, real SCTP over DTLS over ICE on a
//! virtual clock) is built once and fed, input after input:
//!
//! - text and binary messages of any content and size (a chunk of the input repeated, up to
//!   several times the largest message), sent on the publisher's channel: the core reads them
//!   out of SCTP, checks size and UTF-8, wraps them in the JSON envelope and sends a copy to
//!   each subscriber;
//! - the second subscriber (an 8 KiB receive window) stopping and resuming reading, so the
//!   relay's per-receiver bound (`media.data_channel_max_buffered_bytes`) is reached and left;
//! - the clock moving on.
//!
//! After every message it checks what the relay promises: the reading subscriber gets exactly
//! one envelope, `{"from": <the publisher's id>, "text"|"binary": <the message>}`, or, when the
//! envelope would exceed 64 KiB, nothing and one `data_too_large`; what the server holds for
//! either subscriber never exceeds the bound; every envelope it reads is well formed; no
//! copy fails to send. A panic anywhere fails the run.
#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use chorus_fuzz::harness::Net;
use chorus_fuzz::Input;
use libfuzzer_sys::fuzz_target;

/// The bound on bytes held for one receiver: four of the largest messages, so inputs reach
/// it, while the reading subscriber (whose few unacknowledged bytes count too) never does.
const BOUND: usize = 256 * 1024;
/// The largest envelope the relay sends (RFC 8841's default max-message-size).
const MAX_ENVELOPE: usize = 64 * 1024;
/// The subscriber that reads whatever arrives.
const FAST: usize = 0;
/// The subscriber with a small receive window that the input makes stop reading.
const SLOW: usize = 1;

struct Call {
    net: Net,
    /// The publisher's participant id, as the first envelope names it.
    from: Option<String>,
}

impl Call {
    fn new() -> Call {
        let net = Net::with_data(
            2,
            |i| (i == SLOW).then_some(8 * 1024),
            |c| {
                c.data_channel_max_buffered_bytes = BOUND;
                c.data_messages_per_sec = 1_000_000;
                c.data_message_burst = 1_000_000;
            },
        );
        Call { net, from: None }
    }

    fn healthy(&self) -> bool {
        let n = &self.net;
        n.publisher.connected
            && n.publisher.data_channel.is_some()
            && n.subscribers
                .iter()
                .all(|(c, _, _)| c.connected && c.data_channel.is_some())
    }
}

thread_local! {
    static CALL: RefCell<Option<Call>> = const { RefCell::new(None) };
}

/// Parses an envelope: the sender id and the message it carries (decoded, for binary).
fn open(envelope: &[u8]) -> (String, bool, Vec<u8>) {
    let v: serde_json::Value = serde_json::from_slice(envelope).expect("envelope is JSON");
    let o = v.as_object().expect("envelope is an object");
    assert_eq!(o.len(), 2, "envelope has two fields: {o:?}");
    let from = o["from"].as_str().expect("from is a string").to_owned();
    if let Some(text) = o.get("text") {
        let text = text.as_str().expect("text is a string");
        (from, true, text.as_bytes().to_vec())
    } else {
        let b64 = o["binary"].as_str().expect("binary is a string");
        let data = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("binary is base64");
        (from, false, data)
    }
}

fn send(call: &mut Call, input: &mut Input<'_>, text: bool) {
    let chunk = input.chunk(2048);
    let times = usize::from(input.u8().unwrap_or(1)).max(1);
    let raw = chunk.repeat(times);
    let payload = if text {
        String::from_utf8_lossy(&raw).into_owned().into_bytes()
    } else {
        raw
    };
    let net = &mut call.net;
    let now = net.now;
    let Some(id) = net.publisher.data_channel else {
        return;
    };
    let Some(mut channel) = net.publisher.pc.data_channel(id) else {
        return;
    };
    let sent = if text {
        channel.send_text(
            now,
            String::from_utf8(payload.clone()).expect("lossy is UTF-8"),
        )
    } else {
        channel.send(now, BytesMut::from(&payload[..]))
    };
    if sent.is_err() {
        // Larger than the negotiated max-message-size: the publisher's stack refuses it.
        assert!(
            payload.len() > MAX_ENVELOPE,
            "refused {} bytes",
            payload.len()
        );
        return;
    }
    let received = net.subscribers[FAST].0.data_received;
    let too_large = net.dropped("data_too_large");
    for _ in 0..1000 {
        net.pump();
        if net.subscribers[FAST].0.data_received > received
            || net.dropped("data_too_large") > too_large
        {
            break;
        }
        net.advance(Duration::from_millis(2));
    }
    let delivered = net.subscribers[FAST].0.data_received - received;
    let refused = net.dropped("data_too_large") - too_large;
    assert_eq!(
        delivered + refused,
        1,
        "{} bytes: {delivered} delivered, {refused} refused",
        payload.len()
    );
    if delivered == 1 {
        let last = net.subscribers[FAST]
            .0
            .last_data
            .as_ref()
            .expect("a message");
        assert!(last.is_string, "envelopes are text");
        assert!(last.data.len() <= MAX_ENVELOPE);
        let (from, is_text, data) = open(&last.data);
        assert_eq!(is_text, text);
        assert!(data == payload, "the envelope carries another message");
        assert_eq!(call.from.get_or_insert_with(|| from.clone()), &from);
    } else if let Some(from) = &call.from {
        let b64;
        let envelope = if text {
            serde_json::json!({ "from": from, "text": String::from_utf8_lossy(&payload) })
        } else {
            b64 = base64::engine::general_purpose::STANDARD.encode(&payload);
            serde_json::json!({ "from": from, "binary": b64 })
        };
        assert!(
            payload.len() > MAX_ENVELOPE || envelope.to_string().len() > MAX_ENVELOPE,
            "a {}-byte message was refused as too large",
            payload.len()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    CALL.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !slot.as_ref().is_some_and(Call::healthy) {
            *slot = Some(Call::new());
        }
        let call = slot.as_mut().expect("built");
        let keys = [call.net.subscribers[FAST].1, call.net.subscribers[SLOW].1];
        let mut input = Input::new(data);
        while let Some(tag) = input.u8() {
            match tag & 0x3 {
                0 => send(call, &mut input, true),
                1 => send(call, &mut input, false),
                2 => {
                    let slow = &mut call.net.subscribers[SLOW].0;
                    slow.reading = !slow.reading;
                }
                _ => call.net.advance(Duration::from_millis(
                    u64::from(input.u8().unwrap_or(1)) * 2,
                )),
            }
            call.net.pump();
            for key in keys {
                let held = call.net.core.data_backlog(key).unwrap_or(0);
                assert!(held <= BOUND, "{held} bytes held for a receiver");
            }
            if let Some(last) = call.net.subscribers[SLOW].0.last_data.take() {
                open(&last.data);
            }
            assert_eq!(call.net.dropped("data_send_failed"), 0);
        }
        call.net.advance(Duration::from_millis(20));
        call.net.pump();
        call.net.answer_offers();
    });
});
