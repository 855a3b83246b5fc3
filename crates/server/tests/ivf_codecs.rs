//! VP9 and AV1 from IVF files (as a load bot publishes them with `--video-file`): a Rust
//! publisher loops the file, a Rust subscriber receives every frame at the file's rate with
//! no loss, and only the files' real keyframes are marked as keyframes on the wire (VP9's P
//! bit, AV1's N bit), so the server starts the subscriber on a keyframe. Each codec runs twice:
//! on the clients' own async connections and on a shared engine (the load bots' lean
//! publisher and receiver).

mod common;

use std::sync::Arc;
use std::time::Duration;

use chorus_client::ivf::IvfClip;
use chorus_client::{Client, ClientOptions, SharedEngine, TrackKind, VideoSource};

const T: Duration = Duration::from_secs(20);

async fn publish_file(file: &[u8], mime: &str, engine: Option<SharedEngine>) {
    let srv = common::server().await;
    let room = common::room();
    let url = format!("ws://{}/ws", srv.http_addr);
    let clip = Arc::new(IvfClip::parse(file).expect("fixture parses"));
    let mut opts = ClientOptions::new(url.clone(), common::token(&room, "pub"));
    opts.publish_audio = false;
    opts.video_source = Some(VideoSource::Clip(clip));
    opts.engine = engine.clone();
    let publisher = Client::join(opts).await.expect("join publisher");
    let mut opts = ClientOptions::new(url.clone(), common::token(&room, "sub"));
    opts.publish_audio = false;
    opts.publish_video = false;
    opts.engine = engine;
    let subscriber = Client::join(opts).await.expect("join subscriber");

    // Two seconds of frames after the first keyframe.
    let video = |c: &Client| {
        c.received()
            .into_iter()
            .find(|t| t.kind == TrackKind::Video)
    };
    subscriber
        .wait_until(T, |c| video(c).is_some_and(|v| v.frames_completed >= 60))
        .await
        .unwrap_or_else(|e| panic!("{mime}: {e}: {:#?}", video(&subscriber)));
    let v = video(&subscriber).expect("video");
    assert_eq!(v.mime_type.as_deref(), Some(mime), "{v:#?}");
    assert_eq!((v.seq.missing, v.freezes), (0, 0), "{v:#?}");
    // The clip has a keyframe every 30 frames (plus one the server may have asked for).
    assert!(
        v.keyframes >= 1 && v.keyframes * 10 < v.frames,
        "{mime}: {} keyframes in {} frames: only real keyframes are marked: {v:#?}",
        v.keyframes,
        v.frames
    );
    let fps = v.frame_rate().unwrap_or(0.0);
    assert!(fps > 20.0, "{mime}: {fps} fps: {v:#?}");
    publisher.leave().await;
    subscriber.leave().await;
    srv.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vp9_file_reaches_the_subscriber() {
    publish_file(
        include_bytes!("../../client/tests/data/vp9_160x120_30fps.ivf"),
        "video/VP9",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vp9_file_from_the_shared_engine_reaches_the_subscriber() {
    publish_file(
        include_bytes!("../../client/tests/data/vp9_160x120_30fps.ivf"),
        "video/VP9",
        Some(SharedEngine::start().expect("engine starts")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_av1_file_reaches_the_subscriber() {
    publish_file(
        include_bytes!("../../client/tests/data/av1_160x120_30fps.ivf"),
        "video/AV1",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_av1_file_from_the_shared_engine_reaches_the_subscriber() {
    publish_file(
        include_bytes!("../../client/tests/data/av1_160x120_30fps.ivf"),
        "video/AV1",
        Some(SharedEngine::start().expect("engine starts")),
    )
    .await;
}
