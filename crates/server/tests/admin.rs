//! The admin API and the `chorus room` / `chorus participant` commands, against a real
//! in-process server with real WebSocket participants.

mod common;

use std::time::Duration;

use chorus_signal::admin::RoomsResponse;
use chorus_signal::protocol::{ErrorCode, ServerMessage};

const ADMIN_KEY: &str = "admin-key-0123456789abcdef-0123456789ab";

async fn joined(base: &str, room: &str, identity: &str) -> common::Ws {
    let mut ws = common::ws_connect(base).await;
    let reply = common::ws_join(
        &mut ws,
        &common::prod_token(room, identity, Duration::from_secs(60)),
    )
    .await;
    assert!(matches!(reply, ServerMessage::Joined { .. }), "{reply:?}");
    ws
}

/// Reads until the server says `removed from room: <reason>` and closes.
async fn expect_removed(ws: &mut common::Ws, reason: &str) {
    loop {
        match common::ws_next(ws).await {
            Ok(ServerMessage::Error { code, message }) => {
                assert_eq!(code, ErrorCode::InvalidState);
                assert!(message.contains(reason), "{message}");
                break;
            }
            Ok(_) => {}
            Err(c) => panic!("closed without the removal error: {c:?}"),
        }
    }
    assert!(common::ws_next(ws).await.is_err(), "socket closes");
}

async fn rooms(base: &str) -> RoomsResponse {
    reqwest::Client::new()
        .get(format!("{base}/admin/rooms"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn the_admin_api_lists_removes_and_closes() {
    let server = common::production_server_with(|c| c.admin.key = Some(ADMIN_KEY.into())).await;
    let base = server.base_url();
    let http = reqwest::Client::new();
    // Without the key, or with another: 401.
    let none = http
        .get(format!("{base}/admin/rooms"))
        .send()
        .await
        .expect("get");
    assert_eq!(none.status().as_u16(), 401);
    let wrong = http
        .get(format!("{base}/admin/rooms"))
        .bearer_auth(common::PROD_SECRET)
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status().as_u16(), 401);

    let room = common::room();
    let mut alice = joined(&base, &room, "alice").await;
    let mut bob = joined(&base, &room, "bob").await;
    let mut carol = joined(&base, "other-room", "carol").await;
    let listing = rooms(&base).await;
    let names: Vec<&str> = listing.rooms.iter().map(|r| r.name.as_str()).collect();
    assert!(
        names.contains(&room.as_str()) && names.contains(&"other-room"),
        "{listing:?}"
    );
    let ours = listing
        .rooms
        .iter()
        .find(|r| r.name == room)
        .expect("our room");
    let identities: Vec<&str> = ours
        .participants
        .iter()
        .map(|p| p.identity.as_str())
        .collect();
    assert_eq!(identities, ["alice", "bob"]);

    // Remove bob: he is told and closed, alice hears him leave.
    let gone = http
        .delete(format!("{base}/admin/rooms/{room}/participants/bob"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("delete");
    assert_eq!(gone.status().as_u16(), 200);
    expect_removed(&mut bob, chorus_signal::admin::REMOVED_REASON).await;
    loop {
        match common::ws_next(&mut alice).await {
            Ok(ServerMessage::ParticipantLeft { .. }) => break,
            Ok(_) => {}
            Err(c) => panic!("alice closed: {c:?}"),
        }
    }
    let missing = http
        .delete(format!("{base}/admin/rooms/{room}/participants/bob"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("delete");
    assert_eq!(missing.status().as_u16(), 404);

    // Close the room: alice is removed, the other room stays.
    let closed: chorus_signal::admin::RemovedResponse = http
        .delete(format!("{base}/admin/rooms/{room}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("close")
        .json()
        .await
        .expect("JSON");
    assert_eq!(closed.removed, 1);
    expect_removed(&mut alice, chorus_signal::admin::CLOSED_REASON).await;
    let listing = rooms(&base).await;
    let names: Vec<&str> = listing.rooms.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["other-room"]);
    common::ws_send(&mut carol, r#"{"type":"ping","timestamp":2}"#).await;
    assert_eq!(
        common::ws_next(&mut carol).await,
        Ok(ServerMessage::Pong { timestamp: 2 })
    );
    let unknown = http
        .delete(format!("{base}/admin/rooms/no-such-room"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("close");
    assert_eq!(unknown.status().as_u16(), 404);
}

async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("chorus runs")
}

#[tokio::test]
async fn the_cli_lists_rooms_and_removes_participants() {
    let server = common::production_server_with(|c| c.admin.key = Some(ADMIN_KEY.into())).await;
    let base = server.base_url();
    let room = common::room();
    let _alice = joined(&base, &room, "alice").await;
    let mut bob = joined(&base, &room, "bob").await;
    let with = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--url".into(),
            base.clone(),
            "--admin-key".into(),
            ADMIN_KEY.into(),
        ]);
        v
    };
    let out = tokio::time::timeout(Duration::from_secs(20), cli(with(&["room", "list"])))
        .await
        .expect("in time");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ROOM\tPARTICIPANT\tIDENTITY"), "{table}");
    for identity in ["alice", "bob"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("{room}\t"))
                    && l.contains(&format!("\t{identity}\t"))),
            "{identity} not listed:\n{table}"
        );
    }
    let out = cli(with(&["participant", "remove", &room, "bob"])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_removed(&mut bob, chorus_signal::admin::REMOVED_REASON).await;
    let out = cli(with(&["room", "close", &room])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 participants removed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stats = server.state.sfu.stats().await.expect("stats");
    assert_eq!((stats.rooms, stats.participants), (0, 0));
    // A wrong key fails with the server's answer, and a non-zero exit.
    let out = cli(vec![
        "room".into(),
        "list".into(),
        "--url".into(),
        base.clone(),
        "--admin-key".into(),
        "nope".into(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_admin_api_is_off_without_a_key() {
    let server = common::production_server_with(|_| {}).await;
    let resp = reqwest::Client::new()
        .get(format!("{}/admin/rooms", server.base_url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 404);
}
