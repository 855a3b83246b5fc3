//! The media engines: each one an OS thread of its own, with its own UDP socket and its own
//! sans-IO [`Core`], driven by a single-threaded tokio runtime with datagrams, commands and
//! timers.
//!
//! A server runs `media.engines` of them (default: one per core). Rooms are placed on engines
//! ([`crate::placement`]); everything about a room (its participants' peer connections, its
//! tracks and downtracks) lives in one engine, so engines share nothing and take no locks.
//! Each engine's candidate names its own port, so STUN routing by ufrag stays inside it. With
//! ICE-TCP (`media.ice_tcp`) an engine also listens on TCP at that port ([`crate::tcp`]).

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
use crate::tcp::{TcpEvent, TcpTransport};
use crate::{MediaConfig, Metrics, SfuError};

/// Most commands an engine applies in one turn of its loop (before flushing what they
/// produced), and the time after which it stops taking more.
const COMMANDS_PER_TURN: usize = 64;
const COMMAND_SLICE: Duration = Duration::from_millis(5);

/// One engine: its socket and the core it feeds.
pub struct Engine {
    socket: MediaSocket,
    /// The ICE-TCP listener and connections (`media.ice_tcp`).
    tcp: Option<TcpTransport>,
    core: Core,
    counters: EngineCounters,
}

/// One engine's bound sockets: its UDP socket and, with `media.ice_tcp`, a TCP listener at
/// the same address and port.
pub(crate) struct Bound {
    pub(crate) udp: std::net::UdpSocket,
    pub(crate) tcp: Option<std::net::TcpListener>,
}

/// Binds UDP (and, with ICE-TCP, TCP) at `ip:port`; port 0 takes the UDP socket's free port
/// for TCP too, trying a few times should that TCP port be taken.
fn bind_one(ip: std::net::IpAddr, port: u16, tcp: bool) -> std::io::Result<Bound> {
    let tries = if port == 0 && tcp { 16 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
        if !tcp {
            return Ok(Bound { udp, tcp: None });
        }
        let at = udp.local_addr()?;
        match std::net::TcpListener::bind(at) {
            Ok(listener) => {
                return Ok(Bound {
                    udp,
                    tcp: Some(listener),
                })
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port")))
}

/// Binds the sockets of `count` engines as `config` says: consecutive ports from
/// `media.udp_port` (each port 0 when it is 0), or the first free ports of
/// `media.udp_port_range`; with `media.ice_tcp` each also a TCP listener on the same port.
pub(crate) fn bind_sockets(config: &MediaConfig, count: usize) -> Result<Vec<Bound>, SfuError> {
    let ip = config.bind_ip;
    let tcp = config.ice_tcp;
    let what = if tcp { "UDP and TCP" } else { "UDP" };
    let mut sockets = Vec::with_capacity(count);
    match config.udp_port_range {
        Some([first, last]) => {
            for port in first..=last {
                if sockets.len() == count {
                    break;
                }
                if let Ok(s) = bind_one(ip, port, tcp) {
                    sockets.push(s);
                }
            }
            if sockets.len() < count {
                return Err(SfuError::Bind(format!(
                    "{count} engines need {count} free {what} ports in [{first}, {last}], found {}",
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
                let s = bind_one(ip, port, tcp)
                    .map_err(|e| SfuError::Bind(format!("{what} {ip}:{port} (engine {i}): {e}")))?;
                sockets.push(s);
            }
        }
    }
    Ok(sockets)
}

impl Engine {
    /// Starts engine `index` on a thread of its own, over `bound`; it runs until every
    /// sender of `commands` is gone. Returns the UDP socket's address (the TCP listener, if
    /// any, has the same).
    pub(crate) fn spawn(
        index: usize,
        bound: Bound,
        config: MediaConfig,
        metrics: Metrics,
        commands: mpsc::Receiver<Command>,
        failed: Arc<watch::Sender<bool>>,
    ) -> Result<SocketAddr, SfuError> {
        let Bound {
            udp: socket,
            tcp: listener,
        } = bound;
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
                let tcp = match listener {
                    None => None,
                    Some(l) => {
                        let _guard = runtime.enter();
                        match TcpTransport::new(l, config.max_tcp_connections, &metrics, index) {
                            Ok(t) => Some(t),
                            Err(e) => {
                                let _ = ready.send(Err(SfuError::Bind(e.to_string())));
                                return;
                            }
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
                    ice_tcp = tcp.is_some(),
                    "media engine bound"
                );
                let engine = Engine {
                    socket,
                    tcp,
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
        let mut tcp_transmits: Vec<(SocketAddr, BytesMut)> = Vec::new();
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
                    Some(command) => self.apply_commands(command, &mut commands),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.core.handle_timeout(Instant::now());
                }
                event = tcp_event(&mut self.tcp) => {
                    if let Some(tcp) = &mut self.tcp {
                        tcp.handle(event, &mut self.core, Instant::now());
                    }
                }
            }
            self.core.take_transmits(&mut transmits);
            if let Some(tcp) = &mut self.tcp {
                // Queued on the connections' tasks, which run once this loop awaits.
                tcp.send(&mut self.core, &mut tcp_transmits);
            }
            let flushed = self.socket.flush(&mut transmits).await;
            self.counters.record(&flushed);
        }
        info!(engine = self.core.engine(), "media engine stopped");
    }

    /// Applies `first` and what else is queued, up to a bound in number and time, before the
    /// next flush: one command per turn of the loop starved signaling (joins, answers,
    /// candidates) behind media when a room filled up; a long run of SDP work delays ICE and
    /// DTLS answers instead.
    fn apply_commands(&mut self, first: Command, commands: &mut mpsc::Receiver<Command>) {
        let start = Instant::now();
        self.apply(first);
        for _ in 1..COMMANDS_PER_TURN {
            if start.elapsed() > COMMAND_SLICE {
                break;
            }
            let Ok(command) = commands.try_recv() else {
                break;
            };
            self.apply(command);
        }
    }

    /// Applies one command (or, under fault injection, panics the engine as asked).
    fn apply(&mut self, command: Command) {
        #[cfg(feature = "fault-injection")]
        if matches!(command, Command::PanicEngine) {
            panic!("injected engine fault");
        }
        self.core.handle_command(Instant::now(), command);
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

/// The TCP side's next event; never, without ICE-TCP.
async fn tcp_event(tcp: &mut Option<TcpTransport>) -> TcpEvent {
    match tcp {
        Some(t) => t.next_event().await,
        None => std::future::pending().await,
    }
}
