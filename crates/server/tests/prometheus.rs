//! A real Prometheus scrapes `/metrics`: the exposition parses, the target is up, and the
//! media and process series are there with the values the server reports.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const PROMETHEUS: &str = "/usr/bin/prometheus";

async fn query(api: &str, q: &str) -> Option<serde_json::Value> {
    let url = format!("{api}/api/v1/query");
    let resp = reqwest::Client::new()
        .get(url)
        .query(&[("query", q)])
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = resp.json().await.ok()?;
    let result = body["data"]["result"].as_array()?.first()?.clone();
    Some(result["value"][1].clone())
}

/// Prometheus's config and data directory, removed when the test ends (also on a panic, after
/// `kill_on_drop` has stopped Prometheus).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_metrics_endpoint() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "PROMETHEUS TEST CANNOT RUN: {PROMETHEUS} is missing. Install Debian's prometheus \
         (apt-get install prometheus) or run .ci/run, which does."
    );
    let server = common::server().await;
    // One room with one participant, so the gauges have something to say.
    let url = format!("{}/ws", server.base_url().replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    use futures::SinkExt;
    let join =
        serde_json::json!({"type":"join","version":1,"token":common::token(&common::room(),"p")});
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        join.to_string(),
    ))
    .await
    .expect("send");

    let dir = TempDir(std::env::temp_dir().join(format!("chorus-prom-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: chorus\n    static_configs:\n      - targets: ['{}']\n",
        server.http_addr
    );
    std::fs::write(dir.0.join("prometheus.yml"), config).expect("config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let mut prom = tokio::process::Command::new(PROMETHEUS)
        .arg(format!(
            "--config.file={}",
            dir.0.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");
    let api = format!("http://127.0.0.1:{port}");

    common::eventually(
        "Prometheus reports the target up with one participant",
        Duration::from_secs(30),
        || async {
            let up = query(&api, "up{job=\"chorus\"}").await;
            let participants = query(&api, "chorus_participants").await;
            let value =
                |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v.as_str()) == Some("1");
            common::ok_if(value(&up) && value(&participants), (up, participants))
        },
    )
    .await;
    let rss = query(&api, "process_resident_memory_bytes{job=\"chorus\"}").await;
    let fds = query(&api, "process_open_fds{job=\"chorus\"}").await;
    let _ = prom.kill().await;
    let rss: f64 = rss.and_then(|v| v.as_str()?.parse().ok()).unwrap_or(0.0);
    assert!(rss > 1e6, "resident memory scraped: {rss}");
    let fds: f64 = fds.and_then(|v| v.as_str()?.parse().ok()).unwrap_or(0.0);
    assert!(fds > 3.0, "open fds scraped: {fds}");
}
