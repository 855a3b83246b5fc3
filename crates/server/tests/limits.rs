//! Bounded under abuse: every WebSocket and per-participant limit, each configured small on a
//! real in-process server, refused with its documented error code while others are unharmed.

mod common;

use std::time::{Duration, Instant};

use chorus_signal::protocol::{ErrorCode, ServerMessage};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn the_join_deadline_is_fixed_whatever_the_client_sends() {
    let server = common::server_with(|c| c.signal.join_timeout_secs = 2).await;
    let mut ws = common::ws_connect(&server.base_url()).await;
    let started = Instant::now();
    // Pings and garbage every 300 ms: none of it extends the deadline.
    let outcome = loop {
        ws.send(Message::Ping(vec![1u8].into()))
            .await
            .expect("ping");
        ws.send(Message::text("{garbage")).await.expect("garbage");
        match tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let m: ServerMessage = serde_json::from_str(&t).expect("JSON");
                        if !matches!(
                            m,
                            ServerMessage::Error {
                                code: ErrorCode::BadMessage,
                                ..
                            }
                        ) {
                            return Some(m);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return None,
                }
            }
        })
        .await
        {
            Ok(m) => break m,
            Err(_) => assert!(started.elapsed() < Duration::from_secs(5), "no deadline"),
        }
    };
    let elapsed = started.elapsed();
    match outcome {
        Some(ServerMessage::Error { code, message }) => {
            assert_eq!(code, ErrorCode::InvalidState, "{message}");
            assert!(message.contains("in time"), "{message}");
        }
        other => panic!("expected the join deadline error, got {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(3000),
        "deadline hit after {elapsed:?}"
    );
}

#[tokio::test]
async fn frames_before_join_are_small() {
    let server = common::server_with(|c| c.signal.max_frame_bytes_before_join = 4096).await;
    let base = server.base_url();
    let mut ws = common::ws_connect(&base).await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(5000));
    common::ws_send(&mut ws, &big).await;
    let message = common::expect_error(&mut ws, ErrorCode::MessageTooLarge).await;
    assert!(message.contains("before join"), "{message}");
    // A normal join still works, and after it the 1 MiB limit applies.
    let joined = common::ws_join(&mut ws, &common::token(&common::room(), "a")).await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
    let pad = "x".repeat(5000);
    common::ws_send(
        &mut ws,
        &format!(r#"{{"type":"subscribe","track_ids":["{pad}"]}}"#),
    )
    .await;
    common::expect_error(&mut ws, ErrorCode::UnknownTrack).await;
}

#[tokio::test]
async fn a_connection_over_its_message_rate_is_closed() {
    let server = common::server_with(|c| {
        c.signal.messages_per_sec = 5;
        c.signal.message_burst = 10;
    })
    .await;
    let base = server.base_url();
    let room = common::room();
    let mut flooder = common::ws_connect(&base).await;
    let joined = common::ws_join(&mut flooder, &common::token(&room, "flood")).await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
    let mut calm = common::ws_connect(&base).await;
    let joined = common::ws_join(&mut calm, &common::token(&room, "calm")).await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
    for i in 0..30 {
        // The socket may already be closed by the server: ignore send errors.
        let _ = flooder
            .send(Message::text(format!(
                r#"{{"type":"ping","timestamp":{i}}}"#
            )))
            .await;
    }
    let mut pongs = 0;
    let code = loop {
        match common::ws_next(&mut flooder).await {
            Ok(ServerMessage::Pong { .. }) => pongs += 1,
            Ok(ServerMessage::ParticipantJoined { .. }) => {}
            Ok(ServerMessage::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::RateLimited);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(1008), "closed as a policy violation");
    assert!((9..=11).contains(&pongs), "{pongs} pongs before the limit");
    // The other participant is unharmed and hears the flooder leave.
    loop {
        match common::ws_next(&mut calm).await {
            Ok(ServerMessage::ParticipantLeft { .. }) => break,
            Ok(_) => {}
            Err(c) => panic!("calm participant closed: {c:?}"),
        }
    }
    common::ws_send(&mut calm, r#"{"type":"ping","timestamp":1}"#).await;
    assert_eq!(
        common::ws_next(&mut calm).await,
        Ok(ServerMessage::Pong { timestamp: 1 })
    );
    assert!(
        common::counter(&base, "chorus_signal_errors_total{code=\"rate_limited\"}").await >= 1.0
    );
}

#[tokio::test]
async fn the_server_pings_and_closes_silent_connections() {
    let server = common::server_with(|c| {
        c.signal.ping_interval_secs = 1;
        c.signal.idle_timeout_secs = 2;
    })
    .await;
    let base = server.base_url();
    let room = common::room();
    // A client that reads (and so answers the server's pings) stays, without sending anything.
    let mut alive = common::ws_connect(&base).await;
    assert!(matches!(
        common::ws_join(&mut alive, &common::token(&room, "alive")).await,
        ServerMessage::Joined { .. }
    ));
    let mut silent = common::ws_connect(&base).await;
    assert!(matches!(
        common::ws_join(&mut silent, &common::token(&room, "silent")).await,
        ServerMessage::Joined { .. }
    ));
    // `silent` now reads nothing (so never answers a ping) for 4 s; `alive` keeps reading.
    let mut pings = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        if let Ok(Some(Ok(Message::Ping(_)))) =
            tokio::time::timeout(Duration::from_millis(200), alive.next()).await
        {
            pings += 1;
        }
    }
    assert!(pings >= 2, "the server pinged {pings} times in 4 s");
    match common::ws_next(&mut silent).await {
        Ok(ServerMessage::Error { code, .. }) => assert_eq!(code, ErrorCode::IdleTimeout),
        other => panic!("expected idle_timeout, got {other:?}"),
    }
    common::ws_send(&mut alive, r#"{"type":"ping","timestamp":3}"#).await;
    loop {
        match common::ws_next(&mut alive).await {
            Ok(ServerMessage::Pong { timestamp }) => {
                assert_eq!(timestamp, 3);
                break;
            }
            Ok(ServerMessage::ParticipantLeft { .. }) => {}
            other => panic!("the live client got {other:?}"),
        }
    }
}

#[tokio::test]
async fn connections_are_capped_per_address_and_overall() {
    let server = common::server_with(|c| {
        c.signal.max_connections = 3;
        c.signal.max_connections_per_ip = 2;
        c.signal.per_ip_exempt = Vec::new();
    })
    .await;
    let base = server.base_url();
    let a = common::ws_connect(&base).await;
    let b = common::ws_connect(&base).await;
    let mut c = common::ws_connect(&base).await;
    let message = common::expect_error(&mut c, ErrorCode::TooManyConnections).await;
    assert!(message.contains("your address"), "{message}");
    assert_eq!(common::ws_next(&mut c).await, Err(Some(1013)));
    drop(a);
    // Once one closes, a new connection is accepted: it gets to the join stage (and is refused
    // for sending `leave` first, not for the cap).
    common::eventually("a place frees up", Duration::from_secs(5), || async {
        let mut d = common::ws_connect(&base).await;
        common::ws_send(&mut d, r#"{"type":"leave"}"#).await;
        match common::ws_next(&mut d).await {
            Ok(ServerMessage::Error {
                code: ErrorCode::InvalidState,
                ..
            }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    drop(b);

    // The overall cap, with the address exempt from its own.
    let server = common::server_with(|c| {
        c.signal.max_connections = 2;
        c.signal.max_connections_per_ip = 1;
    })
    .await;
    let base = server.base_url();
    let _a = common::ws_connect(&base).await;
    let _b = common::ws_connect(&base).await;
    let mut c = common::ws_connect(&base).await;
    let message = common::expect_error(&mut c, ErrorCode::TooManyConnections).await;
    assert!(message.contains("the server"), "{message}");
}

#[tokio::test]
async fn a_client_that_withholds_its_headers_is_cut_off() {
    let server = common::server_with(|c| c.server.header_read_timeout_secs = 1).await;
    let mut s = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .expect("read");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
    // A prompt client on another connection is served.
    let health = reqwest::get(format!("{}/healthz", server.base_url()))
        .await
        .expect("healthz");
    assert!(health.status().is_success());
}

/// An SDP offer with `n` audio sections (the limit is checked before the SDP is parsed).
fn offer_with_sections(n: usize) -> String {
    let mut sdp = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    for i in 0..n {
        sdp.push_str(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\na=sendonly\r\n"
        ));
    }
    sdp
}

#[tokio::test]
async fn per_participant_limits_refuse_the_excess_and_keep_the_session() {
    let server = common::server_with(|c| {
        c.signal.max_media_sections = 4;
        c.signal.max_candidates = 3;
        c.signal.max_subscriptions = 2;
    })
    .await;
    let base = server.base_url();
    let room = common::room();
    let mut ws = common::ws_connect(&base).await;
    assert!(matches!(
        common::ws_join(&mut ws, &common::token(&room, "greedy")).await,
        ServerMessage::Joined { .. }
    ));
    let offer = serde_json::json!({"type": "offer", "sdp": offer_with_sections(5)});
    common::ws_send(&mut ws, &offer.to_string()).await;
    let message = common::expect_error(&mut ws, ErrorCode::LimitExceeded).await;
    assert!(message.contains("5 media sections"), "{message}");
    // Candidates: three are handed to the engine, the fourth is refused.
    let candidate = serde_json::json!({"type": "candidate", "target": "publisher",
        "candidate": {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}});
    for _ in 0..3 {
        common::ws_send(&mut ws, &candidate.to_string()).await;
    }
    common::ws_send(&mut ws, &candidate.to_string()).await;
    // The engine may answer the first three (no offer yet: an error each); the fourth is ours.
    loop {
        match common::ws_next(&mut ws).await {
            Ok(ServerMessage::Error {
                code: ErrorCode::LimitExceeded,
                message,
            }) => {
                assert!(message.contains("3 ICE candidates"), "{message}");
                break;
            }
            Ok(ServerMessage::Error { .. }) => {}
            other => panic!("expected limit_exceeded, got {other:?}"),
        }
    }
    // Subscriptions: naming more tracks than allowed in one message is refused.
    common::ws_send(
        &mut ws,
        r#"{"type":"subscribe","track_ids":["TR_a","TR_b","TR_c"]}"#,
    )
    .await;
    common::expect_error(&mut ws, ErrorCode::LimitExceeded).await;
    // The session goes on.
    common::ws_send(&mut ws, r#"{"type":"ping","timestamp":5}"#).await;
    assert_eq!(
        common::ws_next(&mut ws).await,
        Ok(ServerMessage::Pong { timestamp: 5 })
    );
    // WHIP: the same section limit, as an HTTP 400.
    let resp = reqwest::Client::new()
        .post(format!("{base}/whip/{room}"))
        .bearer_auth(common::token(&room, "whip"))
        .header("content-type", "application/sdp")
        .body(offer_with_sections(5))
        .send()
        .await
        .expect("whip");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.expect("body").contains("media sections"));
}
