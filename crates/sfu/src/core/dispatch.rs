//! The dispatch of session commands onto the core.

use super::Core;
use crate::command::Command;
use crate::types::EngineStats;
use std::time::Instant;

impl Core {
    /// Applies one command from a session at `now`, then drains every peer it touched.
    pub(crate) fn handle_command(&mut self, now: Instant, command: Command) {
        let participant = command.participant();
        self.contained(now, participant, "command", |core| {
            core.apply_command(now, command)
        });
        self.drain(now);
    }

    /// Runs a command that panics, concerning `participant`, through the real dispatch: what
    /// a bug in a command's handling does (fault injection for tests).
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&mut self, now: Instant, participant: u64) {
        self.handle_command(now, Command::Panic { participant });
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
            #[cfg(feature = "fault-injection")]
            Command::Panic { participant } => {
                panic!("injected fault for participant {participant}")
            }
            #[cfg(feature = "fault-injection")]
            Command::PanicEngine => {}
            Command::Leave { participant } => self.remove_participant(now, participant, "left"),
            Command::Resume { participant, reply } => {
                let _ = reply.send(self.resume(now, participant));
            }
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
