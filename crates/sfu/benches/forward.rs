//! The forwarding path in-process: one incoming SRTP video packet from a publisher to N
//! downtracks (unprotect, interceptors, per-subscriber rewrite, protect), no sockets.
//! `cargo bench -p chorus-sfu --bench forward`; throughput is outgoing packets.
#![allow(missing_docs)] // criterion's macros generate undocumented items

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const CHUNK: u64 = 2_000;

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_one_packet");
    group.measurement_time(Duration::from_secs(5));
    for n in [1usize, 10, 50] {
        let mut net = harness::Net::new(n);
        let from = net.publisher.addr;
        let mut transmits = Vec::new();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(CHUNK);
                    left -= chunk;
                    let mut datagrams = Vec::with_capacity(chunk as usize);
                    for _ in 0..chunk {
                        net.send_video(false, 1200);
                        datagrams.extend(net.publisher_datagrams());
                    }
                    let start = Instant::now();
                    for d in &datagrams {
                        net.core.handle_datagram(start, d, from);
                        net.core.take_transmits(&mut transmits);
                    }
                    total += start.elapsed();
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
