//! The `chorus` binary: token minting and config errors.

use std::process::Command;

use chorus_server::config::{DEV_API_KEY, DEV_API_SECRET};
use chorus_signal::auth::KeyRing;

fn chorus(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(args)
        .output()
        .expect("chorus runs")
}

#[test]
fn token_prints_a_jwt_with_the_requested_grants() {
    let out = chorus(&[
        "token",
        "--dev",
        "--room",
        "demo",
        "--identity",
        "alice",
        "--name",
        "Alice",
        "--publish",
        "--ttl",
        "10m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    let ring = KeyRing::new([(DEV_API_KEY.to_owned(), DEV_API_SECRET.to_owned())]);
    let claims = ring.verify(token.trim()).expect("valid token");
    assert_eq!(
        (claims.sub.as_str(), claims.name.as_str()),
        ("alice", "Alice")
    );
    assert_eq!(claims.grants.room, "demo");
    assert!(
        claims.grants.can_publish
            && !claims.grants.can_subscribe
            && !claims.grants.can_publish_data
    );
    let ttl = claims.exp - chorus_signal::auth::unix_now();
    assert!((590..=600).contains(&ttl), "ttl {ttl}");
}

#[test]
fn token_without_a_key_or_grant_is_refused() {
    let no_key = chorus(&["token", "--room", "r", "--identity", "a", "--publish"]);
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("--dev"));
    let no_grant = chorus(&["token", "--dev", "--room", "r", "--identity", "a"]);
    assert!(!no_grant.status.success());
    assert!(String::from_utf8_lossy(&no_grant.stderr).contains("--publish"));
}

#[test]
fn serve_rejects_a_config_with_an_unknown_key_naming_it() {
    let dir = std::env::temp_dir().join(format!("chorus-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[media]\nudp_prot = 9000\n").expect("write");
    let out = chorus(&["serve", "--config", path.to_str().expect("utf8 path")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("udp_prot") && stderr.contains("bad.toml"),
        "{stderr}"
    );
}
