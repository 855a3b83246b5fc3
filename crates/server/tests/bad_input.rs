//! Every kind of bad input gets a clear error and harms nothing else.

mod common;

use std::time::Duration;

use chorus_server::config::DEV_API_KEY;
use chorus_signal::auth::{claims, mint, Grants};
use chorus_signal::protocol::{ErrorCode, ServerMessage, MAX_MESSAGE_BYTES};
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use common::{next_server_message, ws_connect as connect, Ws};

async fn expect_error(ws: &mut Ws, want: ErrorCode) {
    match next_server_message(ws).await {
        Some(ServerMessage::Error { code, message }) => {
            assert_eq!(code, want, "error message: {message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {want:?}, got {other:?}"),
    }
}

async fn join(ws: &mut Ws, token: &str) -> ServerMessage {
    let msg = serde_json::json!({"type": "join", "version": 1, "token": token});
    ws.send(Message::text(msg.to_string())).await.expect("send");
    next_server_message(ws).await.expect("reply to join")
}

#[tokio::test]
async fn bad_websocket_messages_get_their_error_codes() {
    let server = common::server().await;
    let base = server.base_url();
    let room = common::room();

    // Before join: malformed JSON and unknown types are errors but the socket stays usable.
    let mut ws = connect(&base).await;
    for bad in [
        "{",
        "[]",
        r#"{"type":"teleport"}"#,
        r#"{"type":"offer","sdp":5}"#,
        r#"{"type":"track_settings","track_ids":["TR_x"],"quality":"ultra"}"#,
    ] {
        ws.send(Message::text(bad)).await.expect("send");
        expect_error(&mut ws, ErrorCode::BadMessage).await;
    }
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    expect_error(&mut ws, ErrorCode::BadMessage).await;
    let big = format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(MAX_MESSAGE_BYTES)
    );
    ws.send(Message::text(big)).await.expect("send");
    expect_error(&mut ws, ErrorCode::MessageTooLarge).await;
    // A valid join still works on the same socket afterwards.
    let joined = join(&mut ws, &common::token(&room, "alice")).await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
    // After join: a second join is refused, ping is answered, invalid SDP is an error.
    ws.send(Message::text(r#"{"type":"join","version":1,"token":"x"}"#))
        .await
        .expect("send");
    expect_error(&mut ws, ErrorCode::InvalidState).await;
    ws.send(Message::text(r#"{"type":"ping","timestamp":42}"#))
        .await
        .expect("send");
    assert_eq!(
        next_server_message(&mut ws).await,
        Some(ServerMessage::Pong { timestamp: 42 })
    );
    ws.send(Message::text(r#"{"type":"offer","sdp":"this is not sdp"}"#))
        .await
        .expect("send");
    expect_error(&mut ws, ErrorCode::InvalidSdp).await;
    ws.send(Message::text(r#"{"type":"answer","sdp":"v=0"}"#))
        .await
        .expect("send");
    expect_error(&mut ws, ErrorCode::InvalidSdp).await;
    ws.send(Message::text(
        r#"{"type":"subscribe","track_ids":["TR_nope"]}"#,
    ))
    .await
    .expect("send");
    expect_error(&mut ws, ErrorCode::UnknownTrack).await;
    ws.send(Message::text(
        r#"{"type":"mute","track_id":"TR_nope","muted":true}"#,
    ))
    .await
    .expect("send");
    expect_error(&mut ws, ErrorCode::UnknownTrack).await;
    ws.send(Message::text(
        r#"{"type":"track_settings","track_ids":["TR_nope"],"quality":"low"}"#,
    ))
    .await
    .expect("send");
    expect_error(&mut ws, ErrorCode::UnknownTrack).await;

    // Fatal join errors close the socket.
    let expired = {
        let mut c = claims(
            "bob",
            &room,
            Duration::from_secs(1),
            Grants {
                room: room.clone(),
                can_publish: true,
                can_subscribe: true,
                can_publish_data: false,
            },
        );
        c.exp = 1_000;
        c.nbf = 0;
        mint(DEV_API_KEY, chorus_server::config::DEV_API_SECRET, &c).expect("mints")
    };
    let wrong_secret = {
        let c = claims(
            "bob",
            &room,
            Duration::from_secs(60),
            Grants {
                room: room.clone(),
                can_publish: true,
                can_subscribe: true,
                can_publish_data: false,
            },
        );
        mint(DEV_API_KEY, "some-other-secret-entirely", &c).expect("mints")
    };
    for (token, want) in [
        ("garbage".to_owned(), ErrorCode::InvalidToken),
        (expired, ErrorCode::InvalidToken),
        (wrong_secret, ErrorCode::InvalidToken),
        (
            common::token_with(&room, "carol", false, false),
            ErrorCode::PermissionDenied,
        ),
    ] {
        let mut ws = connect(&base).await;
        let reply = join(&mut ws, &token).await;
        assert!(
            matches!(&reply, ServerMessage::Error { code, .. } if *code == want),
            "want {want:?}, got {reply:?}"
        );
        assert_eq!(
            next_server_message(&mut ws).await,
            None,
            "socket closes after a fatal error"
        );
    }
    let mut ws = connect(&base).await;
    let msg =
        serde_json::json!({"type": "join", "version": 99, "token": common::token(&room, "dave")});
    ws.send(Message::text(msg.to_string())).await.expect("send");
    expect_error(&mut ws, ErrorCode::UnsupportedVersion).await;
    let mut ws = connect(&base).await;
    ws.send(Message::text(r#"{"type":"leave"}"#))
        .await
        .expect("send");
    expect_error(&mut ws, ErrorCode::InvalidState).await;

    // The errors were counted, and the server is still healthy.
    assert!(
        common::metric(&base, "chorus_signal_errors_total{code=\"bad_message\"}").await
            >= Some(5.0)
    );
    let health = reqwest::get(format!("{base}/healthz"))
        .await
        .expect("healthz");
    assert!(health.status().is_success());
}

/// Seeded fuzz of the WebSocket protocol (`CHORUS_TEST_SEED` overrides the seed, which every
/// failure message names): valid messages cut short before their only `}`, with random
/// printable characters other than `}` written over some of their bytes, are never valid, so each gets its `bad_message` error, the
/// count in `/metrics` matches, and the socket still joins and answers pings afterwards.
#[tokio::test]
async fn mangled_websocket_messages_each_get_an_error_and_harm_nothing() {
    let server = common::server().await;
    let base = server.base_url();
    let room = common::room();
    let (mut rng, seed) = common::Rng::from_env_or(0x5eed_0001);
    let templates = [
        r#"{"type":"ping","timestamp":42}"#,
        r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}"#,
        r#"{"type":"subscribe","track_ids":["TR_a","TR_b"]}"#,
        r#"{"type":"track_settings","track_ids":["TR_x"],"quality":"low"}"#,
        r#"{"type":"mute","track_id":"TR_a","muted":true}"#,
    ];
    let mut ws = connect(&base).await;
    const N: usize = 100;
    for i in 0..N {
        let template = templates[rng.below(templates.len())].as_bytes();
        // Cut before the closing brace: an unterminated object is never valid JSON.
        let mut msg = template[..1 + rng.below(template.len() - 2)].to_vec();
        for _ in 0..rng.below(4) {
            let at = rng.below(msg.len());
            // Any printable character but `}`, which could close the object.
            let c = b' ' + rng.below(94) as u8;
            msg[at] = if c >= b'}' { c + 1 } else { c };
        }
        let msg = String::from_utf8(msg).expect("printable ASCII");
        ws.send(Message::text(msg.clone())).await.expect("send");
        match next_server_message(&mut ws).await {
            Some(ServerMessage::Error {
                code: ErrorCode::BadMessage,
                ..
            }) => {}
            other => {
                panic!("seed {seed}, message {i} {msg:?}: expected bad_message, got {other:?}")
            }
        }
    }
    let counted = common::counter(&base, "chorus_signal_errors_total{code=\"bad_message\"}").await;
    assert_eq!(counted, N as f64, "seed {seed}: errors counted");
    let joined = join(&mut ws, &common::token(&room, "fuzzed")).await;
    assert!(
        matches!(joined, ServerMessage::Joined { .. }),
        "seed {seed}: {joined:?}"
    );
    ws.send(Message::text(r#"{"type":"ping","timestamp":7}"#))
        .await
        .expect("send");
    assert_eq!(
        next_server_message(&mut ws).await,
        Some(ServerMessage::Pong { timestamp: 7 }),
        "seed {seed}"
    );
}

#[tokio::test]
async fn a_full_room_refuses_the_next_join() {
    let server = common::server_with(|c| c.media.max_participants_per_room = 2).await;
    let base = server.base_url();
    let room = common::room();
    let mut a = connect(&base).await;
    let mut b = connect(&base).await;
    assert!(matches!(
        join(&mut a, &common::token(&room, "a")).await,
        ServerMessage::Joined { .. }
    ));
    assert!(matches!(
        join(&mut b, &common::token(&room, "b")).await,
        ServerMessage::Joined { .. }
    ));
    let mut c = connect(&base).await;
    let reply = join(&mut c, &common::token(&room, "c")).await;
    assert!(
        matches!(
            reply,
            ServerMessage::Error {
                code: ErrorCode::RoomFull,
                ..
            }
        ),
        "{reply:?}"
    );
    // Another room is unaffected.
    let mut d = connect(&base).await;
    assert!(matches!(
        join(&mut d, &common::token("other", "d")).await,
        ServerMessage::Joined { .. }
    ));
}

#[tokio::test]
async fn rooms_close_when_their_last_participant_vanishes() {
    // A vanished participant is kept for a resume this long, then removed (tests/resume.rs).
    let server = common::server_with(|c| c.signal.resume_grace_secs = 1).await;
    let base = server.base_url();
    let room = common::room();
    let mut a = connect(&base).await;
    let mut b = connect(&base).await;
    join(&mut a, &common::token(&room, "a")).await;
    join(&mut b, &common::token(&room, "b")).await;
    match next_server_message(&mut a).await {
        Some(ServerMessage::ParticipantJoined { participant }) => {
            assert_eq!(participant.identity, "b")
        }
        other => panic!("expected participant_joined, got {other:?}"),
    }
    drop(b); // vanishes without leave
    match next_server_message(&mut a).await {
        Some(ServerMessage::ParticipantLeft { .. }) => {}
        other => panic!("expected participant_left, got {other:?}"),
    }
    a.send(Message::text(r#"{"type":"leave"}"#))
        .await
        .expect("send");
    assert_eq!(next_server_message(&mut a).await, None);
    let stats = common::eventually("the room closes", Duration::from_secs(5), || async {
        let stats = server.state.sfu.stats().await.expect("stats");
        common::ok_if(stats.rooms == 0, stats)
    })
    .await;
    assert_eq!(
        (stats.rooms, stats.participants, stats.peers),
        (0, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn whip_and_whep_refuse_bad_requests_with_http_errors() {
    let server = common::server().await;
    let base = server.base_url();
    let room = common::room();
    let http = reqwest::Client::new();
    let post = |path: &str, token: Option<String>, ctype: &str, body: &str| {
        let mut r = http
            .post(format!("{base}{path}"))
            .header("content-type", ctype.to_owned())
            .body(body.to_owned());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let sdp = "application/sdp";
    let cases = [
        (
            "no token",
            post(&format!("/whip/{room}"), None, sdp, "v=0").await,
            401,
        ),
        (
            "bad token",
            post(&format!("/whip/{room}"), Some("x".into()), sdp, "v=0").await,
            401,
        ),
        (
            "other room",
            post(
                "/whip/elsewhere",
                Some(common::token(&room, "p")),
                sdp,
                "v=0",
            )
            .await,
            403,
        ),
        (
            "no publish grant",
            post(
                &format!("/whip/{room}"),
                Some(common::token_with(&room, "p", false, true)),
                sdp,
                "v=0",
            )
            .await,
            403,
        ),
        (
            "not sdp",
            post(
                &format!("/whip/{room}"),
                Some(common::token(&room, "p")),
                "text/plain",
                "v=0",
            )
            .await,
            415,
        ),
        (
            "invalid sdp",
            post(
                &format!("/whip/{room}"),
                Some(common::token(&room, "p")),
                sdp,
                "nonsense",
            )
            .await,
            400,
        ),
        (
            "whep with nobody publishing",
            post(
                &format!("/whep/{room}"),
                Some(common::token(&room, "v")),
                sdp,
                "nonsense",
            )
            .await,
            404,
        ),
    ];
    for (name, resp, want) in cases {
        let resp = resp.expect("request completes");
        assert_eq!(resp.status().as_u16(), want, "{name}");
    }
    let delete = |token: Option<String>| {
        let mut r = http.delete(format!("{base}/whip/{room}/session/PA_nothing"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let unauthenticated = delete(None).await.expect("delete");
    assert_eq!(unauthenticated.status().as_u16(), 401);
    let missing = delete(Some(common::token(&room, "p")))
        .await
        .expect("delete");
    assert_eq!(missing.status().as_u16(), 404);
    // CORS preflight from another origin is allowed for WHIP.
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{base}/whip/{room}"))
        .header("origin", "https://encoder.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert!(preflight
        .headers()
        .contains_key("access-control-allow-origin"));
    // Failed sessions left nothing behind.
    let stats = server.state.sfu.stats().await.expect("stats");
    assert_eq!((stats.rooms, stats.participants), (0, 0), "{stats:?}");
}

/// Fixed garbage and seeded random datagrams (`CHORUS_TEST_SEED` overrides the seed, which
/// every failure message names) from an unknown address: each one the server reads is dropped
/// and counted, and the server stays ready.
#[tokio::test]
async fn garbage_on_the_media_port_is_dropped_and_counted() {
    let server = common::server().await;
    let base = server.base_url();
    let (mut rng, seed) = common::Rng::from_env_or(0x00c0_ffee);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let garbage: [&[u8]; 5] = [
        b"",
        b"\x00\x01\x00\x08\x21\x12\xa4\x42garbage-stun-ish",
        b"\x16\xfe\xfd random dtls-looking bytes",
        &[0x80u8; 200],
        &[0xffu8; 1400],
    ];
    let mut datagrams: Vec<Vec<u8>> = (0..20)
        .flat_map(|_| garbage.iter().map(|g| g.to_vec()))
        .collect();
    // Random datagrams whose first byte falls in each demultiplexing range (STUN 0..=3, DTLS
    // 20..=63, RTP/RTCP 128..=191) or anywhere; some carry the STUN magic cookie.
    for _ in 0..200 {
        let len = 1 + rng.below(1200);
        let mut d = rng.bytes(len);
        d[0] = match rng.below(4) {
            0 => rng.below(4) as u8,
            1 => 20 + rng.below(44) as u8,
            2 => 128 + rng.below(64) as u8,
            _ => d[0],
        };
        if d.len() >= 8 && rng.below(2) == 0 {
            d[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        }
        datagrams.push(d);
    }
    // In batches small enough for the socket's receive buffer, each read before the next is
    // sent: every datagram read from an unknown address is dropped (counts from one scrape).
    let mut sent = 0.0;
    for batch in datagrams.chunks(20) {
        for d in batch {
            sock.send_to(d, server.media_addr).await.expect("send");
        }
        sent += batch.len() as f64;
        common::eventually(
            &format!("seed {seed}: {sent} datagrams read and dropped (read, dropped)"),
            Duration::from_secs(10),
            || async {
                let text = common::scrape(&base).await;
                let read = common::sample(&text, "chorus_udp_datagrams_received_total");
                let dropped = ["unknown_source", "unknown_ufrag"]
                    .iter()
                    .map(|r| {
                        common::sample(
                            &text,
                            &format!("chorus_packets_dropped_total{{reason=\"{r}\"}}"),
                        )
                    })
                    .sum::<f64>();
                common::ok_if(read == sent && dropped == sent, (read, dropped))
            },
        )
        .await;
    }
    assert!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .expect("readyz")
            .status()
            .is_success(),
        "seed {seed}: still ready"
    );
}
