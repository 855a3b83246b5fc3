//! Creating and closing the core's peer connections.

use super::{queue_for, Core};
use crate::peer::{build_peer_connection, Peer, Source};
use crate::types::PeerRole;
use crate::types::{ParticipantKey, PeerKey};
use crate::SfuError;
use rtc::sansio::Protocol;
use std::collections::HashMap;
use std::time::Instant;
use tracing::debug;

impl Core {
    /// A new peer connection of `participant`. Its ICE credentials are the stack's own
    /// (random, fresh again on every ICE restart); it is routed by them once its first local
    /// description is applied ([`Core::sync_ice_credentials`]), before any client can know
    /// them.
    pub(crate) fn new_peer(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        role: PeerRole,
    ) -> Result<PeerKey, SfuError> {
        let pc = build_peer_connection(role, &self.metrics, now)?;
        let key = self.key();
        self.peers.insert(
            key,
            Peer {
                pc,
                participant,
                role,
                ufrag: String::new(),
                connected: false,
                candidates_added: false,
                expected_inbound: 0,
                inbound: HashMap::new(),
                outbound: HashMap::new(),
                awaiting_answer: false,
                renegotiate: false,
                last_offer: None,
                offer_due: None,
                data_channel: None,
                early_checks: Vec::new(),
                remote_known: false,
                timer: None,
                dirty: false,
                dest: None,
                last_rx: None,
                tcp: false,
            },
        );
        Ok(key)
    }

    /// Closes and forgets a peer connection.
    pub(crate) fn remove_peer(&mut self, key: PeerKey) {
        let Some(mut peer) = self.peers.remove(&key) else {
            return;
        };
        if let Err(e) = peer.pc.close() {
            debug!("close: {e}");
        }
        // Flush what close() queued (DTLS close_notify) so the client learns promptly.
        while let Some(out) = peer.pc.poll_write() {
            let dest = Source {
                addr: out.transport.peer_addr,
                protocol: out.transport.transport_protocol,
            };
            queue_for(&mut self.outbox, &mut self.tcp_outbox, dest, out.message);
        }
        if peer.tcp {
            self.closed_tcp.push(key);
        }
        self.router.remove_peer(&peer.ufrag, key);
        if let Some(t) = peer.timer {
            self.timers.remove(&(t, key));
        }
    }
}
