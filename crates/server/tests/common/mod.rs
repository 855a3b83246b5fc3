//! Shared helpers: an in-process server on port 0 and token minting.
#![allow(dead_code)]

use std::time::Duration;

use chorus_server::config::{DEV_API_KEY, DEV_API_SECRET};
use chorus_server::{Config, RunningServer};
use chorus_signal::auth::{claims, mint, Grants};

/// Starts a dev-mode server on 127.0.0.1 with HTTP and media on free ports.
pub async fn server() -> RunningServer {
    server_with(|_| {}).await
}

/// Starts a server after `tweak` adjusts the default test config.
pub async fn server_with(tweak: impl FnOnce(&mut Config)) -> RunningServer {
    init_tracing();
    let mut config = Config::default();
    config.server.http_bind = "127.0.0.1:0".parse().expect("addr");
    config.media.bind_ip = "127.0.0.1".parse().expect("ip");
    config.media.udp_port = 0;
    tweak(&mut config);
    chorus_server::start(config).await.expect("server starts")
}

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=chorus_sfu=debug`).
fn init_tracing() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A token for `identity` in `room` with publish and subscribe (and data) grants.
pub fn token(room: &str, identity: &str) -> String {
    token_with(room, identity, true, true)
}

/// A token with the given grants, signed by the dev key.
pub fn token_with(room: &str, identity: &str, publish: bool, subscribe: bool) -> String {
    let grants = Grants {
        room: room.into(),
        can_publish: publish,
        can_subscribe: subscribe,
        can_publish_data: true,
    };
    mint(
        DEV_API_KEY,
        DEV_API_SECRET,
        &claims(identity, room, Duration::from_secs(600), grants),
    )
    .expect("mints")
}

/// A unique room name.
pub fn room() -> String {
    format!("room-{}", rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (t as u64) ^ u64::from(std::process::id())
}

/// Scrapes `/metrics` and returns the value of the first sample line starting with `prefix`.
pub async fn metric(base: &str, prefix: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
