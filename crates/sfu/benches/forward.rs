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

/// Times `iters` runs of `measure` over inputs made by `prepare`, in chunks of [`CHUNK`] so the
/// inputs' preparation stays out of the measurement.
fn chunked<S, T>(
    iters: u64,
    state: &mut S,
    mut prepare: impl FnMut(&mut S) -> T,
    mut measure: impl FnMut(&mut S, Vec<T>, Instant),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let chunk = left.min(CHUNK);
        left -= chunk;
        let inputs = (0..chunk).map(|_| prepare(state)).collect();
        let start = Instant::now();
        measure(state, inputs, start);
        total += start.elapsed();
    }
    total
}

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
                chunked(
                    iters,
                    &mut net,
                    |net| {
                        net.advance(Duration::from_micros(100));
                        net.send_video(false, 1200);
                        net.publisher_datagrams()
                    },
                    |net, datagrams, _| {
                        let now = net.now;
                        for d in datagrams.iter().flatten() {
                            net.core.handle_datagram(now, d, from);
                            net.core.take_transmits(&mut transmits);
                        }
                    },
                )
            });
        });
    }
    group.finish();
}

/// One receiving client connection (the stack's default interceptors): the floor of what a
/// subscribing load bot pays per packet.
fn receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("subscriber_receive_one_packet");
    group.measurement_time(Duration::from_secs(5));
    let mut net = harness::Net::new(1);
    let from = net.publisher.addr;
    let mut transmits = Vec::new();
    group.throughput(Throughput::Elements(1));
    group.bench_function("default_interceptors", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                &mut net,
                |net| {
                    net.advance(Duration::from_micros(100));
                    net.send_video(false, 1200);
                    let now = net.now;
                    let mut out = Vec::new();
                    for d in net.publisher_datagrams() {
                        net.core.handle_datagram(now, &d, from);
                        net.core.take_transmits(&mut transmits);
                        out.extend(transmits.drain(..).map(|(_, d)| d));
                    }
                    out
                },
                |net, datagrams, _| {
                    let now = net.now;
                    let core_addr = net.core_addr;
                    let sub = &mut net.subscribers[0].0;
                    for d in datagrams.into_iter().flatten() {
                        let _ = sub.pc.handle_read(rtc::shared::TaggedBytesMut {
                            now,
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
                },
            )
        });
    });
    group.finish();
}

criterion_group!(benches, forward, receive);
criterion_main!(benches);
