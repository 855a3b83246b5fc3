//! The server's configuration: embedded defaults, then a TOML file, then `CHORUS_*`
//! environment variables and flags (applied by `main`). Unknown keys are an error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context};
use chorus_sfu::MediaConfig;
use chorus_signal::SignalConfig;
use serde::{Deserialize, Serialize};

/// The dev API key used when no keys are configured.
pub const DEV_API_KEY: &str = "devkey";
/// The dev API secret used when no keys are configured.
pub const DEV_API_SECRET: &str = "chorus-dev-secret-do-not-use-in-production";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// API keys.
    pub auth: AuthConfig,
    /// The media plane.
    pub media: MediaConfig,
    /// Signaling.
    pub signal: SignalConfig,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address for HTTP (page, WebSocket, WHIP/WHEP, metrics, health).
    pub http_bind: SocketAddr,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Dev mode: the dev key is accepted and `/dev/token` is on. Implied when no keys are set.
    pub dev: bool,
    /// Seconds to wait for participants to leave after SIGTERM before closing.
    pub drain_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_bind: SocketAddr::from(([127, 0, 0, 1], 7880)),
            log_format: LogFormat::Text,
            dev: false,
            drain_secs: 5,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API key -> secret.
    pub keys: BTreeMap<String, String>,
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(config)
    }

    /// Whether the dev key and `/dev/token` are on.
    pub fn dev_mode(&self) -> bool {
        self.server.dev || self.auth.keys.is_empty()
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.media.validate().map_err(anyhow::Error::msg)?;
        for (key, secret) in &self.auth.keys {
            if secret.len() < 16 {
                bail!("auth.keys.{key}: secret must be at least 16 characters");
            }
        }
        Ok(())
    }

    /// The keys the server accepts: the configured ones, plus the dev key in dev mode.
    pub fn key_ring(&self) -> chorus_signal::auth::KeyRing {
        let mut keys: Vec<(String, String)> = self
            .auth
            .keys
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        if self.dev_mode() {
            keys.push((DEV_API_KEY.to_owned(), DEV_API_SECRET.to_owned()));
        }
        chorus_signal::auth::KeyRing::new(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_parses_and_validates() {
        let text = include_str!("../../../deploy/chorus.sample.toml");
        let c: Config = toml::from_str(text).expect("sample config parses");
        c.validate().expect("sample config is valid");
        assert!(!c.dev_mode());
    }

    #[test]
    fn unknown_keys_are_errors_at_every_level() {
        for bad in [
            "nope = 1",
            "[server]\nhttp_bnd = \"127.0.0.1:1\"",
            "[media]\nudp_prot = 1",
            "[signal]\nice = []",
            "[auth]\nkeys = { a = 1 }",
        ] {
            assert!(
                toml::from_str::<Config>(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn no_keys_means_dev_mode_with_the_dev_key() {
        let c = Config::default();
        assert!(c.dev_mode());
        let ring = c.key_ring();
        let claims = chorus_signal::auth::claims(
            "a",
            "r",
            std::time::Duration::from_secs(60),
            chorus_signal::auth::Grants {
                room: "r".into(),
                can_publish: true,
                can_subscribe: true,
                can_publish_data: true,
            },
        );
        let t = ring.mint(DEV_API_KEY, &claims).expect("dev key mints");
        assert!(ring.verify(&t).is_ok());
    }
}
