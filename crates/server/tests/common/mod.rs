//! Shared helpers: an in-process server on port 0, token minting, `/metrics` scraping, and
//! the one wait helper, [`eventually`].
#![allow(dead_code)]

use std::fmt::Debug;

use chorus_signal::protocol::ServerMessage;
use std::future::Future;
use std::time::{Duration, Instant};

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

/// The API key of [`production_server_with`].
pub const PROD_KEY: &str = "prodkey";
/// Its secret (32 bytes or more, as outside dev mode required).
pub const PROD_SECRET: &str = "test-secret-0123456789abcdef-0123456789";

/// Starts a server as production runs it: not in dev mode, one API key ([`PROD_KEY`]),
/// HTTP, media and the metrics listener on free loopback ports, after `tweak`.
pub async fn production_server_with(tweak: impl FnOnce(&mut Config)) -> RunningServer {
    init_tracing();
    let mut config = Config {
        file: Some("test.toml".into()),
        ..Config::default()
    };
    config.server.http_bind = "127.0.0.1:0".parse().expect("addr");
    config.media.bind_ip = "127.0.0.1".parse().expect("ip");
    config.media.udp_port = 0;
    config.metrics.bind = Some("127.0.0.1:0".parse().expect("addr"));
    config.auth.keys.insert(PROD_KEY.into(), PROD_SECRET.into());
    tweak(&mut config);
    assert!(
        !config.dev_mode(),
        "a production test server is not in dev mode"
    );
    chorus_server::start(config).await.expect("server starts")
}

/// A token signed with [`PROD_KEY`], valid for `ttl`, granting publish, subscribe and data.
pub fn prod_token(room: &str, identity: &str, ttl: Duration) -> String {
    let grants = Grants {
        room: room.into(),
        can_publish: true,
        can_subscribe: true,
        can_publish_data: true,
    };
    mint(PROD_KEY, PROD_SECRET, &claims(identity, room, ttl, grants)).expect("mints")
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
    find_sample(&text, prefix)
}

/// A counter read from `/metrics`, or 0 when the series is absent (not yet incremented).
pub async fn counter(base: &str, prefix: &str) -> f64 {
    metric(base, prefix).await.unwrap_or(0.0)
}

/// The `/metrics` exposition text (empty if the scrape fails), to read several samples from
/// one instant with [`sample`].
pub async fn scrape(base: &str) -> String {
    match reqwest::get(format!("{base}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the first sample in `text` starting with `prefix`, or 0 when absent.
pub fn sample(text: &str, prefix: &str) -> f64 {
    find_sample(text, prefix).unwrap_or(0.0)
}

fn find_sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits until `check` returns `Ok`, polling it every 20 ms, and returns the value.
///
/// `check` returns `Err(state)` while the condition does not hold; after `timeout` the test
/// panics naming `what` and the last observed state. Use [`ok_if`] to turn a condition and the
/// state it was read from into that result.
pub async fn eventually<T, S, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    S: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last observed: {state:#?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `Ok(state)` when `done`, else `Err(state)`: the result [`eventually`] polls for.
pub fn ok_if<S>(done: bool, state: S) -> Result<S, S> {
    if done {
        Ok(state)
    } else {
        Err(state)
    }
}

/// A small deterministic pseudo-random generator (xorshift64*) for seeded fuzz-style tests:
/// the seed is printed in every failure message so a failure reproduces.
pub struct Rng(u64);

impl Rng {
    /// A generator from `CHORUS_TEST_SEED` if set, else from `default_seed`; returns the seed.
    pub fn from_env_or(default_seed: u64) -> (Self, u64) {
        let seed = std::env::var("CHORUS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_seed);
        (Self(seed.max(1)), seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// A client WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws` on the server at `base` (`http://...`).
pub async fn ws_connect(base: &str) -> Ws {
    let url = format!("{}/ws", base.replacen("http", "ws", 1));
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connects")
        .0
}

/// What the server said next, skipping subscriber offers and trickled candidates (tests of
/// limits do not use them); `None` once the server closed the socket (with the close frame's
/// code, if any, in `closed`). Silence for `wait` fails the test.
pub async fn ws_next_within(
    ws: &mut Ws,
    wait: Duration,
) -> Result<chorus_signal::protocol::ServerMessage, Option<u16>> {
    use chorus_signal::protocol::ServerMessage;
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(wait, ws.next())
            .await
            .unwrap_or_else(|_| panic!("a server message or a close within {wait:?}"));
        let frame = match frame {
            Some(Ok(f)) => f,
            _ => return Err(None),
        };
        match frame {
            Message::Text(t) => {
                match serde_json::from_str(&t).expect("server sends protocol JSON") {
                    ServerMessage::Offer { .. } | ServerMessage::Candidate { .. } => continue,
                    m => return Ok(m),
                }
            }
            Message::Close(c) => return Err(c.map(|c| u16::from(c.code))),
            _ => continue,
        }
    }
}

/// [`ws_next_within`] with 5 s.
pub async fn ws_next(ws: &mut Ws) -> Result<chorus_signal::protocol::ServerMessage, Option<u16>> {
    ws_next_within(ws, Duration::from_secs(5)).await
}

/// Sends a text frame.
pub async fn ws_send(ws: &mut Ws, text: &str) {
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        text.to_owned(),
    ))
    .await
    .expect("send");
}

/// Sends `join` with `token` and returns the answer.
pub async fn ws_join(ws: &mut Ws, token: &str) -> chorus_signal::protocol::ServerMessage {
    let msg = serde_json::json!({"type": "join", "version": 1, "token": token});
    ws_send(ws, &msg.to_string()).await;
    ws_next(ws).await.expect("an answer to join")
}

/// Asserts that the next message is an error with `code`, then returns its text.
pub async fn expect_error(ws: &mut Ws, code: chorus_signal::protocol::ErrorCode) -> String {
    match ws_next(ws).await {
        Ok(chorus_signal::protocol::ServerMessage::Error { code: got, message }) => {
            assert_eq!(got, code, "error message: {message}");
            message
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

/// The next server message within 5 s ([`ws_next_within`]); `None` once the server closed the
/// socket.
pub async fn next_server_message(ws: &mut Ws) -> Option<ServerMessage> {
    ws_next_within(ws, Duration::from_secs(5)).await.ok()
}
