//! `chorus_process_cpu_seconds_total`: the process's CPU time at clock-tick resolution (10 ms),
//! read at scrape time. The `prometheus` crate's `process_cpu_seconds_total` counts whole
//! seconds only, too coarse to compute CPU per packet over a short load test.
//! `chorus_engine_cpu_seconds_total{engine}`: the same per media engine thread
//! (`chorus-engine-N`), so a saturated engine shows even when the process as a whole is not.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, CounterVec, Opts};

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

/// Collects the CPU time of each media engine thread.
pub struct EngineCpuCollector {
    counters: CounterVec,
}

impl EngineCpuCollector {
    /// A collector for this process's engine threads.
    pub fn new() -> prometheus::Result<Self> {
        let counters = CounterVec::new(
            Opts::new(
                "chorus_engine_cpu_seconds_total",
                "User and system CPU time of each media engine thread, in seconds (10 ms resolution)",
            ),
            &["engine"],
        )?;
        Ok(Self { counters })
    }
}

/// (engine index, CPU seconds) of every `chorus-engine-N` thread of this process.
fn engine_cpu_seconds() -> Vec<(String, f64)> {
    let Ok(me) = procfs::process::Process::myself() else {
        return Vec::new();
    };
    let Ok(tasks) = me.tasks() else {
        return Vec::new();
    };
    let ticks = procfs::ticks_per_second() as f64;
    tasks
        .flatten()
        .filter_map(|t| {
            let stat = t.stat().ok()?;
            let engine = stat.comm.strip_prefix("chorus-engine-")?.to_owned();
            Some((engine, (stat.utime + stat.stime) as f64 / ticks))
        })
        .collect()
}

impl Collector for EngineCpuCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.counters.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (engine, total) in engine_cpu_seconds() {
            let counter = self.counters.with_label_values(&[&engine]);
            let delta = total - counter.get();
            if delta > 0.0 {
                counter.inc_by(delta);
            }
        }
        self.counters.collect()
    }
}
