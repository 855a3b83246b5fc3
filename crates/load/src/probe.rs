//! Resource probes: the server's Prometheus `/metrics` and this process's `/proc/self`.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// `GET {base}/metrics` over plain HTTP/1.0 (no TLS: point `--metrics-url` at a plain-HTTP
/// listener when the server sits behind TLS).
pub async fn scrape(base: &url::Url) -> Option<ServerSample> {
    let host = base.host_str()?.to_owned();
    let port = base.port_or_known_default()?;
    if base.scheme() != "http" {
        return None;
    }
    let path = format!("{}/metrics", base.path().trim_end_matches('/'));
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/plain\r\n\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.") || !head.lines().next()?.contains(" 200") {
            return None;
        }
        parse_metrics(body)
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

/// This process's CPU time and resident memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SelfSample {
    /// User + system CPU seconds (`/proc/self/stat`, USER_HZ = 100).
    pub cpu_seconds: f64,
    /// `VmRSS` from `/proc/self/status`.
    pub rss_bytes: f64,
    /// CPU seconds of the shared engine's thread (`chorus-engine`), where there is one.
    pub engine_cpu_seconds: Option<f64>,
}

/// Reads `/proc/self`; zeros where unavailable (non-Linux).
pub fn self_sample() -> SelfSample {
    let mut s = proc_sample("self").unwrap_or_default();
    s.engine_cpu_seconds = thread_cpu_seconds(chorus_client::ENGINE_THREAD);
    s
}

/// CPU seconds of this process's threads named `name` (`/proc/self/task/*/comm`).
fn thread_cpu_seconds(name: &str) -> Option<f64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        if let Some(cpu) = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|s| parse_stat_cpu(&s))
        {
            *total.get_or_insert(0.0) += cpu;
        }
    }
    total
}

/// Reads `/proc/<pid>` (`pid` may be `self`); `None` when the process is not readable.
pub fn proc_sample(pid: &str) -> Option<SelfSample> {
    let cpu_seconds = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat_cpu(&s))?;
    let rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0);
    Some(SelfSample {
        cpu_seconds,
        rss_bytes,
        engine_cpu_seconds: None,
    })
}

/// utime + stime (fields 14 and 15) in seconds; the command name may contain spaces, so
/// fields are counted after the closing parenthesis.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
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

    #[test]
    fn parses_proc_stat() {
        let stat = "123 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        let s = self_sample();
        assert!(s.rss_bytes > 0.0);
    }
}
