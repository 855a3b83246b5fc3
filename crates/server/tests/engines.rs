//! Every core: a server with two media engines places two rooms on different engines (each
//! with its own UDP port), and both forward their calls at once.

mod common;

use std::time::Duration;

use chorus_client::{Client, ClientOptions, TrackKind};

const T: Duration = Duration::from_secs(20);

fn receives_both_kinds(c: &Client, min: u64) -> bool {
    let r = c.received();
    [TrackKind::Audio, TrackKind::Video].iter().all(|k| {
        r.iter()
            .any(|t| t.active && t.kind == *k && t.packets() >= min)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_run_on_two_engines_at_once() {
    let srv = common::server_with(|c| c.media.engines = 2).await;
    let base = srv.base_url();
    let addrs = srv.state.sfu.media_addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_ne!(addrs[0].port(), addrs[1].port(), "one socket per engine");
    let url = format!("ws://{}/ws", srv.http_addr);
    let mut clients = Vec::new();
    for room in [common::room(), common::room()] {
        for id in ["alice", "bob"] {
            let opts = ClientOptions::new(url.clone(), common::token(&room, id));
            clients.push(Client::join(opts).await.expect("join"));
        }
    }
    for c in &clients {
        c.wait_until(T, |x| receives_both_kinds(x, 50))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}: {:#?}", c.participant_id(), c.received()));
        for t in c.received().iter().filter(|t| t.active) {
            assert_eq!(t.seq.gaps, 0, "{t:#?}");
        }
    }
    let text = common::scrape(&base).await;
    for engine in ["0", "1"] {
        let sample = |name: &str| common::sample(&text, &name.replace("E", engine));
        assert_eq!(
            sample("chorus_engine_participants{engine=\"E\"}"),
            2.0,
            "each room on its own engine:\n{text}"
        );
        let out = sample("chorus_engine_datagrams_total{direction=\"out\",engine=\"E\"}");
        let inn = sample("chorus_engine_datagrams_total{direction=\"in\",engine=\"E\"}");
        let messages = sample("chorus_engine_messages_sent_total{engine=\"E\"}");
        let calls = sample("chorus_engine_send_calls_total{engine=\"E\"}");
        assert!(
            inn > 100.0 && out > 100.0,
            "engine {engine} in {inn} out {out}"
        );
        assert!(
            out >= messages && messages >= calls && calls > 0.0,
            "engine {engine}: {out} datagrams in {messages} messages in {calls} calls"
        );
    }
    for c in clients {
        c.leave().await;
    }
    common::eventually("everyone gone", T, || async {
        let s = srv.state.sfu.stats().await.expect("stats");
        common::ok_if(s.participants == 0 && s.rooms == 0, s)
    })
    .await;
    let text = common::scrape(&base).await;
    assert_eq!(
        common::sample(&text, "chorus_engine_participants{engine=\"0\"}")
            + common::sample(&text, "chorus_engine_participants{engine=\"1\"}"),
        0.0,
        "placement forgets the rooms:\n{text}"
    );
}
