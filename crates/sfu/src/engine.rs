//! The media engines: each one an OS thread of its own, with its own UDP socket and its own
//! sans-IO [`Core`], driven by a single-threaded tokio runtime with datagrams, commands and
//! timers.
//!
//! A server runs `media.engines` of them (default: one per core). Rooms are placed on engines
//! ([`crate::placement`]); everything about a room (its participants' peer connections, its
//! tracks and downtracks) lives in one engine, so engines share nothing and take no locks.
//! Each engine's candidate names its own port, so STUN routing by ufrag stays inside it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info};

use crate::command::Command;
use crate::core::Core;
use crate::metrics::EngineCounters;
use crate::socket::MediaSocket;
use crate::{MediaConfig, Metrics, SfuError};

/// One engine: its socket and the core it feeds.
pub struct Engine {
    socket: MediaSocket,
    core: Core,
    counters: EngineCounters,
}

/// Binds the sockets of `count` engines as `config` says: consecutive ports from
/// `media.udp_port` (each port 0 when it is 0), or the first free ports of
/// `media.udp_port_range`.
pub(crate) fn bind_sockets(
    config: &MediaConfig,
    count: usize,
) -> Result<Vec<std::net::UdpSocket>, SfuError> {
    let ip = config.bind_ip;
    let mut sockets = Vec::with_capacity(count);
    match config.udp_port_range {
        Some([first, last]) => {
            for port in first..=last {
                if sockets.len() == count {
                    break;
                }
                if let Ok(s) = std::net::UdpSocket::bind(SocketAddr::new(ip, port)) {
                    sockets.push(s);
                }
            }
            if sockets.len() < count {
                return Err(SfuError::Bind(format!(
                    "{count} engines need {count} free UDP ports in [{first}, {last}], found {}",
                    sockets.len()
                )));
            }
        }
        None => {
            for i in 0..count {
                let port = match config.udp_port {
                    0 => 0,
                    p => p.checked_add(i as u16).ok_or_else(|| {
                        SfuError::Bind(format!("no port after {p} for engine {i}"))
                    })?,
                };
                let s = std::net::UdpSocket::bind(SocketAddr::new(ip, port))
                    .map_err(|e| SfuError::Bind(format!("{ip}:{port} (engine {i}): {e}")))?;
                sockets.push(s);
            }
        }
    }
    Ok(sockets)
}

impl Engine {
    /// Starts engine `index` on a thread of its own, over `socket`; it runs until every
    /// sender of `commands` is gone. Returns the socket's address.
    pub(crate) fn spawn(
        index: usize,
        socket: std::net::UdpSocket,
        config: MediaConfig,
        metrics: Metrics,
        commands: mpsc::Receiver<Command>,
        failed: Arc<watch::Sender<bool>>,
    ) -> Result<SocketAddr, SfuError> {
        let local_addr = socket
            .local_addr()
            .map_err(|e| SfuError::Bind(e.to_string()))?;
        // The socket's batching state is not `Send`: it is made on the engine's own thread,
        // which reports back once it is ready.
        let (ready, started) = std::sync::mpsc::channel::<Result<(), SfuError>>();
        std::thread::Builder::new()
            .name(format!("chorus-engine-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready.send(Err(SfuError::Bind(format!("engine runtime: {e}"))));
                        return;
                    }
                };
                // The socket registers with the reactor of the runtime that drives it.
                let socket = {
                    let _guard = runtime.enter();
                    match MediaSocket::new(socket) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready.send(Err(SfuError::Bind(e.to_string())));
                            return;
                        }
                    }
                };
                let mut core = Core::new(config, metrics.clone(), local_addr);
                core.set_engine(index);
                info!(
                    engine = index,
                    %local_addr,
                    advertised = ?core.advertised(),
                    gso_segments = socket.max_segments(),
                    "media engine bound"
                );
                let engine = Engine {
                    socket,
                    core,
                    counters: EngineCounters::new(&metrics, index),
                };
                let _ = ready.send(Ok(()));
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    runtime.block_on(engine.run(commands))
                }));
                if run.is_err() {
                    // Whatever the core could not contain: this engine's rooms are gone.
                    error!(engine = index, "media engine died");
                    failed.send_replace(true);
                }
            })
            .map_err(|e| SfuError::Bind(format!("engine {index} thread: {e}")))?;
        started
            .recv()
            .map_err(|_| SfuError::Bind(format!("engine {index} did not start")))??;
        Ok(local_addr)
    }

    /// Runs until every command sender is gone.
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut transmits: Vec<(SocketAddr, BytesMut)> = Vec::new();
        loop {
            let deadline = self
                .core
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                ready = self.socket.readable() => {
                    if ready.is_ok() {
                        self.receive();
                    }
                }
                command = commands.recv() => match command {
                    #[cfg(feature = "fault-injection")]
                    Some(Command::PanicEngine) => panic!("injected engine fault"),
                    Some(command) => self.core.handle_command(Instant::now(), command),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.core.handle_timeout(Instant::now());
                }
            }
            self.core.take_transmits(&mut transmits);
            let flushed = self.socket.flush(&mut transmits).await;
            self.counters.record(&flushed);
        }
        info!(engine = self.core.engine(), "media engine stopped");
    }

    /// Reads what is waiting, a few batches at most before other work gets a turn; the peers
    /// the datagrams touched are drained once, after the batches.
    fn receive(&mut self) {
        let now = Instant::now();
        let core = &mut self.core;
        let mut read = 0;
        for _ in 0..4 {
            match self
                .socket
                .recv_batch(|data, from| core.receive(now, data, from))
            {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) => {
                    // ICMP errors surface here on some platforms; not fatal.
                    debug!("media socket recv error: {e}");
                    break;
                }
            }
        }
        self.counters.datagrams_in.inc_by(read as u64);
        if read > 0 {
            self.core.drain(now);
        }
    }
}
