//! The `chorus-load` binary against an in-process server: one publisher, three subscribers for
//! a few seconds on loopback. Every subscriber must receive audio and video without loss, the
//! user-facing figures must be present and sane, and the JSON report must parse. A broken
//! scenario must fail with an error naming the file and the key.

use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

async fn server() -> chorus_server::RunningServer {
    let mut config = chorus_server::Config::default();
    config.server.http_bind = "127.0.0.1:0".parse().expect("addr");
    config.media.bind_ip = "127.0.0.1".parse().expect("ip");
    config.media.udp_port = 0;
    chorus_server::start(config).await.expect("server starts")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn load() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus-load"));
    cmd.kill_on_drop(true);
    cmd
}

fn num(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_three_subscribers_on_loopback() {
    fanout_1x3("shared").await;
}

/// The same with every bot on async connections of its own (`--engine per-bot`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_three_subscribers_with_connections_of_their_own() {
    fanout_1x3("per-bot").await;
}

/// The value of the sample of `name` whose labels include each of `labels` (`key="value"`).
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls chorus-load's `--metrics-bind` endpoint while it runs, until the three subscribers
/// are connected and have been seen joining, receiving video and measuring latency; returns
/// the last scrape.
async fn live_metrics(url: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(r) = reqwest::get(url).await {
            last = r.text().await.unwrap_or_default();
            let sub = "role=\"subscriber\"";
            let ready = sample(&last, "chorus_load_bots_connected", &[sub]) == Some(3.0)
                && sample(
                    &last,
                    "chorus_load_join_seconds_count",
                    &[sub, "until=\"first_video\""],
                ) == Some(3.0)
                && sample(
                    &last,
                    "chorus_load_latency_seconds_count",
                    &[sub, "kind=\"video\""],
                )
                .is_some_and(|n| n > 10.0)
                && sample(&last, "chorus_load_packets_expected_total", &[sub])
                    .is_some_and(|n| n > 50.0);
            if ready {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chorus-load's live metrics never showed three connected subscribers:\n{last}");
}

async fn fanout_1x3(receive: &str) {
    let srv = server().await;
    let dir = scratch(&format!("fanout-{receive}"));
    let scenario = dir.join("fanout-1x3.toml");
    std::fs::write(
        &scenario,
        "rooms = 1\npublishers = 1\nsubscribers = 3\nduration = \"4s\"\nramp_up = 20.0\n",
    )
    .expect("write scenario");
    let mut cmd = load();
    let metrics_url = if receive == "shared" {
        // Two engine threads, the bots dealt between them round robin.
        cmd.args(["--engines", "2"]);
        // The live figures on a free port, scraped while the run lasts.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        cmd.args(["--metrics-bind", &format!("127.0.0.1:{port}")]);
        // The scenario as a flag, the form the load tool's docs show.
        cmd.arg("--scenario");
        Some(format!("http://127.0.0.1:{port}/metrics"))
    } else {
        None
    };
    let child = cmd
        .arg(&scenario)
        .args(["--url", &srv.base_url()])
        .arg("--results-dir")
        .arg(&dir)
        .args(["--run", "r", "--no-progress"])
        .args(["--max-loss", "0", "--max-join-p95-ms", "5000"])
        .args(["--max-latency-p95-ms", "1000"])
        .args(["--engine", receive])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chorus-load runs");
    let live = match &metrics_url {
        Some(url) => Some(live_metrics(url).await),
        None => None,
    };
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("chorus-load finishes")
        .expect("chorus-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("join->video ms"), "{stdout}");
    if let Some(live) = live {
        // The publisher's own figures are there too, and the process's.
        assert_eq!(
            sample(&live, "chorus_load_sessions_total", &["role=\"publisher\""]),
            Some(1.0),
            "{live}"
        );
        assert!(
            sample(
                &live,
                "chorus_load_sent_bytes_total",
                &["role=\"publisher\""]
            )
            .is_some_and(|b| b > 1000.0),
            "{live}"
        );
        assert_eq!(
            sample(
                &live,
                "chorus_load_packets_lost_total",
                &["role=\"subscriber\""]
            ),
            Some(0.0),
            "{live}"
        );
        assert!(
            sample(&live, "process_resident_memory_bytes", &[]).is_some(),
            "{live}"
        );
        assert!(
            stderr.contains("live metrics on http://127.0.0.1:"),
            "{stderr}"
        );
    }

    let text = std::fs::read_to_string(dir.join("r/report.json")).expect("report.json");
    let r: Value = serde_json::from_str(&text).expect("report parses");
    // The HTML report: tables of figures, CDFs and timeline charts with titled axes.
    let html = std::fs::read_to_string(dir.join("r/index.html")).expect("index.html");
    for needle in [
        "<caption>What the bots felt, per role</caption>",
        "<caption>What the server paid",
        "<caption>What the load generator paid</caption>",
        "<caption>Threshold checks</caption>",
        "<th>join-&gt;video ms p50/95/99</th>",
        "Join time: join sent → first video keyframe",
        "Capture → receive latency (CDF)",
        "join time (ms)",
        "share at or below (%)",
        "time since the start (s)",
        "kbit/s",
    ] {
        assert!(html.contains(needle), "index.html lacks {needle:?}");
    }
    // Two CDFs with two lines each (subscriber video and audio; the publisher receives
    // nothing), and six timeline charts.
    assert_eq!(html.matches("<svg").count(), 8, "{html}");
    assert!(html.matches("<polyline").count() >= 4 + 6, "{html}");
    let dist = &r["roles"]["subscriber"]["distributions"]["join_video"];
    assert_eq!(dist[0][0], 0.0, "{dist}");
    assert_eq!(
        dist.as_array().and_then(|d| d.last()).map(|p| p[0].clone()),
        Some(Value::from(1.0))
    );
    assert_eq!(r["passed"], Value::Bool(true), "{stdout}");
    assert_eq!(r["checks"].as_array().map(Vec::len), Some(3));

    let sub = &r["roles"]["subscriber"];
    assert_eq!(num(sub, "/sessions"), 3.0, "{stdout}");
    assert_eq!(num(sub, "/connected"), 3.0, "{stdout}");
    assert_eq!(sub["errors"], serde_json::json!({}), "{stdout}");
    // Every subscriber saw a keyframe and audio: one join sample each.
    assert_eq!(num(sub, "/join_video_ms/count"), 3.0, "{stdout}");
    assert_eq!(num(sub, "/join_audio_ms/count"), 3.0, "{stdout}");
    assert!(num(sub, "/join_video_ms/p95") < 5000.0, "{stdout}");
    // Lossless on loopback, after retransmissions.
    assert!(num(sub, "/packets_expected") > 300.0, "{stdout}");
    assert_eq!(num(sub, "/packets_lost"), 0.0, "{stdout}");
    assert_eq!(num(sub, "/loss_percent"), 0.0, "{stdout}");
    // Capture-to-receive latency from the capture stamps.
    assert!(num(sub, "/latency_video_ms/count") > 50.0, "{stdout}");
    assert!(num(sub, "/latency_audio_ms/count") > 100.0, "{stdout}");
    assert!(num(sub, "/latency_video_ms/p50") < 500.0, "{stdout}");
    assert!(num(sub, "/latency_audio_ms/p50") < 500.0, "{stdout}");
    let jitter = num(sub, "/jitter_video_ms");
    assert!((0.0..100.0).contains(&jitter), "{stdout}");
    assert!(num(sub, "/jitter_audio_ms") < 100.0, "{stdout}");
    let fps = num(sub, "/fps");
    assert!((15.0..40.0).contains(&fps), "{stdout}");
    assert!(num(sub, "/bitrate_in_kbps") > 20.0, "{stdout}");
    assert_eq!(num(sub, "/tracks"), 6.0, "{stdout}");

    let publisher = &r["roles"]["publisher"];
    assert_eq!(num(publisher, "/sessions"), 1.0);
    assert!(num(publisher, "/bitrate_out_kbps") > 20.0, "{stdout}");

    // Resources: the server's /metrics was reachable.
    assert!(num(&r, "/server/packets_out_per_s") > 100.0, "{stdout}");
    assert!(num(&r, "/server/rss_mb_max") > 0.0, "{stdout}");
    assert!(num(&r, "/bots/rss_mb_max") > 0.0, "{stdout}");
    // The shared engine's own CPU is reported, and only when there is one.
    let receive_cpu = r["bots"]["steady_engine_cpu_percent"].as_f64();
    match receive {
        "shared" => assert!(receive_cpu.is_some_and(|c| c > 0.0), "{stdout}"),
        _ => assert_eq!(receive_cpu, None, "{stdout}"),
    }
    assert!(r["timeline"].as_array().is_some_and(|t| t.len() >= 3));

    srv.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_scenario_names_the_file_and_key() {
    let dir = scratch("bad");
    let scenario = dir.join("broken.toml");
    std::fs::write(
        &scenario,
        "rooms = 1\npublishers = 1\n\n[media]\ncodec = \"h265\"\n",
    )
    .expect("write scenario");
    let out = load()
        .arg(&scenario)
        .arg("--results-dir")
        .arg(&dir)
        .output()
        .await
        .expect("chorus-load runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken.toml"), "{stderr}");
    assert!(stderr.contains("key `media.codec`"), "{stderr}");

    // A flag that makes the scenario invalid names the flag.
    std::fs::write(&scenario, "publishers = 1\n").expect("write scenario");
    let out = load()
        .arg(&scenario)
        .args(["--rooms", "0"])
        .output()
        .await
        .expect("chorus-load runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--rooms") && stderr.contains("key `rooms`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn run_load(
    srv: &chorus_server::RunningServer,
    dir: &std::path::Path,
    run: &str,
    extra: &[&str],
) -> (Value, String) {
    let mut args = vec!["--media", "generated", "--resolution", "320x180"];
    args.extend(["--decode-sample", "1"]);
    args.extend(extra);
    run_scenario(
        srv,
        dir,
        "rooms = 1\npublishers = 1\nsubscribers = 2\nduration = \"4s\"\nramp_up = 20.0\n",
        run,
        &args,
    )
    .await
}

/// Runs `chorus-load` on `scenario` (TOML text) with `args`; it must succeed. Returns the
/// parsed report and the tool's output.
async fn run_scenario(
    srv: &chorus_server::RunningServer,
    dir: &std::path::Path,
    scenario: &str,
    run: &str,
    args: &[&str],
) -> (Value, String) {
    let file = dir.join(format!("{run}.toml"));
    std::fs::write(&file, scenario).expect("write scenario");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        load()
            .arg(&file)
            .args(["--url", &srv.base_url()])
            .arg("--results-dir")
            .arg(dir)
            .args(["--run", run, "--no-progress"])
            .args(args)
            .output(),
    )
    .await
    .expect("chorus-load finishes")
    .expect("chorus-load runs");
    let stdout = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{:?}\n{stdout}", out.status);
    let text = std::fs::read_to_string(dir.join(run).join("report.json")).expect("report.json");
    (serde_json::from_str(&text).expect("report parses"), stdout)
}

/// Generated VP8 + Opus (live encoders per bot, then the shared cheap-mode loop with injected
/// receive loss and jitter) through a real server: every subscriber decodes every frame
/// without error, loss after retransmission stays zero without impairment, and the injected
/// loss shows up as NACKs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_media_decodes_through_the_server() {
    let srv = server().await;
    let dir = scratch("generated");

    let (r, out) = run_load(&srv, &dir, "live", &["--cheap", "false", "--max-loss", "0"]).await;
    let sub = &r["roles"]["subscriber"];
    assert_eq!(num(sub, "/connected"), 2.0, "{out}");
    assert_eq!(sub["errors"], serde_json::json!({}), "{out}");
    assert_eq!(num(sub, "/packets_lost"), 0.0, "{out}");
    assert!(num(sub, "/frames_decoded") > 100.0, "{out}");
    assert_eq!(num(sub, "/decode_errors"), 0.0, "{out}");
    assert!(num(sub, "/latency_video_ms/count") > 50.0, "{out}");
    assert!(num(sub, "/latency_audio_ms/count") > 100.0, "{out}");
    assert!(num(sub, "/latency_video_ms/p50") < 500.0, "{out}");
    // 320x180 at 500 kbit/s target: far above the 150 kbit/s built-in clip.
    assert!(
        num(&r["roles"]["publisher"], "/bitrate_out_kbps") > 200.0,
        "{out}"
    );
    assert!(num(sub, "/fps") > 20.0, "{out}");

    let (r, out) = run_load(
        &srv,
        &dir,
        "impaired",
        // Longer than the clean run: a keyframe lost at the start can hold video back until
        // the next one (2 s), and the figures below should not depend on that luck.
        &[
            "--loss-percent",
            "3",
            "--jitter-ms",
            "10",
            "--duration",
            "8s",
        ],
    )
    .await;
    assert!(out.contains("cheap mode"), "{out}");
    let sub = &r["roles"]["subscriber"];
    assert_eq!(num(sub, "/connected"), 2.0, "{out}");
    assert!(num(sub, "/nacks_sent") > 0.0, "{out}");
    assert!(num(sub, "/nacked_packets") > 0.0, "{out}");
    // Video is repaired by retransmission; Opus is not NACKed, so its ~3 % stays lost.
    assert!(num(sub, "/loss_percent") < 3.0, "{out}");
    assert!(num(sub, "/fps") > 20.0, "{out}");
    assert!(num(sub, "/frames_decoded") > 20.0, "{out}");
    assert_eq!(num(sub, "/decode_errors"), 0.0, "{out}");

    srv.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A simulcast publisher (three generated layers) and three subscribers asking for low,
/// medium and high in turn (`quality = "mixed"`): each layer reaches exactly one subscriber,
/// decodes cleanly, and the report shows received and sent bitrate per layer. Subscribers join
/// 0.5 s apart, after every layer is flowing: one that subscribes before its layer's first
/// keyframe reaches the server is rightly given the nearest layer until then, and the report
/// would count its track at both sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_layers_reach_the_subscribers_that_ask_for_them() {
    let srv = server().await;
    let dir = scratch("simulcast");
    let (r, out_text) = run_scenario(
        &srv,
        &dir,
        "publishers = 1\nsubscribers = 3\nduration = \"5s\"\nramp_up = 2.0\n\
         quality = \"mixed\"\n[media]\nsource = \"generated\"\nsimulcast = true\n\
         audio = false\nfps = 15\nlayers = [\n\
         { rid = \"q\", width = 160, height = 90, bitrate_kbps = 80 },\n\
         { rid = \"h\", width = 320, height = 180, bitrate_kbps = 250 },\n\
         { rid = \"f\", width = 640, height = 360, bitrate_kbps = 700 },\n]\n",
        "s",
        &["--decode-sample", "1", "--max-loss", "0"],
    )
    .await;
    let sub = &r["roles"]["subscriber"];
    assert_eq!(num(sub, "/connected"), 3.0, "{out_text}");
    assert_eq!(sub["errors"], serde_json::json!({}), "{out_text}");
    assert_eq!(num(sub, "/decode_errors"), 0.0, "{out_text}");
    assert!(num(sub, "/frames_decoded") > 30.0, "{out_text}");
    let layers = sub["layers_in"].as_array().expect("layers_in");
    let sizes: Vec<(&str, f64, f64)> = layers
        .iter()
        .map(|l| {
            (
                l["size"].as_str().unwrap_or(""),
                num(l, "/tracks"),
                num(l, "/kbps_per_track"),
            )
        })
        .collect();
    let names: Vec<&str> = sizes.iter().map(|s| s.0).collect();
    assert_eq!(names, ["160x90", "320x180", "640x360"], "{out_text}");
    assert!(sizes.iter().all(|s| s.1 == 1.0), "{sizes:?}\n{out_text}");
    // Bitrates rise with the layer.
    assert!(
        sizes[0].2 < sizes[1].2 && sizes[1].2 < sizes[2].2,
        "{sizes:?}\n{out_text}"
    );
    // Each subscriber spent its whole steady state (5 s) on its own layer.
    for l in layers {
        let secs = num(l, "/seconds");
        assert!((3.5..8.0).contains(&secs), "{l}\n{out_text}");
    }
    let html = std::fs::read_to_string(dir.join("s/index.html")).expect("index.html");
    assert!(
        html.contains("<th>time received (track-seconds)</th>"),
        "{html}"
    );
    assert!(
        html.contains("<caption>Video sent per simulcast layer</caption>"),
        "{html}"
    );
    let sent = r["roles"]["publisher"]["layers_out"]
        .as_array()
        .expect("layers_out");
    let rids: Vec<&str> = sent
        .iter()
        .map(|l| l["rid"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(rids, ["q", "h", "f"], "{out_text}");
    assert!(out_text.contains("sent layer f"), "{out_text}");
    // The user-facing figures are there and sane.
    assert!(num(sub, "/join_video_ms/count") == 3.0, "{out_text}");
    assert!(num(sub, "/join_video_ms/p95") < 5000.0, "{out_text}");
    assert!(num(sub, "/latency_video_ms/count") > 30.0, "{out_text}");
    assert!(num(sub, "/latency_video_ms/p50") < 500.0, "{out_text}");
    let jitter = num(sub, "/jitter_video_ms");
    assert!((0.0..50.0).contains(&jitter), "{out_text}");
    assert!(num(sub, "/fps") > 10.0, "{out_text}");
    assert_eq!(num(sub, "/freezes/count"), 0.0, "{out_text}");

    srv.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Generated VP9 (`--codec vp9`, cheap mode): the publisher offers VP9, both subscribers
/// receive it as VP9 at the full frame rate, with no loss or freeze, starting on a keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_vp9_reaches_the_subscribers() {
    let srv = server().await;
    let dir = scratch("vp9");
    let (r, out) = run_scenario(
        &srv,
        &dir,
        "publishers = 1\nsubscribers = 2\nduration = \"4s\"\nramp_up = 20.0\n\
         [media]\nsource = \"generated\"\ncodec = \"vp9\"\nwidth = 320\nheight = 180\n",
        "vp9",
        &["--max-loss", "0"],
    )
    .await;
    let sub = &r["roles"]["subscriber"];
    assert_eq!(num(sub, "/connected"), 2.0, "{out}");
    assert_eq!(sub["errors"], serde_json::json!({}), "{out}");
    assert_eq!(
        sub["video_codecs_in"],
        serde_json::json!({"video/VP9": 2}),
        "{out}"
    );
    // The frame size comes from the VP9 keyframes' headers.
    assert_eq!(sub["layers_in"][0]["size"], "320x180", "{out}");
    assert_eq!(num(sub, "/layers_in/0/tracks"), 2.0, "{out}");
    assert_eq!(num(sub, "/join_video_ms/count"), 2.0, "{out}");
    assert!(num(sub, "/fps") > 20.0, "{out}");
    assert_eq!(num(sub, "/freezes/count"), 0.0, "{out}");
    srv.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--protocol whip-whep`: the publisher publishes with WHIP, both subscribers play it with
/// WHEP; both receive audio and video without loss, with the same figures as WebSocket
/// subscribers, and every session is created (201 + Location) and deleted without error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publisher_whep_subscribers() {
    let srv = server().await;
    let dir = scratch("whip");
    let (r, stdout) = run_scenario(
        &srv,
        &dir,
        "publishers = 1\nsubscribers = 2\nduration = \"3s\"\nramp_up = 20.0\n",
        "w",
        &["--protocol", "whip-whep", "--max-loss", "0"],
    )
    .await;
    assert_eq!(r["passed"], Value::Bool(true), "{stdout}");
    assert_eq!(r["scenario"]["protocol"], "whip-whep", "{stdout}");

    let sub = &r["roles"]["subscriber"];
    assert_eq!(num(sub, "/sessions"), 2.0, "{stdout}");
    assert_eq!(num(sub, "/connected"), 2.0, "{stdout}");
    assert_eq!(sub["errors"], serde_json::json!({}), "{stdout}");
    assert_eq!(num(sub, "/tracks"), 4.0, "{stdout}");
    assert_eq!(num(sub, "/join_video_ms/count"), 2.0, "{stdout}");
    assert_eq!(num(sub, "/join_audio_ms/count"), 2.0, "{stdout}");
    assert!(num(sub, "/packets_expected") > 200.0, "{stdout}");
    assert_eq!(num(sub, "/packets_lost"), 0.0, "{stdout}");
    assert!(num(sub, "/latency_video_ms/count") > 20.0, "{stdout}");
    assert!(num(sub, "/latency_audio_ms/count") > 50.0, "{stdout}");
    assert!(num(sub, "/fps") > 15.0, "{stdout}");

    let publisher = &r["roles"]["publisher"];
    assert_eq!(num(publisher, "/connected"), 1.0, "{stdout}");
    assert_eq!(publisher["errors"], serde_json::json!({}), "{stdout}");
    assert!(num(publisher, "/bitrate_out_kbps") > 20.0, "{stdout}");

    // Refused sessions are bot errors named by endpoint and status.
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        load()
            .arg(dir.join("w.toml"))
            .args(["--url", &srv.base_url(), "--protocol", "whip-whep"])
            .args(["--api-secret", "not-the-secret", "--duration", "1s"])
            .arg("--results-dir")
            .arg(&dir)
            .args(["--run", "refused", "--no-progress"])
            .output(),
    )
    .await
    .expect("chorus-load finishes")
    .expect("chorus-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{stdout}", out.status);
    let text = std::fs::read_to_string(dir.join("refused/report.json")).expect("report.json");
    let r: Value = serde_json::from_str(&text).expect("report parses");
    assert_eq!(
        r["roles"]["publisher"]["errors"],
        serde_json::json!({"whip_status_401": 1}),
        "{stdout}"
    );
    assert_eq!(
        r["roles"]["subscriber"]["errors"],
        serde_json::json!({"whep_status_401": 2}),
        "{stdout}"
    );

    srv.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
