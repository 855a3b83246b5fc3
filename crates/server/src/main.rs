//! `chorus`: run the SFU (`chorus serve`), mint an access token (`chorus token`), or operate a
//! running server through its admin API (`chorus room list|close`, `chorus participant
//! remove`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use chorus_server::config::{Config, LogFormat, DEV_API_KEY, DEV_API_SECRET};
use chorus_signal::auth::{claims, mint, Grants};
use clap::{Args, Parser, Subcommand};

/// The media path allocates per packet inside the WebRTC stack (queues, headers, marshalled
/// buffers) from many threads; glibc's allocator spent ~18 % of the server's CPU under the
/// audio-200 load test. mimalloc's thread-local free lists are much cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "chorus",
    version,
    about = "Chorus: a WebRTC selective forwarding unit"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default). With no config it runs in dev mode on 127.0.0.1.
    Serve(ServeArgs),
    /// Print an access token signed with a configured key (or the dev key with --dev).
    Token(TokenArgs),
    /// Rooms of a running server (admin API).
    Room {
        #[command(subcommand)]
        command: RoomCommand,
    },
    /// Participants of a running server (admin API).
    Participant {
        #[command(subcommand)]
        command: ParticipantCommand,
    },
}

#[derive(Subcommand)]
enum RoomCommand {
    /// List rooms and their participants.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove everyone from a room, which closes it.
    Close {
        /// The room.
        room: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum ParticipantCommand {
    /// Remove a participant (by identity) from a room.
    Remove {
        /// The room.
        room: String,
        /// The participant's identity.
        identity: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach a server's admin API.
#[derive(Args)]
struct AdminArgs {
    /// The server's base URL (default: from --config's http_bind, else
    /// http://127.0.0.1:7880).
    #[arg(long, env = "CHORUS_URL")]
    url: Option<String>,
    /// The admin key (default: --config's admin.key).
    #[arg(long, env = "CHORUS_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// The server's config file, for its address and admin key.
    #[arg(long, env = "CHORUS_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args, Default)]
struct ServeArgs {
    /// TOML config file (see deploy/chorus.sample.toml).
    #[arg(long, env = "CHORUS_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP bind address (page, WebSocket, WHIP/WHEP, metrics).
    #[arg(long, env = "CHORUS_HTTP_BIND")]
    http_bind: Option<SocketAddr>,
    /// Media UDP port shared by every peer.
    #[arg(long, env = "CHORUS_UDP_PORT")]
    udp_port: Option<u16>,
    /// Media bind IP.
    #[arg(long, env = "CHORUS_MEDIA_BIND_IP")]
    media_bind_ip: Option<IpAddr>,
    /// External (1:1 NAT) addresses to advertise in ICE candidates, comma separated.
    #[arg(long, env = "CHORUS_EXTERNAL_IPS", value_delimiter = ',')]
    external_ips: Option<Vec<IpAddr>>,
    /// Log format.
    #[arg(long, env = "CHORUS_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Dev mode: accept the dev key and serve /dev/token (refused beside [auth] keys).
    #[arg(long, env = "CHORUS_DEV")]
    dev: bool,
    /// Allow dev mode on a non-loopback address: anyone who reaches it can mint tokens.
    #[arg(long, env = "CHORUS_DEV_ALLOW_PUBLIC")]
    dev_allow_public: bool,
    /// Address of the separate /metrics listener.
    #[arg(long, env = "CHORUS_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
    /// The admin API's key (overrides admin.key).
    #[arg(long, env = "CHORUS_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// PEM certificate chain for HTTPS on the HTTP port (with --tls-key).
    #[arg(long, env = "CHORUS_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "CHORUS_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    /// Room the token grants.
    #[arg(long)]
    room: String,
    /// Participant identity.
    #[arg(long)]
    identity: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Grant publishing.
    #[arg(long)]
    publish: bool,
    /// Grant subscribing.
    #[arg(long)]
    subscribe: bool,
    /// Grant data messages.
    #[arg(long)]
    data: bool,
    /// Lifetime, e.g. 1h, 30m.
    #[arg(long, default_value = "1h")]
    ttl: humantime::Duration,
    /// Sign with the dev key.
    #[arg(long)]
    dev: bool,
    /// Config file holding the API key to sign with.
    #[arg(long, env = "CHORUS_CONFIG")]
    config: Option<PathBuf>,
    /// Which configured API key to sign with (default: the only one).
    #[arg(long)]
    key: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::Room { command } => admin(match command {
            RoomCommand::List { admin, json } => (admin, AdminCall::List { json }),
            RoomCommand::Close { room, admin } => (admin, AdminCall::Close { room }),
        }),
        Command::Participant { command } => admin(match command {
            ParticipantCommand::Remove {
                room,
                identity,
                admin,
            } => (admin, AdminCall::Remove { room, identity }),
        }),
    }
}

/// One admin API request.
enum AdminCall {
    List { json: bool },
    Close { room: String },
    Remove { room: String, identity: String },
}

/// The base URL and key to reach the admin API with.
fn admin_target(args: &AdminArgs) -> anyhow::Result<(String, String)> {
    let config = match &args.config {
        Some(path) => Some(Config::from_file(path)?),
        None => None,
    };
    let url = match (&args.url, &config) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(c)) => {
            let mut bind = c.server.http_bind;
            if bind.ip().is_unspecified() {
                bind.set_ip(IpAddr::from([127, 0, 0, 1]));
            }
            format!("http://{bind}")
        }
        (None, None) => "http://127.0.0.1:7880".to_owned(),
    };
    let key = match (&args.admin_key, config.and_then(|c| c.admin.key)) {
        (Some(k), _) => k.clone(),
        (None, Some(k)) => k,
        (None, None) => bail!("give --admin-key (or CHORUS_ADMIN_KEY), or --config with admin.key"),
    };
    Ok((url, key))
}

fn admin((args, call): (AdminArgs, AdminCall)) -> anyhow::Result<()> {
    let (base, key) = admin_target(&args)?;
    let mut url = reqwest::Url::parse(&base).with_context(|| format!("invalid --url {base:?}"))?;
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--url {base:?} cannot have a path"))?;
        path.pop_if_empty().extend(["admin", "rooms"]);
        match &call {
            AdminCall::List { .. } => {}
            AdminCall::Close { room } => {
                path.push(room);
            }
            AdminCall::Remove { room, identity } => {
                path.extend([room.as_str(), "participants", identity.as_str()]);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (status, body) = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let request = match call {
            AdminCall::List { .. } => client.get(url.clone()),
            _ => client.delete(url.clone()),
        };
        let response = request.bearer_auth(&key).send().await?;
        let status = response.status();
        anyhow::Ok((status, response.text().await?))
    })?;
    if !status.is_success() {
        bail!("{url}: {status}: {}", body.trim());
    }
    match call {
        AdminCall::List { json: true } => println!("{body}"),
        AdminCall::List { json: false } => {
            let rooms: chorus_signal::admin::RoomsResponse =
                serde_json::from_str(&body).context("unexpected answer from the admin API")?;
            println!("ROOM\tPARTICIPANT\tIDENTITY\tNAME\tTRACKS");
            for room in rooms.rooms {
                for p in room.participants {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        room.name, p.id, p.identity, p.name, p.tracks
                    );
                }
            }
        }
        AdminCall::Close { room } => {
            let r: chorus_signal::admin::RemovedResponse =
                serde_json::from_str(&body).context("unexpected answer from the admin API")?;
            println!("closed room {room}: {} participants removed", r.removed);
        }
        AdminCall::Remove { room, identity } => {
            println!("removed {identity} from room {room}");
        }
    }
    Ok(())
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.http_bind {
        config.server.http_bind = v;
    }
    if let Some(v) = args.udp_port {
        config.media.udp_port = v;
    }
    if let Some(v) = args.media_bind_ip {
        config.media.bind_ip = v;
    }
    if let Some(v) = &args.external_ips {
        config.media.external_ips = v.clone();
    }
    if let Some(v) = args.log_format {
        config.server.log_format = v;
    }
    if let Some(v) = args.metrics_bind {
        config.metrics.bind = Some(v);
    }
    if let Some(v) = &args.admin_key {
        config.admin.key = Some(v.clone());
    }
    if let Some(v) = &args.tls_cert {
        config.server.tls_cert = Some(v.clone());
    }
    if let Some(v) = &args.tls_key {
        config.server.tls_key = Some(v.clone());
    }
    config.server.dev |= args.dev;
    config.server.dev_allow_public |= args.dev_allow_public;
    config.validate()?;
    Ok(config)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,rtc=warn,rtc_ice=warn,rtc_dtls=error")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    init_tracing(config.server.log_format);
    if config.dev_mode() {
        tracing::warn!(
            api_key = DEV_API_KEY,
            api_secret = DEV_API_SECRET,
            "DEV MODE: the dev API key is accepted and /dev/token mints tokens for anyone; \
             configure [auth] keys for production"
        );
        if let Some(bind) = config.public_bind() {
            tracing::warn!(
                %bind,
                "DEV MODE ON A PUBLIC ADDRESS (--dev-allow-public): anyone who reaches it can join"
            );
        }
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let drain = Duration::from_secs(config.server.drain_secs);
        let server = chorus_server::start(config).await?;
        match server.metrics_addr {
            Some(m) => println!(
                "chorus listening: {} (media udp {}, metrics http://{m}/metrics)",
                server.base_url(),
                server.media_addr
            ),
            None => println!(
                "chorus listening: {} (media udp {})",
                server.base_url(),
                server.media_addr
            ),
        }
        let sfu = server.state.sfu.clone();
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = sfu.failed() => {
                // /readyz already fails (the dead engine does not answer); stop serving.
                tracing::error!("a media engine died: exiting");
                server.shutdown(Duration::ZERO).await;
                anyhow::bail!("a media engine died");
            }
        }
        tracing::info!("shutting down: refusing new joins, draining");
        server.shutdown(drain).await;
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let (key, secret) = if args.dev {
        (DEV_API_KEY.to_owned(), DEV_API_SECRET.to_owned())
    } else {
        let Some(path) = &args.config else {
            bail!("give --config with [auth] keys, or --dev to sign with the dev key");
        };
        let config = Config::from_file(path)?;
        match &args.key {
            Some(k) => {
                let s = config
                    .auth
                    .keys
                    .get(k)
                    .with_context(|| format!("no key {k:?} in config"))?;
                (k.clone(), s.clone())
            }
            None => match config.auth.keys.iter().next() {
                Some((k, s)) if config.auth.keys.len() == 1 => (k.clone(), s.clone()),
                Some(_) => bail!("several keys configured: choose one with --key"),
                None => bail!("no [auth] keys in config; use --dev for the dev key"),
            },
        }
    };
    if !(args.publish || args.subscribe || args.data) {
        bail!("grant at least one of --publish, --subscribe, --data");
    }
    let grants = Grants {
        room: args.room.clone(),
        can_publish: args.publish,
        can_subscribe: args.subscribe,
        can_publish_data: args.data,
    };
    let mut c = claims(&args.identity, &args.room, args.ttl.into(), grants);
    c.name = args.name.unwrap_or_default();
    println!("{}", mint(&key, &secret, &c)?);
    Ok(())
}
