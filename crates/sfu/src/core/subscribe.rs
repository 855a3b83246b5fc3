//! What a subscriber receives: subscribing to and unsubscribing from a room's tracks, and the
//! simulcast quality wanted per track.

use std::time::Instant;

use super::Core;
use crate::downtrack::DownTrack;
use crate::egress::{SendHistory, SenderStats, AUDIO_HISTORY, VIDEO_HISTORY};
use crate::forwarder::Forwarder;
use crate::types::PeerRole;
use crate::types::TrackKind;
use crate::types::{ParticipantKey, TrackKey};
use crate::{Quality, SfuError};
use rand::Rng;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpTransceiverDirection;
use tracing::{debug, warn};

impl Core {
    /// Adds `subscriber`'s downtrack of `tk`; false if it was there already or cannot be.
    pub(crate) fn add_downtrack(&mut self, subscriber: ParticipantKey, tk: TrackKey) -> bool {
        let Some(p) = self.participants.get(&subscriber) else {
            return false;
        };
        let Some(sub_key) = p.subscriber else {
            return false;
        };
        if p.subscriptions.contains(&tk) {
            return false;
        }
        let Some(track) = self.tracks.get(&tk) else {
            return false;
        };
        if track.publisher == subscriber {
            return false;
        }
        let Some(publisher_id) = self
            .participants
            .get(&track.publisher)
            .map(|p| p.id.clone())
        else {
            return false;
        };
        let ssrc: u32 = rand::rng().random();
        let kind = match track.kind {
            TrackKind::Audio => RtpCodecKind::Audio,
            TrackKind::Video => RtpCodecKind::Video,
        };
        let local = MediaStreamTrack::new(
            publisher_id,
            track.id.clone(),
            track.id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: track.codec.clone(),
                ..Default::default()
            }],
        );
        let track_id = track.id.clone();
        let kind_label = track.kind.as_str();
        let Some(peer) = self.peers.get_mut(&sub_key) else {
            return false;
        };
        let sender = match peer.pc.add_track(local) {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot add downtrack: {e}");
                return false;
            }
        };
        // add_track makes a new transceiver sendrecv; the server only ever sends on it.
        if let Some(mut t) = peer.pc.rtp_transceiver(sender.into()) {
            t.set_direction(RTCRtpTransceiverDirection::Sendonly);
        }
        peer.outbound.insert(track_id, tk);
        let mut rng = rand::rng();
        let quality = self
            .participants
            .get(&subscriber)
            .and_then(|p| p.qualities.get(&tk).copied().or(Some(p.request.quality)))
            .unwrap_or_default();
        let dt = DownTrack {
            participant: subscriber,
            peer: sub_key,
            sender,
            negotiated: false,
            forwarder: Forwarder::new(
                quality.layer(track.layers.len()),
                track.video_codec.is_some(),
                track.codec.clock_rate,
                rng.random(),
                rng.random(),
            ),
            params: None,
            header: Default::default(),
            history: SendHistory::new(if track.video_codec.is_some() {
                VIDEO_HISTORY
            } else {
                AUDIO_HISTORY
            }),
            stats: SenderStats::new(track.codec.clock_rate),
        };
        if let Some(t) = self.tracks.get_mut(&tk) {
            t.downtracks.push(dt);
        }
        if let Some(p) = self.participants.get_mut(&subscriber) {
            p.subscriptions.push(tk);
        }
        self.metrics
            .subscribed_tracks
            .with_label_values(&[kind_label])
            .inc();
        true
    }

    /// Removes `subscriber`'s downtrack of `tk`, if any.
    pub(crate) fn remove_downtrack(&mut self, subscriber: ParticipantKey, tk: TrackKey) {
        let Some(track) = self.tracks.get_mut(&tk) else {
            return;
        };
        let Some(pos) = track
            .downtracks
            .iter()
            .position(|d| d.participant == subscriber)
        else {
            return;
        };
        let dt = track.downtracks.swap_remove(pos);
        let track_id = track.id.clone();
        self.metrics
            .subscribed_tracks
            .with_label_values(&[track.kind.as_str()])
            .dec();
        if let Some(peer) = self.peers.get_mut(&dt.peer) {
            peer.outbound.remove(&track_id);
            if let Err(e) = peer.pc.remove_track(dt.sender) {
                debug!("remove_track: {e}");
            }
        }
        if let Some(p) = self.participants.get_mut(&subscriber) {
            p.subscriptions.retain(|t| *t != tk);
        }
    }
}

impl Core {
    /// Subscribes `participant` to (or unsubscribes it from) tracks of its room, then
    /// renegotiates.
    pub(crate) fn set_subscribed(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        track_ids: Vec<String>,
        subscribe: bool,
    ) -> Result<(), SfuError> {
        self.peer_of(participant, PeerRole::Subscriber)?;
        let keys = self.room_tracks(participant, &track_ids)?;
        for tk in keys {
            if subscribe {
                self.add_downtrack(participant, tk);
            } else {
                self.remove_downtrack(participant, tk);
            }
        }
        self.negotiate(now, participant);
        Ok(())
    }

    /// The keys of `track_ids`, each of which must be a track in `participant`'s room.
    pub(crate) fn room_tracks(
        &self,
        participant: ParticipantKey,
        track_ids: &[String],
    ) -> Result<Vec<TrackKey>, SfuError> {
        let room = &self
            .participants
            .get(&participant)
            .ok_or(SfuError::Gone)?
            .room;
        track_ids
            .iter()
            .map(|id| {
                self.track_ids
                    .get(id)
                    .copied()
                    .filter(|tk| {
                        self.tracks.get(tk).is_some_and(|t| {
                            self.participants
                                .get(&t.publisher)
                                .is_some_and(|p| &p.room == room)
                        })
                    })
                    .ok_or_else(|| SfuError::UnknownTrack(id.clone()))
            })
            .collect()
    }

    /// Sets the quality `participant` wants for each of `track_ids`: a subscribed simulcast
    /// track switches to the matching layer on that layer's next keyframe (one is requested).
    pub(crate) fn set_quality(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        track_ids: Vec<String>,
        quality: Quality,
    ) -> Result<(), SfuError> {
        let keys = self.room_tracks(participant, &track_ids)?;
        for tk in keys {
            if let Some(p) = self.participants.get_mut(&participant) {
                p.qualities.insert(tk, quality);
            }
            let Some(track) = self.tracks.get_mut(&tk) else {
                continue;
            };
            let layers = track.layers.len();
            let Some(dt) = track
                .downtracks
                .iter_mut()
                .find(|d| d.participant == participant)
            else {
                continue;
            };
            let wanted = quality.layer(layers);
            if dt.forwarder.set_wanted(wanted) {
                self.request_keyframe(now, tk, wanted);
            }
        }
        Ok(())
    }
}
