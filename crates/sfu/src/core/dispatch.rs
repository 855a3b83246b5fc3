//! The dispatch of session commands onto the core.

use super::Core;
use crate::command::Command;
use crate::types::EngineStats;
use std::time::Instant;

impl Core {
    /// Applies one command from a session at `now`, then drains every peer it touched.
    pub(crate) fn handle_command(&mut self, now: Instant, command: Command) {
        self.apply_command(now, command);
        self.drain(now);
    }

    fn apply_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Join { request, reply } => {
                let _ = reply.send(self.join(now, request));
            }
            Command::PublisherOffer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.publisher_offer(now, participant, sdp));
            }
            Command::SubscriberAnswer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.subscriber_answer(now, participant, sdp));
            }
            Command::PlaybackOffer {
                participant,
                sdp,
                identity,
                reply,
            } => {
                let _ = reply.send(self.playback_offer(now, participant, sdp, identity));
            }
            Command::Candidate {
                participant,
                role,
                candidate,
                reply,
            } => {
                let _ = reply.send(self.add_candidate(participant, role, candidate));
            }
            Command::Subscribe {
                participant,
                track_ids,
                subscribe,
                reply,
            } => {
                let _ = reply.send(self.set_subscribed(now, participant, track_ids, subscribe));
            }
            Command::SetQuality {
                participant,
                track_ids,
                quality,
                reply,
            } => {
                let _ = reply.send(self.set_quality(now, participant, track_ids, quality));
            }
            Command::Mute {
                participant,
                track_id,
                muted,
                reply,
            } => {
                let _ = reply.send(self.mute(participant, track_id, muted));
            }
            Command::Leave { participant } => self.remove_participant(now, participant, "left"),
            Command::Stats { reply } => {
                let _ = reply.send(EngineStats {
                    rooms: self.rooms.len(),
                    participants: self.participants.len(),
                    peers: self.peers.len(),
                    tracks: self.tracks.len(),
                });
            }
            Command::ListRooms { reply } => {
                let _ = reply.send(self.list_rooms());
            }
            Command::RemoveParticipant {
                room,
                identity,
                reason,
                reply,
            } => {
                let _ = reply.send(self.remove_identity(now, &room, &identity, &reason));
            }
            Command::CloseRoom {
                room,
                reason,
                reply,
            } => {
                let _ = reply.send(self.close_room(now, &room, &reason));
            }
        }
    }
}
