//! A subscriber's copy of a published track: the rtc sender it writes to, how the
//! publisher's payload types and header extensions map onto the subscriber's leg, and its
//! [`Forwarder`]. Adding and removing downtracks (subscribing) lives here too.

use rand::Rng;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection};
use rtc::sdp::extmap::{
    SDES_MID_URI, SDES_REPAIR_RTP_STREAM_ID_URI, SDES_RTP_STREAM_ID_URI, TRANSPORT_CC_URI,
};
use tracing::{debug, warn};

use crate::core::{Core, ParticipantKey, PeerKey, TrackKey};
use crate::forwarder::Forwarder;
use crate::types::TrackKind;

/// A subscriber's copy of a published track.
pub(crate) struct DownTrack {
    /// The subscriber.
    pub(crate) participant: ParticipantKey,
    /// The subscriber's connection.
    pub(crate) peer: PeerKey,
    /// The rtc sender on the subscriber's connection.
    pub(crate) sender: RTCRtpSenderId,
    /// Set once the subscriber's answer covering this downtrack is applied.
    pub(crate) negotiated: bool,
    /// Layer choice and header rewriting.
    pub(crate) forwarder: Forwarder,
    /// Resolved on the first packet after negotiation.
    pub(crate) params: Option<LegParams>,
}

/// Header mappings from the publisher's leg to one subscriber's leg.
pub(crate) struct LegParams {
    /// The SSRC the sender currently sends with (the stack may renumber on renegotiation).
    pub(crate) ssrc: u32,
    /// Incoming payload type -> outgoing payload type.
    pub(crate) pt: Vec<(u8, u8)>,
    /// Incoming extension id -> outgoing extension id.
    pub(crate) ext: Vec<(u8, u8)>,
    /// The `sdes:mid` extension id and value on the subscriber's leg.
    pub(crate) mid: Option<(u8, bytes::Bytes)>,
}

impl LegParams {
    /// The subscriber leg's payload type for the publisher leg's `pt`.
    pub(crate) fn out_pt(&self, pt: u8) -> Option<u8> {
        self.pt.iter().find(|(i, _)| *i == pt).map(|&(_, o)| o)
    }
}

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

pub(crate) fn downtrack_header(
    incoming: &rtc::rtp::header::Header,
    params: &LegParams,
    payload_type: u8,
    sequence_number: u16,
    timestamp: u32,
) -> rtc::rtp::header::Header {
    let mut header = rtc::rtp::header::Header {
        version: 2,
        padding: incoming.padding,
        marker: incoming.marker,
        payload_type,
        sequence_number,
        timestamp,
        ssrc: params.ssrc,
        csrc: incoming.csrc.clone(),
        extensions: Vec::with_capacity(params.ext.len() + 1),
        ..Default::default()
    };
    for e in &incoming.extensions {
        if let Some(&(_, out_id)) = params.ext.iter().find(|(i, _)| *i == e.id) {
            // Ids come from our own negotiation (1..=14), so this cannot fail in practice;
            // an extension that does not fit is dropped rather than the packet.
            let _ = header.set_extension(out_id, e.payload.clone());
        }
    }
    if let Some((id, mid)) = &params.mid {
        let _ = header.set_extension(*id, mid.clone());
    }
    header
}

/// Works out how packets of a published track map onto one subscriber's negotiated leg.
pub(crate) fn resolve_leg(
    pc: &mut RTCPeerConnection,
    sender: RTCRtpSenderId,
    pt_mime: &[(u8, String, String)],
    ext_uri: &[(u8, String)],
) -> Option<LegParams> {
    let mid = pc
        .rtp_transceiver(sender.into())
        .and_then(|t| t.mid().clone());
    let mut s = pc.rtp_sender(sender)?;
    let ssrc = s.track().ssrcs().next()?;
    let params = s.get_parameters();
    let codecs = &params.rtp_parameters.codecs;
    let pt: Vec<(u8, u8)> = pt_mime
        .iter()
        .filter_map(|(in_pt, mime, fmtp)| {
            let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
                c.rtp_codec.mime_type.eq_ignore_ascii_case(mime)
            };
            // Prefer the same profile (H264 profile, VP9 profile-id); else any of the codec.
            codecs
                .iter()
                .filter(same_mime)
                .find(|c| chorus_rtp::same_profile(mime, fmtp, &c.rtp_codec.sdp_fmtp_line))
                .or_else(|| codecs.iter().find(same_mime))
                .map(|c| (*in_pt, c.payload_type))
        })
        .collect();
    if pt.is_empty() {
        return None;
    }
    let exts = &params.rtp_parameters.header_extensions;
    let ext: Vec<(u8, u8)> = ext_uri
        .iter()
        // mid is per leg (set separately); transport-wide sequence numbers are per transport
        // and must not leak from the publisher's leg.
        // The publisher's rid names its layer, not the subscriber's single stream.
        .filter(|(_, uri)| {
            ![
                SDES_MID_URI,
                TRANSPORT_CC_URI,
                SDES_RTP_STREAM_ID_URI,
                SDES_REPAIR_RTP_STREAM_ID_URI,
            ]
            .contains(&uri.as_str())
        })
        .filter_map(|(in_id, uri)| {
            exts.iter()
                .find(|h| &h.uri == uri)
                .map(|h| (*in_id, h.id as u8))
        })
        .collect();
    let mid = mid.and_then(|m| {
        exts.iter()
            .find(|h| h.uri == SDES_MID_URI)
            .map(|h| (h.id as u8, bytes::Bytes::from(m.into_bytes())))
    });
    Some(LegParams { ssrc, pt, ext, mid })
}
