//! The router of the shared media port (`chorus_sfu::router::Router::route`) and the STUN
//! reading it relies on (`chorus_sfu::stun::{classify, local_ufrag}`): a sequence of
//! datagrams from a handful of addresses, with peers coming and going. Invariants: a ufrag read
//! from a datagram is non-empty and comes from it; a datagram routes only as the tables allow;
//! the learned addresses stay consistent.
#![no_main]

use std::net::SocketAddr;

use chorus_fuzz::stun::{binding_request, Check};
use chorus_fuzz::Input;
use chorus_sfu::router::{Router, Unroutable};
use chorus_sfu::stun::{classify, local_ufrag, DatagramKind};
use libfuzzer_sys::fuzz_target;

const UFRAGS: [&str; 3] = ["aaaa", "bbbbbbbbbbbbbbbb", "c"];
/// Every peer's ICE password.
const PWD: &str = "fuzzpasswordfuzzpassword";

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut router = Router::default();
    let mut live = [true; 3];
    for (i, u) in UFRAGS.iter().enumerate() {
        router.add_peer(u, PWD, i as u64 + 1);
    }
    while let Some(tag) = input.u8() {
        let from = SocketAddr::from(([127, 0, 0, 1 + (tag >> 6)], 5000 + u16::from(tag & 0x3)));
        if tag & 0x3c == 0x3c {
            // A peer leaves, or comes back.
            let i = usize::from(tag & 0x3) % 3;
            if live[i] {
                router.remove_peer(UFRAGS[i], i as u64 + 1);
            } else {
                router.add_peer(UFRAGS[i], PWD, i as u64 + 1);
            }
            live[i] = !live[i];
            continue;
        }
        // Bit 5: a binding request for the username the input gives, signed with the peers'
        // password (what a real client's check looks like); else the input's bytes as they are.
        let signed;
        let d = if tag & 0x20 != 0 {
            signed = binding_request(&Check {
                username: input.chunk(64),
                txid: [3; 12],
                extra: Vec::new(),
                key: Some(PWD.as_bytes()),
                corrupt: tag & 0x10 != 0,
                fingerprint: true,
            });
            &signed[..]
        } else {
            input.chunk(1500)
        };
        let kind = classify(d);
        let ufrag = local_ufrag(d);
        if let Some(u) = ufrag {
            assert!(!u.is_empty() && !u.contains(':'), "{u:?}");
            let start = u.as_ptr() as usize - d.as_ptr() as usize;
            assert!(start + u.len() <= d.len());
            assert_eq!(kind, DatagramKind::Stun);
        }
        let known = UFRAGS
            .iter()
            .zip(live)
            .position(|(x, l)| l && Some(*x) == ufrag)
            .map(|i| i as u64 + 1);
        let before = (1..=3).find(|p| router.addrs(*p).contains(&from));
        match router.route(d, from) {
            Ok(routed) => {
                assert_eq!(routed.is_stun, kind == DatagramKind::Stun);
                match known {
                    // A check naming a live peer goes to it, and teaches the router its address.
                    Some(peer) => {
                        assert_eq!(routed.peer, peer);
                        assert!(router.addrs(peer).contains(&from));
                    }
                    None => assert_eq!(Some(routed.peer), before, "routed by address"),
                }
            }
            Err(Unroutable::UnknownUfrag) => {
                assert_eq!(kind, DatagramKind::Stun);
                assert!(known.is_none() && before.is_none());
            }
            Err(Unroutable::UnknownSource) => {
                assert_ne!(kind, DatagramKind::Stun);
                assert!(before.is_none());
            }
            // A check naming a live peer from an address it does not have, without a valid
            // MESSAGE-INTEGRITY: nothing is learned.
            Err(Unroutable::Unauthenticated) => {
                assert_eq!(kind, DatagramKind::Stun);
                let peer = known.expect("names a live peer");
                assert_ne!(before, Some(peer));
                assert_eq!(
                    (1..=3).find(|p| router.addrs(*p).contains(&from)),
                    before,
                    "nothing learned"
                );
            }
        }
        // Every learned address belongs to exactly one peer, and only live peers have any.
        let mut all: Vec<SocketAddr> = (1..=3).flat_map(|p| router.addrs(p).to_vec()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "an address learned twice");
        assert_eq!(router.len().1, n);
        for (i, l) in live.iter().enumerate() {
            assert!(*l || router.addrs(i as u64 + 1).is_empty());
        }
    }
});
