//! Forged and broken access tokens against a real server with configured API keys (not dev
//! mode): `alg: none`, HS384/HS512 and an RS256 header where HS256 is the policy, `iss` naming
//! another key than `kid`, `kid` naming another key than the signer, no `kid`, an unknown
//! `kid`, a future `nbf`, an expired `exp`, missing claims, a wrong signature and garbage. Each
//! is refused on the WebSocket (`invalid_token`, then the socket closes), on WHIP and on WHEP
//! (401), and counted; none harms the server, and a good token still works after.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chorus_signal::auth::{claims, mint, unix_now, Claims, Grants};
use chorus_signal::protocol::{ErrorCode, ServerMessage};
use futures::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "jwt-test-key";
const SECRET: &str = "jwt-test-secret-4f1c9a7e2b8d6053-a1b2c3d4e5f6";
const OTHER_KEY: &str = "jwt-other-key";
const OTHER_SECRET: &str = "jwt-other-secret-9e8d7c6b5a4f3e2d-0a1b2c3d4e";

use common::{next_server_message as next, ws_connect as connect, Ws};

fn good_claims(room: &str, identity: &str) -> Claims {
    let mut c = claims(
        identity,
        room,
        Duration::from_secs(600),
        Grants {
            room: room.into(),
            can_publish: true,
            can_subscribe: true,
            can_publish_data: false,
        },
    );
    c.iss = KEY.into();
    c
}

/// A token with this header and claims, HMAC-signed (per the header's `alg`) with `secret`.
fn signed(header: &Header, claims: &impl serde::Serialize, secret: &str) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("encodes")
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    h
}

/// `header.claims.signature` from raw JSON, the signature HMAC-SHA256 with `secret` (or
/// empty): tokens `jsonwebtoken` will not make, like `alg: none`.
fn raw_token(
    header: serde_json::Value,
    claims: &impl serde::Serialize,
    secret: Option<&str>,
) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(serde_json::to_string(claims).expect("claims"));
    let message = format!("{h}.{c}");
    let signature = match secret {
        Some(s) => jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(s.as_bytes()),
            Algorithm::HS256,
        )
        .expect("signs"),
        None => String::new(),
    };
    format!("{message}.{signature}")
}

/// Every bad token, named.
fn bad_tokens(room: &str) -> Vec<(&'static str, String)> {
    let good = good_claims(room, "mallory");
    let now = unix_now();
    let hs256 = header(Algorithm::HS256, Some(KEY));
    let mut other_iss = good.clone();
    other_iss.iss = OTHER_KEY.into();
    let mut future = good.clone();
    future.nbf = now + 3600;
    let mut expired = good.clone();
    expired.exp = now - 3600;
    expired.nbf = 0;
    let mut far_future = good.clone();
    far_future.exp = u64::MAX;
    let mut no_exp = serde_json::to_value(&good).expect("json");
    no_exp.as_object_mut().expect("object").remove("exp");
    let mut no_sub = serde_json::to_value(&good).expect("json");
    no_sub.as_object_mut().expect("object").remove("sub");
    let mut exp_as_string = serde_json::to_value(&good).expect("json");
    exp_as_string["exp"] = serde_json::json!("never");
    let valid = mint(KEY, SECRET, &good).expect("mints");
    let (head, rest) = valid.split_once('.').expect("three parts");
    let (body, sig) = rest.split_once('.').expect("three parts");
    let mut flipped = sig.as_bytes().to_vec();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped_sig = format!(
        "{head}.{body}.{}",
        String::from_utf8(flipped).expect("ascii")
    );
    vec![
        (
            "alg none, no signature",
            raw_token(
                serde_json::json!({"alg": "none", "typ": "JWT", "kid": KEY}),
                &good,
                None,
            ),
        ),
        (
            "alg None, no signature",
            raw_token(
                serde_json::json!({"alg": "None", "typ": "JWT", "kid": KEY}),
                &good,
                None,
            ),
        ),
        (
            "HS512 with the right secret",
            signed(&header(Algorithm::HS512, Some(KEY)), &good, SECRET),
        ),
        (
            "HS384 with the right secret",
            signed(&header(Algorithm::HS384, Some(KEY)), &good, SECRET),
        ),
        (
            "RS256 header, HMAC-signed with the secret",
            raw_token(
                serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": KEY}),
                &good,
                Some(SECRET),
            ),
        ),
        (
            "iss names another key than kid",
            signed(&hs256, &other_iss, SECRET),
        ),
        (
            "kid names another key than the signer",
            signed(&header(Algorithm::HS256, Some(OTHER_KEY)), &good, SECRET),
        ),
        (
            "no kid",
            signed(&header(Algorithm::HS256, None), &good, SECRET),
        ),
        (
            "unknown kid",
            signed(&header(Algorithm::HS256, Some("nobody")), &good, SECRET),
        ),
        ("nbf an hour ahead", signed(&hs256, &future, SECRET)),
        ("expired an hour ago", signed(&hs256, &expired, SECRET)),
        ("no exp", signed(&hs256, &no_exp, SECRET)),
        ("no sub", signed(&hs256, &no_sub, SECRET)),
        ("exp not a number", signed(&hs256, &exp_as_string, SECRET)),
        (
            "signed with another secret",
            signed(&hs256, &good, "not-the-secret-at-all-0123456789abcdef"),
        ),
        ("one signature byte changed", flipped_sig),
        ("signature removed", format!("{head}.{body}.")),
        ("garbage", "garbage".into()),
        ("empty", String::new()),
        ("dots", "...".into()),
        ("not base64", "!!!.???.***".into()),
        ("16 KB of A", "A".repeat(16_000)),
        (
            "exp at u64::MAX, signed with the other key's secret",
            signed(&hs256, &far_future, OTHER_SECRET),
        ),
    ]
}

/// Joins with `token` and returns the reply, skipping the subscriber offer and candidates a
/// successful join brings; `None` if the server closes first. Silence for 5 s fails.
async fn join(ws: &mut Ws, token: &str) -> Option<ServerMessage> {
    let msg = serde_json::json!({"type": "join", "version": 1, "token": token});
    ws.send(Message::text(msg.to_string())).await.expect("send");
    next(ws).await
}

#[tokio::test]
async fn forged_and_broken_tokens_are_refused_and_a_good_one_still_works() {
    let server = common::server_with(|c| {
        c.auth.keys.insert(KEY.into(), SECRET.into());
        c.auth.keys.insert(OTHER_KEY.into(), OTHER_SECRET.into());
    })
    .await;
    let base = server.base_url();
    let room = common::room();
    let http = reqwest::Client::new();
    let tokens = bad_tokens(&room);
    let mut messages = Vec::new();
    for (name, token) in &tokens {
        let mut ws = connect(&base).await;
        match join(&mut ws, token).await {
            Some(ServerMessage::Error {
                code: ErrorCode::InvalidToken,
                message,
            }) => messages.push((*name, message)),
            other => panic!("{name}: expected invalid_token, got {other:?}"),
        }
        assert_eq!(next(&mut ws).await, None, "{name}: the socket closes");
        for path in [format!("/whip/{room}"), format!("/whep/{room}")] {
            let resp = http
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .header("content-type", "application/sdp")
                .body("v=0\r\n")
                .send()
                .await
                .expect("request completes");
            assert_eq!(resp.status().as_u16(), 401, "{name}: POST {path}");
        }
    }
    for (name, message) in &messages {
        println!("{name}: {message}");
    }
    // One generic answer: nothing tells an attacker which check failed or which key ids exist.
    let first = &messages[0].1;
    for (name, message) in &messages {
        assert_eq!(message, first, "{name}: refusals must not differ");
        assert!(
            !message.contains(OTHER_KEY) && !message.contains(KEY),
            "{name}: {message}"
        );
    }
    // Every refusal was counted under the one code, and nothing joined. With keys configured
    // (not dev mode) /metrics is served on its own listener.
    let metrics = format!(
        "http://{}",
        server
            .metrics_addr
            .expect("the metrics listener outside dev mode")
    );
    let refused = common::counter(
        &metrics,
        "chorus_signal_errors_total{code=\"invalid_token\"}",
    )
    .await;
    assert_eq!(
        refused,
        (3 * tokens.len()) as f64,
        "invalid_token refusals counted"
    );
    let stats = server.state.sfu.stats().await.expect("stats");
    assert_eq!((stats.rooms, stats.participants), (0, 0), "{stats:?}");
    for path in ["/healthz", "/readyz"] {
        let r = reqwest::get(format!("{base}{path}")).await.expect(path);
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    // A good token from either key still joins, and passes WHIP's token check (the SDP is
    // what fails then).
    for (key, secret) in [(KEY, SECRET), (OTHER_KEY, OTHER_SECRET)] {
        let mut c = good_claims(&room, key);
        c.iss = key.into();
        let token = mint(key, secret, &c).expect("mints");
        let mut ws = connect(&base).await;
        let reply = join(&mut ws, &token).await;
        assert!(
            matches!(reply, Some(ServerMessage::Joined { .. })),
            "{key}: {reply:?}"
        );
        let resp = http
            .post(format!("{base}/whip/{room}"))
            .bearer_auth(&token)
            .header("content-type", "application/sdp")
            .body("not sdp")
            .send()
            .await
            .expect("request completes");
        assert_eq!(resp.status().as_u16(), 400, "{key}: past the token check");
    }
    // The dev key is not accepted beside configured keys.
    let mut ws = connect(&base).await;
    let reply = join(&mut ws, &common::token(&room, "dev")).await;
    assert!(
        matches!(
            reply,
            Some(ServerMessage::Error {
                code: ErrorCode::InvalidToken,
                ..
            })
        ),
        "dev token with configured keys: {reply:?}"
    );
}
