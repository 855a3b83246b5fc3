//! # chorus-server: the composition root
//!
//! Builds the metrics registry, starts the media engine ([`chorus_sfu::Sfu`]), wraps both in the
//! signaling state and serves the HTTP router. [`start`] takes a [`Config`] and returns a
//! [`RunningServer`]; tests use it with port 0 to run many servers side by side.

pub mod config;
#[cfg(target_os = "linux")]
pub mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chorus_sfu::{Metrics, Sfu};
use chorus_signal::metrics::SignalMetrics;
use chorus_signal::{AppState, SharedState};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;

/// A server started by [`start`].
pub struct RunningServer {
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Where the media socket listens.
    pub media_addr: SocketAddr,
    /// Shared state (for tests and the drain logic).
    pub state: SharedState,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting joins, then closes the HTTP server.
    pub async fn shutdown(self, drain: Duration) {
        self.state.ready.store(false, Ordering::Relaxed);
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

    /// Base URL of the HTTP server, e.g. `http://127.0.0.1:7880`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }
}

/// Starts the media engine and the HTTP server.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
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
    let media_metrics = Metrics::new(&registry).context("registering media metrics")?;
    let signal_metrics = SignalMetrics::new(&registry).context("registering signal metrics")?;
    let sfu = Sfu::start(config.media.clone(), media_metrics.clone()).await?;
    let media_addr = sfu.media_addr();
    let listener = tokio::net::TcpListener::bind(config.server.http_bind)
        .await
        .with_context(|| format!("cannot bind HTTP on {}", config.server.http_bind))?;
    let http_addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        sfu,
        keys: config.key_ring(),
        config: config.signal.clone(),
        dev_key: config.dev_mode().then(|| config::DEV_API_KEY.to_owned()),
        registry,
        metrics: signal_metrics,
        media_metrics,
        http_sessions: Mutex::new(HashMap::new()),
        ready: AtomicBool::new(true),
    });
    let (shutdown, mut rx) = watch::channel(false);
    let app = chorus_signal::router(state.clone());
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.wait_for(|v| *v).await;
        });
        if let Err(e) = serve.await {
            tracing::error!("HTTP server failed: {e}");
        }
    });
    tracing::info!(%http_addr, %media_addr, dev = config.dev_mode(), "chorus started");
    Ok(RunningServer {
        http_addr,
        media_addr,
        state,
        shutdown,
        task,
    })
}
