//! Which peer connection a datagram on the shared media port belongs to.
//!
//! Every peer connection shares one UDP socket. A [`Router`] owns the two routing tables: the
//! ICE ufrag each peer connection was built with, and every source address that sent a STUN
//! check naming it. A datagram is routed:
//!
//! 1. STUN whose USERNAME names a known local ufrag -> that peer. A source address the peer
//!    does not have yet is learned only when the check's MESSAGE-INTEGRITY verifies with the
//!    peer's ICE password (Chromium checks from several addresses; a NAT rebinding re-learns),
//!    so a spoofed check naming a known ufrag cannot re-bind a client's address and black-hole
//!    its media. At most [`MAX_ADDRS`] addresses per peer: a new one evicts the oldest;
//! 2. otherwise, a known source address -> that peer;
//! 3. otherwise it is dropped, with the reason ([`Unroutable`]).
//!
//! Sans-IO and clock-free: the core asks, the router answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rtc::crypto::RTCCryptoProvider;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::Message;

use crate::stun;
use crate::types::PeerKey;

/// Most source addresses learned per peer connection.
pub const MAX_ADDRS: usize = 8;

/// Why a datagram could not be routed (its `chorus_packets_dropped_total` reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// A STUN message naming no ufrag we know.
    UnknownUfrag,
    /// Anything else from an address no check has come from.
    UnknownSource,
    /// A check from a new address whose MESSAGE-INTEGRITY does not verify.
    Unauthenticated,
}

impl Unroutable {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnknownUfrag => "unknown_ufrag",
            Self::UnknownSource => "unknown_source",
            Self::Unauthenticated => "stun_unauthenticated",
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
pub struct Router {
    /// Per local ufrag: the peer and its ICE password (the MESSAGE-INTEGRITY key).
    by_ufrag: HashMap<String, (PeerKey, String)>,
    by_addr: HashMap<SocketAddr, PeerKey>,
    /// Every address learned per peer, oldest first, to forget them when it goes.
    addrs: HashMap<PeerKey, Vec<SocketAddr>>,
    /// HMAC-SHA1 for the integrity checks; without one no new address is ever learned.
    crypto: Option<Arc<dyn RTCCryptoProvider>>,
}

impl Default for Router {
    fn default() -> Self {
        let crypto = rtc::crypto::default_provider()
            .map_err(|e| tracing::error!("no crypto provider, no address will be learned: {e}"))
            .ok();
        Router {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            addrs: HashMap::new(),
            crypto,
        }
    }
}

impl Router {
    /// Routes STUN checks naming `ufrag` to `peer` from now on; checks from a new address
    /// must be signed with `pwd`.
    pub fn add_peer(&mut self, ufrag: &str, pwd: &str, peer: PeerKey) {
        self.by_ufrag
            .insert(ufrag.to_owned(), (peer, pwd.to_owned()));
    }

    /// Routes checks naming `ufrag` (signed with `pwd`) to `peer` instead of those naming
    /// `old` (an ICE restart; an empty `old` for a connection's first credentials). The
    /// addresses learned so far stay: media keeps flowing on them until the new checks
    /// select a path.
    pub fn replace_credentials(&mut self, old: &str, ufrag: &str, pwd: &str, peer: PeerKey) {
        if self.by_ufrag.get(old).is_some_and(|(p, _)| *p == peer) {
            self.by_ufrag.remove(old);
        }
        self.add_peer(ufrag, pwd, peer);
    }

    /// Forgets `peer`: its ufrag and every address learned for it.
    pub fn remove_peer(&mut self, ufrag: &str, peer: PeerKey) {
        if self.by_ufrag.get(ufrag).is_some_and(|(p, _)| *p == peer) {
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
            stun::local_ufrag(data).and_then(|u| self.by_ufrag.get(u))
        } else {
            None
        };
        let peer = match (named, self.by_addr.get(&from).copied()) {
            (Some((peer, _)), Some(known)) if *peer == known => known,
            (Some((peer, pwd)), _) => {
                let peer = *peer;
                if !self.signed(data, pwd) {
                    return Err(Unroutable::Unauthenticated);
                }
                self.learn(peer, from);
                peer
            }
            (None, Some(peer)) => peer,
            (None, None) if is_stun => return Err(Unroutable::UnknownUfrag),
            (None, None) => return Err(Unroutable::UnknownSource),
        };
        Ok(Routed { peer, is_stun })
    }

    /// The peer a STUN check names, if its MESSAGE-INTEGRITY verifies with that peer's ICE
    /// password; learns no address. An ICE-TCP connection is bound to a peer this way, by its
    /// first frame (the connection, not an address, is then the route).
    pub fn authenticate(&self, data: &[u8]) -> Result<PeerKey, Unroutable> {
        if stun::classify(data) != stun::DatagramKind::Stun {
            return Err(Unroutable::UnknownSource);
        }
        let (peer, pwd) = stun::local_ufrag(data)
            .and_then(|u| self.by_ufrag.get(u))
            .ok_or(Unroutable::UnknownUfrag)?;
        if !self.signed(data, pwd) {
            return Err(Unroutable::Unauthenticated);
        }
        Ok(*peer)
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

    /// Whether a STUN message carries a MESSAGE-INTEGRITY that verifies with `pwd`.
    fn signed(&self, data: &[u8], pwd: &str) -> bool {
        let Some(crypto) = &self.crypto else {
            return false;
        };
        let mut m = Message::new();
        m.unmarshal_binary(data).is_ok()
            && MessageIntegrity::check(&mut m, pwd.as_bytes(), crypto.crypto()).is_ok()
    }

    fn learn(&mut self, peer: PeerKey, addr: SocketAddr) {
        if let Some(old) = self.by_addr.insert(addr, peer) {
            if let Some(list) = self.addrs.get_mut(&old) {
                list.retain(|a| *a != addr);
            }
        }
        let list = self.addrs.entry(peer).or_default();
        if list.len() >= MAX_ADDRS {
            let oldest = list.remove(0);
            if self.by_addr.get(&oldest) == Some(&peer) {
                self.by_addr.remove(&oldest);
            }
        }
        list.push(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::stun::message::{Setter, TransactionId, BINDING_REQUEST};
    use rtc::stun::textattrs::Username;

    /// A check whose USERNAME is `local:remote`, signed with `pwd`.
    fn check_signed(local_ufrag: &str, pwd: &str) -> Vec<u8> {
        let crypto = rtc::crypto::default_provider().expect("provider");
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(
                rtc::stun::attributes::ATTR_USERNAME,
                format!("{local_ufrag}:remote"),
            )),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_owned(),
                crypto.crypto(),
            )),
        ];
        m.build(&setters).expect("message");
        m.raw
    }

    /// A check signed with the right password for the test peers (`pw-` + ufrag).
    fn check(local_ufrag: &str) -> Vec<u8> {
        check_signed(local_ufrag, &format!("pw-{local_ufrag}"))
    }

    fn router(ufrags: &[(&str, PeerKey)]) -> Router {
        let mut r = Router::default();
        for (u, k) in ufrags {
            r.add_peer(u, &format!("pw-{u}"), *k);
        }
        r
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// An RTP-looking datagram (first byte in 128..=191, RFC 7983).
    const RTP: &[u8] = &[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];

    #[test]
    fn routes_checks_by_ufrag_then_media_by_learned_address() {
        let mut r = router(&[("aaaa", 1), ("bbbb", 2)]);
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
        let mut r = router(&[("aaaa", 1), ("bbbb", 2)]);
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
    fn a_spoofed_check_cannot_steal_an_address() {
        let mut r = router(&[("aaaa", 1), ("bbbb", 2)]);
        r.route(&check("aaaa"), addr(5000)).expect("routed");
        // An attacker names peer 1's ufrag from its own address, or peer 2's from peer 1's
        // address, without the password (or with a wrong one, or unsigned).
        for (spoof, from) in [
            (check_signed("aaaa", "guess"), addr(6666)),
            (check_signed("bbbb", "pw-aaaa"), addr(5000)),
            (
                stun::binding_request(&[(0x0006, b"aaaa:remote")]),
                addr(6667),
            ),
        ] {
            assert_eq!(r.route(&spoof, from), Err(Unroutable::Unauthenticated));
        }
        assert_eq!(
            r.route(RTP, addr(5000)).map(|x| x.peer),
            Ok(1),
            "still peer 1's"
        );
        assert_eq!(r.route(RTP, addr(6666)), Err(Unroutable::UnknownSource));
        assert_eq!(r.addrs(1), &[addr(5000)]);
        assert!(r.addrs(2).is_empty());
        // Unsigned checks from an address the peer already has still reach it (its ICE agent
        // checks them itself).
        let unsigned = stun::binding_request(&[(0x0006, b"aaaa:remote")]);
        assert_eq!(r.route(&unsigned, addr(5000)).map(|x| x.peer), Ok(1));
    }

    #[test]
    fn authenticate_names_the_peer_of_a_signed_check_and_learns_nothing() {
        let r = router(&[("aaaa", 1), ("bbbb", 2)]);
        assert_eq!(r.authenticate(&check("bbbb")), Ok(2));
        assert_eq!(
            r.authenticate(&check("zzzz")),
            Err(Unroutable::UnknownUfrag)
        );
        assert_eq!(
            r.authenticate(&check_signed("aaaa", "guess")),
            Err(Unroutable::Unauthenticated)
        );
        assert_eq!(r.authenticate(RTP), Err(Unroutable::UnknownSource));
        assert_eq!(r.authenticate(&[]), Err(Unroutable::UnknownSource));
        assert_eq!(r.len(), (2, 0), "no address learned");
    }

    #[test]
    fn a_peer_keeps_at_most_a_few_addresses() {
        let mut r = router(&[("aaaa", 1)]);
        for port in 0..(MAX_ADDRS as u16 + 3) {
            r.route(&check("aaaa"), addr(7000 + port)).expect("routed");
        }
        assert_eq!(r.addrs(1).len(), MAX_ADDRS);
        assert_eq!(r.addrs(1)[0], addr(7003), "the oldest went first");
        assert_eq!(r.route(RTP, addr(7000)), Err(Unroutable::UnknownSource));
        assert_eq!(r.len().1, MAX_ADDRS);
    }

    #[test]
    fn removing_a_peer_forgets_its_ufrag_and_addresses() {
        let mut r = router(&[("aaaa", 1), ("bbbb", 2)]);
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
