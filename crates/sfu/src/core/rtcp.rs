//! What the core does with a subscriber's RTCP, and the RTCP it writes for the packets the
//! lean egress path ([`crate::egress`]) sent: NACKs answered from the downtrack's send
//! history, keyframe requests relayed to the publisher, sender reports every second.

use std::time::Instant;

use rtc::shared::time::SystemInstant;
use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use tracing::debug;

use super::{queue_for, Core};
use crate::downtrack::downtrack_header;
use crate::egress::seal;
use crate::types::{PeerKey, TrackKey};

impl Core {
    /// RTCP a connection's feedback tap delivered: keyframe requests and (on a subscriber
    /// connection) NACKs, already cut to the retransmission budget.
    pub(crate) fn on_feedback(
        &mut self,
        now: Instant,
        key: PeerKey,
        packets: &[Box<dyn rtcp::Packet>],
    ) {
        for p in packets {
            let any = p.as_any();
            if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.resend(now, key, nack);
            } else if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                // A compound packet may address several streams: each request by its own
                // media SSRC, not by the stream the stack filed the compound under.
                for ssrc in p.destination_ssrc() {
                    if let Some(tk) = self.downtrack_by_ssrc(key, ssrc) {
                        self.downtrack_keyframe(now, tk, key);
                    }
                }
            }
        }
    }

    /// The published track whose downtrack on subscriber connection `key` sends as `ssrc`.
    fn downtrack_by_ssrc(&self, key: PeerKey, ssrc: u32) -> Option<TrackKey> {
        let peer = self.peers.get(&key)?;
        peer.outbound.values().copied().find(|tk| {
            self.tracks.get(tk).is_some_and(|t| {
                t.downtracks
                    .iter()
                    .any(|d| d.peer == key && d.params.as_ref().is_some_and(|p| p.ssrc == ssrc))
            })
        })
    }

    /// Sends again what a NACK names and the downtrack's history still holds.
    fn resend(&mut self, _now: Instant, key: PeerKey, nack: &TransportLayerNack) {
        let Some(tk) = self.downtrack_by_ssrc(key, nack.media_ssrc) else {
            return;
        };
        let (Some(track), Some(sub)) = (self.tracks.get_mut(&tk), self.peers.get_mut(&key)) else {
            return;
        };
        let Some(dt) = track.downtracks.iter_mut().find(|d| d.peer == key) else {
            return;
        };
        let (Some(params), Some(dest)) = (&dt.params, sub.dest) else {
            return;
        };
        let Some(srtp) = sub.pc.local_srtp_context() else {
            return;
        };
        for pair in &nack.nacks {
            for seq in *pair {
                let Some(sent) = dt.history.get(seq) else {
                    self.metrics
                        .nack_packets
                        .with_label_values(&["missed"])
                        .inc();
                    continue;
                };
                let mut header = std::mem::take(&mut dt.header);
                downtrack_header(
                    &mut header,
                    &sent.source.header,
                    params,
                    sent.payload_type,
                    sent.seq,
                    sent.timestamp,
                );
                let (sealed, header) = seal(srtp, &mut self.scratch, header, sent.payload.clone());
                dt.header = header;
                match sealed {
                    Ok(datagram) => {
                        queue_for(&mut self.outbox, &mut self.tcp_outbox, dest, datagram);
                        self.metrics
                            .nack_packets
                            .with_label_values(&["resent"])
                            .inc();
                    }
                    Err(e) => debug!("resend refused: {e}"),
                }
            }
        }
    }

    /// Writes a sender report for every downtrack that sent since its last one.
    pub(crate) fn send_reports(&mut self, now: Instant) {
        // Reports carry the wall clock (NTP): the one clock the core reads, once a round.
        let wall = SystemInstant::now(now);
        for track in self.tracks.values_mut() {
            for dt in &mut track.downtracks {
                let Some(params) = &dt.params else {
                    continue;
                };
                let Some(report) = dt.stats.report(now, wall, params.ssrc) else {
                    continue;
                };
                let Some(sub) = self.peers.get_mut(&dt.peer) else {
                    continue;
                };
                let written = sub
                    .pc
                    .rtp_sender(dt.sender)
                    .map(|mut s| s.write_rtcp(now, vec![Box::new(report)]));
                if let Some(Err(e)) = written {
                    debug!("sender report refused: {e}");
                }
                if !sub.dirty {
                    sub.dirty = true;
                    self.dirty.push(dt.peer);
                }
            }
        }
    }
}
