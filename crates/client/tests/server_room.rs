//! Three clients in one room of an in-process Chorus server: everyone receives everyone else's
//! audio and video with continuous sequence numbers, and a participant leaving is removed from
//! the others' subscriber connections by renegotiation.

use chorus_client::{Client, ClientOptions, ReceivedTrackStats, ServerMessage, TrackKind};
use chorus_server::config::{DEV_API_KEY, DEV_API_SECRET};
use chorus_server::{Config, RunningServer};
use chorus_signal::auth::{claims, mint, Grants};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

async fn server() -> RunningServer {
    let mut config = Config::default();
    config.server.http_bind = "127.0.0.1:0".parse().expect("addr");
    config.media.bind_ip = "127.0.0.1".parse().expect("ip");
    config.media.udp_port = 0;
    chorus_server::start(config).await.expect("server starts")
}

fn token(room: &str, identity: &str) -> String {
    let grants = Grants {
        room: room.into(),
        can_publish: true,
        can_subscribe: true,
        can_publish_data: false,
    };
    mint(
        DEV_API_KEY,
        DEV_API_SECRET,
        &claims(identity, room, Duration::from_secs(600), grants),
    )
    .expect("token")
}

async fn join(srv: &RunningServer, room: &str, identity: &str) -> Client {
    let url = format!("ws://{}/ws", srv.http_addr);
    Client::join(ClientOptions::new(url, token(room, identity)))
        .await
        .expect("join")
}

/// The tracks `c` receives from `publisher` that the latest subscriber offer still carries.
fn active_from<'a>(r: &'a [ReceivedTrackStats], publisher: &str) -> Vec<&'a ReceivedTrackStats> {
    r.iter()
        .filter(|t| t.participant_id == publisher && t.active)
        .collect()
}

/// Whether `c` receives audio and video from each of `publishers`, at least `min` packets each.
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
            assert!(t.ssrc != 0 && t.payload_type != 0, "{t:#?}");
            if t.kind == TrackKind::Video {
                assert_eq!(t.mime_type.as_deref(), Some("video/VP8"), "{t:#?}");
                assert!(
                    t.frames > 0 && t.keyframes > 0,
                    "video without keyframes: {t:#?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_exchange_media_and_a_leave_renegotiates() {
    let srv = server().await;
    let room = format!("room-{}", std::process::id());

    let mut a = join(&srv, &room, "alice").await;
    let mut b = join(&srv, &room, "bob").await;
    let c = join(&srv, &room, "carol").await;
    let (ida, idb, idc) = (
        a.participant_id().to_owned(),
        b.participant_id().to_owned(),
        c.participant_id().to_owned(),
    );

    for client in [&a, &b, &c] {
        let others: Vec<&str> = [ida.as_str(), idb.as_str(), idc.as_str()]
            .into_iter()
            .filter(|id| *id != client.participant_id())
            .collect();
        client
            .wait_until(T, |cl| receives_all(cl, &others, 100))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} did not receive {others:?}: {e}: {:#?}",
                    client.participant_id(),
                    client.received()
                )
            });
        client.wait_connected(T).await.expect("connected");
        assert_clean(client, &others);
        assert_eq!(
            client.participants().len(),
            2,
            "{:#?}",
            client.participants()
        );
    }

    // Carol leaves: Alice and Bob get participant_left and a renegotiation without her tracks.
    let carol_tracks: Vec<String> = c
        .local_participant()
        .tracks
        .iter()
        .map(|t| t.id.clone())
        .collect();
    c.leave().await;
    for (client, other) in [(&mut a, idb.as_str()), (&mut b, ida.as_str())] {
        client
            .wait_event(T, |e| matches!(e, ServerMessage::ParticipantLeft { participant_id } if *participant_id == idc))
            .await
            .expect("participant_left");
        client
            .wait_until(T, |cl| {
                cl.offered_tracks().iter().all(|t| t.participant_id != idc)
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "carol's tracks still offered: {e}: {:#?}",
                    client.offered_tracks()
                )
            });
        let r = client.received();
        assert!(active_from(&r, &idc).is_empty(), "{r:#?}");
        for id in &carol_tracks {
            assert!(client.offered_tracks().iter().all(|t| &t.track_id != id));
        }
        assert_eq!(client.participants().len(), 1);

        // The remaining participant's media keeps flowing, still without gaps.
        let before: u64 = active_from(&r, other).iter().map(|t| t.packets()).sum();
        client
            .wait_until(T, |cl| {
                active_from(&cl.received(), other)
                    .iter()
                    .map(|t| t.packets())
                    .sum::<u64>()
                    > before + 100
            })
            .await
            .expect("media keeps flowing after the leave");
        assert_clean(client, &[other]);
    }

    a.leave().await;
    b.leave().await;
    srv.shutdown(Duration::from_secs(2)).await;
}
