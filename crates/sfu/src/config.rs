//! Media-plane configuration, owned by this crate and embedded in the server's config file as
//! the `[media]` table.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The least `pli_throttle_ms` allowed.
pub const MIN_PLI_THROTTLE_MS: u64 = 100;

/// The least `data_channel_max_buffered_bytes` allowed: one relayed message of the largest
/// size (64 KiB) must fit.
pub const MIN_DATA_CHANNEL_BUFFERED_BYTES: usize = 64 * 1024;

/// Most media engines a server runs.
pub const MAX_ENGINES: usize = 64;

/// Settings of the media plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Address the media UDP socket binds to.
    pub bind_ip: IpAddr,
    /// UDP port every peer shares. 0 picks a free port (tests).
    pub udp_port: u16,
    /// Optional `[first, last]` range: the media socket binds the first free port in it,
    /// instead of `udp_port`.
    pub udp_port_range: Option<[u16; 2]>,
    /// Public addresses written into the candidates handed to clients (1:1 NAT, e.g. a cloud
    /// VM's public IP). Empty: the bind address (or, for an unspecified bind address, 127.0.0.1).
    pub external_ips: Vec<IpAddr>,
    /// Most participants in one room.
    pub max_participants_per_room: usize,
    /// Most rooms on this server.
    pub max_rooms: usize,
    /// Least time between two keyframe requests sent to one publisher's track, in milliseconds.
    pub pli_throttle_ms: u64,
    /// Data messages one participant may send per second on average; beyond it (and the
    /// burst) they are dropped as `data_rate_limited`.
    pub data_messages_per_sec: u32,
    /// Data messages one participant may send at once before the rate applies.
    pub data_message_burst: u32,
    /// Most bytes of relayed data messages the server holds for one receiver (sent on its
    /// `chorus` channel, not acknowledged yet); a message that would go beyond it is dropped
    /// for that receiver as `data_backlog`. At least 65536.
    pub data_channel_max_buffered_bytes: usize,
    /// Seconds a participant's connections have to come up after joining; then it is removed.
    pub connect_timeout_secs: u64,
    /// Seconds a connected participant may stay silent (no datagram, not even a consent
    /// check: browsers send one every few seconds) before it is taken as gone and removed.
    pub silence_timeout_secs: u64,
    /// Media sections an engine puts into subscriber re-offers per second, at most (in bursts of
    /// a tenth of a second's worth). Every re-offer carries every track of the connection, so when all
    /// N participants of a room publish, each join costs N offers of N sections: without a
    /// bound a join burst fills the engine with SDP work and everyone's joins and answers wait
    /// behind it. A joiner's first offer never waits. 0: no bound. A section costs the engine
    /// ~30-60 us of SDP work (`cargo bench -p chorus-sfu --bench offer`); the default 2,000
    /// keeps re-offers to about a tenth of an engine, and lets a 50-person meeting (100
    /// tracks) show a newcomer to everyone within ~2.5 s.
    pub offer_sections_per_sec: u32,
    /// Media engines, each a thread with its own UDP socket (consecutive ports from
    /// `udp_port`, or free ports of `udp_port_range`); rooms are spread over them. 0: one per
    /// core.
    pub engines: usize,
    /// ICE-TCP (RFC 6544): each engine also listens on TCP at its UDP socket's address and
    /// port, and every answer and offer carries a passive TCP host candidate beside the UDP
    /// one, at a lower priority, for clients whose UDP is blocked.
    pub ice_tcp: bool,
    /// Most ICE-TCP connections one engine holds open (authenticated or not); connections
    /// beyond it are closed at once.
    pub max_tcp_connections: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            udp_port: 7882,
            udp_port_range: None,
            external_ips: Vec::new(),
            max_participants_per_room: 500,
            max_rooms: 1000,
            pli_throttle_ms: 500,
            data_messages_per_sec: 50,
            data_message_burst: 100,
            data_channel_max_buffered_bytes: 1024 * 1024,
            engines: 0,
            offer_sections_per_sec: 2_000,
            connect_timeout_secs: 30,
            silence_timeout_secs: 15,
            ice_tcp: true,
            max_tcp_connections: 1024,
        }
    }
}

impl MediaConfig {
    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if let Some([first, last]) = self.udp_port_range {
            if first == 0 || first > last {
                return Err(format!(
                    "media.udp_port_range [{first}, {last}] is not a valid range"
                ));
            }
        }
        if self.engines > MAX_ENGINES {
            return Err(format!(
                "media.engines = {} is more than {MAX_ENGINES}",
                self.engines
            ));
        }
        if self.pli_throttle_ms < MIN_PLI_THROTTLE_MS {
            return Err(format!(
                "media.pli_throttle_ms = {} is below {MIN_PLI_THROTTLE_MS}: publishers would be flooded with keyframe requests",
                self.pli_throttle_ms
            ));
        }
        if self.connect_timeout_secs == 0 || self.silence_timeout_secs < 5 {
            return Err(
                "media.connect_timeout_secs must be > 0 and media.silence_timeout_secs >= 5 \
                 (browsers check consent every few seconds)"
                    .into(),
            );
        }
        if self.max_participants_per_room == 0 || self.max_rooms == 0 {
            return Err("media.max_participants_per_room and media.max_rooms must be > 0".into());
        }
        if self.ice_tcp && self.max_tcp_connections == 0 {
            return Err("media.max_tcp_connections must be > 0 with media.ice_tcp on".into());
        }
        if self.data_messages_per_sec == 0 || self.data_message_burst == 0 {
            return Err(
                "media.data_messages_per_sec and media.data_message_burst must be > 0".into(),
            );
        }
        if self.data_channel_max_buffered_bytes < MIN_DATA_CHANNEL_BUFFERED_BYTES {
            return Err(format!(
                "media.data_channel_max_buffered_bytes = {} is below {MIN_DATA_CHANNEL_BUFFERED_BYTES} \
                 (one message of the largest size must fit)",
                self.data_channel_max_buffered_bytes
            ));
        }
        Ok(())
    }

    /// How many engines to run: `engines`, or one per core when it is 0.
    pub fn engine_count(&self) -> usize {
        match self.engines {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(MAX_ENGINES)
    }

    /// How long a participant's connections have to come up.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// How long a connected participant may stay silent.
    pub fn silence_timeout(&self) -> Duration {
        Duration::from_secs(self.silence_timeout_secs)
    }

    /// The PLI throttle interval.
    pub fn pli_throttle(&self) -> Duration {
        Duration::from_millis(self.pli_throttle_ms)
    }

    /// The addresses to advertise as candidates for a socket bound at `local`.
    pub fn advertised_addrs(&self, local: SocketAddr) -> Vec<SocketAddr> {
        if !self.external_ips.is_empty() {
            return self
                .external_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, local.port()))
                .collect();
        }
        let ip = if local.ip().is_unspecified() {
            match local.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            }
        } else {
            local.ip()
        };
        vec![SocketAddr::new(ip, local.port())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_external_ips_with_the_bound_port() {
        let local: SocketAddr = "0.0.0.0:7882".parse().expect("addr");
        let mut c = MediaConfig::default();
        assert_eq!(
            c.advertised_addrs(local),
            vec!["127.0.0.1:7882".parse::<SocketAddr>().expect("addr")]
        );
        c.external_ips = vec!["203.0.113.7".parse().expect("ip")];
        assert_eq!(
            c.advertised_addrs(local),
            vec!["203.0.113.7:7882".parse::<SocketAddr>().expect("addr")]
        );
    }

    #[test]
    fn rejects_bad_ranges_and_unknown_keys() {
        let c = MediaConfig {
            udp_port_range: Some([9000, 8000]),
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let zero_throttle = MediaConfig {
            pli_throttle_ms: 0,
            ..Default::default()
        };
        assert!(zero_throttle.validate().is_err());
        let too_many = MediaConfig {
            engines: MAX_ENGINES + 1,
            ..Default::default()
        };
        assert!(too_many.validate().is_err());
        let tiny_backlog = MediaConfig {
            data_channel_max_buffered_bytes: MIN_DATA_CHANNEL_BUFFERED_BYTES - 1,
            ..Default::default()
        };
        assert!(tiny_backlog.validate().is_err());
        assert!(MediaConfig::default().validate().is_ok());
        assert!(toml::from_str::<MediaConfig>("udp_prot = 1").is_err());
        let ok: MediaConfig = toml::from_str("udp_port = 9000").expect("parses");
        assert_eq!(ok.udp_port, 9000);
    }
}
