//! What the configuration promises reaches clients: external (1:1 NAT) addresses in the
//! candidates, STUN/TURN servers with time-limited credentials in `joined`, a port range.

mod common;

use std::time::Duration;

use chorus_signal::ice::IceServerConfig;
use chorus_signal::protocol::ServerMessage;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Joins `room` and returns `joined`, the first subscriber offer and the candidate trickled
/// after it.
async fn join_and_first_offer(base: &str, room: &str) -> (ServerMessage, String, String) {
    let url = format!("{}/ws", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    let join = serde_json::json!({"type":"join","version":1,"token":common::token(room, "nat")});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("send");
    let mut joined = None;
    let mut offer = None;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("server answers")
            .expect("open")
            .expect("frame");
        let Message::Text(text) = frame else { continue };
        match serde_json::from_str::<ServerMessage>(&text).expect("protocol JSON") {
            m @ ServerMessage::Joined { .. } => joined = Some(m),
            ServerMessage::Offer { sdp } => offer = Some(sdp),
            ServerMessage::Candidate { target, candidate } => {
                assert_eq!(target, chorus_signal::protocol::Target::Subscriber);
                let offer = offer.expect("the offer comes before its candidates");
                assert!(offer.contains(&format!(
                    "a=mid:{}",
                    candidate.sdp_mid.clone().unwrap_or_default()
                )));
                return (
                    joined.expect("joined comes first"),
                    offer,
                    candidate.candidate,
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn external_ips_and_ice_servers_reach_the_client() {
    let server = common::server_with(|c| {
        c.media.external_ips = vec!["203.0.113.7".parse().expect("ip")];
        c.signal.ice_servers = vec![
            IceServerConfig {
                urls: vec!["stun:stun.example.org:3478".into()],
                username: None,
                credential: None,
                secret: None,
                ttl_secs: 60,
            },
            IceServerConfig {
                urls: vec!["turn:turn.example.org:3478?transport=udp".into()],
                username: None,
                credential: None,
                secret: Some("turn-shared-secret".into()),
                ttl_secs: 600,
            },
        ];
    })
    .await;
    let (joined, sdp, trickled) = join_and_first_offer(&server.base_url(), &common::room()).await;
    let port = server.media_addr.port();
    let candidates: Vec<&str> = sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(!candidates.is_empty(), "{sdp}");
    for c in &candidates {
        assert!(
            c.contains(&format!(" 203.0.113.7 {port} typ host")),
            "candidate {c}"
        );
    }
    assert!(
        trickled.contains(&format!(" 203.0.113.7 {port} typ host")),
        "trickled {trickled}"
    );
    let ServerMessage::Joined { ice_servers, .. } = joined else {
        unreachable!()
    };
    assert_eq!(ice_servers.len(), 2, "{ice_servers:?}");
    assert_eq!(ice_servers[0].urls, ["stun:stun.example.org:3478"]);
    assert_eq!(ice_servers[0].username, None);
    let username = ice_servers[1].username.clone().expect("TURN username");
    let (expiry, identity) = username.split_once(':').expect("expiry:identity");
    assert_eq!(identity, "nat");
    let expiry: u64 = expiry.parse().expect("expiry is a unix time");
    let now = chorus_signal::auth::unix_now();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "expiry {expiry}, now {now}"
    );
    assert!(
        ice_servers[1]
            .credential
            .as_deref()
            .is_some_and(|c| c.len() == 28),
        "base64 of a SHA-1 HMAC"
    );
}

#[tokio::test]
async fn the_media_socket_binds_inside_the_configured_range() {
    // Find a free run of ports, then take one of them so the server must skip it.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let first = probe.local_addr().expect("addr").port();
    let server =
        common::server_with(|c| c.media.udp_port_range = Some([first, first.saturating_add(20)]))
            .await;
    let port = server.media_addr.port();
    assert!(
        port > first && port <= first + 20,
        "bound {port}, range starts at the taken {first}"
    );
    drop(probe);
    let (_, sdp, _) = join_and_first_offer(&server.base_url(), &common::room()).await;
    assert!(
        sdp.contains(&format!(" 127.0.0.1 {port} typ host")),
        "{sdp}"
    );
}
