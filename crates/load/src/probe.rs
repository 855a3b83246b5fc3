//! Resource probes: the server's Prometheus `/metrics` and this process's `/proc/self`.

use std::time::Duration;

/// The server figures the report uses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerSample {
    /// `chorus_process_cpu_seconds_total` (10 ms resolution), else `process_cpu_seconds_total`
    /// (whole seconds with the `prometheus` crate's collector), or `/proc/<pid>/stat` with
    /// `--server-pid`.
    pub cpu_seconds: f64,
    /// `process_resident_memory_bytes`.
    pub rss_bytes: f64,
    /// Sum of `chorus_rtp_packets_total{direction="out"}`.
    pub packets_out: f64,
    /// Sum of `chorus_rtp_packets_total{direction="in"}`.
    pub packets_in: f64,
    /// `chorus_participants`.
    pub participants: f64,
}

/// Extracts [`ServerSample`] from Prometheus text; `None` without the process metrics.
pub fn parse_metrics(text: &str) -> Option<ServerSample> {
    let mut s = ServerSample::default();
    let (mut precise_cpu, mut coarse_cpu) = (None, None);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => (n, l),
            None => (name_labels, ""),
        };
        match name {
            "chorus_process_cpu_seconds_total" => precise_cpu = Some(v),
            "process_cpu_seconds_total" => coarse_cpu = Some(v),
            "process_resident_memory_bytes" => s.rss_bytes = v,
            "chorus_participants" => s.participants = v,
            "chorus_rtp_packets_total" if labels.contains("direction=\"out\"") => {
                s.packets_out += v
            }
            "chorus_rtp_packets_total" if labels.contains("direction=\"in\"") => s.packets_in += v,
            _ => {}
        }
    }
    s.cpu_seconds = precise_cpu.or(coarse_cpu)?;
    Some(s)
}

/// `GET {base}/metrics` over plain HTTP (no TLS: point `--metrics-url` at a plain-HTTP
/// listener when the server sits behind TLS); `None` on any failure or after 2 s.
pub async fn scrape(base: &url::Url) -> Option<ServerSample> {
    if base.scheme() != "http" || base.host_str().is_none() {
        return None;
    }
    let mut url = base.clone();
    url.set_path(&format!("{}/metrics", base.path().trim_end_matches('/')));
    url.set_query(None);
    let fut = async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        let response = client
            .get(url.as_str())
            .header(reqwest::header::ACCEPT, "text/plain")
            .send()
            .await
            .ok()?;
        if response.status() != reqwest::StatusCode::OK {
            return None;
        }
        parse_metrics(&response.text().await.ok()?)
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

/// This process's CPU time and resident memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SelfSample {
    /// User + system CPU seconds (`/proc/<pid>/stat`).
    pub cpu_seconds: f64,
    /// `VmRSS` from `/proc/<pid>/status`.
    pub rss_bytes: f64,
    /// CPU seconds of the shared engine's thread (`chorus-engine`), where there is one.
    pub engine_cpu_seconds: Option<f64>,
}

/// Reads `/proc/self`; zeros where unavailable (non-Linux).
pub fn self_sample() -> SelfSample {
    let mut s = proc_sample(None).unwrap_or_default();
    s.engine_cpu_seconds = thread_cpu_seconds(chorus_client::ENGINE_THREAD);
    s
}

#[cfg(target_os = "linux")]
fn process(pid: Option<u32>) -> Option<procfs::process::Process> {
    match pid {
        Some(pid) => procfs::process::Process::new(i32::try_from(pid).ok()?).ok(),
        None => procfs::process::Process::myself().ok(),
    }
}

/// utime + stime in seconds.
#[cfg(target_os = "linux")]
fn cpu_seconds(stat: &procfs::process::Stat) -> f64 {
    (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
}

/// CPU seconds of this process's threads named `name` (the thread's `comm`).
#[cfg(target_os = "linux")]
fn thread_cpu_seconds(name: &str) -> Option<f64> {
    let mut total = None;
    for task in process(None)?.tasks().ok()?.flatten() {
        let Ok(stat) = task.stat() else {
            continue;
        };
        if stat.comm == name {
            *total.get_or_insert(0.0) += cpu_seconds(&stat);
        }
    }
    total
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_seconds(_name: &str) -> Option<f64> {
    None
}

/// Reads `/proc/<pid>` (`None`: this process); `None` when the process is not readable.
#[cfg(target_os = "linux")]
pub fn proc_sample(pid: Option<u32>) -> Option<SelfSample> {
    let process = process(pid)?;
    let cpu_seconds = cpu_seconds(&process.stat().ok()?);
    let rss_bytes = process
        .status()
        .ok()
        .and_then(|s| s.vmrss)
        .map_or(0.0, |kb| kb as f64 * 1024.0);
    Some(SelfSample {
        cpu_seconds,
        rss_bytes,
        engine_cpu_seconds: None,
    })
}

/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn proc_sample(_pid: Option<u32>) -> Option<SelfSample> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP x\n\
            process_cpu_seconds_total 12.5\n\
            process_resident_memory_bytes 1.5e+07\n\
            chorus_participants 3\n\
            chorus_rtp_packets_total{direction=\"out\",kind=\"audio\"} 100\n\
            chorus_rtp_packets_total{direction=\"out\",kind=\"video\"} 50\n\
            chorus_rtp_packets_total{direction=\"in\",kind=\"video\"} 7\n";
        let s = parse_metrics(text).expect("sample");
        assert_eq!(s.cpu_seconds, 12.5);
        assert_eq!(s.rss_bytes, 15e6);
        assert_eq!(s.packets_out, 150.0);
        assert_eq!(s.packets_in, 7.0);
        assert_eq!(s.participants, 3.0);
        assert!(parse_metrics("chorus_participants 1\n").is_none());
        // The server's 10 ms-resolution counter wins over the whole-second one, in any order.
        let both = "process_cpu_seconds_total 12\nchorus_process_cpu_seconds_total 12.34\n";
        assert_eq!(parse_metrics(both).map(|s| s.cpu_seconds), Some(12.34));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn samples_processes_and_named_threads() {
        let me = self_sample();
        assert!(me.rss_bytes > 0.0);
        assert!(me.cpu_seconds >= 0.0);
        assert!(proc_sample(Some(std::process::id())).is_some_and(|s| s.rss_bytes > 0.0));
        // Past the largest pid Linux hands out, and past i32.
        assert_eq!(proc_sample(Some(i32::MAX as u32)), None);
        assert_eq!(proc_sample(Some(u32::MAX)), None);
        // A named thread that burns some CPU is found by name; an absent name is `None`.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("probe-test".into())
            .spawn(move || {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(50) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                let _ = tx.send(());
                let _ = done_rx.recv();
            })
            .expect("thread");
        rx.recv().expect("worker ran");
        assert!(thread_cpu_seconds("probe-test").is_some_and(|s| s >= 0.0));
        assert_eq!(thread_cpu_seconds("no-such-thread"), None);
        let _ = done_tx.send(());
        worker.join().expect("worker");
    }

    #[tokio::test]
    async fn scrapes_metrics_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0; 4096];
            let n = stream.read(&mut buf).await.expect("read");
            let body = "process_cpu_seconds_total 2\nchorus_participants 4\n";
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let base = url::Url::parse(&format!("http://{addr}/base/")).expect("url");
        let s = scrape(&base).await.expect("sample");
        assert_eq!(s.cpu_seconds, 2.0);
        assert_eq!(s.participants, 4.0);
        let request = server.await.expect("server");
        assert!(
            request.starts_with("GET /base/metrics HTTP/1.1\r\n"),
            "{request}"
        );
        // Nothing listening, or not plain HTTP: no sample.
        assert_eq!(scrape(&base).await, None);
        let tls = url::Url::parse("https://127.0.0.1:1/").expect("url");
        assert_eq!(scrape(&tls).await, None);
    }
}
