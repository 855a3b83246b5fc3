//! Two people on the call page, each a real headless Chromium in a network namespace of its
//! own test (a veth pair to the root namespace, where Chorus runs on the pair's address, not
//! loopback, outside dev mode with real keys), reach each other when the network is hostile:
//!
//! - with every UDP datagram dropped in the namespace, over ICE-TCP (the page's selected pair:
//!   its active TCP candidate to an engine's passive TCP host candidate);
//! - with every UDP datagram dropped in the namespace and ICE-TCP off, through a real coturn
//!   over TCP (the page's selected pair: a relay candidate reached over TCP), and through a
//!   coturn started from the production sample `deploy/turnserver.sample.conf` over TLS;
//! - with only TURN allowed (the page's `?relay=1`: `iceTransportPolicy: "relay"`), through
//!   coturn over UDP (a relay candidate reached over UDP).
//!
//! coturn runs with `use-auth-secret` and Chorus's TURN secret, so these prove that the TURN
//! REST credentials Chorus hands out are the ones coturn accepts. Each test asserts what the
//! browsers' `getStats` says about the candidate pair in use, that media flowed both ways, and
//! that the server released everything afterwards.
//!
//! Needs root (namespaces, nftables), `ip`, `nft`, `turnserver`, Chromium and the browser
//! tests' node modules; each missing piece fails the test naming what to install. The
//! scenarios take turns, as the other browser tests do. The harness (`common/netns.rs`)
//! deletes namespaces, links, rules and processes when a test ends, also when it fails.

mod common;
#[path = "common/netns.rs"]
mod netns;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chorus_server::RunningServer;
use chorus_signal::ice::IceServerConfig;
use netns::{Coturn, Net};
use serde_json::Value;

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

fn check_browser() {
    let chromium = std::env::var("CHORUS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "BROWSER TESTS CANNOT RUN: {chromium} is missing. Install Debian's chromium \
         (./scripts/test does)."
    );
    assert!(
        scripts_dir().join("node_modules/playwright-core").exists(),
        "BROWSER TESTS CANNOT RUN: tests/browser/node_modules is missing (./scripts/test runs \
         npm ci there)."
    );
}

/// Held while a scenario's Chromiums run.
static ONE_SCENARIO_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A TURN secret as an operator makes one (`openssl rand -hex 32`).
fn random_secret() -> String {
    use std::io::Read;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("random bytes");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Chorus outside dev mode on the veth's root-side address (HTTP and media), advertising it,
/// handing out `ice_servers`, with ICE-TCP on or off.
async fn server_on(net: &Net, ice_servers: Vec<IceServerConfig>, ice_tcp: bool) -> RunningServer {
    let ip = IpAddr::V4(net.host_ip);
    common::production_server_with(|c| {
        c.server.http_bind = SocketAddr::new(ip, 0);
        c.media.bind_ip = ip;
        c.media.external_ips = vec![ip];
        c.media.ice_tcp = ice_tcp;
        c.signal.ice_servers = ice_servers;
    })
    .await
}

/// coturn on the veth's root-side address and the ICE server entry Chorus hands out for it.
fn coturn(net: &Net, transport: &str) -> (Coturn, IceServerConfig) {
    let secret = random_secret();
    let [port] = net.free_ports();
    let turn = Coturn::start(net.host_ip, port, &secret);
    let entry = IceServerConfig {
        urls: vec![format!("turn:{}?transport={transport}", turn.addr)],
        username: None,
        credential: None,
        secret: Some(secret),
        ttl_secs: 600,
    };
    (turn, entry)
}

/// Runs the call page scenario in the namespace (two Chromiums; `options` for the script:
/// `--query=...` added to the page address, `--chromium-arg=...`), checks that the server
/// released everything, and returns the script's summary.
async fn call(net: &Net, server: &RunningServer, options: &[&str]) -> Value {
    let room = common::room();
    let tokens = [
        common::prod_token(&room, "alice", Duration::from_secs(600)),
        common::prod_token(&room, "bob", Duration::from_secs(600)),
    ];
    let base = server.base_url();
    let script = scripts_dir().join("netns_call.mjs");
    let child = net
        .exec_async("node")
        .arg(&script)
        .arg(&base)
        .args(&tokens)
        .args(options)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs in the namespace (install nodejs)");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("netns_call.mjs did not finish in 90 s"))
        .expect("script output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "netns_call.mjs failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    let summary = stdout.lines().last().unwrap_or_default();
    let json: Value = serde_json::from_str(summary)
        .unwrap_or_else(|e| panic!("the last line is not the JSON summary ({e}): {summary}"));
    assert_eq!(json["ok"], Value::Bool(true), "{summary}");
    println!("{summary}");

    common::eventually("everything released", Duration::from_secs(5), || async {
        let stats = server.state.sfu.stats().await.expect("stats");
        common::ok_if(
            (stats.rooms, stats.participants, stats.peers, stats.tracks) == (0, 0, 0, 0),
            stats,
        )
    })
    .await;
    let metrics = format!("http://{}", server.metrics_addr.expect("metrics listener"));
    let video_out = common::counter(
        &metrics,
        "chorus_rtp_packets_total{direction=\"out\",kind=\"video\"}",
    )
    .await;
    assert!(video_out > 0.0, "video packets forwarded: {video_out}");
    json
}

/// Asserts that all four connections (alice's and bob's publisher and subscriber) selected a
/// pair whose local candidate has one of these types, this protocol and relay protocol, and
/// whose remote
/// candidate is an SFU engine's host candidate (one of `media`) over `media_protocol`.
fn assert_pairs(
    summary: &Value,
    (types, protocol, relay): (&[&str], &str, Option<&str>),
    media: &[SocketAddr],
    media_protocol: &str,
) {
    for who in ["alice", "bob"] {
        for target in ["publisher", "subscriber"] {
            let pair = &summary["pairs"][who][target];
            let (local, remote) = (&pair["local"], &pair["remote"]);
            let local_type = local["candidateType"].as_str().unwrap_or("none");
            assert!(
                types.contains(&local_type),
                "{who}'s {target} connection: local candidate {local_type}, want one of \
                 {types:?}: {pair}"
            );
            assert_eq!(
                (local["protocol"].as_str(), local["relayProtocol"].as_str()),
                (Some(protocol), relay),
                "{who}'s {target} connection: selected pair {pair}"
            );
            let remote_addr = format!(
                "{}:{}",
                remote["address"].as_str().unwrap_or("?"),
                remote["port"].as_u64().unwrap_or(0)
            );
            assert!(
                remote["candidateType"] == "host"
                    && remote["protocol"] == media_protocol
                    && media.iter().any(|m| m.to_string() == remote_addr),
                "{who}'s {target} connection: the remote end is not an SFU engine's \
                 {media_protocol} host candidate ({media:?}): {pair}"
            );
            assert_eq!(pair["state"], "succeeded", "{who}'s {target}: {pair}");
        }
    }
}

/// ICE-TCP frames the server's engines sent, summed over engines (`/metrics`).
async fn tcp_frames_sent(server: &RunningServer) -> f64 {
    let metrics = format!("http://{}", server.metrics_addr.expect("metrics listener"));
    common::scrape(&metrics)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("chorus_engine_tcp_frames_total{") && l.contains("direction=\"out\"")
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The allocations coturn granted (each a browser that authenticated with Chorus's TURN
/// credentials) and the bytes it relayed, from its log.
fn coturn_evidence(turn: &Coturn) -> (usize, String) {
    let log = turn.log();
    let allocations = log
        .lines()
        .filter(|l| l.contains("ALLOCATE processed, success"))
        .count();
    (allocations, log)
}

/// UDP dropped both ways in the client namespace, no TURN server: the page reaches Chorus over
/// ICE-TCP (its active TCP host candidate to an engine's passive one), and media flows both
/// ways over those TCP connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_reaches_the_sfu_over_ice_tcp() {
    check_browser();
    let _one_at_a_time = ONE_SCENARIO_AT_A_TIME.lock().await;
    let started = Instant::now();
    let net = Net::new(true);
    let server = server_on(&net, Vec::new(), true).await;
    let summary = call(&net, &server, &[]).await;
    assert_pairs(
        &summary,
        // An active TCP candidate's real port is only known once connected, and Chrome
        // reports the connection's local end as peer-reflexive (the port the SFU's STUN
        // response maps); the address is the namespace's own.
        (&["host", "prflx"], "tcp", None),
        &server.state.sfu.media_addrs(),
        "tcp",
    );
    for who in ["alice", "bob"] {
        for target in ["publisher", "subscriber"] {
            let pair = &summary["pairs"][who][target];
            let local = &pair["local"];
            assert_eq!(local["tcpType"], "active", "{who}'s {target}: {pair}");
            assert_eq!(
                pair["remote"]["tcpType"], "passive",
                "{who}'s {target}: {pair}"
            );
            assert_eq!(
                local["address"].as_str(),
                Some(net.client_ip.to_string().as_str()),
                "{who}'s {target}: {pair}"
            );
        }
    }
    // Media went out over the engines' TCP connections (the call lasted seconds, at 50 audio
    // packets a second and more video packets per participant).
    let frames = tcp_frames_sent(&server).await;
    assert!(frames > 500.0, "ICE-TCP frames sent: {frames}");
    let (dropped_in, dropped_out) = udp_was_blocked(&net);
    println!(
        "ICE-TCP with UDP blocked: {:?}, {frames} TCP frames sent, UDP dropped in/out {dropped_in}/{dropped_out}",
        started.elapsed()
    );
}

/// UDP dropped both ways in the client namespace and no ICE-TCP: the page reaches Chorus
/// through coturn over TCP (`turn:...?transport=tcp`), coturn relaying over UDP to the SFU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_reaches_the_sfu_through_coturn_over_tcp() {
    check_browser();
    let _one_at_a_time = ONE_SCENARIO_AT_A_TIME.lock().await;
    let started = Instant::now();
    let net = Net::new(true);
    let (turn, entry) = coturn(&net, "tcp");
    let server = server_on(&net, vec![entry], false).await;
    let summary = call(&net, &server, &[]).await;
    assert_pairs(
        &summary,
        (&["relay"], "udp", Some("tcp")),
        &server.state.sfu.media_addrs(),
        "udp",
    );
    let (allocations, log) = coturn_evidence(&turn);
    assert!(
        allocations >= 4,
        "coturn granted {allocations} allocations (want one per connection):\n{log}"
    );
    let frames = tcp_frames_sent(&server).await;
    assert_eq!(frames, 0.0, "ICE-TCP is off, yet TCP frames were sent");
    let (dropped_in, dropped_out) = udp_was_blocked(&net);
    println!(
        "TURN/TCP with UDP blocked: {:?}, UDP dropped in/out {dropped_in}/{dropped_out}",
        started.elapsed()
    );
}

/// The page with `?relay=1` (`iceTransportPolicy: "relay"`) and UDP open: it uses only the
/// relay candidates coturn allocates over UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_reaches_the_sfu_through_coturn_over_udp() {
    check_browser();
    let _one_at_a_time = ONE_SCENARIO_AT_A_TIME.lock().await;
    let started = Instant::now();
    let net = Net::new(false);
    let (turn, entry) = coturn(&net, "udp");
    let server = server_on(&net, vec![entry], true).await;
    let summary = call(&net, &server, &["--query=relay=1"]).await;
    assert_pairs(
        &summary,
        (&["relay"], "udp", Some("udp")),
        &server.state.sfu.media_addrs(),
        "udp",
    );
    let (allocations, log) = coturn_evidence(&turn);
    assert!(
        allocations >= 4,
        "coturn granted {allocations} allocations (want one per connection):\n{log}"
    );
    println!("relay only over UDP: {:?}", started.elapsed());
}

/// UDP dropped both ways, no ICE-TCP, and the only ICE server a `turns:` URL: the page reaches
/// Chorus through TURN over TLS, served by a coturn started from the production sample
/// `deploy/turnserver.sample.conf` (its address, ports, certificate and secret overridden on
/// the command line; the sample's denied private ranges stay, Chorus's address is allowed).
/// The certificate is made here, so Chromium is told to accept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_reaches_the_sfu_through_the_sample_coturn_over_tls() {
    check_browser();
    let _one_at_a_time = ONE_SCENARIO_AT_A_TIME.lock().await;
    let started = Instant::now();
    let net = Net::new(true);
    let secret = random_secret();
    let certified = rcgen::generate_simple_self_signed(vec![net.host_ip.to_string()])
        .expect("a certificate for the TURN address");
    let scratch = tempdir();
    let (cert, key) = (scratch.0.join("cert.pem"), scratch.0.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let sample =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/turnserver.sample.conf");
    let [port, tls_port] = net.free_ports();
    let turn = Coturn::from_config(
        &sample,
        net.host_ip,
        (port, tls_port),
        &secret,
        (&cert, &key),
    );
    let entry = IceServerConfig {
        urls: vec![format!("turns:{}:{tls_port}?transport=tcp", net.host_ip)],
        username: None,
        credential: None,
        secret: Some(secret),
        ttl_secs: 600,
    };
    let server = server_on(&net, vec![entry], false).await;
    let summary = call(
        &net,
        &server,
        &["--chromium-arg=--ignore-certificate-errors"],
    )
    .await;
    assert_pairs(
        &summary,
        (&["relay"], "udp", Some("tls")),
        &server.state.sfu.media_addrs(),
        "udp",
    );
    let (allocations, log) = coturn_evidence(&turn);
    assert!(
        allocations >= 4,
        "coturn granted {allocations} allocations (want one per connection):\n{log}"
    );
    let (dropped_in, dropped_out) = udp_was_blocked(&net);
    println!(
        "TURN/TLS (sample config) with UDP blocked: {:?}, UDP dropped in/out {dropped_in}/{dropped_out}",
        started.elapsed()
    );
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Scratch {
    let dir = std::env::temp_dir().join(format!(
        "chorus-netns-{}-{}",
        std::process::id(),
        random_secret()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

/// The namespace's UDP packets dropped (in, out), asserting that outgoing UDP was dropped:
/// the test really ran with UDP blocked.
fn udp_was_blocked(net: &Net) -> (u64, u64) {
    let (dropped_in, dropped_out) = net.udp_dropped();
    assert!(
        dropped_out > 0,
        "the namespace dropped no outgoing UDP: was it really blocked? ({dropped_in} in, {dropped_out} out)"
    );
    (dropped_in, dropped_out)
}
