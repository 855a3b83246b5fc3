//! What one subscriber re-offer costs the engine, by size: `create_offer` +
//! `set_local_description` on the server's connection with N audio sections, and the client's
//! answer applied with `set_remote_description` (the three SDP steps of a renegotiation on the
//! server). Sizes `media.offer_sections_per_sec` (docs/benchmarks.md).
//! `cargo bench -p chorus-sfu --bench offer`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // criterion's macros

use std::time::{Duration, Instant};

use chorus_sfu::peer::{build_peer_connection, supported_codecs};
use chorus_sfu::{Metrics, PeerRole};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};

/// The server's subscriber connection with `n` audio tracks, and a client that answered once.
fn pair(n: usize, now: Instant) -> (RTCPeerConnection, RTCPeerConnection) {
    let metrics = Metrics::unregistered();
    let mut server = build_peer_connection(PeerRole::Subscriber, &metrics, now).expect("server pc");
    let opus = supported_codecs()
        .into_iter()
        .find(|(_, k)| *k == RtpCodecKind::Audio)
        .expect("opus")
        .0;
    for i in 0..n {
        let track = MediaStreamTrack::new(
            format!("p{i}"),
            format!("t{i}"),
            format!("t{i}"),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(1000 + i as u32),
                    ..Default::default()
                },
                codec: opus.rtp_codec.clone(),
                ..Default::default()
            }],
        );
        server.add_track(track).expect("track");
    }
    let mut me = MediaEngine::default();
    for (c, kind) in supported_codecs() {
        me.register_codec(c, kind).expect("codec");
    }
    let client = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .build(now)
        .expect("client pc");
    let mut pair = (server, client);
    renegotiate(&mut pair, now);
    pair
}

/// One renegotiation; returns the server's share of the time.
fn renegotiate(
    (server, client): &mut (RTCPeerConnection, RTCPeerConnection),
    now: Instant,
) -> Duration {
    let start = Instant::now();
    let offer = server.create_offer(None).expect("offer");
    server.set_local_description(now, offer).expect("local");
    let sdp = server.local_description().expect("sdp").sdp;
    let mut spent = start.elapsed();
    client
        .set_remote_description(now, RTCSessionDescription::offer(sdp).expect("offer sdp"))
        .expect("client remote");
    let answer = client.create_answer(None).expect("answer");
    client
        .set_local_description(now, answer)
        .expect("client local");
    let answer = client.local_description().expect("answer sdp");
    let start = Instant::now();
    server
        .set_remote_description(now, answer)
        .expect("server remote");
    spent += start.elapsed();
    spent
}

fn offer(c: &mut Criterion) {
    let mut group = c.benchmark_group("subscriber_reoffer");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    for n in [10usize, 50, 200] {
        let now = Instant::now();
        let mut p = pair(n, now);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| renegotiate(&mut p, now)).sum());
        });
    }
    group.finish();
}

criterion_group!(benches, offer);
criterion_main!(benches);
