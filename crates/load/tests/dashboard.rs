//! The Grafana dashboard and the alert rules against real data. A real Prometheus (Debian's,
//! on loopback, scraping every second) scrapes a real Chorus and a real `chorus-load` run
//! (`--metrics-bind`): bots over WebSocket with injected loss, and a WHIP publisher with a WHEP
//! player. Every PromQL expression of `deploy/grafana/dashboards/chorus.json` must return data,
//! and every rule of `deploy/prometheus/alerts.yml` must evaluate without error.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Prometheus's and the load runs' directory, removed at the end (also on a panic, after
/// `kill_on_drop` has stopped the processes).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    listener.local_addr().expect("addr").port()
}

/// Every `expr` of the dashboard's panels (rows included), with Grafana's variables replaced
/// as Grafana would for "All instances" and a 1 s scrape interval.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = root().join("deploy/grafana/dashboards/chorus.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard parses");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    let title = p["title"].as_str().unwrap_or("?");
                    out.push((format!("{title} [{}]", t["refId"]), e.to_owned()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for (_, e) in &mut out {
        *e = e
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        assert!(!e.contains('$'), "an unknown variable in {e}");
    }
    out
}

async fn get_json(url: &str, query: &[(&str, &str)]) -> Option<Value> {
    let resp = reqwest::Client::new()
        .get(url)
        .query(query)
        .send()
        .await
        .ok()?;
    serde_json::from_str(&resp.text().await.ok()?).ok()
}

/// The series an instant query returns (`None` when the query fails).
async fn series(api: &str, expr: &str) -> Option<usize> {
    let body = get_json(&format!("{api}/api/v1/query"), &[("query", expr)]).await?;
    if body["status"] != "success" {
        return None;
    }
    body["data"]["result"].as_array().map(Vec::len)
}

fn load(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus-load"));
    cmd.args(args)
        .args(["--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "DASHBOARD TEST CANNOT RUN: {PROMETHEUS} is missing. Install Debian's prometheus \
         (apt-get install prometheus) or run ./scripts/test, which does."
    );
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 30, "{} expressions", exprs.len());

    let mut config = chorus_server::Config::default();
    config.server.http_bind = "127.0.0.1:0".parse().expect("addr");
    config.media.bind_ip = "127.0.0.1".parse().expect("ip");
    config.media.udp_port = 0;
    let server = chorus_server::start(config).await.expect("server starts");
    let base = server.base_url();

    // A refused request, so the errors-by-code panel has a series.
    let refused = reqwest::Client::new()
        .post(format!("{base}/whip/refused"))
        .header("Authorization", "Bearer not-a-token")
        .header("Content-Type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .expect("whip");
    assert_eq!(refused.status().as_u16(), 401);

    let dir = std::env::temp_dir().join(format!("chorus-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let scratch = Scratch(dir);
    let dir = scratch.0.display().to_string();

    // The bots: WebSocket with 2 % receive loss (NACKs flow), and WHIP/WHEP, both for longer
    // than the test needs (they are stopped at the end).
    let scenario = scratch.0.join("s.toml");
    std::fs::write(
        &scenario,
        "rooms = 1\npublishers = 1\nsubscribers = 2\nduration = \"40s\"\nramp_up = 20.0\n",
    )
    .expect("scenario");
    let scenario = scenario.display().to_string();
    let load_port = free_port();
    let metrics_bind = format!("127.0.0.1:{load_port}");
    let mut ws_bots = load(&[
        &scenario,
        "--url",
        &base,
        "--results-dir",
        &dir,
        "--run",
        "ws",
    ])
    .args(["--metrics-bind", &metrics_bind, "--loss-percent", "2"])
    .spawn()
    .expect("chorus-load starts");
    let mut whip_bots = load(&[
        &scenario,
        "--url",
        &base,
        "--results-dir",
        &dir,
        "--run",
        "whip",
    ])
    .args(["--protocol", "whip-whep", "--subscribers", "1"])
    .spawn()
    .expect("chorus-load starts");

    let rules = root().join("deploy/prometheus/alerts.yml");
    let prom_config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: chorus\n    static_configs:\n      - targets: ['{}']\n\
         \x20 - job_name: chorus-load\n    static_configs:\n      - targets: ['{metrics_bind}']\n",
        rules.display(),
        server.http_addr
    );
    std::fs::write(scratch.0.join("prometheus.yml"), prom_config).expect("config");
    let prom_port = free_port();
    let mut prom = tokio::process::Command::new(PROMETHEUS)
        .arg(format!("--config.file={dir}/prometheus.yml"))
        .arg(format!("--storage.tsdb.path={dir}/data"))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");
    let api = format!("http://127.0.0.1:{prom_port}");

    // Every expression returns at least one series, within 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut empty: Vec<String>;
    loop {
        empty = Vec::new();
        for (name, expr) in &exprs {
            match series(&api, expr).await {
                Some(n) if n > 0 => {}
                Some(_) => empty.push(format!("{name}: no data: {expr}")),
                None => empty.push(format!("{name}: query failed: {expr}")),
            }
        }
        if empty.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The bots' view is real: the subscribers are connected and received video.
    let connected = series(&api, "chorus_load_bots_connected{role=\"subscriber\"} == 2").await;
    let frames = series(
        &api,
        "chorus_load_join_seconds_count{role=\"subscriber\",until=\"first_video\"} == 2",
    )
    .await;

    // Every alert rule evaluates against the real series without error.
    let rules_state = get_json(&format!("{api}/api/v1/rules"), &[]).await;
    let rules: Vec<(String, String, String)> = rules_state
        .as_ref()
        .and_then(|r| r["data"]["groups"].as_array())
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_owned(),
                r["health"].as_str().unwrap_or("").to_owned(),
                r["lastError"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();

    let _ = prom.kill().await;
    let _ = ws_bots.kill().await;
    let _ = whip_bots.kill().await;
    server.shutdown(Duration::from_secs(1)).await;

    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    assert_eq!(
        connected,
        Some(1),
        "two subscribers connected, seen through Prometheus"
    );
    assert_eq!(
        frames,
        Some(1),
        "both subscribers' first video frame, seen through Prometheus"
    );
    assert!(rules.len() >= 6, "rules loaded: {rules:?}");
    for (name, health, error) in &rules {
        assert_eq!(health, "ok", "rule {name}: {error}");
    }
}

/// The dashboard's shape: unique panel ids, every panel on the `${datasource}` variable, a unit
/// on every chart, no two panels overlapping, and the datasource uid Grafana is provisioned with.
#[test]
fn the_dashboard_is_well_formed() {
    let path = root().join("deploy/grafana/dashboards/chorus.json");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("json");
    assert_eq!(dash["uid"], "chorus-sfu");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = std::collections::HashSet::new();
    let mut boxes: Vec<(String, [i64; 4])> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        assert!(
            ids.insert(p["id"].as_i64().expect("id")),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let n = |k: &str| {
            g[k].as_i64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        };
        let b = [n("x"), n("y"), n("w"), n("h")];
        assert!(b[0] + b[2] <= 24, "{title} is wider than the dashboard");
        for (other, o) in &boxes {
            let apart = b[0] + b[2] <= o[0]
                || o[0] + o[2] <= b[0]
                || b[1] + b[3] <= o[1]
                || o[1] + o[3] <= b[1];
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title.clone(), b));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert!(
            p["fieldConfig"]["defaults"]["unit"].is_string(),
            "{title} has no unit"
        );
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{title} has no query"
        );
    }
    // The provisioned datasource's uid is the variable's default.
    let ds = std::fs::read_to_string(
        root().join("deploy/grafana/provisioning/datasources/prometheus.yaml"),
    )
    .expect("datasource provisioning");
    let uid = dash["templating"]["list"][0]["current"]["value"]
        .as_str()
        .expect("datasource default");
    assert!(
        ds.contains(&format!("uid: {uid}\n")),
        "{uid} not provisioned"
    );
}
