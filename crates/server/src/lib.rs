//! # chorus-server: the composition root
//!
//! Builds the metrics registry, starts the media engine ([`chorus_sfu::Sfu`]), wraps both in the
//! signaling state and serves the HTTP router ([`serve`]), and `/metrics` on its own address
//! when configured. [`start`] takes a [`Config`] and returns a [`RunningServer`]; tests use it
//! with port 0 to run many servers side by side.

pub mod config;
#[cfg(target_os = "linux")]
pub mod process;
pub mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chorus_sfu::{Metrics, Sfu};
use chorus_signal::limits::{ConnectionLimiter, RefusalLog};
use chorus_signal::metrics::SignalMetrics;
use chorus_signal::{AppState, HttpOptions, SharedState};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;

/// A server started by [`start`].
pub struct RunningServer {
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Where the media socket listens.
    pub media_addr: SocketAddr,
    /// Where the separate `/metrics` listener is, if there is one (`metrics.bind`).
    pub metrics_addr: Option<SocketAddr>,
    /// Whether the HTTP port speaks TLS.
    pub tls: bool,
    /// Shared state (for tests and the drain logic).
    pub state: SharedState,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting joins, then closes the HTTP server.
    pub async fn shutdown(self, drain: Duration) {
        self.state.ready.store(false, Ordering::Relaxed);
        // Sessions kept for a resume end now: nobody resumes into a draining server.
        self.state.resumable.end_all();
        let deadline = tokio::time::Instant::now() + drain;
        while tokio::time::Instant::now() < deadline {
            match self.state.sfu.stats().await {
                Ok(s) if s.participants > 0 => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => break,
            }
        }
        let _ = self.shutdown.send(true);
        // Open WebSockets keep a graceful shutdown waiting: give them a moment, then stop.
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// Base URL of the HTTP server, e.g. `http://127.0.0.1:7880` (`https://` with TLS).
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr)
    }
}

/// Starts the media engine and the HTTP server.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    // Certificate problems are startup errors, found before anything is bound.
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(serve::tls_acceptor(cert, key)?),
        _ => None,
    };
    let registry = prometheus::Registry::new();
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .context("registering process metrics")?;
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(process::CpuSecondsCollector::new()?))
        .context("registering CPU seconds")?;
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(process::EngineCpuCollector::new()?))
        .context("registering engine CPU seconds")?;
    let media_metrics = Metrics::new(&registry).context("registering media metrics")?;
    let signal_metrics = SignalMetrics::new(&registry).context("registering signal metrics")?;
    let sfu = Sfu::start(config.media.clone(), media_metrics.clone()).await?;
    let media_addr = sfu.media_addr();
    let listener = tokio::net::TcpListener::bind(config.server.http_bind)
        .await
        .with_context(|| format!("cannot bind HTTP on {}", config.server.http_bind))?;
    let http_addr = listener.local_addr()?;
    let metrics_listener = match config.metrics_bind() {
        Some(bind) => Some(
            tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("cannot bind metrics on {bind}"))?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let dev = config.dev_mode();
    let state = Arc::new(AppState {
        sfu,
        keys: config.key_ring(),
        config: config.signal.clone(),
        dev_key: dev.then(|| config::DEV_API_KEY.to_owned()),
        registry,
        metrics: signal_metrics,
        media_metrics,
        http_sessions: Mutex::new(HashMap::new()),
        ready: AtomicBool::new(true),
        http: HttpOptions {
            dev,
            cors_origins: config.server.cors_origins.clone(),
            token_endpoint: config.token_endpoint(),
            metrics_on_http: config.metrics_on_http(),
            metrics_token: config.metrics.token.clone(),
            admin_key: config.admin.key.clone(),
        },
        connections: ConnectionLimiter::default(),
        refusals: RefusalLog::default(),
        resumable: Default::default(),
    });
    let (shutdown, rx) = watch::channel(false);
    let header_timeout = Duration::from_secs(config.server.header_read_timeout_secs);
    if let Some(listener) = metrics_listener {
        let app = chorus_signal::http::metrics_router(state.clone());
        tokio::spawn(serve::serve(
            listener,
            app,
            header_timeout,
            None,
            rx.clone(),
        ));
    }
    let app = chorus_signal::router(state.clone());
    let tls_on = tls.is_some();
    let task = tokio::spawn(serve::serve(listener, app, header_timeout, tls, rx));
    tracing::info!(%http_addr, %media_addr, ?metrics_addr, dev, tls = tls_on, "chorus started");
    Ok(RunningServer {
        http_addr,
        media_addr,
        metrics_addr,
        tls: tls_on,
        state,
        shutdown,
        task,
    })
}
