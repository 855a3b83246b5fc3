//! Every core: the forwarding path of 1 and of 2 cores (two independent cores, as two media
//! engines run them) at once, in-process. Each core has its own publisher and `SUBSCRIBERS`
//! subscribers; the publisher's SRTP datagrams are made up front, then every core forwards
//! its pool at the same moment and the outgoing packets per second are added up.
//! `cargo bench -p chorus-sfu --bench engines` (prints one line per engine count).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const SUBSCRIBERS: usize = 10;
const PACKETS: usize = 20_000;

/// One core's run: (outgoing datagrams, wall time of the forwarding).
fn run_core(start: Arc<Barrier>) -> (u64, Duration) {
    let mut net = harness::Net::new(SUBSCRIBERS);
    let from = net.publisher.addr;
    let mut pool = Vec::with_capacity(PACKETS);
    for _ in 0..PACKETS {
        net.advance(Duration::from_micros(100));
        net.send_video(false, 1200);
        pool.extend(net.publisher_datagrams());
    }
    let mut transmits = Vec::new();
    let mut out = 0u64;
    start.wait();
    let t0 = Instant::now();
    let now = net.now;
    for d in &pool {
        net.core.handle_datagram(now, d, from);
        net.core.take_transmits(&mut transmits);
        out += transmits.len() as u64;
    }
    (out, t0.elapsed())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is configurable.
    let mut single = 0.0;
    for engines in [1usize, 2] {
        let start = Arc::new(Barrier::new(engines));
        let threads: Vec<_> = (0..engines)
            .map(|i| {
                let start = start.clone();
                std::thread::Builder::new()
                    .name(format!("bench-engine-{i}"))
                    .spawn(move || run_core(start))
                    .expect("thread")
            })
            .collect();
        let results: Vec<(u64, Duration)> = threads
            .into_iter()
            .map(|t| t.join().expect("core"))
            .collect();
        let out: u64 = results.iter().map(|r| r.0).sum();
        let wall = results.iter().map(|r| r.1).max().unwrap_or_default();
        let pps = out as f64 / wall.as_secs_f64();
        if engines == 1 {
            single = pps;
        }
        println!(
            "engines={engines} out_packets={out} wall={:.3}s packets_per_s={pps:.0} per_packet_us={:.2} ratio_to_one={:.2}",
            wall.as_secs_f64(),
            1e6 * wall.as_secs_f64() * engines as f64 / out as f64,
            pps / single
        );
    }
}
