//! Safe by default, against real in-process servers (and the real binary for startup
//! refusals): what a production server (configured keys, no dev mode) exposes and refuses, the
//! call page outside dev mode, sessions ending with their tokens, and where `/metrics` lives.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use chorus_server::config::{DEV_API_KEY, DEV_API_SECRET};
use chorus_signal::auth::{claims, mint, Grants};
use chorus_signal::ice::IceServerConfig;
use chorus_signal::protocol::{ErrorCode, ServerMessage};

fn grants(room: &str) -> Grants {
    Grants {
        room: room.into(),
        can_publish: true,
        can_subscribe: true,
        can_publish_data: false,
    }
}

#[tokio::test]
async fn a_production_server_exposes_no_dev_surface() {
    let server = common::production_server_with(|_| {}).await;
    let base = server.base_url();
    let http = reqwest::Client::new();
    // No /dev/token, no /metrics on the public port, no admin API without a key.
    for path in ["/dev/token?room=r&identity=i", "/metrics", "/admin/rooms"] {
        let status = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("request")
            .status();
        assert_eq!(status.as_u16(), 404, "{path}");
    }
    // /metrics is on its own (loopback) listener.
    let metrics_addr = server.metrics_addr.expect("a metrics listener");
    assert!(metrics_addr.ip().is_loopback());
    let text = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(text.contains("chorus_signal_websockets"), "{text}");
    // The dev key is not accepted, and the answer does not echo the key id.
    let room = common::room();
    let dev_token = mint(
        DEV_API_KEY,
        DEV_API_SECRET,
        &claims("eve", &room, Duration::from_secs(60), grants(&room)),
    )
    .expect("mints");
    let mut ws = common::ws_connect(&base).await;
    match common::ws_join(&mut ws, &dev_token).await {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, ErrorCode::InvalidToken);
            assert_eq!(message, "invalid token");
            assert!(!message.contains(DEV_API_KEY));
        }
        other => panic!("dev token accepted: {other:?}"),
    }
    assert_eq!(common::ws_next(&mut ws).await, Err(Some(1008)));
    // WHIP with it: 401 with the same generic answer.
    let resp = http
        .post(format!("{base}/whip/{room}"))
        .bearer_auth(&dev_token)
        .header("content-type", "application/sdp")
        .body("v=0")
        .send()
        .await
        .expect("whip");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.text().await.expect("body"), "invalid token");
    // A token of the configured key joins.
    let mut ws = common::ws_connect(&base).await;
    let joined = common::ws_join(
        &mut ws,
        &common::prod_token(&room, "alice", Duration::from_secs(60)),
    )
    .await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
}

#[tokio::test]
async fn the_call_page_is_served_with_security_headers_and_joins_with_a_token() {
    let server = common::production_server_with(|c| {
        c.server.token_endpoint = Some("https://app.example.com/chorus-token?x=1".into());
    })
    .await;
    let base = server.base_url();
    let page = reqwest::get(format!("{base}/?token=whatever"))
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 200);
    let h = page.headers().clone();
    let header = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = header("content-security-policy");
    for part in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "script-src 'nonce-",
        "connect-src 'self' https://app.example.com;",
    ] {
        assert!(csp.contains(part), "CSP lacks {part:?}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("referrer-policy"), "no-referrer");
    let html = page.text().await.expect("html");
    // The script carries the CSP's nonce; the endpoint is in the page, escaped.
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("nonce");
    assert!(html.contains(&format!("<script nonce=\"{nonce}\">")));
    assert!(html.contains(
        r#"<meta name="chorus-token-endpoint" content="https://app.example.com/chorus-token?x=1">"#
    ));
    assert!(!html.contains("{{"), "all placeholders filled");
    // A second load gets a fresh nonce.
    let again = reqwest::get(format!("{base}/")).await.expect("page");
    let csp2 = again
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_ne!(csp, csp2);
    // What the page does with `?token=`: a WebSocket join with that token works.
    let room = common::room();
    let mut ws = common::ws_connect(&base).await;
    let joined = common::ws_join(
        &mut ws,
        &common::prod_token(&room, "page", Duration::from_secs(60)),
    )
    .await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
}

#[tokio::test]
async fn cors_allows_only_configured_origins_outside_dev_mode() {
    let server = common::production_server_with(|c| {
        c.server.cors_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let base = server.base_url();
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}/whip/r"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com")
        .await
        .expect("preflight");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example.com")
    );
    let other = preflight("https://evil.example").await.expect("preflight");
    assert!(
        !other.headers().contains_key("access-control-allow-origin"),
        "{:?}",
        other.headers()
    );
}

#[tokio::test]
async fn metrics_on_the_http_port_need_the_bearer_token() {
    let token = "metrics-token-0123456789abcdef-0123456789";
    let server = common::production_server_with(|c| {
        c.metrics.bind = None;
        c.metrics.token = Some(token.into());
    })
    .await;
    assert_eq!(server.metrics_addr, None, "the token replaces the listener");
    let base = server.base_url();
    let http = reqwest::Client::new();
    let none = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("get");
    assert_eq!(none.status().as_u16(), 401);
    let wrong = http
        .get(format!("{base}/metrics"))
        .bearer_auth("metrics-token-0123456789abcdef-012345678X")
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status().as_u16(), 401);
    let ok = http
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status().as_u16(), 200);
    assert!(ok.text().await.expect("body").contains("chorus_rooms"));
}

#[tokio::test]
async fn a_session_ends_when_its_token_expires() {
    let server = common::production_server_with(|_| {}).await;
    let base = server.base_url();
    let room = common::room();
    let mut ws = common::ws_connect(&base).await;
    let started = Instant::now();
    let joined = common::ws_join(
        &mut ws,
        &common::prod_token(&room, "brief", Duration::from_secs(2)),
    )
    .await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
    match common::ws_next(&mut ws).await {
        Ok(ServerMessage::Error { code, .. }) => assert_eq!(code, ErrorCode::TokenExpired),
        other => panic!("expected token_expired, got {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "ended after {elapsed:?}"
    );
    assert_eq!(common::ws_next(&mut ws).await, Err(Some(1008)));
    common::eventually(
        "the participant is removed",
        Duration::from_secs(5),
        || async {
            let stats = server.state.sfu.stats().await.expect("stats");
            common::ok_if(stats.participants == 0 && stats.rooms == 0, stats)
        },
    )
    .await;
}

#[tokio::test]
async fn a_refreshed_token_extends_the_session_and_a_foreign_one_does_not() {
    let server = common::production_server_with(|_| {}).await;
    let base = server.base_url();
    let room = common::room();
    let mut ws = common::ws_connect(&base).await;
    let joined = common::ws_join(
        &mut ws,
        &common::prod_token(&room, "long", Duration::from_secs(2)),
    )
    .await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
    // Another identity's token is refused and changes nothing.
    let foreign = common::prod_token(&room, "someone-else", Duration::from_secs(600));
    common::ws_send(
        &mut ws,
        &serde_json::json!({"type": "refresh_token", "token": foreign}).to_string(),
    )
    .await;
    common::expect_error(&mut ws, ErrorCode::PermissionDenied).await;
    let fresh = common::prod_token(&room, "long", Duration::from_secs(600));
    common::ws_send(
        &mut ws,
        &serde_json::json!({"type": "refresh_token", "token": fresh}).to_string(),
    )
    .await;
    // Past the first token's expiry, the session still answers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    common::ws_send(&mut ws, r#"{"type":"ping","timestamp":9}"#).await;
    assert_eq!(
        common::ws_next(&mut ws).await,
        Ok(ServerMessage::Pong { timestamp: 9 })
    );
    let stats = server.state.sfu.stats().await.expect("stats");
    assert_eq!(stats.participants, 1);
}

#[tokio::test]
async fn tokens_beyond_the_maximum_lifetime_are_refused() {
    let server = common::production_server_with(|c| c.auth.max_token_ttl_secs = 3600).await;
    let base = server.base_url();
    let room = common::room();
    let mut ws = common::ws_connect(&base).await;
    let reply = common::ws_join(
        &mut ws,
        &common::prod_token(&room, "a", Duration::from_secs(7200)),
    )
    .await;
    assert!(
        matches!(
            reply,
            ServerMessage::Error {
                code: ErrorCode::InvalidToken,
                ..
            }
        ),
        "{reply:?}"
    );
    let mut ws = common::ws_connect(&base).await;
    let reply = common::ws_join(
        &mut ws,
        &common::prod_token(&room, "b", Duration::from_secs(3000)),
    )
    .await;
    assert!(matches!(reply, ServerMessage::Joined { .. }), "{reply:?}");
}

#[tokio::test]
async fn turn_credentials_expire_with_the_token() {
    let server = common::production_server_with(|c| {
        c.signal.ice_servers = vec![IceServerConfig {
            urls: vec!["turn:turn.example.org:3478".into()],
            username: None,
            credential: None,
            secret: Some("turn-secret-0123456789abcdef-0123456789".into()),
            ttl_secs: 86_400,
        }];
    })
    .await;
    let room = common::room();
    let mut ws = common::ws_connect(&server.base_url()).await;
    let joined = common::ws_join(
        &mut ws,
        &common::prod_token(&room, "t", Duration::from_secs(300)),
    )
    .await;
    let ServerMessage::Joined { ice_servers, .. } = joined else {
        panic!("{joined:?}")
    };
    let username = ice_servers[0].username.clone().expect("TURN username");
    let expiry: u64 = username
        .split(':')
        .next()
        .and_then(|e| e.parse().ok())
        .expect("expiry:identity");
    let now = chorus_signal::auth::unix_now();
    assert!(
        (now + 290..=now + 301).contains(&expiry),
        "TURN expiry {expiry} should be the token's (now {now} + 300), not a day"
    );
}

fn chorus(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chorus"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // The refusals happen before anything is bound; a bug that starts serving must not hang.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chorus runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chorus {args:?} kept running: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn unsafe_startups_are_refused_with_a_clear_error() {
    // No config, public bind: not dev mode, and no keys.
    let out = chorus(
        &["serve", "--http-bind", "0.0.0.0:0", "--udp-port", "0"],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--dev-allow-public"), "{err}");
    // The same through the environment, as the issue described it.
    let out = chorus(
        &["serve", "--udp-port", "0"],
        &[("CHORUS_HTTP_BIND", "0.0.0.0:0")],
    );
    assert!(!out.status.success());
    // Dev mode asked for on a public bind: refused unless forced.
    let out = chorus(
        &[
            "serve",
            "--dev",
            "--http-bind",
            "0.0.0.0:0",
            "--udp-port",
            "0",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing dev mode"), "{err}");
    // The sample config as shipped: its placeholder secrets are refused.
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/chorus.sample.toml"
    );
    let out = chorus(&["serve", "--config", sample], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.keys.prodkey"), "{err}");
    // A config file with an empty [auth]: not dev mode, an error.
    let dir = std::env::temp_dir().join(format!("chorus-harden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("empty-auth.toml");
    std::fs::write(&path, "[server]\nhttp_bind = \"127.0.0.1:0\"\n[auth]\n").expect("write");
    let out = chorus(&["serve", "--config", path.to_str().expect("utf8")], &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no [auth] keys"), "{err}");
}
