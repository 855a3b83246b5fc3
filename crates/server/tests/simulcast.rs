//! Simulcast end to end with real clients: a Rust publisher sends three VP8 layers (rid
//! q/h/f, each encoded live by libvpx at its own size); each subscriber receives the layer its
//! quality asks for, tells which by the keyframes' frame size, and a switch keeps the
//! sequence numbers continuous.

mod common;

use std::time::Duration;

use chorus_client::generate::GeneratedVideo;
use chorus_client::{
    Client, ClientOptions, Quality, ReceivedTrackStats, ServerMessage, SimulcastLayer, TrackKind,
    VideoSource,
};

const T: Duration = Duration::from_secs(20);

fn layer(rid: &str, width: u32, height: u32, kbps: u32) -> SimulcastLayer {
    SimulcastLayer {
        rid: rid.to_owned(),
        source: VideoSource::Live(GeneratedVideo {
            codec: Default::default(),
            width,
            height,
            fps: 15,
            bitrate_kbps: kbps,
            keyframe_interval: Duration::from_secs(10),
        }),
    }
}

fn video(c: &Client) -> Option<ReceivedTrackStats> {
    c.received()
        .into_iter()
        .find(|t| t.kind == TrackKind::Video && t.active)
}

/// The frame size of the video `c` receives once it has received `min_frames` frames at it.
async fn wait_size(c: &Client, size: (u16, u16), min_bytes: u64) -> ReceivedTrackStats {
    let ok = c
        .wait_until(T, |c| {
            video(c).is_some_and(|v| {
                v.frame_size == Some(size)
                    && v.bytes_by_size
                        .iter()
                        .any(|(s, b)| *s == size && *b >= min_bytes)
            })
        })
        .await;
    let v = video(c);
    assert!(ok.is_ok(), "{} wants {size:?}: {v:#?}", c.participant_id());
    v.unwrap_or_else(|| unreachable!())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_receives_the_layer_it_asks_for() {
    let srv = common::server().await;
    let base = srv.base_url();
    let room = common::room();
    let url = format!("ws://{}/ws", srv.http_addr);

    let mut opts = ClientOptions::new(url.clone(), common::token(&room, "pub"));
    opts.publish_audio = false;
    opts.video_source = Some(VideoSource::Simulcast(vec![
        layer("q", 160, 90, 100),
        layer("h", 320, 180, 250),
        layer("f", 640, 360, 600),
    ]));
    let publisher = Client::join(opts).await.expect("join publisher");

    let viewer = |id: &str| {
        let mut o = ClientOptions::new(url.clone(), common::token(&room, id));
        o.publish_audio = false;
        o.publish_video = false;
        Client::join(o)
    };
    let high = viewer("high").await.expect("join");
    let mut low = viewer("low").await.expect("join");

    // The room learns the track's layers, lowest first.
    let track = match low
        .wait_event(T, |e| matches!(e, ServerMessage::TrackPublished { .. }))
        .await
    {
        Ok(ServerMessage::TrackPublished { track, .. }) => track,
        other => panic!("expected track_published, got {other:?}"),
    };
    assert_eq!(track.layers, ["q", "h", "f"], "{track:?}");
    low.set_quality([track.id.as_str()], Quality::Low)
        .expect("track_settings");

    // Default quality is high.
    wait_size(&high, (640, 360), 20_000).await;
    let before = wait_size(&low, (160, 90), 5_000).await;
    assert!(
        before.bytes_by_size.iter().all(|(s, _)| *s == (160, 90)),
        "the low viewer started on the low layer: {before:#?}"
    );

    // Switching up happens on the high layer's keyframe (which the server asks for), and the
    // subscriber sees one continuous stream.
    low.set_quality([track.id.as_str()], Quality::High)
        .expect("track_settings");
    let after = wait_size(&low, (640, 360), 20_000).await;
    assert_eq!(after.seq.missing, 0, "no gap across the switch: {after:#?}");
    assert_eq!(after.ssrc, before.ssrc, "one SSRC across the switch");

    // And down again, to the middle layer.
    low.set_quality([track.id.as_str()], Quality::Medium)
        .expect("track_settings");
    let mid = wait_size(&low, (320, 180), 5_000).await;
    assert_eq!(mid.seq.missing, 0, "{mid:#?}");
    assert_eq!(mid.seq.backwards, 0, "{mid:#?}");
    // VP8 picture ids run on across both switches (the server rewrites them).
    assert!(mid.last_picture_id.is_some(), "{mid:#?}");
    assert_eq!(mid.picture_id_jumps, 0, "{mid:#?}");

    // The publisher stops sending its top layer (as a browser does when its uplink shrinks):
    // the high viewer falls back to the middle layer within about a second, and climbs back
    // when the top layer returns.
    assert!(publisher.set_layer_active("f", false));
    let fallback = wait_size(&high, (320, 180), 5_000).await;
    assert_eq!(fallback.seq.missing, 0, "{fallback:#?}");
    assert!(publisher.set_layer_active("f", true));
    let back = wait_size(&high, (640, 360), 60_000).await;
    assert_eq!(
        (back.seq.missing, back.picture_id_jumps),
        (0, 0),
        "{back:#?}"
    );

    // The publisher was asked for keyframes of the layers switched to.
    let sent = publisher.sent();
    let v = sent
        .iter()
        .find(|s| s.kind == TrackKind::Video)
        .expect("video sent");
    assert_eq!(v.layers.len(), 3, "{v:#?}");
    assert!(v.layers.iter().all(|l| l.frames > 0), "{v:#?}");
    let switches = common::metric(&base, "chorus_layer_switches_total").await;
    assert!(switches >= Some(2.0), "layer switches: {switches:?}");

    for c in [publisher, high, low] {
        c.leave().await;
    }
    srv.shutdown(Duration::from_secs(2)).await;
}
