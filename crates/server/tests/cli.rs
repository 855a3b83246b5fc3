//! The `chorus` binary: token minting, config errors, and draining on SIGTERM.

mod common;

use std::process::Command;

use chorus_server::config::{DEV_API_KEY, DEV_API_SECRET};
use chorus_signal::auth::KeyRing;

fn chorus(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(args)
        .output()
        .expect("chorus runs")
}

#[test]
fn token_prints_a_jwt_with_the_requested_grants() {
    let out = chorus(&[
        "token",
        "--dev",
        "--room",
        "demo",
        "--identity",
        "alice",
        "--name",
        "Alice",
        "--publish",
        "--ttl",
        "10m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    let ring = KeyRing::new([(DEV_API_KEY.to_owned(), DEV_API_SECRET.to_owned())]);
    let claims = ring.verify(token.trim()).expect("valid token");
    assert_eq!(
        (claims.sub.as_str(), claims.name.as_str()),
        ("alice", "Alice")
    );
    assert_eq!(claims.grants.room, "demo");
    assert!(
        claims.grants.can_publish
            && !claims.grants.can_subscribe
            && !claims.grants.can_publish_data
    );
    let ttl = claims.exp - chorus_signal::auth::unix_now();
    assert!((590..=600).contains(&ttl), "ttl {ttl}");
}

#[test]
fn token_without_a_key_or_grant_is_refused() {
    let no_key = chorus(&["token", "--room", "r", "--identity", "a", "--publish"]);
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("--dev"));
    let no_grant = chorus(&["token", "--dev", "--room", "r", "--identity", "a"]);
    assert!(!no_grant.status.success());
    assert!(String::from_utf8_lossy(&no_grant.stderr).contains("--publish"));
}

#[test]
fn serve_rejects_a_config_with_an_unknown_key_naming_it() {
    let dir = std::env::temp_dir().join(format!("chorus-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[media]\nudp_prot = 9000\n").expect("write");
    let out = chorus(&["serve", "--config", path.to_str().expect("utf8 path")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("udp_prot") && stderr.contains("bad.toml"),
        "{stderr}"
    );
}

/// Reads an HTTP/1.0 response to `GET path` from `addr`.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("http");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// Opens `/ws` and joins; returns the socket and the server's first reply.
async fn ws_join(
    addr: &str,
    identity: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    chorus_signal::protocol::ServerMessage,
) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("ws");
    let grants = chorus_signal::auth::Grants {
        room: "drain".into(),
        can_publish: false,
        can_subscribe: true,
        can_publish_data: false,
    };
    let claims = chorus_signal::auth::claims(
        identity,
        "drain",
        std::time::Duration::from_secs(60),
        grants,
    );
    let token = chorus_signal::auth::mint(DEV_API_KEY, DEV_API_SECRET, &claims).expect("token");
    let join = serde_json::json!({"type": "join", "version": 1, "token": token});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("send");
    loop {
        let frame = ws.next().await.expect("reply").expect("frame");
        if let Message::Text(t) = frame {
            return (ws, serde_json::from_str(&t).expect("protocol JSON"));
        }
    }
}

/// SIGTERM: `/readyz` turns 503 and new joins are refused while participants remain; once the
/// last one leaves, the process exits cleanly.
#[tokio::test]
async fn sigterm_drains_then_exits() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};

    use chorus_signal::protocol::{ErrorCode, ServerMessage};
    use futures::SinkExt;

    let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["serve", "--http-bind", "127.0.0.1:0", "--udp-port", "0"])
        .args(["--media-bind-ip", "127.0.0.1"])
        .env("CHORUS_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chorus starts");
    // Logs share stdout with the banner: read up to the banner, keep draining the rest.
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let banner = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("chorus listening: http://"))
        .expect("banner");
    std::thread::spawn(move || lines.for_each(drop));
    let addr = banner
        .trim_start_matches("chorus listening: http://")
        .split_whitespace()
        .next()
        .expect("address")
        .to_owned();
    assert!(http_get(&addr, "/readyz").await.starts_with("HTTP/1.0 200"));
    let (mut ws, joined) = ws_join(&addr, "stayer").await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");

    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    common::eventually(
        "/readyz reports draining after SIGTERM",
        Duration::from_secs(2),
        || async {
            let reply = http_get(&addr, "/readyz").await;
            common::ok_if(reply.starts_with("HTTP/1.0 503"), reply)
        },
    )
    .await;
    let (_, refused) = ws_join(&addr, "latecomer").await;
    assert!(
        matches!(
            refused,
            ServerMessage::Error {
                code: ErrorCode::Internal,
                ..
            }
        ),
        "joins are refused while draining: {refused:?}"
    );
    // The last participant leaves; the drain ends and the process exits on its own.
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"leave"}"#,
    ))
    .await
    .expect("leave");
    let code = common::eventually(
        "the process exits within 10 s of SIGTERM",
        Duration::from_secs(10).saturating_sub(started.elapsed()),
        || std::future::ready(child.try_wait().expect("wait").ok_or("still running")),
    )
    .await;
    assert!(code.success(), "exit status {code}");
}
