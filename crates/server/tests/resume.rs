//! A lost WebSocket does not end a session: the participant stays for the grace period and a
//! new WebSocket resumes it (same participant, ICE restarted on both connections), or, once the
//! grace is over, the client joins afresh. The WebSocket is cut for real: the client reaches
//! the server through a TCP proxy whose connections the test drops.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_client::{
    Client, ClientOptions, ReconnectEvent, ReconnectPolicy, ServerMessage, SharedEngine,
};
use chorus_signal::protocol::ErrorCode;
use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const T: Duration = Duration::from_secs(15);

/// A TCP proxy in front of the server's HTTP port: `cut` drops every connection through it
/// (both sides see the TCP connection end, no WebSocket close frame), `freeze` stops carrying
/// the bytes of the connections open now but keeps them open (a half-open connection: neither
/// side learns anything), `refuse` makes it close new connections at once (the server
/// unreachable).
struct Proxy {
    url: String,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    open: Arc<AtomicBool>,
    frozen: tokio::sync::watch::Sender<bool>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let open = Arc::new(AtomicBool::new(true));
        let (frozen, freeze) = tokio::sync::watch::channel(false);
        let (c, o) = (conns.clone(), open.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection end
                }
                let mut freeze = freeze.clone();
                freeze.mark_unchanged();
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                            _ = freeze.changed() => {
                                // Hold both sockets open, carrying nothing, until cut.
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                });
                c.lock().expect("lock").push(task.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            url,
            conns,
            open,
            frozen,
            accept,
        }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    fn cut(&self) {
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    fn refuse(&self, refuse: bool) {
        self.open.store(!refuse, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Packets received so far from participant `from`.
fn packets_from(c: &Client, from: &str) -> u64 {
    c.received()
        .iter()
        .filter(|r| r.participant_id == from)
        .map(|r| r.packets())
        .sum()
}

/// The `a=ice-ufrag` of an SDP.
fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .unwrap_or_default()
        .to_owned()
}

async fn participants(server: &chorus_server::RunningServer) -> usize {
    server.state.sfu.stats().await.expect("stats").participants
}

#[tokio::test]
async fn a_client_that_loses_its_websocket_resumes_with_ice_restarts() {
    resume_mid_call(None).await;
}

/// The same for a client whose connections run on a shared engine (the load bots' lean
/// endpoints): its subscriber connection follows the server's ICE restart (its publisher
/// connection keeps its ICE session).
#[tokio::test]
async fn a_shared_engine_client_resumes_too() {
    resume_mid_call(Some(SharedEngine::start().expect("engine starts"))).await;
}

async fn resume_mid_call(engine: Option<SharedEngine>) {
    let lean = engine.is_some();
    let server = common::server().await;
    let proxy = Proxy::start(server.http_addr).await;
    let direct = format!("ws://{}/ws", server.http_addr);
    let room = common::room();
    let mut a = Client::join(ClientOptions {
        engine,
        ..ClientOptions::new(proxy.url.clone(), common::token(&room, "a"))
    })
    .await
    .expect("a joins");
    let b = Client::join(ClientOptions::new(direct, common::token(&room, "b")))
        .await
        .expect("b joins");
    a.wait_connected(T).await.expect("a connected");
    b.wait_connected(T).await.expect("b connected");
    let (a_id, b_id) = (a.participant_id().to_owned(), b.participant_id().to_owned());
    common::eventually("media both ways", T, || async {
        let got = (packets_from(&b, &a_id), packets_from(&a, &b_id));
        common::ok_if(got.0 > 50 && got.1 > 50, got)
    })
    .await;
    // The ICE credentials the server gave a so far (the latest answer and offer).
    let mut answer_ufrag = String::new();
    let mut offer_ufrag = String::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), a.next_event()).await
    {
        match ev {
            ServerMessage::Answer { sdp } => answer_ufrag = ufrag(&sdp),
            ServerMessage::Offer { sdp } => offer_ufrag = ufrag(&sdp),
            _ => {}
        }
    }
    assert!(!answer_ufrag.is_empty() && !offer_ufrag.is_empty());

    proxy.cut();
    let before = packets_from(&b, &a_id);
    assert!(matches!(
        a.wait_reconnect_event(T, |_| true).await,
        Ok(ReconnectEvent::Reconnecting { attempt: 1 })
    ));
    a.wait_reconnect_event(T, |e| *e == ReconnectEvent::Resumed)
        .await
        .expect("a resumes");
    assert_eq!(a.participant_id(), a_id, "the same participant");
    assert_eq!(participants(&server).await, 2, "nobody left, nobody added");
    assert!(
        packets_from(&b, &a_id) > before,
        "media kept flowing while a's signaling was down"
    );

    // Both connections restarted ICE: the server's next answer and offer carry new credentials.
    // (A shared-engine publisher keeps its ICE session: no new answer there.)
    let mut restarted = (lean.then(|| "kept".to_owned()), None);
    let deadline = tokio::time::Instant::now() + T;
    while restarted.0.is_none() || restarted.1.is_none() {
        let ev = tokio::time::timeout_at(deadline, a.next_event())
            .await
            .expect("an answer and an offer after the resume")
            .expect("events");
        match ev {
            ServerMessage::Answer { sdp } => restarted.0 = Some(ufrag(&sdp)),
            ServerMessage::Offer { sdp } => restarted.1 = Some(ufrag(&sdp)),
            ServerMessage::Resumed { participant, .. } => assert_eq!(participant.id, a_id),
            _ => {}
        }
    }
    assert_ne!(restarted.0.as_deref(), Some(answer_ufrag.as_str()));
    assert_ne!(restarted.1.as_deref(), Some(offer_ufrag.as_str()));
    // Media flows again on the restarted paths, both ways.
    let after = (packets_from(&b, &a_id), packets_from(&a, &b_id));
    a.wait_connected(T).await.expect("a connected again");
    common::eventually("media both ways after the ICE restarts", T, || async {
        let got = (packets_from(&b, &a_id), packets_from(&a, &b_id));
        common::ok_if(got.0 > after.0 + 50 && got.1 > after.1 + 50, got)
    })
    .await;
    let base = server.base_url();
    assert_eq!(
        common::counter(&base, "chorus_signal_resumes_total{result=\"ok\"}").await,
        1.0
    );
    assert_eq!(participants(&server).await, 2);
    a.leave().await;
    b.leave().await;
}

#[tokio::test]
async fn after_the_grace_period_the_client_rejoins_cleanly() {
    let server = common::server_with(|c| c.signal.resume_grace_secs = 1).await;
    let proxy = Proxy::start(server.http_addr).await;
    let direct = format!("ws://{}/ws", server.http_addr);
    let room = common::room();
    let mut a = Client::join(ClientOptions::new(
        proxy.url.clone(),
        common::token(&room, "a"),
    ))
    .await
    .expect("a joins");
    let mut b = Client::join(ClientOptions::new(direct, common::token(&room, "b")))
        .await
        .expect("b joins");
    a.wait_connected(T).await.expect("a connected");
    let old_id = a.participant_id().to_owned();

    // The server is unreachable for longer than the grace period.
    proxy.refuse(true);
    proxy.cut();
    a.wait_reconnect_event(T, |e| matches!(e, ReconnectEvent::Reconnecting { .. }))
        .await
        .expect("reconnecting");
    let left = b
        .wait_event(T, |e| matches!(e, ServerMessage::ParticipantLeft { .. }))
        .await
        .expect("b hears a left once the grace is over");
    assert!(
        matches!(left, ServerMessage::ParticipantLeft { participant_id } if participant_id == old_id)
    );
    assert_eq!(participants(&server).await, 1);
    proxy.refuse(false);

    a.wait_reconnect_event(T, |e| *e == ReconnectEvent::Rejoined)
        .await
        .expect("a rejoins");
    let new_id = a.participant_id().to_owned();
    assert_ne!(new_id, old_id, "a fresh participant");
    a.wait_connected(T).await.expect("a connected again");
    common::eventually("b receives the rejoined a's media", T, || async {
        let got = packets_from(&b, &new_id);
        common::ok_if(got > 50, got)
    })
    .await;
    // No leftover: the room holds a and b, nothing else.
    assert_eq!(participants(&server).await, 2);
    let base = server.base_url();
    assert_eq!(
        common::counter(&base, "chorus_signal_resumes_total{result=\"failed\"}").await,
        1.0
    );
    assert_eq!(
        common::metric(&base, "chorus_signal_parked_sessions").await,
        Some(0.0)
    );
    a.leave().await;
    b.leave().await;
}

/// A resume over a raw WebSocket.
async fn resume(ws: &mut common::Ws, token: &str, id: &str, resume_token: &str) -> ServerMessage {
    let msg = serde_json::json!({"type": "resume", "version": 1, "token": token,
        "participant_id": id, "resume_token": resume_token});
    common::ws_send(ws, &msg.to_string()).await;
    common::ws_next(ws).await.expect("an answer to resume")
}

fn joined(m: ServerMessage) -> (String, String) {
    match m {
        ServerMessage::Joined {
            participant,
            resume_token,
            ..
        } => (participant.id, resume_token),
        ServerMessage::Resumed {
            participant,
            resume_token,
            ..
        } => (participant.id, resume_token),
        other => panic!("expected joined or resumed, got {other:?}"),
    }
}

/// The next subscriber offer on a raw WebSocket (within 5 s).
async fn next_offer(ws: &mut common::Ws) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    if let Ok(ServerMessage::Offer { sdp }) = serde_json::from_str(&t) {
                        return sdp;
                    }
                }
                other => panic!("expected an offer, got {other:?}"),
            }
        }
    })
    .await
    .expect("a subscriber offer")
}

fn is_error(m: &ServerMessage, want: ErrorCode) -> bool {
    matches!(m, ServerMessage::Error { code, .. } if *code == want)
}

#[tokio::test]
async fn resume_tokens_work_once_for_their_session_only() {
    let server = common::server().await;
    let base = server.base_url();
    let room = common::room();
    let token = common::token(&room, "a");
    let mut first = common::ws_connect(&base).await;
    let (id, rt1) = joined(common::ws_join(&mut first, &token).await);
    assert!(rt1.len() >= 40, "an unguessable resume token: {rt1:?}");
    // The first subscriber offer (left unanswered, as a client cut off before it could).
    let first_offer = next_offer(&mut first).await;

    // A wrong token, and the right token with another identity's access token: refused,
    // and the live session is untouched.
    let mut other = common::ws_connect(&base).await;
    let r = resume(&mut other, &token, &id, "not-the-token").await;
    assert!(is_error(&r, ErrorCode::ResumeFailed), "{r:?}");
    let mut other = common::ws_connect(&base).await;
    let r = resume(&mut other, &common::token(&room, "mallory"), &id, &rt1).await;
    assert!(is_error(&r, ErrorCode::ResumeFailed), "{r:?}");

    // Lost without leave: the participant stays.
    drop(first);
    common::eventually("the lost socket's session is parked", T, || async {
        let parked = common::metric(&base, "chorus_signal_parked_sessions")
            .await
            .unwrap_or(0.0);
        common::ok_if(parked >= 1.0, parked)
    })
    .await;
    assert_eq!(participants(&server).await, 1);
    let mut second = common::ws_connect(&base).await;
    let (same, rt2) = joined(resume(&mut second, &token, &id, &rt1).await);
    assert_eq!(same, id);
    assert_ne!(rt2, rt1, "a new token per resume");
    // The resumed session gets a new subscriber offer: an ICE restart, new credentials.
    let offer = next_offer(&mut second).await;
    assert!(!ufrag(&offer).is_empty());
    assert_ne!(ufrag(&offer), ufrag(&first_offer), "new ICE credentials");

    // The used token no longer works.
    let mut third = common::ws_connect(&base).await;
    let r = resume(&mut third, &token, &id, &rt1).await;
    assert!(is_error(&r, ErrorCode::ResumeFailed), "{r:?}");

    // A resume while the old socket still looks alive replaces it (one socket per session).
    let mut fourth = common::ws_connect(&base).await;
    let (same, _rt3) = joined(resume(&mut fourth, &token, &id, &rt2).await);
    assert_eq!(same, id);
    loop {
        match common::ws_next(&mut second).await {
            Err(code) => {
                assert_eq!(code, Some(1000), "the stale socket is closed");
                break;
            }
            Ok(_) => continue,
        }
    }
    assert_eq!(participants(&server).await, 1);

    // An explicit leave ends the session for good.
    common::ws_send(&mut fourth, r#"{"type":"leave"}"#).await;
    common::eventually("the participant left", T, || async {
        let n = participants(&server).await;
        common::ok_if(n == 0, n)
    })
    .await;
    let mut fifth = common::ws_connect(&base).await;
    let r = resume(&mut fifth, &token, &id, &_rt3).await;
    assert!(is_error(&r, ErrorCode::ResumeFailed), "{r:?}");
    assert_eq!(
        common::counter(&base, "chorus_signal_resumes_total{result=\"ok\"}").await,
        2.0
    );
    assert_eq!(
        common::counter(&base, "chorus_signal_resumes_total{result=\"failed\"}").await,
        4.0
    );
}

#[tokio::test]
async fn the_grace_period_ends_a_lost_session_and_others_hear_it_left() {
    let server = common::server_with(|c| c.signal.resume_grace_secs = 1).await;
    let base = server.base_url();
    let room = common::room();
    let mut stays = common::ws_connect(&base).await;
    joined(common::ws_join(&mut stays, &common::token(&room, "stays")).await);
    let token = common::token(&room, "goes");
    let mut goes = common::ws_connect(&base).await;
    let (id, rt) = joined(common::ws_join(&mut goes, &token).await);
    assert!(matches!(
        common::ws_next(&mut stays).await,
        Ok(ServerMessage::ParticipantJoined { .. })
    ));
    let lost_at = std::time::Instant::now();
    drop(goes);
    // Nobody is told during the grace period; then the participant leaves.
    match common::ws_next_within(&mut stays, Duration::from_secs(5)).await {
        Ok(ServerMessage::ParticipantLeft { participant_id }) => assert_eq!(participant_id, id),
        other => panic!("expected participant_left, got {other:?}"),
    }
    assert!(
        lost_at.elapsed() >= Duration::from_millis(900),
        "left only after the grace period ({:?})",
        lost_at.elapsed()
    );
    assert_eq!(participants(&server).await, 1);
    let mut late = common::ws_connect(&base).await;
    let r = resume(&mut late, &token, &id, &rt).await;
    assert!(is_error(&r, ErrorCode::ResumeFailed), "{r:?}");
}

/// A token of the dev key for `identity` in `room`, valid for `ttl`.
fn short_token(room: &str, identity: &str, ttl: Duration) -> String {
    use chorus_server::config::{DEV_API_KEY, DEV_API_SECRET};
    use chorus_signal::auth::{claims, mint, Grants};
    let grants = Grants {
        room: room.into(),
        can_publish: true,
        can_subscribe: true,
        can_publish_data: true,
    };
    mint(
        DEV_API_KEY,
        DEV_API_SECRET,
        &claims(identity, room, ttl, grants),
    )
    .expect("mints")
}

/// Joins `identity` over a raw WebSocket, drops the socket without `leave`, and waits until
/// the server keeps the session parked; returns (participant id, resume token).
async fn join_and_vanish(base: &str, token: &str) -> (String, String) {
    let mut ws = common::ws_connect(base).await;
    let ids = joined(common::ws_join(&mut ws, token).await);
    drop(ws);
    common::eventually("the session is parked", T, || async {
        let parked = common::metric(base, "chorus_signal_parked_sessions")
            .await
            .unwrap_or(0.0);
        common::ok_if(parked >= 1.0, parked)
    })
    .await;
    ids
}

#[tokio::test]
async fn removal_token_expiry_and_drain_end_a_parked_session_for_good() {
    let server = common::server().await; // the default grace: 15 s
    let base = server.base_url();
    let room = common::room();

    // Removed by the operator while parked: gone at once, and no resume.
    let token = common::token(&room, "removed");
    let (id, rt) = join_and_vanish(&base, &token).await;
    server
        .state
        .sfu
        .remove_participant(&room, "removed", "removed by the operator")
        .await
        .expect("removes");
    common::eventually("the removed session is gone", T, || async {
        let parked = common::metric(&base, "chorus_signal_parked_sessions").await;
        let n = participants(&server).await;
        common::ok_if(parked == Some(0.0) && n == 0, (parked, n))
    })
    .await;
    let mut ws = common::ws_connect(&base).await;
    let r = resume(&mut ws, &token, &id, &rt).await;
    assert!(is_error(&r, ErrorCode::ResumeFailed), "{r:?}");

    // The token expires while parked: the session ends then, long before the grace period.
    let token = short_token(&room, "expires", Duration::from_secs(2));
    let lost_at = std::time::Instant::now();
    join_and_vanish(&base, &token).await;
    common::eventually("the expired session is gone", T, || async {
        let n = participants(&server).await;
        common::ok_if(n == 0, n)
    })
    .await;
    assert!(
        lost_at.elapsed() < Duration::from_secs(6),
        "ended at the token's expiry, not after the 15 s grace: {:?}",
        lost_at.elapsed()
    );

    // Shutdown: parked sessions end at once, so the drain does not wait for them.
    join_and_vanish(&base, &common::token(&room, "drained")).await;
    assert_eq!(participants(&server).await, 1);
    let state = server.state.clone();
    let started = std::time::Instant::now();
    server.shutdown(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain waited {:?} for a parked session",
        started.elapsed()
    );
    assert_eq!(state.sfu.stats().await.expect("stats").participants, 0);
    assert!(state.resumable.is_empty());
}

#[tokio::test]
async fn a_half_open_websocket_is_noticed_and_its_session_resumed() {
    let server = common::server().await;
    let proxy = Proxy::start(server.http_addr).await;
    let room = common::room();
    let silence = Duration::from_secs(2);
    let mut a = Client::join(ClientOptions {
        reconnect: Some(ReconnectPolicy {
            silence_timeout: silence,
            ..ReconnectPolicy::default()
        }),
        ..ClientOptions::new(proxy.url.clone(), common::token(&room, "a"))
    })
    .await
    .expect("a joins");
    a.wait_connected(T).await.expect("a connected");
    let id = a.participant_id().to_owned();
    // Quiet but alive: the client's pings (every third of the silence timeout) keep it so.
    tokio::time::sleep(silence * 2).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(10), a.next_reconnect_event())
            .await
            .is_err(),
        "a live, quiet socket is not taken as lost"
    );

    // The network goes without closing anything: neither side's socket ends.
    let frozen_at = std::time::Instant::now();
    proxy.freeze();
    a.wait_reconnect_event(T, |e| *e == ReconnectEvent::Resumed)
        .await
        .expect("a notices the silence and resumes");
    // Noticed by its silence (counted from the last frame, a pong up to a third of it before
    // the freeze), not by anything closing.
    assert!(
        frozen_at.elapsed() >= silence / 2,
        "{:?}",
        frozen_at.elapsed()
    );
    assert_eq!(a.participant_id(), id);
    // The server still had the stale socket: the resume took the session from it.
    assert_eq!(participants(&server).await, 1);
    assert_eq!(
        common::counter(
            &server.base_url(),
            "chorus_signal_resumes_total{result=\"ok\"}"
        )
        .await,
        1.0
    );
    a.wait_connected(T).await.expect("a connected");
    a.leave().await;
}
