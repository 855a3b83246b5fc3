//! The data-channel relay: a message a participant sends on its publisher connection reaches
//! everyone else in the room on the server's `chorus` channel of their subscriber connection,
//! wrapped in a JSON envelope naming the sender; at most `media.data_messages_per_sec` per
//! sender (with a burst), the rest dropped as `data_rate_limited`.

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
            let sent = peer
                .pc
                .data_channel(dc)
                .map(|mut c| c.send_text(now, envelope.clone()));
            match sent {
                Some(Ok(())) => {
                    self.metrics.data_messages.with_label_values(&["out"]).inc();
                    self.mark_dirty(sub);
                }
                _ => self.drop_reason("data_send_failed"),
            }
        }
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
