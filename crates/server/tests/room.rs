//! Three Rust WebRTC clients in one room: each receives the other two's audio and video with
//! continuous sequence numbers; one leaves and the others' subscriber connections drop its
//! tracks by renegotiation while their media keeps flowing.

mod common;

use std::time::Duration;

use chorus_client::{
    Client, ClientOptions, ReceivedTrackStats, ServerMessage, SharedEngine, TrackKind,
};

const T: Duration = Duration::from_secs(20);

fn active_from<'a>(r: &'a [ReceivedTrackStats], p: &str) -> Vec<&'a ReceivedTrackStats> {
    r.iter()
        .filter(|t| t.participant_id == p && t.active)
        .collect()
}

fn receives_all(c: &Client, publishers: &[&str], min: u64) -> bool {
    let r = c.received();
    publishers.iter().all(|p| {
        let tracks = active_from(&r, p);
        [TrackKind::Audio, TrackKind::Video]
            .iter()
            .all(|k| tracks.iter().any(|t| t.kind == *k && t.packets() >= min))
    })
}

fn assert_clean(c: &Client, publishers: &[&str]) {
    let r = c.received();
    for p in publishers {
        let tracks = active_from(&r, p);
        assert_eq!(
            tracks.len(),
            2,
            "{} receives {p}: {tracks:#?}",
            c.participant_id()
        );
        for t in tracks {
            assert_eq!(
                t.seq.gaps,
                0,
                "{} sees sequence gaps: {t:#?}",
                c.participant_id()
            );
            if t.kind == TrackKind::Video {
                assert_eq!(t.mime_type.as_deref(), Some("video/VP8"), "{t:#?}");
                assert!(t.frames > 0 && t.keyframes > 0, "{t:#?}");
            }
        }
    }
}

async fn metrics_text(base: &str) -> String {
    common::scrape(base)
        .await
        .lines()
        .filter(|l| l.starts_with("chorus_"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_exchange_media_and_a_leave_renegotiates() {
    three_participants(None).await;
}

/// The same call with every connection on one shared engine (the load bots' way): the
/// subscriber connections as lean receivers, the publisher connections (the default media is
/// looped: silence and the built-in clip) as lean publishers; alice and bob on its shared
/// loopback socket, carol on sockets of her own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyone_on_a_shared_engine() {
    three_participants(Some(SharedEngine::start().expect("engine starts"))).await;
}

async fn three_participants(engine: Option<SharedEngine>) {
    let srv = common::server().await;
    let base = srv.base_url();
    let room = common::room();
    let url = format!("ws://{}/ws", srv.http_addr);
    let join = |id: &str, udp_addr: Option<&str>| {
        let opts = ClientOptions {
            engine: engine.clone(),
            udp_addr: udp_addr.map(str::to_owned),
            ..ClientOptions::new(url.clone(), common::token(&room, id))
        };
        Client::join(opts)
    };
    let mut a = join("alice", None).await.expect("join");
    let mut b = join("bob", None).await.expect("join");
    let c = join("carol", Some("127.0.0.2:0")).await.expect("join");
    let (ida, idb, idc) = (
        a.participant_id().to_owned(),
        b.participant_id().to_owned(),
        c.participant_id().to_owned(),
    );
    for cl in [&a, &b, &c] {
        let others: Vec<&str> = [ida.as_str(), idb.as_str(), idc.as_str()]
            .into_iter()
            .filter(|id| *id != cl.participant_id())
            .collect();
        if let Err(e) = cl.wait_until(T, |x| receives_all(x, &others, 100)).await {
            panic!(
                "{}: {e}: {:#?}\n{}",
                cl.participant_id(),
                cl.received(),
                metrics_text(&base).await
            );
        }
        cl.wait_connected(T).await.expect("connected");
        assert_clean(cl, &others);
        assert_eq!(cl.participants().len(), 2);
    }
    c.leave().await;
    for (cl, other) in [(&mut a, idb.as_str()), (&mut b, ida.as_str())] {
        cl.wait_event(T, |e| {
            matches!(e, ServerMessage::ParticipantLeft { participant_id } if *participant_id == idc)
        })
        .await
        .expect("participant_left");
        cl.wait_until(T, |x| {
            x.offered_tracks().iter().all(|t| t.participant_id != idc)
        })
        .await
        .unwrap_or_else(|e| panic!("carol still offered: {e}: {:#?}", cl.offered_tracks()));
        assert!(active_from(&cl.received(), &idc).is_empty());
        assert_eq!(cl.participants().len(), 1);
        let before: u64 = active_from(&cl.received(), other)
            .iter()
            .map(|t| t.packets())
            .sum();
        cl.wait_until(T, |x| {
            active_from(&x.received(), other)
                .iter()
                .map(|t| t.packets())
                .sum::<u64>()
                > before + 100
        })
        .await
        .expect("media keeps flowing");
        assert_clean(cl, &[other]);
    }
    a.leave().await;
    b.leave().await;
    srv.shutdown(Duration::from_secs(2)).await;
}

/// A client that does not take events (the load bots) still joins, publishes and receives,
/// keeps its room state current from the messages it does not queue, and queues nothing:
/// `next_event` ends at once rather than waiting for an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_events_queues_none() {
    let srv = common::server().await;
    let room = common::room();
    let url = format!("ws://{}/ws", srv.http_addr);
    let mut quiet = Client::join(ClientOptions {
        events: false,
        ..ClientOptions::new(url.clone(), common::token(&room, "quiet"))
    })
    .await
    .expect("join");
    let other = Client::join(ClientOptions::new(
        url.clone(),
        common::token(&room, "other"),
    ))
    .await
    .expect("join");
    let publishers = [other.participant_id().to_owned()];
    let ids: Vec<&str> = publishers.iter().map(String::as_str).collect();
    quiet
        .wait_until(T, |c| receives_all(c, &ids, 50))
        .await
        .expect("media without events");
    quiet.wait_connected(T).await.expect("connected");
    assert_eq!(quiet.participants().len(), 1, "{:#?}", quiet.participants());
    // Room state follows joins and leaves without events.
    let late = Client::join(ClientOptions {
        publish_audio: false,
        publish_video: false,
        ..ClientOptions::new(url, common::token(&room, "late"))
    })
    .await
    .expect("join");
    quiet
        .wait_until(T, |c| c.participants().len() == 2)
        .await
        .unwrap_or_else(|e| panic!("late joiner seen: {e}: {:#?}", quiet.participants()));
    late.leave().await;
    quiet
        .wait_until(T, |c| c.participants().len() == 1)
        .await
        .unwrap_or_else(|e| panic!("late leaver gone: {e}: {:#?}", quiet.participants()));
    // Nothing was queued for all those messages, and nothing ever will be: the channel is
    // closed (a client that kept it open would make this wait, and time out).
    let next = tokio::time::timeout(Duration::from_secs(1), quiet.next_event()).await;
    assert!(matches!(next, Ok(None)), "next_event: {next:?}");
    quiet.leave().await;
    other.leave().await;
    srv.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_subscription_and_mute_are_per_track() {
    let srv = common::server().await;
    let room = common::room();
    let url = format!("ws://{}/ws", srv.http_addr);
    let publisher = Client::join(ClientOptions::new(url.clone(), common::token(&room, "pub")))
        .await
        .expect("join");
    let mut opts = ClientOptions::new(url.clone(), common::token(&room, "viewer"));
    opts.auto_subscribe = false;
    opts.publish_audio = false;
    opts.publish_video = false;
    let mut viewer = Client::join(opts).await.expect("join");
    let pid = publisher.participant_id().to_owned();

    // The viewer learns of both tracks but receives nothing until it subscribes.
    let mut tracks = Vec::new();
    while tracks.len() < 2 {
        match viewer
            .wait_event(T, |e| matches!(e, ServerMessage::TrackPublished { .. }))
            .await
        {
            Ok(ServerMessage::TrackPublished {
                participant_id,
                track,
            }) => {
                assert_eq!(participant_id, pid);
                tracks.push(track);
            }
            other => panic!("expected track_published, got {other:?}"),
        }
    }
    // The server has media from both tracks it could forward: none reaches the viewer.
    let base = srv.base_url();
    let media_in = |kind: &'static str| {
        let base = base.clone();
        async move {
            common::counter(
                &base,
                &format!("chorus_rtp_packets_total{{direction=\"in\",kind=\"{kind}\"}}"),
            )
            .await
        }
    };
    let (audio0, video0) = (media_in("audio").await, media_in("video").await);
    common::eventually("the publisher's media reaches the server", T, || async {
        let now = (media_in("audio").await, media_in("video").await);
        common::ok_if(now.0 >= audio0 + 10.0 && now.1 >= video0 + 10.0, now)
    })
    .await;
    assert!(viewer.received().is_empty(), "{:#?}", viewer.received());
    let text = common::scrape(&base).await;
    let out = ["audio", "video"].map(|kind| {
        common::sample(
            &text,
            &format!("chorus_rtp_packets_total{{direction=\"out\",kind=\"{kind}\"}}"),
        )
    });
    assert_eq!(out, [0.0, 0.0], "nothing forwarded before subscribing");
    let video = tracks
        .iter()
        .find(|t| t.kind == chorus_signal::protocol::TrackKind::Video)
        .expect("video track")
        .clone();
    viewer.subscribe([video.id.as_str()]).expect("subscribe");
    viewer
        .wait_until(T, |c| {
            c.received()
                .iter()
                .any(|t| t.track_id == video.id && t.active && t.keyframes > 0)
        })
        .await
        .expect("video, with a keyframe, arrives soon after subscribe");
    assert!(
        viewer.received().iter().all(|t| t.kind == TrackKind::Video),
        "only the subscribed track arrives: {:#?}",
        viewer.received()
    );

    // Mute is announced to the room.
    publisher.mute(&video.id, true).expect("mute");
    match viewer
        .wait_event(T, |e| matches!(e, ServerMessage::TrackMuted { .. }))
        .await
    {
        Ok(ServerMessage::TrackMuted {
            participant_id,
            track_id,
            muted,
        }) => {
            assert_eq!(
                (participant_id.as_str(), track_id.as_str(), muted),
                (pid.as_str(), video.id.as_str(), true)
            );
        }
        other => panic!("expected track_muted, got {other:?}"),
    }

    // Unsubscribe renegotiates the track away.
    viewer
        .unsubscribe([video.id.as_str()])
        .expect("unsubscribe");
    viewer
        .wait_until(T, |c| {
            c.offered_tracks().iter().all(|t| t.track_id != video.id)
        })
        .await
        .expect("track removed from the subscriber offer");
    viewer.leave().await;
    publisher.leave().await;
}

/// A muted track's packets (here the silence frames a muted microphone still sends every
/// 400 ms) reach nobody; after unmuting, media resumes with continuous sequence numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_track_is_not_forwarded_and_resumes_without_a_gap() {
    mute_and_resume(None).await;
}

/// The same with the speaker's DTX and resumption coming from the engine's lean publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_track_from_the_shared_engine_resumes_without_a_gap() {
    mute_and_resume(Some(SharedEngine::start().expect("engine starts"))).await;
}

async fn mute_and_resume(engine: Option<SharedEngine>) {
    let srv = common::server().await;
    let base = srv.base_url();
    let room = common::room();
    let url = format!("ws://{}/ws", srv.http_addr);
    let mut opts = ClientOptions::new(url.clone(), common::token(&room, "speaker"));
    opts.publish_video = false;
    opts.engine = engine.clone();
    let speaker = Client::join(opts).await.expect("join");
    let mut opts = ClientOptions::new(url.clone(), common::token(&room, "listener"));
    opts.publish_audio = false;
    opts.publish_video = false;
    opts.engine = engine;
    let mut listener = Client::join(opts).await.expect("join");
    let audio_packets = |c: &Client| -> u64 {
        c.received()
            .iter()
            .filter(|t| t.kind == TrackKind::Audio)
            .map(|t| t.packets())
            .sum()
    };
    listener
        .wait_until(T, |c| audio_packets(c) >= 50)
        .await
        .expect("audio flows");
    speaker
        .wait_until(T, |c| !c.local_participant().tracks.is_empty())
        .await
        .expect("speaker's track published");
    let track = speaker.local_participant().tracks[0].id.clone();

    speaker.mute(&track, true).expect("mute");
    listener
        .wait_event(T, |e| {
            matches!(e, ServerMessage::TrackMuted { muted: true, .. })
        })
        .await
        .expect("track_muted");
    // The server drops what the muted track still sends (a silence frame every 400 ms): once
    // it has dropped one, read what arrived, and let it drop two more.
    let muted_drops = || common::counter(&base, "chorus_packets_dropped_total{reason=\"muted\"}");
    let first = common::eventually("a muted frame dropped", T, || async {
        let n = muted_drops().await;
        common::ok_if(n >= 1.0, n)
    })
    .await;
    let during = audio_packets(&listener);
    common::eventually("two more muted frames dropped", T, || async {
        let n = muted_drops().await;
        common::ok_if(n >= first + 2.0, n)
    })
    .await;
    assert_eq!(
        audio_packets(&listener),
        during,
        "nothing forwarded while muted"
    );

    speaker.mute(&track, false).expect("unmute");
    listener
        .wait_until(T, |c| audio_packets(c) >= during + 50)
        .await
        .expect("audio resumes");
    let r = listener.received();
    let a = r
        .iter()
        .find(|t| t.kind == TrackKind::Audio)
        .expect("audio track");
    assert_eq!(
        (a.seq.gaps, a.seq.missing),
        (0, 0),
        "no gap across the mute: {a:#?}"
    );
    speaker.leave().await;
    listener.leave().await;
    srv.shutdown(Duration::from_secs(2)).await;
}
