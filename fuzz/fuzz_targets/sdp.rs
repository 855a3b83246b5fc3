//! SDP as the server handles it. The first byte picks the path, the rest is the SDP text:
//!
//! - 0: a WebSocket participant's publisher offer (`Core::join` + `Core::publisher_offer`);
//! - 1: the same for a WHIP session (the body of `POST /whip/{room}`);
//! - 2: a subscriber answer to the server's first offer (`Core::subscriber_answer`);
//! - 3: a WHEP player's offer (the body of `POST /whep/{room}`): what `playback_offer` does
//!   with it on a connection built like the server's (`build_peer_connection`): parse, apply as
//!   remote description, add our candidate, answer and apply the answer.
//!
//! After the description is applied the core's timers run for a simulated second, so whatever
//! the description set up (transceivers, data channels, ICE) is polled too.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chorus_fuzz::setup::{core, request, CORE_ADDR};
use chorus_sfu::peer::{add_local_candidates, build_peer_connection};
use chorus_sfu::{Metrics, Origin, RoomEvent};
use libfuzzer_sys::fuzz_target;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::sansio::Protocol;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Signaling hands the SDP on as a `String` (WHIP/WHEP refuse bodies that are not UTF-8).
    let Ok(sdp) = std::str::from_utf8(rest) else {
        return;
    };
    let sdp = sdp.to_owned();
    let now = Instant::now();
    let mut core = core();
    match mode % 4 {
        0 | 1 => {
            let origin = if mode % 4 == 0 {
                Origin::WebSocket
            } else {
                Origin::Whip
            };
            let joined = core
                .join(
                    now,
                    request("pub", origin, true, origin == Origin::WebSocket),
                )
                .expect("join");
            if let Ok(answer) = core.publisher_offer(now, joined.key, sdp) {
                assert!(answer.starts_with("v=0"), "{answer}");
            }
        }
        2 => {
            let mut joined = core
                .join(now, request("sub", Origin::WebSocket, false, true))
                .expect("join");
            core.drain(now);
            let mut offered = false;
            while let Ok(ev) = joined.events.try_recv() {
                offered |= matches!(ev, RoomEvent::SubscriberOffer(_));
            }
            assert!(offered, "a subscriber gets an offer at join");
            let _ = core.subscriber_answer(now, joined.key, sdp);
        }
        _ => {
            let metrics = Metrics::unregistered();
            let mut pc = build_peer_connection(
                "fuzzufragfuzzufr",
                "fuzzpasswordfuzzpasswordfuzzpass",
                &metrics,
                now,
            )
            .expect("peer connection");
            if let Ok(offer) = RTCSessionDescription::offer(sdp) {
                if pc.set_remote_description(now, offer).is_ok() {
                    let addr: SocketAddr = CORE_ADDR.parse().expect("addr");
                    add_local_candidates(&mut pc, &[addr]).expect("candidate");
                    if let Ok(answer) = pc.create_answer(None) {
                        let _ = pc.set_local_description(now, answer);
                    }
                }
            }
            let _ = pc.close();
            return;
        }
    }
    core.drain(now);
    let mut t = now;
    for _ in 0..10 {
        t += Duration::from_millis(100);
        core.handle_timeout(t);
    }
});
