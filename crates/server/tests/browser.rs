//! Real headless Chromium against an in-process server: two people on the call page see and
//! hear each other and chat over data channels; Chromium publishes with WHIP and another plays
//! with WHEP; VP9, AV1 and H264 flow as well as VP8; simulcast layers reach the viewers that
//! ask for them.
//!
//! The scripts live in `tests/browser/` (playwright-core driving Debian's `/usr/bin/chromium`).
//! Missing Chromium or node modules fail this test loudly: it never passes without running.

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

async fn run_script(script: &str, base_url: &str) {
    let child = tokio::process::Command::new("node")
        .arg(scripts_dir().join(script))
        .arg(base_url)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_call_page_and_whip_whep() {
    check_prerequisites();
    let server = common::server().await;
    let base = server.base_url();
    run_script("call.mjs", &base).await;
    run_script("whip_whep.mjs", &base).await;
    // VP9, AV1 and H264 published by one Chromium and decoded by another (WHIP/WHEP and page).
    run_script("codecs.mjs", &base).await;
    // Chromium publishes three simulcast layers; two Chromiums each decode the layer they ask
    // for, and swap when they ask for the other.
    run_script("simulcast.mjs", &base).await;
    // Everyone left: nothing is leaked.
    let mut stats = server.state.sfu.stats().await.expect("stats");
    for _ in 0..100 {
        if stats.participants == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        stats = server.state.sfu.stats().await.expect("stats");
    }
    assert_eq!(
        (stats.rooms, stats.participants, stats.peers, stats.tracks),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    // Media was really forwarded, and counted.
    let out = common::metric(
        &base,
        "chorus_rtp_packets_total{direction=\"out\",kind=\"video\"}",
    )
    .await
    .unwrap_or(0.0);
    assert!(out > 0.0, "video packets out: {out}");
}
