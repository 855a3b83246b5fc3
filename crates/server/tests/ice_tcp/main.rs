//! ICE-TCP end to end over real loopback sockets: a participant that can only use TCP (a
//! full ICE agent from `rtc` with an active TCP candidate and no UDP at all) joins over the
//! WebSocket, connects both its connections to the engine's passive TCP candidate (RFC 6544,
//! RFC 4571 framing) and gets what a UDP participant gets: media from a UDP publisher (the Rust
//! client, real VP8 and Opus), data messages both ways, NACK/PLI, the metrics. Beside it:
//! garbage, unauthenticated, silent and oversize TCP connections are closed and harm no one,
//! the per-engine connection limit holds, and `media.ice_tcp = false` means no listener and no
//! TCP candidate.

#[path = "../common/mod.rs"]
mod common;
mod participant;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chorus_client::{Client, ClientOptions, TrackKind};
use participant::{Ask, Participant, Via, OPUS_PT, VP8_PT};
use rtc::shared::tcp_framing::frame_packet;
use rtc::shared::TransportProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

/// Whether `tcp` is read until the server closes it within `within` (EOF or reset).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A STUN binding request naming `ufrag` (signed with `pwd`, or unsigned), RFC 4571-framed.
fn framed_check(ufrag: &str, pwd: Option<&str>) -> Vec<u8> {
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{Message as StunMessage, Setter, TransactionId, BINDING_REQUEST};
    use rtc::stun::textattrs::Username;
    let crypto = rtc::crypto::default_provider().expect("crypto");
    let mut setters: Vec<Box<dyn Setter + '_>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(Username::new(
            rtc::stun::attributes::ATTR_USERNAME,
            format!("{ufrag}:client"),
        )),
    ];
    if let Some(pwd) = pwd {
        setters.push(Box::new(
            MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_owned(),
                crypto.crypto(),
            ),
        ));
    }
    let mut m = StunMessage::new();
    m.build(&setters).expect("stun");
    frame_packet(&m.raw)
}

fn tcp_candidate_addr(candidate: &str) -> SocketAddr {
    let f: Vec<&str> = candidate.split_whitespace().collect();
    format!("{}:{}", f[4], f[5])
        .parse()
        .expect("candidate address")
}

fn priority(candidate: &str) -> u32 {
    candidate
        .split_whitespace()
        .nth(3)
        .expect("priority")
        .parse()
        .expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_over_tcp_gets_media_data_and_feedback_both_ways() {
    let srv = common::server().await;
    let base = srv.base_url();
    let room = common::room();
    let url = format!("ws://{}/ws", srv.http_addr);
    // Alice: the Rust client over UDP, publishing real Opus and VP8.
    let alice = Client::join(ClientOptions::new(url, common::token(&room, "alice")))
        .await
        .expect("alice joins");
    // Bob: only TCP. Carol: UDP, to hear Bob's data messages and send him hers.
    let bob = Participant::join(&base, &room, "bob", Via::Tcp).await;
    let carol = Participant::join(&base, &room, "carol", Via::Udp).await;
    let (bob_id, carol_id) = (bob.id(), carol.id());

    common::eventually("bob connected over TCP, receiving everyone", T, || async {
        let state = bob.seen(|s| {
            (
                s.connected,
                s.rtp
                    .values()
                    .filter(|r| r.0 == OPUS_PT && r.1 >= 50)
                    .count(),
                s.packets(VP8_PT),
                s.data.iter().filter(|d| d.contains(&carol_id)).count(),
            )
        });
        // Alice's audio and carol's (two Opus streams), alice's video, carol's messages.
        common::ok_if(
            state.0 == [true, true] && state.1 == 2 && state.2 >= 50 && state.3 >= 3,
            state,
        )
    })
    .await;
    common::eventually("carol hears bob's audio and data", T, || async {
        let state = carol.seen(|s| {
            (
                s.connected,
                s.rtp
                    .values()
                    .filter(|r| r.0 == OPUS_PT && r.1 >= 50)
                    .count(),
                s.data.iter().filter(|d| d.contains(&bob_id)).count(),
                s.rtp.clone(),
            )
        });
        common::ok_if(
            state.0 == [true, true] && state.1 == 2 && state.2 >= 3,
            state,
        )
    })
    .await;
    alice
        .wait_until(T, |c| {
            c.received().iter().any(|t| {
                t.participant_id == bob_id && t.kind == TrackKind::Audio && t.packets() >= 50
            })
        })
        .await
        .unwrap_or_else(|e| panic!("alice hears bob: {e}: {:#?}", alice.received()));

    // Every packet bob's ICE agent sent went over TCP; the server offered him a passive TCP
    // candidate below its UDP one.
    bob.seen(|s| {
        assert!(!s.protocols.is_empty());
        assert!(
            s.protocols.iter().all(|p| *p == TransportProtocol::TCP),
            "bob used UDP: {:?}",
            s.protocols
        );
        assert_eq!(s.gaps(), 0, "TCP loses nothing: {:?}", s.rtp);
        let tcp = &s.tcp_candidates[0];
        assert!(tcp.contains("typ host tcptype passive"), "{tcp}");
        assert!(priority(tcp) < priority(&s.udp_candidates[0]), "{s:#?}");
        assert_eq!(tcp_candidate_addr(tcp), srv.media_addr, "same port as UDP");
    });
    // Carol, with UDP, never used TCP.
    carol.seen(|s| assert!(s.protocols.iter().all(|p| *p == TransportProtocol::UDP)));

    // Bob's PLI and NACK reach the server over TCP and are acted on.
    let fb = |s: &str, t: &str| {
        common::sample(
            s,
            &format!("chorus_rtcp_feedback_total{{direction=\"in\",type=\"{t}\"}}"),
        )
    };
    let before = common::scrape(&base).await;
    let (pli0, nack0) = (fb(&before, "pli"), fb(&before, "nack"));
    let _ = bob.ask.send(Ask::Feedback);
    common::eventually("bob's PLI and NACK counted", T, || async {
        let m = common::scrape(&base).await;
        let got = (fb(&m, "pli"), fb(&m, "nack"));
        common::ok_if(got.0 > pli0 && got.1 > nack0, got)
    })
    .await;

    // The engine's TCP metrics: bob's two connections (one per connection of his, to the
    // one passive candidate each was offered), and any the Rust client's ICE agent opened
    // beside its UDP path (as Chromium does); frames both ways, none dropped.
    let m = common::scrape(&base).await;
    let open = common::sample(&m, "chorus_engine_tcp_connections");
    let connects = bob.seen(|s| s.connects.clone());
    assert_eq!(connects.len(), 2, "{connects:?}");
    assert!(connects.iter().all(|(_, to)| *to == srv.media_addr));
    assert!(open >= 2.0, "{m}");
    assert!(common::sample(&m, "chorus_engine_tcp_frames_total{direction=\"in\"") > 100.0);
    assert!(common::sample(&m, "chorus_engine_tcp_frames_total{direction=\"out\"") > 100.0);
    for reason in [
        "tcp_backlog",
        "tcp_no_connection",
        "tcp_unauthenticated",
        "tcp_oversize",
    ] {
        let dropped = common::sample(
            &m,
            &format!("chorus_packets_dropped_total{{reason=\"{reason}\"}}"),
        );
        assert_eq!(dropped, 0.0, "{reason}");
    }

    // Bob leaves: his connections are closed and their routes gone. (A connection the Rust
    // client opened and never used is closed 5 s after it opened: counted apart.)
    let idle = "chorus_packets_dropped_total{reason=\"tcp_auth_timeout\"}";
    let idle_before = common::sample(&m, idle);
    bob.leave().await;
    common::eventually("bob's TCP connections closed", T, || async {
        let m = common::scrape(&base).await;
        let n = common::sample(&m, "chorus_engine_tcp_connections");
        let expired = common::sample(&m, idle) - idle_before;
        common::ok_if(n + expired == open - 2.0, (n, expired))
    })
    .await;
    carol.leave().await;
    alice.leave().await;
    common::eventually("every TCP connection closed", T, || async {
        let m = common::scrape(&base).await;
        let n = common::sample(&m, "chorus_engine_tcp_connections");
        common::ok_if(n == 0.0, n)
    })
    .await;
    srv.shutdown(Duration::from_secs(2)).await;
}

/// Waits until both hear the other's audio, and returns their Opus packet counts.
async fn both_hear(a: &Participant, b: &Participant, more_than: (u64, u64)) -> (u64, u64) {
    common::eventually("audio both ways", T, || async {
        let got = (
            a.seen(|s| s.packets(OPUS_PT)),
            b.seen(|s| s.packets(OPUS_PT)),
        );
        common::ok_if(got.0 > more_than.0 + 25 && got.1 > more_than.1 + 25, got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_silent_and_unauthenticated_connections_are_closed_and_harm_no_one() {
    let srv = common::server_with(|c| {
        c.media.engines = 1;
        c.media.max_tcp_connections = 4;
    })
    .await;
    let base = srv.base_url();
    let room = common::room();
    let bob = Participant::join(&base, &room, "bob", Via::Tcp).await;
    let carol = Participant::join(&base, &room, "carol", Via::Udp).await;
    let heard = both_hear(&bob, &carol, (0, 0)).await;
    let media = srv.media_addr;
    let dropped = |m: &str, reason: &str| {
        common::sample(
            m,
            &format!("chorus_packets_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    let connect = || async move { TcpStream::connect(media).await.expect("tcp connects") };

    // The limit: bob's two connections and two silent ones fill it; a fifth is closed at once.
    let mut silent = [connect().await, connect().await];
    common::eventually("four connections", T, || async {
        let n = common::sample(
            &common::scrape(&base).await,
            "chorus_engine_tcp_connections",
        );
        common::ok_if(n == 4.0, n)
    })
    .await;
    let mut over = connect().await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "over the limit"
    );
    // A connection that says nothing is closed after the authentication timeout (5 s).
    let started = Instant::now();
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(8)).await,
            "silent connection"
        );
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(3), "closed after {waited:?}");

    // Each of these first frames closes its connection at once.
    let known = carol.seen(|s| s.ufrags.clone());
    assert!(!known.is_empty());
    let mut http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(); // length 0x4745: oversize
    http.extend_from_slice(&[0u8; 64]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("http", http),
        ("framed rtp-looking garbage", frame_packet(&[0x80; 200])),
        (
            "unknown ufrag",
            framed_check("nosuchufrag", Some("whatever-password")),
        ),
        (
            "known ufrag, wrong password",
            framed_check(&known[0], Some("wrong-password")),
        ),
        ("known ufrag, unsigned", framed_check(&known[0], None)),
    ];
    for (what, bytes) in &cases {
        let mut c = connect().await;
        c.write_all(bytes).await.expect("write");
        assert!(
            closed_within(&mut c, Duration::from_secs(2)).await,
            "{what}"
        );
    }
    let m = common::scrape(&base).await;
    assert_eq!(dropped(&m, "tcp_over_limit"), 1.0, "{m}");
    assert_eq!(dropped(&m, "tcp_auth_timeout"), 2.0);
    assert_eq!(dropped(&m, "tcp_unauthenticated"), cases.len() as f64);
    assert!(dropped(&m, "tcp_oversize") >= 1.0);
    common::eventually("only bob's connections left", T, || async {
        let n = common::sample(
            &common::scrape(&base).await,
            "chorus_engine_tcp_connections",
        );
        common::ok_if(n == 2.0, n)
    })
    .await;
    // None of it touched the call.
    both_hear(&bob, &carol, heard).await;
    bob.seen(|s| assert_eq!(s.connects.len(), 2, "bob never had to reconnect"));
    bob.leave().await;
    carol.leave().await;
    srv.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ice_tcp_there_is_no_listener_and_no_tcp_candidate() {
    let srv = common::server_with(|c| c.media.ice_tcp = false).await;
    let base = srv.base_url();
    let room = common::room();
    let carol = Participant::join(&base, &room, "carol", Via::Udp).await;
    let dave = Participant::join(&base, &room, "dave", Via::Udp).await;
    both_hear(&carol, &dave, (0, 0)).await;
    carol.seen(|s| {
        assert!(s.tcp_candidates.is_empty(), "{:?}", s.tcp_candidates);
        assert!(!s.udp_candidates.is_empty());
    });
    let refused = TcpStream::connect(srv.media_addr).await;
    assert!(refused.is_err(), "nothing listens on TCP");
    let m = common::scrape(&base).await;
    assert_eq!(common::sample(&m, "chorus_engine_tcp_connections"), 0.0);
    carol.leave().await;
    dave.leave().await;
    srv.shutdown(Duration::from_secs(2)).await;
}

/// The same stream to subscribers over TCP and over UDP: each gets the same packets. Also what
/// the engine pays per forwarded packet on each transport (printed; run by hand with
/// `CHORUS_TCP_COST_SECS=10 CHORUS_TCP_COST_ROUNDS=6 cargo test -p chorus-server --test ice_tcp
/// -- --nocapture cost`, figures in docs/benchmarks.md): phases of the same length, the
/// publisher alone, then with `N` new UDP listeners, then with `N` new TCP listeners, on one
/// engine, `ROUNDS` times. Phases stay short (at most 10 s): these sans-IO listeners send no
/// consent checks once connected (browsers do), so an ICE-lite server stops hearing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_listeners_get_the_same_stream_and_what_each_costs() {
    const N: usize = 4;
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let secs = env("CHORUS_TCP_COST_SECS", 2).min(10);
    let rounds = env("CHORUS_TCP_COST_ROUNDS", 1).max(1);
    let phase = Duration::from_secs(secs);
    let srv = common::server_with(|c| c.media.engines = 1).await;
    let base = srv.base_url();
    let room = common::room();
    let url = format!("ws://{}/ws", srv.http_addr);
    let alice = Client::join(ClientOptions::new(url, common::token(&room, "alice")))
        .await
        .expect("alice joins");
    alice.wait_connected(T).await.expect("alice connected");
    let sample = || async {
        let m = common::scrape(&base).await;
        (
            common::sample(&m, "chorus_engine_cpu_seconds_total{engine=\"0\"}"),
            common::sample(
                &m,
                "chorus_rtp_packets_total{direction=\"in\",kind=\"video\"}",
            ) + common::sample(
                &m,
                "chorus_rtp_packets_total{direction=\"in\",kind=\"audio\"}",
            ),
            common::sample(
                &m,
                "chorus_rtp_packets_total{direction=\"out\",kind=\"video\"}",
            ) + common::sample(
                &m,
                "chorus_rtp_packets_total{direction=\"out\",kind=\"audio\"}",
            ),
        )
    };
    // (engine CPU seconds, packets in, packets out) over one phase.
    let measure = || async {
        let a = sample().await;
        tokio::time::sleep(phase).await;
        let b = sample().await;
        (b.0 - a.0, b.1 - a.1, b.2 - a.2)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut alone = (0.0, 0.0, 0.0);
    let mut results = Vec::new();
    for round in 0..rounds {
        let a = measure().await;
        alone = (alone.0 + a.0, alone.1 + a.1, alone.2 + a.2);
        for via in [Via::Udp, Via::Tcp] {
            let mut listeners = Vec::new();
            for i in 0..N {
                let name = format!("{via:?}{round}-{i}");
                listeners.push(Participant::listener(&base, &room, &name, via).await);
            }
            for l in &listeners {
                common::eventually("listener receives audio and video", T, || async {
                    let got = l.seen(|s| (s.connected, s.packets(OPUS_PT), s.packets(VP8_PT)));
                    common::ok_if(got.0 == [true, true] && got.1 > 20 && got.2 > 20, got)
                })
                .await;
            }
            let before: Vec<u64> = listeners
                .iter()
                .map(|l| l.seen(|s| s.packets(OPUS_PT) + s.packets(VP8_PT)))
                .collect();
            let cost = measure().await;
            let got: Vec<u64> = listeners
                .iter()
                .zip(&before)
                .map(|(l, b)| l.seen(|s| s.packets(OPUS_PT) + s.packets(VP8_PT)) - b)
                .collect();
            for l in &listeners {
                l.seen(|s| {
                    assert_eq!(s.gaps(), 0, "{via:?}: {:?}", s.rtp);
                    let used = s.protocols.iter().all(|p| match via {
                        Via::Udp => *p == TransportProtocol::UDP,
                        Via::Tcp => *p == TransportProtocol::TCP,
                    });
                    assert!(used, "{via:?} listener used the other transport");
                });
            }
            results.push((via, cost, got));
            for l in listeners {
                l.leave().await;
            }
            common::eventually("the listeners left", T, || async {
                let n = common::metric(&base, "chorus_participants")
                    .await
                    .unwrap_or(-1.0);
                common::ok_if(n == 1.0, n)
            })
            .await;
        }
    }
    // Every listener, on either transport, got the same stream over its phase (within what
    // the phase boundaries cut: a second of media at most).
    let per_phase: Vec<u64> = results.iter().flat_map(|r| r.2.clone()).collect();
    let (lo, hi) = (
        per_phase.iter().min().copied().unwrap_or(0),
        per_phase.iter().max().copied().unwrap_or(0),
    );
    assert!(
        lo > 0 && hi - lo <= hi / 4 + 60,
        "packets per listener: {results:?}"
    );
    let forwarded = |r: &(f64, f64, f64)| r.2.max(1.0);
    println!("{rounds} x phases of {secs} s, {N} listeners; engine CPU s, packets in, out:");
    println!("  publisher alone: {alone:?}");
    for via in [Via::Udp, Via::Tcp] {
        let cost = results
            .iter()
            .filter(|r| r.0 == via)
            .fold((0.0, 0.0, 0.0), |s, r| {
                (s.0 + r.1 .0, s.1 + r.1 .1, s.2 + r.1 .2)
            });
        // What the publisher's packets cost alone, scaled to this phase's packets in.
        let extra = (cost.0 - alone.0 * (cost.1 / alone.1.max(1.0))).max(0.0);
        println!(
            "  {via:?} listeners: {cost:?}: {:.1} us of engine CPU per forwarded packet",
            extra / forwarded(&cost) * 1e6
        );
    }
    alice.leave().await;
    srv.shutdown(Duration::from_secs(2)).await;
}
