//! Conversions between the media plane's types and the protocol's: tracks, participants,
//! room events, qualities and connection roles, and counting an SDP's media sections (what
//! the per-offer cap checks, for WebSocket offers and WHIP bodies alike).

use chorus_sfu::{ParticipantDesc, PeerRole, RoomEvent, TrackDesc, TrackKind as SfuKind};

use crate::protocol::{
    IceCandidate, ParticipantInfo, Quality, ServerMessage, Target, TrackInfo, TrackKind,
};

/// The media plane's quality for a protocol quality.
pub(crate) fn sfu_quality(q: Quality) -> chorus_sfu::Quality {
    match q {
        Quality::Low => chorus_sfu::Quality::Low,
        Quality::Medium => chorus_sfu::Quality::Medium,
        Quality::High => chorus_sfu::Quality::High,
    }
}

/// Converts a media-plane track to its protocol shape.
pub fn track_info(t: &TrackDesc) -> TrackInfo {
    TrackInfo {
        id: t.id.clone(),
        kind: match t.kind {
            SfuKind::Audio => TrackKind::Audio,
            SfuKind::Video => TrackKind::Video,
        },
        mime_type: t.mime_type.clone(),
        publisher_track_id: t.publisher_track_id.clone(),
        muted: t.muted,
        layers: t.layers.clone(),
    }
}

/// Converts a media-plane participant to its protocol shape.
pub fn participant_info(p: &ParticipantDesc) -> ParticipantInfo {
    ParticipantInfo {
        id: p.id.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
        tracks: p.tracks.iter().map(track_info).collect(),
    }
}

/// The media plane's connection role for a protocol target.
pub(crate) fn role(t: Target) -> PeerRole {
    match t {
        Target::Publisher => PeerRole::Publisher,
        Target::Subscriber => PeerRole::Subscriber,
    }
}

/// The message a room event becomes; `Err(reason)` for [`RoomEvent::Closed`] (the
/// participant was removed).
pub(crate) fn event_message(ev: RoomEvent) -> Result<ServerMessage, String> {
    Ok(match ev {
        RoomEvent::Closed { reason } => return Err(reason),
        RoomEvent::ParticipantJoined(p) => ServerMessage::ParticipantJoined {
            participant: participant_info(&p),
        },
        RoomEvent::ParticipantLeft { participant_id } => {
            ServerMessage::ParticipantLeft { participant_id }
        }
        RoomEvent::TrackPublished {
            participant_id,
            track,
        } => ServerMessage::TrackPublished {
            participant_id,
            track: track_info(&track),
        },
        RoomEvent::TrackUnpublished {
            participant_id,
            track_id,
        } => ServerMessage::TrackUnpublished {
            participant_id,
            track_id,
        },
        RoomEvent::TrackMuted {
            participant_id,
            track_id,
            muted,
        } => ServerMessage::TrackMuted {
            participant_id,
            track_id,
            muted,
        },
        RoomEvent::SubscriberOffer(sdp) => ServerMessage::Offer { sdp },
        RoomEvent::Candidate { role, candidate } => ServerMessage::Candidate {
            target: match role {
                PeerRole::Publisher => Target::Publisher,
                PeerRole::Subscriber => Target::Subscriber,
            },
            candidate: IceCandidate {
                candidate: candidate.candidate,
                sdp_mid: candidate.sdp_mid,
                sdp_m_line_index: candidate.sdp_mline_index,
                username_fragment: candidate.username_fragment,
            },
        },
    })
}

/// The number of media sections in an SDP.
pub fn media_sections(sdp: &str) -> usize {
    sdp.lines().filter(|l| l.starts_with("m=")).count()
}
