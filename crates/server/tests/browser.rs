//! Real headless Chromium against an in-process server: two people on the call page see and
//! hear each other and chat over data channels; Chromium publishes with WHIP and another plays
//! with WHEP; VP9, AV1 and H264 flow as well as VP8; simulcast layers reach the viewers that
//! ask for them; outside dev mode the page joins with tokens handed to it in its address; a
//! page that loses its WebSocket resumes.
//!
//! The scripts live in `tests/browser/` (playwright-core driving Debian's `/usr/bin/chromium`).
//! Each script is its own test with its own server, so one failure does not hide the others;
//! each checks afterwards that nothing leaked. Missing Chromium or node modules fail these
//! tests loudly: they never pass without running.
//!
//! The scenarios take turns (a lock held for the whole scenario): each starts two or three
//! Chromiums whose pacing checks (frames still growing, no stall) would be starved if all four
//! shared the machine's cores at once.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

fn check_prerequisites() {
    let chromium = std::env::var("CHORUS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "BROWSER TESTS CANNOT RUN: {chromium} is missing. Install Debian's chromium \
         (apt-get install chromium) or run .ci/run, which does."
    );
    assert!(
        scripts_dir().join("node_modules/playwright-core").exists(),
        "BROWSER TESTS CANNOT RUN: tests/browser/node_modules is missing. Run \
         `npm ci --prefix tests/browser` (or .ci/run)."
    );
}

async fn run_script_with(script: &str, base_url: &str, extra: &[String]) {
    let child = tokio::process::Command::new("node")
        .arg(scripts_dir().join(script))
        .arg(base_url)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (install nodejs)");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish in 120 s"))
        .expect("script output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    let summary = stdout.lines().last().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(summary)
        .unwrap_or_else(|e| panic!("{script}: last line is not the JSON summary ({e}): {summary}"));
    assert_eq!(json["ok"], serde_json::Value::Bool(true), "{summary}");
    println!("{summary}");
}

/// Held while a scenario's Chromiums run.
static ONE_SCENARIO_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `script` against `server`, then checks that everyone left without leaking a
/// room, participant, peer connection or track, and that video was really forwarded.
async fn scenario(script: &str) {
    check_prerequisites();
    let _turn = ONE_SCENARIO_AT_A_TIME.lock().await;
    let server = common::server().await;
    scenario_on(&server, script, &[]).await;
}

async fn scenario_on(server: &chorus_server::RunningServer, script: &str, extra: &[String]) {
    let base = server.base_url();
    run_script_with(script, &base, extra).await;
    // Everyone left: nothing is leaked.
    common::eventually(
        &format!("{script}: everything released"),
        Duration::from_secs(5),
        || async {
            let stats = server.state.sfu.stats().await.expect("stats");
            common::ok_if(
                (stats.rooms, stats.participants, stats.peers, stats.tracks) == (0, 0, 0, 0),
                stats,
            )
        },
    )
    .await;
    // Media was really forwarded, and counted.
    let metrics_base = match server.metrics_addr {
        Some(addr) => format!("http://{addr}"),
        None => base.clone(),
    };
    let out = common::counter(
        &metrics_base,
        "chorus_rtp_packets_total{direction=\"out\",kind=\"video\"}",
    )
    .await;
    assert!(out > 0.0, "{script}: video packets out: {out}");
}

/// Two people on the call page see and hear each other, mute, and chat over data channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_call_page() {
    scenario("call.mjs").await;
}

/// A call page whose WebSocket is dropped (no `leave`) reconnects and resumes the same
/// participant, restarting ICE on both connections; video still decodes on both sides and the
/// server has two participants, not three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_call_page_resumes_after_losing_its_websocket() {
    check_prerequisites();
    let _turn = ONE_SCENARIO_AT_A_TIME.lock().await;
    let server = common::server().await;
    scenario_on(&server, "resume.mjs", &[]).await;
    let ok = common::counter(
        &server.base_url(),
        "chorus_signal_resumes_total{result=\"ok\"}",
    )
    .await;
    assert_eq!(ok, 1.0, "one resume counted");
}

/// Chromium publishes with WHIP and another plays with WHEP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_whip_and_whep() {
    scenario("whip_whep.mjs").await;
}

/// VP9, AV1 and H264 published by one Chromium and decoded by another (WHIP/WHEP and page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_codecs() {
    scenario("codecs.mjs").await;
}

/// Chromium publishes three simulcast layers; two Chromiums each decode the layer they ask
/// for, and swap when they ask for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_simulcast() {
    scenario("simulcast.mjs").await;
}

/// The call page outside dev mode: two Chromiums open `/?token=<jwt>` (tokens of a configured
/// key; no `/dev/token` exists) under the page's Content-Security-Policy, join and see and hear
/// each other; a data-message flood is cut to the configured rate; a page without a token says
/// it needs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_call_page_with_tokens_outside_dev_mode() {
    check_prerequisites();
    let _turn = ONE_SCENARIO_AT_A_TIME.lock().await;
    let server = common::production_server_with(|c| {
        c.media.data_messages_per_sec = 5;
        c.media.data_message_burst = 10;
    })
    .await;
    let room = common::room();
    let tokens = [
        common::prod_token(&room, "alice", Duration::from_secs(600)),
        common::prod_token(&room, "bob", Duration::from_secs(600)),
    ];
    scenario_on(&server, "token_page.mjs", &tokens).await;
    let metrics = format!("http://{}", server.metrics_addr.expect("metrics listener"));
    let dropped = common::counter(
        &metrics,
        "chorus_packets_dropped_total{reason=\"data_rate_limited\"}",
    )
    .await;
    assert!(dropped >= 20.0, "flooded data messages dropped: {dropped}");
}
