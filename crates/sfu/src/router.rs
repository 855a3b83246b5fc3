//! Which peer connection a datagram on the shared media port belongs to.
//!
//! Every peer connection shares one UDP socket. A [`Router`] owns the two routing tables: the
//! ICE ufrag each peer connection was built with, and every source address that sent a STUN
//! check naming it. A datagram is routed:
//!
//! 1. STUN whose USERNAME names a known local ufrag -> that peer, and its source address is
//!    learned (Chromium checks from several addresses; a NAT rebinding simply re-learns);
//! 2. otherwise, a known source address -> that peer;
//! 3. otherwise it is dropped, with the reason ([`Unroutable`]).
//!
//! Sans-IO and clock-free: the core asks, the router answers.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::stun;
use crate::types::PeerKey;

/// Why a datagram could not be routed (its `chorus_packets_dropped_total` reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// A STUN message naming no ufrag we know.
    UnknownUfrag,
    /// Anything else from an address no check has come from.
    UnknownSource,
}

impl Unroutable {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnknownUfrag => "unknown_ufrag",
            Self::UnknownSource => "unknown_source",
        }
    }
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// The peer connection.
    pub peer: PeerKey,
    /// Whether the datagram is a STUN message (held until the peer knows the remote ICE
    /// credentials).
    pub is_stun: bool,
}

/// The routing tables of one media socket. See the module docs.
#[derive(Debug, Default)]
pub struct Router {
    by_ufrag: HashMap<String, PeerKey>,
    by_addr: HashMap<SocketAddr, PeerKey>,
    /// Every address learned per peer, to forget them when it goes.
    addrs: HashMap<PeerKey, Vec<SocketAddr>>,
}

impl Router {
    /// Routes STUN checks naming `ufrag` to `peer` from now on.
    pub fn add_peer(&mut self, ufrag: &str, peer: PeerKey) {
        self.by_ufrag.insert(ufrag.to_owned(), peer);
    }

    /// Forgets `peer`: its ufrag and every address learned for it.
    pub fn remove_peer(&mut self, ufrag: &str, peer: PeerKey) {
        if self.by_ufrag.get(ufrag) == Some(&peer) {
            self.by_ufrag.remove(ufrag);
        }
        for a in self.addrs.remove(&peer).unwrap_or_default() {
            if self.by_addr.get(&a) == Some(&peer) {
                self.by_addr.remove(&a);
            }
        }
    }

    /// The peer a datagram from `from` belongs to, learning `from` when it is a STUN check
    /// naming a known ufrag.
    pub fn route(&mut self, data: &[u8], from: SocketAddr) -> Result<Routed, Unroutable> {
        let is_stun = stun::classify(data) == stun::DatagramKind::Stun;
        let named = if is_stun {
            // A check names its peer: follow it even from a known address (NAT rebinding).
            stun::local_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied())
        } else {
            None
        };
        let peer = match (named, self.by_addr.get(&from).copied()) {
            (Some(peer), known) => {
                if known != Some(peer) {
                    self.learn(peer, from);
                }
                peer
            }
            (None, Some(peer)) => peer,
            (None, None) if is_stun => return Err(Unroutable::UnknownUfrag),
            (None, None) => return Err(Unroutable::UnknownSource),
        };
        Ok(Routed { peer, is_stun })
    }

    /// The addresses learned for `peer`.
    pub fn addrs(&self, peer: PeerKey) -> &[SocketAddr] {
        self.addrs.get(&peer).map_or(&[], Vec::as_slice)
    }

    /// Number of peers and learned addresses, for leak checks.
    pub fn len(&self) -> (usize, usize) {
        (self.by_ufrag.len(), self.by_addr.len())
    }

    /// Whether no peer is routed.
    pub fn is_empty(&self) -> bool {
        self.by_ufrag.is_empty() && self.by_addr.is_empty()
    }

    fn learn(&mut self, peer: PeerKey, addr: SocketAddr) {
        if let Some(old) = self.by_addr.insert(addr, peer) {
            if let Some(list) = self.addrs.get_mut(&old) {
                list.retain(|a| *a != addr);
            }
        }
        self.addrs.entry(peer).or_default().push(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN binding request whose USERNAME is `local:remote`.
    fn check(local_ufrag: &str) -> Vec<u8> {
        let username = format!("{local_ufrag}:remote");
        stun::binding_request(&[(0x0006, username.as_bytes())])
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// An RTP-looking datagram (first byte in 128..=191, RFC 7983).
    const RTP: &[u8] = &[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];

    #[test]
    fn routes_checks_by_ufrag_then_media_by_learned_address() {
        let mut r = Router::default();
        r.add_peer("aaaa", 1);
        r.add_peer("bbbb", 2);
        // Media before any check: nobody claims the address.
        assert_eq!(r.route(RTP, addr(5000)), Err(Unroutable::UnknownSource));
        assert_eq!(
            r.route(&check("zzzz"), addr(5000)),
            Err(Unroutable::UnknownUfrag)
        );
        let routed = r.route(&check("aaaa"), addr(5000)).expect("routed");
        assert_eq!(
            routed,
            Routed {
                peer: 1,
                is_stun: true
            }
        );
        assert_eq!(
            r.route(RTP, addr(5000)),
            Ok(Routed {
                peer: 1,
                is_stun: false
            })
        );
        assert_eq!(r.addrs(1), &[addr(5000)]);
        assert_eq!(r.route(RTP, addr(5001)), Err(Unroutable::UnknownSource));
    }

    #[test]
    fn a_check_moves_an_address_to_the_peer_it_names() {
        let mut r = Router::default();
        r.add_peer("aaaa", 1);
        r.add_peer("bbbb", 2);
        r.route(&check("aaaa"), addr(5000)).expect("routed");
        // A second address for peer 1 (another interface, or a NAT rebinding).
        r.route(&check("aaaa"), addr(5001)).expect("routed");
        assert_eq!(r.addrs(1), &[addr(5000), addr(5001)]);
        // The port is reused by another client: the check names peer 2.
        r.route(&check("bbbb"), addr(5000)).expect("routed");
        assert_eq!(r.route(RTP, addr(5000)).map(|x| x.peer), Ok(2));
        assert_eq!(r.addrs(1), &[addr(5001)]);
        assert_eq!(r.addrs(2), &[addr(5000)]);
    }

    #[test]
    fn removing_a_peer_forgets_its_ufrag_and_addresses() {
        let mut r = Router::default();
        r.add_peer("aaaa", 1);
        r.add_peer("bbbb", 2);
        r.route(&check("aaaa"), addr(5000)).expect("routed");
        r.route(&check("bbbb"), addr(6000)).expect("routed");
        r.remove_peer("aaaa", 1);
        assert_eq!(r.route(RTP, addr(5000)), Err(Unroutable::UnknownSource));
        assert_eq!(
            r.route(&check("aaaa"), addr(5000)),
            Err(Unroutable::UnknownUfrag)
        );
        assert_eq!(r.route(RTP, addr(6000)).map(|x| x.peer), Ok(2));
        r.remove_peer("bbbb", 2);
        assert!(r.is_empty());
    }
}
