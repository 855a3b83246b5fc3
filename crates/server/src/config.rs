//! The server's configuration: embedded defaults, then a TOML file, then `CHORUS_*`
//! environment variables and flags (applied by `main`). Unknown keys are an error. Also the
//! rules that keep a server safe by default: when dev mode is on, which secrets are refused.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

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

/// Secrets that must never guard a real server: the dev secret and the placeholders of
/// `deploy/chorus.sample.toml`. Refused outside dev mode.
pub const KNOWN_SECRETS: &[&str] = &[
    DEV_API_SECRET,
    "REPLACE-ME-with-the-output-of-openssl-rand-hex-32",
    "REPLACE-ME-with-coturn-static-auth-secret-32-bytes-or-more",
    "REPLACE-ME-with-another-openssl-rand-hex-32-output",
    "REPLACE-ME-with-a-third-openssl-rand-hex-32-output",
];

/// The least length of an API, TURN, admin or metrics secret outside dev mode, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where `/metrics` listens outside dev mode when neither `metrics.bind` nor `metrics.token`
/// is set.
pub const DEFAULT_METRICS_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7881);

/// The whole configuration file.
///
/// [`Config::default`] is what runs with no file at all: everything on loopback (HTTP
/// 127.0.0.1:7880, media 127.0.0.1:7882), no keys, hence dev mode. A file's missing tables and
/// keys take the documented defaults of `deploy/chorus.sample.toml` instead (media on 0.0.0.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP server settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// API keys and token rules.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The media plane.
    #[serde(default)]
    pub media: MediaConfig,
    /// Signaling.
    #[serde(default)]
    pub signal: SignalConfig,
    /// Where and how `/metrics` is served.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The file this was read from; `None`: no config file was given. Not a key.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        let media = MediaConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ..MediaConfig::default()
        };
        Self {
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            media,
            signal: SignalConfig::default(),
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
            file: None,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address for HTTP (page, WebSocket, WHIP/WHEP, health).
    pub http_bind: SocketAddr,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Dev mode: the built-in dev key is accepted and `/dev/token` mints tokens for anyone.
    /// Also on, without asking, when no config file is given and every bind is loopback.
    pub dev: bool,
    /// Let dev mode run on a non-loopback address (otherwise refused at startup).
    pub dev_allow_public: bool,
    /// Seconds to wait for participants to leave after SIGTERM before closing.
    pub drain_secs: u64,
    /// Seconds a client has to send a request's headers.
    pub header_read_timeout_secs: u64,
    /// Origins (`https://app.example.com`) whose scripts may call WHIP/WHEP (CORS), outside
    /// dev mode (dev mode allows any).
    pub cors_origins: Vec<String>,
    /// A URL (absolute, or a path on this server) the call page asks for a token when it has
    /// none in its address: `GET <url>?room=R&identity=I&name=N`, with the user's cookies,
    /// answering `{"token": "..."}`.
    pub token_endpoint: Option<String>,
    /// PEM certificate chain: with `tls_key`, the HTTP port speaks HTTPS (and `wss://`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_bind: SocketAddr::from(([127, 0, 0, 1], 7880)),
            log_format: LogFormat::Text,
            dev: false,
            dev_allow_public: false,
            drain_secs: 5,
            header_read_timeout_secs: 10,
            cors_origins: Vec::new(),
            token_endpoint: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API key -> secret.
    pub keys: BTreeMap<String, String>,
    /// Tokens whose `exp` lies further ahead than this many seconds are refused.
    pub max_token_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys: BTreeMap::new(),
            max_token_ttl_secs: 86_400,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A separate listener serving only `/metrics`, without a token. Outside dev mode and
    /// without `token` it defaults to 127.0.0.1:7881.
    pub bind: Option<SocketAddr>,
    /// When set, `/metrics` is also served on the HTTP port, to `Authorization: Bearer
    /// <token>` only.
    pub token: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin API's bearer key; the API is off (404) when unset.
    pub key: Option<String>,
}

/// Refuses a secret that is short or publicly known.
fn check_secret(name: &str, secret: &str) -> anyhow::Result<()> {
    if secret.len() < MIN_SECRET_BYTES {
        bail!(
            "{name}: secret must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
        );
    }
    if KNOWN_SECRETS.contains(&secret) {
        bail!(
            "{name}: this is the sample config's or the dev secret, which everyone knows; \
             replace it (e.g. with `openssl rand -hex 32`)"
        );
    }
    Ok(())
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        config.file = Some(path.to_owned());
        Ok(config)
    }

    /// The first bind address that is not loopback (HTTP, media, metrics), if any.
    pub fn public_bind(&self) -> Option<String> {
        if !self.server.http_bind.ip().is_loopback() {
            return Some(format!("server.http_bind {}", self.server.http_bind));
        }
        if !self.media.bind_ip.is_loopback() {
            return Some(format!("media.bind_ip {}", self.media.bind_ip));
        }
        match self.metrics.bind {
            Some(b) if !b.ip().is_loopback() => Some(format!("metrics.bind {b}")),
            _ => None,
        }
    }

    /// Whether the dev key and `/dev/token` are on: when asked for (`server.dev`, `--dev`), or
    /// when no config file was given, no keys are set and every bind is loopback.
    pub fn dev_mode(&self) -> bool {
        self.server.dev
            || (self.file.is_none() && self.auth.keys.is_empty() && self.public_bind().is_none())
    }

    /// Where the separate `/metrics` listener binds, if there is one.
    pub fn metrics_bind(&self) -> Option<SocketAddr> {
        match self.metrics.bind {
            Some(b) => Some(b),
            None if !self.dev_mode() && self.metrics.token.is_none() => Some(DEFAULT_METRICS_BIND),
            None => None,
        }
    }

    /// Whether `/metrics` is on the HTTP port (dev mode, or behind `metrics.token`).
    pub fn metrics_on_http(&self) -> bool {
        self.dev_mode() || self.metrics.token.is_some()
    }

    /// The token endpoint the call page uses: the configured one, else `/dev/token` in dev
    /// mode.
    pub fn token_endpoint(&self) -> Option<String> {
        match &self.server.token_endpoint {
            Some(url) => Some(url.clone()),
            None if self.dev_mode() => Some("/dev/token".to_owned()),
            None => None,
        }
    }

    /// Checks what serde cannot, and refuses unsafe combinations: dev mode beside keys, dev
    /// mode on a public address unless forced, production without keys, short or well-known
    /// secrets.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.media.validate().map_err(anyhow::Error::msg)?;
        self.signal.validate().map_err(anyhow::Error::msg)?;
        if self.server.header_read_timeout_secs == 0 {
            bail!("server.header_read_timeout_secs must be > 0");
        }
        if self.auth.max_token_ttl_secs == 0 {
            bail!("auth.max_token_ttl_secs must be > 0");
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            bail!("server.tls_cert and server.tls_key go together: set both or neither");
        }
        for origin in &self.server.cors_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin
                    .split("://")
                    .nth(1)
                    .is_some_and(|h| !h.is_empty() && !h.contains(['/', ' ', ',', '*', '"', '\'']));
            if !ok {
                bail!(
                    "server.cors_origins: {origin:?} is not an origin like https://app.example.com \
                     (scheme and host, optional port, no path, no wildcard)"
                );
            }
        }
        if let Some(url) = &self.server.token_endpoint {
            let ok = (url.starts_with('/') && !url.starts_with("//"))
                || url.starts_with("https://")
                || url.starts_with("http://");
            if !ok || url.contains([' ', '"', '\'', '<', '>']) {
                bail!(
                    "server.token_endpoint: {url:?} must be an http(s) URL or a path starting with /"
                );
            }
        }
        if self.dev_mode() {
            if !self.auth.keys.is_empty() {
                bail!(
                    "dev mode (server.dev or --dev) cannot be combined with [auth] keys: the dev \
                     key is never accepted beside configured keys. Drop dev mode for a real \
                     server, or the keys for a dev server"
                );
            }
            if let Some(bind) = self.public_bind() {
                if !self.server.dev_allow_public {
                    bail!(
                        "refusing dev mode on a non-loopback address ({bind}): anyone who reaches \
                         it can mint tokens with /dev/token. Configure [auth] keys (see \
                         deploy/chorus.sample.toml), bind to 127.0.0.1, or force a public dev \
                         server with --dev-allow-public (server.dev_allow_public = true)"
                    );
                }
            }
            return Ok(());
        }
        if self.auth.keys.is_empty() {
            match &self.file {
                Some(path) => bail!(
                    "{}: no [auth] keys configured; a server needs at least one API key \
                     (see deploy/chorus.sample.toml), or --dev for a dev server",
                    path.display()
                ),
                None => bail!(
                    "no [auth] keys: without a config file Chorus runs in dev mode only when every \
                     bind is loopback (HTTP {}, media {}). Give --config with [auth] keys, or \
                     --dev --dev-allow-public for a public dev server",
                    self.server.http_bind,
                    self.media.bind_ip
                ),
            }
        }
        for (key, secret) in &self.auth.keys {
            check_secret(&format!("auth.keys.{key}"), secret)?;
        }
        for (i, server) in self.signal.ice_servers.iter().enumerate() {
            if let Some(secret) = &server.secret {
                check_secret(&format!("signal.ice_servers[{i}].secret"), secret)?;
            }
        }
        if let Some(key) = &self.admin.key {
            check_secret("admin.key", key)?;
        }
        if let Some(token) = &self.metrics.token {
            check_secret("metrics.token", token)?;
        }
        Ok(())
    }

    /// The keys the server accepts: the configured ones, or only the dev key in dev mode.
    pub fn key_ring(&self) -> chorus_signal::auth::KeyRing {
        let mut keys: Vec<(String, String)> = self
            .auth
            .keys
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        if self.dev_mode() && keys.is_empty() {
            keys.push((DEV_API_KEY.to_owned(), DEV_API_SECRET.to_owned()));
        }
        chorus_signal::auth::KeyRing::new(keys)
            .with_max_ttl(std::time::Duration::from_secs(self.auth.max_token_ttl_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minute's claims for identity `a` in room `r`; `all` grants everything, else publish.
    fn claims(all: bool) -> chorus_signal::auth::Claims {
        chorus_signal::auth::claims(
            "a",
            "r",
            std::time::Duration::from_secs(60),
            chorus_signal::auth::Grants {
                room: "r".into(),
                can_publish: true,
                can_subscribe: all,
                can_publish_data: all,
            },
        )
    }

    const SAMPLE: &str = include_str!("../../../deploy/chorus.sample.toml");

    /// The sample with its placeholder secrets replaced by real-looking ones.
    fn sample_with_real_secrets() -> String {
        let mut text = SAMPLE.to_owned();
        for (i, placeholder) in KNOWN_SECRETS.iter().enumerate() {
            text = text.replace(placeholder, &format!("{i}-{}", "q7Zr".repeat(10)));
        }
        text
    }

    #[test]
    fn the_sample_config_parses_and_only_its_placeholder_secrets_are_refused() {
        let c: Config = toml::from_str(SAMPLE).expect("sample config parses");
        assert!(
            !c.dev_mode(),
            "a config file never means dev mode by itself"
        );
        // Parsed without a file path: mark it as a file, as `from_file` does.
        let c = Config {
            file: Some("chorus.sample.toml".into()),
            ..c
        };
        let err = c.validate().expect_err("placeholder secrets are refused");
        assert!(err.to_string().contains("sample config"), "{err}");
        let real: Config = toml::from_str(&sample_with_real_secrets()).expect("parses");
        let real = Config {
            file: Some("chorus.sample.toml".into()),
            ..real
        };
        real.validate()
            .expect("the sample with real secrets is valid");
        assert!(!real.dev_mode());
        // Every placeholder of the sample is a known secret (the list cannot drift).
        for line in SAMPLE.lines().filter(|l| l.contains("\"REPLACE-ME")) {
            let value = line.split('"').rev().nth(1).expect("quoted value");
            assert!(
                KNOWN_SECRETS.contains(&value),
                "{value} not in KNOWN_SECRETS"
            );
        }
    }

    #[test]
    fn unknown_keys_are_errors_at_every_level() {
        for bad in [
            "nope = 1",
            "[server]\nhttp_bnd = \"127.0.0.1:1\"",
            "[media]\nudp_prot = 1",
            "[signal]\nice = []",
            "[auth]\nkeys = { a = 1 }",
            "[metrics]\nbnd = \"127.0.0.1:1\"",
            "[admin]\nkeyy = \"x\"",
        ] {
            assert!(
                toml::from_str::<Config>(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn no_config_and_loopback_binds_mean_dev_mode_with_only_the_dev_key() {
        let c = Config::default();
        assert!(c.dev_mode());
        c.validate()
            .expect("the embedded defaults are a valid dev server");
        let ring = c.key_ring();
        let t = ring
            .mint(DEV_API_KEY, &claims(true))
            .expect("dev key mints");
        assert!(ring.verify(&t).is_ok());
        assert_eq!(c.token_endpoint().as_deref(), Some("/dev/token"));
        assert!(c.metrics_on_http());
        assert_eq!(c.metrics_bind(), None);
    }

    #[test]
    fn a_public_bind_without_config_is_not_dev_mode_and_needs_keys() {
        let mut c = Config::default();
        c.server.http_bind = "0.0.0.0:7880".parse().expect("addr");
        assert!(!c.dev_mode());
        let err = c.validate().expect_err("no keys").to_string();
        assert!(err.contains("--dev-allow-public"), "{err}");
    }

    #[test]
    fn dev_mode_on_a_public_bind_is_refused_unless_forced() {
        let mut c = Config::default();
        c.server.dev = true;
        c.media.bind_ip = "0.0.0.0".parse().expect("ip");
        let err = c.validate().expect_err("public dev").to_string();
        assert!(err.contains("media.bind_ip 0.0.0.0"), "{err}");
        c.server.dev_allow_public = true;
        c.validate().expect("forced");
        assert!(c.dev_mode());
    }

    #[test]
    fn the_dev_key_is_never_accepted_beside_configured_keys() {
        let mut c = Config::default();
        c.auth
            .keys
            .insert("prod".into(), "p".repeat(MIN_SECRET_BYTES));
        assert!(!c.dev_mode(), "keys switch the implicit dev mode off");
        c.validate().expect("valid");
        let ring = c.key_ring();
        let claims = claims(false);
        let dev_token =
            chorus_signal::auth::mint(DEV_API_KEY, DEV_API_SECRET, &claims).expect("mints");
        assert!(ring.verify(&dev_token).is_err());
        c.server.dev = true;
        let err = c.validate().expect_err("dev beside keys").to_string();
        assert!(err.contains("never accepted beside"), "{err}");
    }

    #[test]
    fn short_and_known_secrets_are_refused_outside_dev_mode() {
        let base = || {
            let mut c = Config {
                file: Some("x.toml".into()),
                ..Config::default()
            };
            c.auth
                .keys
                .insert("prod".into(), "s".repeat(MIN_SECRET_BYTES));
            c
        };
        base().validate().expect("valid");
        let mut short = base();
        short
            .auth
            .keys
            .insert("prod".into(), "s".repeat(MIN_SECRET_BYTES - 1));
        assert!(short.validate().is_err());
        let mut dev_secret = base();
        dev_secret
            .auth
            .keys
            .insert("prod".into(), DEV_API_SECRET.into());
        let err = dev_secret.validate().expect_err("dev secret").to_string();
        assert!(err.contains("auth.keys.prod"), "{err}");
        let mut turn = base();
        turn.signal.ice_servers = vec![chorus_signal::ice::IceServerConfig {
            urls: vec!["turn:t.example:3478".into()],
            username: None,
            credential: None,
            secret: Some("shared-turn-secret".into()),
            ttl_secs: 600,
        }];
        let err = turn.validate().expect_err("short TURN secret").to_string();
        assert!(err.contains("ice_servers[0]"), "{err}");
        let mut admin = base();
        admin.admin.key = Some("short".into());
        assert!(admin.validate().is_err());
        let mut metrics = base();
        metrics.metrics.token = Some(KNOWN_SECRETS[1].into());
        assert!(metrics.validate().is_err());
        // An empty [auth] in a file is not dev mode: it is an error.
        let mut empty = base();
        empty.auth.keys.clear();
        assert!(!empty.dev_mode());
        assert!(empty.validate().is_err());
    }

    #[test]
    fn metrics_default_to_loopback_outside_dev_mode() {
        let mut c = Config {
            file: Some("x.toml".into()),
            ..Config::default()
        };
        c.auth.keys.insert("k".into(), "s".repeat(MIN_SECRET_BYTES));
        assert_eq!(c.metrics_bind(), Some(DEFAULT_METRICS_BIND));
        assert!(!c.metrics_on_http());
        c.metrics.token = Some("t".repeat(MIN_SECRET_BYTES));
        assert_eq!(c.metrics_bind(), None);
        assert!(c.metrics_on_http());
    }

    #[test]
    fn cors_origins_and_token_endpoints_are_checked() {
        let mut c = Config::default();
        c.server.cors_origins = vec!["https://app.example.com".into()];
        c.validate().expect("valid origin");
        for bad in [
            "*",
            "https://app.example.com/",
            "app.example.com",
            "https://*.x",
        ] {
            c.server.cors_origins = vec![bad.into()];
            assert!(c.validate().is_err(), "{bad}");
        }
        c.server.cors_origins.clear();
        for good in ["/token", "https://app.example.com/chorus-token"] {
            c.server.token_endpoint = Some(good.into());
            c.validate().expect(good);
        }
        for bad in ["javascript:alert(1)", "//evil.example/x", "/t\"><script>"] {
            c.server.token_endpoint = Some(bad.into());
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}
