//! The datagram path of the media port: a fresh core with one joined WebSocket participant
//! whose publisher offer has been answered (so its publisher connection knows the client's ICE
//! credentials, and its subscriber connection has an offer out) is fed a sequence of
//! datagrams through `Core::handle_datagram`, from the client's address and three others:
//! STUN checks naming the server's real ufrags with a correct or a forged MESSAGE-INTEGRITY
//! (a correct one brings ICE up, and DTLS records come next), STUN naming anything, DTLS-
//! looking records, raw bytes (SRTP/SRTCP, or anything), and the clock moving on
//! (`Core::handle_timeout`). A panic anywhere, also one the core contains, fails the run.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chorus_fuzz::setup::{client_offer, core, request, sdp_attr, CLIENT_ADDR};
use chorus_fuzz::stun::{binding_request, Check};
use chorus_fuzz::Input;
use chorus_sfu::{Origin, RoomEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let now = Instant::now();
    let mut core = core();
    let mut joined = core
        .join(now, request("fuzz", Origin::WebSocket, true, true))
        .expect("join");
    let (offer, client_ufrag) = client_offer();
    let answer = core
        .publisher_offer(now, joined.key, offer.clone())
        .expect("the client's offer is answered");
    core.drain(now);
    let creds = |sdp: &str| {
        (
            sdp_attr(sdp, "ice-ufrag").expect("ufrag").to_owned(),
            sdp_attr(sdp, "ice-pwd").expect("pwd").to_owned(),
        )
    };
    let publisher = creds(&answer);
    let mut subscriber = None;
    while let Ok(ev) = joined.events.try_recv() {
        if let RoomEvent::SubscriberOffer(sdp) = ev {
            subscriber = Some(creds(&sdp));
        }
    }
    let subscriber = subscriber.expect("a subscriber offer at join");
    let addrs: [SocketAddr; 4] = [
        CLIENT_ADDR.parse().expect("addr"),
        "127.0.0.1:20001".parse().expect("addr"),
        "127.0.0.2:20000".parse().expect("addr"),
        "[::1]:20000".parse().expect("addr"),
    ];
    let mut t = now;
    while let Some(tag) = input.u8() {
        let from = addrs[usize::from(tag >> 6)];
        let datagram = match tag & 0x7 {
            0 | 1 => input.chunk(1500).to_vec(),
            2..=4 => {
                // A check to the publisher (2, 3) or subscriber (4) connection: 3 forges it.
                let (ufrag, pwd) = if tag & 0x7 == 4 {
                    &subscriber
                } else {
                    &publisher
                };
                let username = format!("{ufrag}:{client_ufrag}");
                let mut txid = [0u8; 12];
                txid.copy_from_slice(&{
                    let mut b = input.bytes(12).to_vec();
                    b.resize(12, 0);
                    b
                });
                let extra_value = input.chunk(64);
                let extra_type = input.u16().unwrap_or(0x8022);
                let extra = if tag & 0x8 != 0 {
                    vec![(extra_type, extra_value)]
                } else {
                    Vec::new()
                };
                binding_request(&Check {
                    username: username.as_bytes(),
                    txid,
                    extra,
                    key: (tag & 0x10 == 0).then_some(pwd.as_bytes()),
                    corrupt: tag & 0x7 == 3,
                    fingerprint: tag & 0x20 == 0,
                })
            }
            5 => {
                // STUN naming whatever the input says.
                let username = input.chunk(128);
                binding_request(&Check {
                    username,
                    txid: [7; 12],
                    extra: Vec::new(),
                    key: Some(publisher.1.as_bytes()),
                    corrupt: false,
                    fingerprint: tag & 0x8 != 0,
                })
            }
            6 => {
                // A DTLS 1.2 record header (handshake or other content type), then the input.
                let mut d = vec![20 + (tag >> 3 & 0x3), 0xfe, 0xfd];
                d.extend_from_slice(input.chunk(1500));
                d
            }
            _ => {
                t += Duration::from_millis(u64::from(input.u8().unwrap_or(1)) * 4);
                core.handle_timeout(t);
                continue;
            }
        };
        core.handle_datagram(t, &datagram, from);
        let mut out = Vec::new();
        core.take_transmits(&mut out);
    }
    // Everything the input set in motion runs its course for a few simulated seconds.
    for _ in 0..30 {
        t += Duration::from_millis(100);
        core.handle_timeout(t);
    }
});
