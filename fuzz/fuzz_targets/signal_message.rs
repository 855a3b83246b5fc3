//! Signaling messages: every WebSocket text frame the server reads is parsed as a
//! `ClientMessage` (`chorus_signal::ws`), and every frame the client library reads as a
//! `ServerMessage`. A message that parses must serialize and parse back to itself.
#![no_main]

use chorus_signal::protocol::{ClientMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (axum checks before the handler sees them).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = serde_json::from_str::<ClientMessage>(text) {
        let _ = msg.kind();
        let json = serde_json::to_string(&msg).expect("a parsed message serializes");
        let back: ClientMessage = serde_json::from_str(&json).expect("and parses back");
        assert_eq!(back, msg, "{json}");
    }
    if let Ok(msg) = serde_json::from_str::<ServerMessage>(text) {
        let json = serde_json::to_string(&msg).expect("a parsed message serializes");
        let back: ServerMessage = serde_json::from_str(&json).expect("and parses back");
        assert_eq!(back, msg, "{json}");
    }
});
