//! The media engine: the one tokio task that owns the media UDP socket and drives the sans-IO
//! [`Core`] with datagrams, commands and timers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::command::Command;
use crate::core::Core;
use crate::{MediaConfig, Metrics, SfuError};

/// Largest datagram read from the socket.
const MAX_DATAGRAM: usize = 1600;
/// Datagrams read per socket wake-up before other work gets a turn.
const READ_BATCH: usize = 64;

/// The socket and the core it feeds.
pub struct Engine {
    socket: UdpSocket,
    local_addr: SocketAddr,
    core: Core,
}

impl Engine {
    /// Binds the media socket described by `config`.
    pub async fn bind(config: MediaConfig, metrics: Metrics) -> Result<Engine, SfuError> {
        config.validate().map_err(SfuError::Bind)?;
        let socket = match config.udp_port_range {
            Some([first, last]) => {
                let mut bound = None;
                for port in first..=last {
                    if let Ok(s) = UdpSocket::bind(SocketAddr::new(config.bind_ip, port)).await {
                        bound = Some(s);
                        break;
                    }
                }
                bound.ok_or_else(|| {
                    SfuError::Bind(format!("no free UDP port in [{first}, {last}]"))
                })?
            }
            None => UdpSocket::bind(SocketAddr::new(config.bind_ip, config.udp_port))
                .await
                .map_err(|e| {
                    SfuError::Bind(format!("{}:{}: {e}", config.bind_ip, config.udp_port))
                })?,
        };
        let local_addr = socket
            .local_addr()
            .map_err(|e| SfuError::Bind(e.to_string()))?;
        let core = Core::new(config, metrics, local_addr);
        info!(%local_addr, advertised = ?core.advertised(), "media socket bound");
        Ok(Engine {
            socket,
            local_addr,
            core,
        })
    }

    /// The bound media address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until every command sender is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut transmits: Vec<(SocketAddr, BytesMut)> = Vec::new();
        loop {
            let deadline = self
                .core
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                ready = self.socket.readable() => {
                    if ready.is_ok() {
                        for _ in 0..READ_BATCH {
                            match self.socket.try_recv_from(&mut buf) {
                                Ok((n, from)) => {
                                    self.core.handle_datagram(Instant::now(), &buf[..n], from);
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                                Err(e) => {
                                    // ICMP errors surface here on some platforms; not fatal.
                                    debug!("media socket recv error: {e}");
                                    break;
                                }
                            }
                        }
                    }
                }
                command = commands.recv() => match command {
                    Some(command) => self.core.handle_command(Instant::now(), command),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.core.handle_timeout(Instant::now());
                }
            }
            self.core.take_transmits(&mut transmits);
            for (addr, data) in transmits.drain(..) {
                match self.socket.try_send_to(&data, addr) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if let Err(e) = self.socket.send_to(&data, addr).await {
                            debug!(%addr, "media send failed: {e}");
                        }
                    }
                    Err(e) => debug!(%addr, "media send failed: {e}"),
                }
            }
        }
        info!("media engine stopped");
    }
}
