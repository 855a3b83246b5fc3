//! The forwarding path in-process: one incoming SRTP video packet from a publisher to N
//! downtracks (unprotect, interceptors, per-subscriber rewrite, protect), no sockets.
//! `cargo bench -p chorus-sfu --bench forward`; throughput is outgoing packets.
#![allow(missing_docs)] // criterion's macros generate undocumented items

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rtc::sansio::Protocol;

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

fn receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("subscriber_receive_one_packet");
    group.measurement_time(Duration::from_secs(5));
    let mut net = harness::Net::new(1);
    let from = net.publisher.addr;
    let mut transmits = Vec::new();
    group.throughput(Throughput::Elements(1));
    group.bench_function("default_interceptors", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(CHUNK);
                left -= chunk;
                let mut datagrams = Vec::with_capacity(chunk as usize);
                for _ in 0..chunk {
                    net.send_video(false, 1200);
                    for d in net.publisher_datagrams() {
                        net.core.handle_datagram(Instant::now(), &d, from);
                        net.core.take_transmits(&mut transmits);
                        datagrams.extend(transmits.drain(..).map(|(_, d)| d));
                    }
                }
                let sub = &mut net.subscribers[0].0;
                let core_addr = net.core_addr;
                let start = Instant::now();
                for d in datagrams {
                    let _ = sub.pc.handle_read(rtc::shared::TaggedBytesMut {
                        now: start,
                        transport: rtc::shared::TransportContext {
                            local_addr: sub.addr,
                            peer_addr: core_addr,
                            ecn: None,
                            transport_protocol: rtc::shared::TransportProtocol::UDP,
                        },
                        message: d,
                    });
                    while let Some(m) = sub.pc.poll_read() {
                        std::hint::black_box(m);
                    }
                    while sub.pc.poll_write().is_some() {}
                    while sub.pc.poll_event().is_some() {}
                }
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, forward, receive);
criterion_main!(benches);
