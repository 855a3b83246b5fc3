use chorus_client::{Client, ClientOptions};
use chorus_server::config::{DEV_API_KEY, DEV_API_SECRET};
use chorus_server::Config;
use chorus_signal::auth::{claims, mint, Grants};
use std::time::Duration;

fn token(room: &str, identity: &str) -> String {
    let grants = Grants { room: room.into(), can_publish: true, can_subscribe: true, can_publish_data: false };
    mint(DEV_API_KEY, DEV_API_SECRET, &claims(identity, room, Duration::from_secs(600), grants)).expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_two() {
    let _ = tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or("debug".into())).try_init();
    let mut config = Config::default();
    config.server.http_bind = "127.0.0.1:0".parse().expect("addr");
    config.media.bind_ip = "127.0.0.1".parse().expect("ip");
    config.media.udp_port = 0;
    let srv = chorus_server::start(config).await.expect("server");
    let url = format!("ws://{}/ws", srv.http_addr);
    let mut a = Client::join(ClientOptions::new(url.clone(), token("r", "a"))).await.expect("a");
    let b = Client::join(ClientOptions::new(url, token("r", "b"))).await.expect("b");
    tokio::time::sleep(Duration::from_secs(4)).await;
    eprintln!("A offered {:#?}", a.offered_tracks());
    eprintln!("A received {:#?}", a.received());
    eprintln!("B sent {:#?}", b.sent());
    eprintln!("A states {:?} B states {:?}", a.connection_states(), b.connection_states());
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(10), a.next_event()).await {
        match ev { chorus_client::ServerMessage::Offer { sdp } => eprintln!("A OFFER\n{sdp}"), e => eprintln!("A EVENT {e:?}") }
    }
}
