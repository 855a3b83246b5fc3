//! Published tracks as the core handles them: publication on a track's first packet, mute,
//! unpublication, and the packet path (one incoming packet handed to the forwarder of every
//! downtrack), with keyframe requests back to the publisher.

use super::random_id;
use super::{queue_for, Core};
use crate::downtrack::{downtrack_header, resolve_leg};
use crate::egress::{seal, Sent};
use crate::forwarder::{Source, Verdict};
use crate::metrics::KindCounters;
use crate::simulcast::{order_rids, Layer, LAYER_TIMEOUT, MAX_LAYERS};
use crate::track::PublishedTrack;
use crate::types::{Origin, PeerRole, RoomEvent, TrackKind};
use crate::types::{ParticipantKey, PeerKey, TrackKey};
use crate::SfuError;
use chorus_rtp::VideoCodec;
use rtc::peer_connection::event::RTCTrackEventInit;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use std::rc::Rc;
use std::time::Instant;
use tracing::{debug, info, warn};

impl Core {
    /// The packet path: one publisher packet to every downtrack of its track.
    pub(crate) fn forward(
        &mut self,
        now: Instant,
        key: PeerKey,
        track_id: &str,
        packet: rtc::rtp::Packet,
    ) {
        let Some(tk) = self
            .peers
            .get(&key)
            .and_then(|p| p.inbound.get(track_id))
            .copied()
        else {
            self.drop_reason("unknown_track");
            return;
        };
        let Some(track) = self.tracks.get_mut(&tk) else {
            return;
        };
        if track.muted {
            // What a muted track still sends (comfort noise, black frames) reaches nobody.
            self.drops.muted.inc();
            return;
        }
        let publisher_pc = self.peers.get_mut(&key).map(|p| &mut p.pc);
        let Some(layer) = track.layer_of(packet.header.ssrc, publisher_pc) else {
            // An SSRC the negotiated layers do not account for.
            self.drops.other_layer.inc();
            return;
        };
        track.counters.packets_in.inc();
        track.counters.bytes_in.inc_by(packet.payload.len() as u64);
        // Simulcast: which layers are flowing, so a downtrack whose layer paused falls back.
        let flowing = if track.layers.len() > 1 {
            track.layers[usize::from(layer)].last_packet = Some(now);
            track
                .layers
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    l.last_packet
                        .is_some_and(|t| now.saturating_duration_since(t) < LAYER_TIMEOUT)
                })
                .fold(0u8, |m, (i, _)| m | (1 << i))
        } else {
            0
        };
        let mut wanted_keyframe = false;
        // Shared by every downtrack's send history (one allocation per incoming packet).
        let packet = Rc::new(packet);
        let source = Source::new(
            track.video_codec,
            layer,
            flowing,
            packet.header.sequence_number,
            packet.header.timestamp,
            &packet.payload,
        );
        for dt in &mut track.downtracks {
            let Some(sub) = self.peers.get_mut(&dt.peer) else {
                continue;
            };
            let Some(dest) = sub.dest.filter(|_| sub.connected && dt.negotiated) else {
                self.drops.not_ready.inc();
                continue;
            };
            if dt.params.is_none() {
                // Once per negotiation; a video downtrack that still waits for its first
                // keyframe asks for one below.
                dt.params = resolve_leg(&mut sub.pc, dt.sender, &track.pt_mime, &track.ext_uri);
            }
            let Some(params) = &dt.params else {
                self.drops.not_negotiated.inc();
                continue;
            };
            let Some(out_pt) = params.out_pt(packet.header.payload_type) else {
                self.drops.unknown_payload_type.inc();
                continue;
            };
            let Some(srtp) = sub.pc.local_srtp_context() else {
                self.drops.not_ready.inc();
                continue;
            };
            let (seq, timestamp, payload) = match dt.forwarder.forward(now, &source) {
                Verdict::Send {
                    seq,
                    timestamp,
                    payload,
                    switched,
                } => {
                    if switched {
                        self.metrics.layer_switches.inc();
                    }
                    (seq, timestamp, payload)
                }
                Verdict::Skip => continue,
                Verdict::WaitingKeyframe => {
                    self.drops.waiting_keyframe.inc();
                    wanted_keyframe = true;
                    continue;
                }
                Verdict::TooOld => {
                    self.drops.too_old.inc();
                    continue;
                }
            };
            let mut header = std::mem::take(&mut dt.header);
            downtrack_header(&mut header, &packet.header, params, out_pt, seq, timestamp);
            let bytes = payload.len();
            let (sealed, header) = seal(srtp, &mut self.scratch, header, payload.clone());
            dt.header = header;
            match sealed {
                Ok(datagram) => {
                    queue_for(&mut self.outbox, &mut self.tcp_outbox, dest, datagram);
                    dt.forwarder.sent(now);
                    dt.stats.sent(now, timestamp, bytes);
                    dt.history.record(Sent {
                        source: Rc::clone(&packet),
                        payload,
                        seq,
                        timestamp,
                        payload_type: out_pt,
                    });
                    track.counters.packets_out.inc();
                    track.counters.bytes_out.inc_by(bytes as u64);
                }
                Err(e) => {
                    debug!(track = %track.id, "egress refused: {e}");
                    self.drops.write_failed.inc();
                }
            }
        }
        if wanted_keyframe {
            self.request_keyframe(now, tk, layer);
        }
    }

    /// Asks for a keyframe of the layer the downtrack of `tk` on subscriber peer `peer`
    /// forwards (or waits for).
    pub(crate) fn downtrack_keyframe(&mut self, now: Instant, tk: TrackKey, peer: PeerKey) {
        let layer = self.tracks.get(&tk).and_then(|t| {
            t.downtracks
                .iter()
                .find(|d| d.peer == peer)
                .map(|d| d.forwarder.keyframe_layer())
        });
        if let Some(layer) = layer {
            self.request_keyframe(now, tk, layer);
        }
    }

    /// Asks the publisher of `tk` for a keyframe of `layer`, at most once per throttle interval
    /// per layer.
    pub(crate) fn request_keyframe(&mut self, now: Instant, tk: TrackKey, layer: u8) {
        let Some(track) = self.tracks.get_mut(&tk) else {
            return;
        };
        if track.kind != TrackKind::Video {
            return;
        }
        let Some(l) = track.layers.get_mut(usize::from(layer)) else {
            return;
        };
        if l.ssrc == 0 || !l.throttle.request(now) {
            return;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: l.ssrc,
        };
        let peer_key = track.peer;
        if let Some(peer) = self.peers.get_mut(&peer_key) {
            if let Some(mut receiver) = peer.pc.rtp_receiver(track.receiver) {
                if let Err(e) = receiver.write_rtcp(now, vec![Box::new(pli)]) {
                    debug!("PLI write failed: {e}");
                }
            }
            self.mark_dirty(peer_key);
        }
    }

    /// A publisher's new inbound track: published in its room, and subscribed to by everyone
    /// who subscribes automatically.
    pub(crate) fn publish_track(&mut self, now: Instant, key: PeerKey, init: RTCTrackEventInit) {
        let tk = self.key();
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.role != PeerRole::Publisher || peer.inbound.contains_key(&init.track_id) {
            return; // a further simulcast layer of a known track: bound on its first packet
        }
        let participant = peer.participant;
        let Some(mut receiver) = peer.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let kind = match receiver.track().kind() {
            RtpCodecKind::Audio => TrackKind::Audio,
            _ => TrackKind::Video,
        };
        let params = receiver.get_parameters().rtp_parameters.clone();
        let Some(codec) = params.codecs.first().map(|c| c.rtp_codec.clone()) else {
            warn!("published track has no negotiated codec");
            return;
        };
        let id = random_id("TR_");
        let video_codec = (kind == TrackKind::Video)
            .then(|| VideoCodec::from_mime(&codec.mime_type))
            .flatten();
        let rids: Vec<String> = receiver
            .track()
            .codings()
            .iter()
            .map(|c| c.rtp_coding_parameters.rid.clone())
            .filter(|r| !r.is_empty())
            .collect();
        let pli_interval = self.config.pli_throttle();
        let layers = if rids.len() > 1 {
            order_rids(&rids)
                .into_iter()
                // Layer sets are bit masks of a byte; more than a few layers is no real sender.
                .take(MAX_LAYERS)
                .map(|rid| {
                    let ssrc = if init.rid.as_deref() == Some(rid.as_str()) {
                        init.ssrc
                    } else {
                        0
                    };
                    Layer::new(rid, ssrc, pli_interval)
                })
                .collect()
        } else {
            vec![Layer::new(String::new(), init.ssrc, pli_interval)]
        };
        let track = PublishedTrack {
            id: id.clone(),
            kind,
            publisher: participant,
            peer: key,
            receiver: init.receiver_id,
            codec,
            pt_mime: params
                .codecs
                .iter()
                .map(|c| {
                    (
                        c.payload_type,
                        c.rtp_codec.mime_type.to_ascii_lowercase(),
                        c.rtp_codec.sdp_fmtp_line.clone(),
                    )
                })
                .collect(),
            ext_uri: params
                .header_extensions
                .iter()
                .map(|h| (h.id as u8, h.uri.clone()))
                .collect(),
            publisher_track_id: init.track_id.clone(),
            video_codec,
            layers,
            muted: false,
            counters: KindCounters::new(&self.metrics, kind.as_str()),
            downtracks: Vec::new(),
        };
        let desc = track.desc();
        peer.inbound.insert(init.track_id, tk);
        self.tracks.insert(tk, track);
        self.track_ids.insert(id, tk);
        self.metrics
            .published_tracks
            .with_label_values(&[kind.as_str()])
            .inc();
        let Some(p) = self.participants.get_mut(&participant) else {
            return;
        };
        p.published.push(tk);
        let (pid, room) = (p.id.clone(), p.room.clone());
        info!(participant = %pid, track = %desc.id, kind = kind.as_str(), mime = %desc.mime_type, "track published");
        if let Some(r) = self.rooms.get_mut(&room) {
            r.tracks.push(tk);
        }
        self.broadcast(
            &room,
            None,
            RoomEvent::TrackPublished {
                participant_id: pid,
                track: desc,
            },
        );
        let members = self.room_members(&room);
        for m in members {
            let auto = self.participants.get(&m).is_some_and(|p| {
                m != participant
                    && p.request.auto_subscribe
                    && p.request.origin == Origin::WebSocket
            });
            if auto && self.add_downtrack(m, tk) {
                self.negotiate(now, m);
            }
        }
    }

    /// Mutes or unmutes one of `participant`'s tracks and tells the room.
    pub(crate) fn mute(
        &mut self,
        participant: ParticipantKey,
        track_id: String,
        muted: bool,
    ) -> Result<(), SfuError> {
        let tk = self
            .track_ids
            .get(&track_id)
            .copied()
            .filter(|tk| {
                self.tracks
                    .get(tk)
                    .is_some_and(|t| t.publisher == participant)
            })
            .ok_or_else(|| SfuError::UnknownTrack(track_id.clone()))?;
        let Some(track) = self.tracks.get_mut(&tk) else {
            return Err(SfuError::UnknownTrack(track_id));
        };
        if track.muted == muted {
            return Ok(());
        }
        track.muted = muted;
        if !muted {
            // Packets were dropped while muted: continue the numbering, and restart video on a
            // keyframe, since what follows may reference frames nobody received.
            let video = track.video_codec.is_some();
            for dt in &mut track.downtracks {
                dt.forwarder.resume(video);
            }
        }
        let (pid, room) = match self.participants.get(&participant) {
            Some(p) => (p.id.clone(), p.room.clone()),
            None => return Err(SfuError::Gone),
        };
        self.broadcast(
            &room,
            None,
            RoomEvent::TrackMuted {
                participant_id: pid,
                track_id,
                muted,
            },
        );
        Ok(())
    }

    /// Removes a track: every downtrack of it goes, its subscribers renegotiate.
    pub(crate) fn unpublish_track(&mut self, now: Instant, tk: TrackKey) {
        let Some(track) = self.tracks.remove(&tk) else {
            return;
        };
        self.track_ids.remove(&track.id);
        self.metrics
            .published_tracks
            .with_label_values(&[track.kind.as_str()])
            .dec();
        let mut renegotiate = Vec::new();
        for dt in &track.downtracks {
            self.metrics
                .subscribed_tracks
                .with_label_values(&[track.kind.as_str()])
                .dec();
            if let Some(peer) = self.peers.get_mut(&dt.peer) {
                peer.outbound.remove(&track.id);
                if let Err(e) = peer.pc.remove_track(dt.sender) {
                    debug!("remove_track: {e}");
                }
            }
            if let Some(p) = self.participants.get_mut(&dt.participant) {
                p.subscriptions.retain(|t| *t != tk);
            }
            renegotiate.push(dt.participant);
        }
        let Some(p) = self.participants.get_mut(&track.publisher) else {
            return;
        };
        p.published.retain(|t| *t != tk);
        let (pid, room) = (p.id.clone(), p.room.clone());
        if let Some(r) = self.rooms.get_mut(&room) {
            r.tracks.retain(|t| *t != tk);
        }
        self.broadcast(
            &room,
            Some(track.publisher),
            RoomEvent::TrackUnpublished {
                participant_id: pid,
                track_id: track.id.clone(),
            },
        );
        for sub in renegotiate {
            self.negotiate(now, sub);
        }
    }
}
