//! The data-channel relay: a message a participant sends on its publisher connection reaches
//! everyone else in the room on the server's `chorus` channel of their subscriber connection,
//! wrapped in a JSON envelope naming the sender; at most `media.data_messages_per_sec` per
//! sender (with a burst), the rest dropped as `data_rate_limited`.
//!
//! Bytes queued toward a receiver are bounded: SCTP keeps every byte handed to a reliable
//! channel until the receiver acknowledges it, so a receiver that reads slowly (its receive
//! window closed) or is gone but not yet timed out would make the server's send queue grow
//! with every message relayed to it. A copy that would take a receiver's unacknowledged bytes
//! (the channel's `outstanding_bytes`: handed to the channel, not yet acknowledged or
//! abandoned) beyond `media.data_channel_max_buffered_bytes` is dropped for that receiver
//! alone, as `data_backlog`; the others still get it.

use std::time::Instant;

use rtc::data_channel::RTCDataChannelMessage;

use super::Core;
use crate::types::PeerRole;
use crate::types::{ParticipantKey, PeerKey};

/// Label of the data channel the server opens on each subscriber connection.
pub const DATA_CHANNEL_LABEL: &str = "chorus";
/// Largest relayed data message (the JSON envelope), in bytes: the default SCTP
/// `max-message-size` every browser accepts.
const MAX_DATA_MESSAGE: usize = 64 * 1024;

/// Why a copy of a data message did not reach a receiver's channel.
enum NotSent {
    /// The receiver's unacknowledged bytes would exceed the bound.
    Backlogged,
    /// The stack refused the message.
    Failed,
}
use NotSent::{Backlogged, Failed};

impl Core {
    /// Relays a data message from a publisher connection to everyone else in the room, wrapped
    /// in a JSON envelope naming the sender.
    pub(crate) fn relay_data(&mut self, now: Instant, key: PeerKey, msg: RTCDataChannelMessage) {
        let Some(peer) = self.peers.get(&key) else {
            return;
        };
        if peer.role != PeerRole::Publisher {
            self.drop_reason("data_on_subscriber");
            return;
        }
        let sender = peer.participant;
        let Some(p) = self.participants.get(&sender) else {
            return;
        };
        if !p.request.permissions.publish_data {
            self.drop_reason("data_not_permitted");
            return;
        }
        if !self.take_data_token(now, sender) {
            self.drop_reason("data_rate_limited");
            return;
        }
        let Some(p) = self.participants.get(&sender) else {
            return;
        };

        if msg.data.len() > MAX_DATA_MESSAGE {
            self.drop_reason("data_too_large");
            return;
        }
        let envelope = if msg.is_string {
            match std::str::from_utf8(&msg.data) {
                Ok(text) => serde_json::json!({ "from": p.id, "text": text }),
                Err(_) => {
                    self.drop_reason("data_malformed");
                    return;
                }
            }
        } else {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&msg.data);
            serde_json::json!({ "from": p.id, "binary": b64 })
        }
        .to_string();
        // The envelope is what must fit the receivers' SCTP message size (RFC 8841 default).
        if envelope.len() > MAX_DATA_MESSAGE {
            self.drop_reason("data_too_large");
            return;
        }
        self.metrics.data_messages.with_label_values(&["in"]).inc();
        let members = self.room_members(&p.room);
        for m in members {
            if m == sender {
                continue;
            }
            let Some(sub) = self.participants.get(&m).and_then(|p| p.subscriber) else {
                continue;
            };
            let Some(peer) = self.peers.get_mut(&sub) else {
                continue;
            };
            let Some(dc) = peer.data_channel else {
                self.drop_reason("data_channel_not_open");
                continue;
            };
            let max_buffered = self.config.data_channel_max_buffered_bytes;
            let sent = peer.pc.data_channel(dc).map(|mut c| {
                if c.outstanding_bytes().saturating_add(envelope.len()) > max_buffered {
                    return Err(Backlogged);
                }
                c.send_text(now, envelope.clone()).map_err(|_| Failed)
            });
            match sent {
                Some(Ok(())) => {
                    self.metrics.data_messages.with_label_values(&["out"]).inc();
                    self.mark_dirty(sub);
                }
                Some(Err(Backlogged)) => self.drop_reason("data_backlog"),
                Some(Err(Failed)) | None => self.drop_reason("data_send_failed"),
            }
        }
    }

    /// Bytes relayed toward `participant` on its `chorus` data channel that its connection has
    /// not acknowledged yet (what the server holds for it, at most
    /// `media.data_channel_max_buffered_bytes`); `None` while it has no open channel.
    pub fn data_backlog(&mut self, participant: ParticipantKey) -> Option<usize> {
        let sub = self.participants.get(&participant)?.subscriber?;
        let peer = self.peers.get_mut(&sub)?;
        let dc = peer.data_channel?;
        Some(peer.pc.data_channel(dc)?.outstanding_bytes())
    }

    /// Takes one of `participant`'s data-message tokens (`media.data_messages_per_sec`, burst
    /// `media.data_message_burst`); false when it has none left.
    fn take_data_token(&mut self, now: Instant, participant: ParticipantKey) -> bool {
        let rate = f64::from(self.config.data_messages_per_sec);
        let burst = f64::from(self.config.data_message_burst);
        let Some(p) = self.participants.get_mut(&participant) else {
            return false;
        };
        let elapsed = now.saturating_duration_since(p.data_refilled).as_secs_f64();
        p.data_refilled = now;
        p.data_tokens = (p.data_tokens + elapsed * rate).min(burst);
        if p.data_tokens >= 1.0 {
            p.data_tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
