//! What a subscriber receives: subscribing to and unsubscribing from a room's tracks, and the
//! simulcast quality wanted per track.

use std::time::Instant;

use crate::core::{Core, ParticipantKey, TrackKey};
use crate::types::PeerRole;
use crate::{Quality, SfuError};

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
