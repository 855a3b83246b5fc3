//! Three Rust WebRTC clients in one room: each receives the other two's audio and video with
//! continuous sequence numbers; one leaves and the others' subscriber connections drop its
//! tracks by renegotiation while their media keeps flowing.

mod common;

use std::time::Duration;

use chorus_client::{Client, ClientOptions, ReceivedTrackStats, ServerMessage, TrackKind};

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
    match reqwest::get(format!("{base}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    }
    .lines()
    .filter(|l| l.starts_with("chorus_"))
    .collect::<Vec<_>>()
    .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_exchange_media_and_a_leave_renegotiates() {
    let srv = common::server().await;
    let base = srv.base_url();
    let room = common::room();
    let url = format!("ws://{}/ws", srv.http_addr);
    let join = |id: &str| Client::join(ClientOptions::new(url.clone(), common::token(&room, id)));
    let mut a = join("alice").await.expect("join");
    let mut b = join("bob").await.expect("join");
    let c = join("carol").await.expect("join");
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
