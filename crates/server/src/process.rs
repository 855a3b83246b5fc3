//! `chorus_process_cpu_seconds_total`: the process's CPU time at clock-tick resolution (10 ms),
//! read at scrape time. The `prometheus` crate's `process_cpu_seconds_total` counts whole
//! seconds only, too coarse to compute CPU per packet over a short load test.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Opts};

/// Collects the fractional CPU time of this process.
pub struct CpuSecondsCollector {
    counter: Counter,
}

impl CpuSecondsCollector {
    /// A collector for this process.
    pub fn new() -> prometheus::Result<Self> {
        let counter = Counter::with_opts(Opts::new(
            "chorus_process_cpu_seconds_total",
            "User and system CPU time of the server process, in seconds (10 ms resolution)",
        ))?;
        Ok(Self { counter })
    }
}

fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    Some((stat.utime + stat.stime) as f64 / ticks)
}

impl Collector for CpuSecondsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(total) = cpu_seconds() {
            let delta = total - self.counter.get();
            if delta > 0.0 {
                self.counter.inc_by(delta);
            }
        }
        self.counter.collect()
    }
}
