//! A subscriber's copy of a published track: the rtc sender it writes to, how the
//! publisher's payload types and header extensions map onto the subscriber's leg, and its
//! [`Forwarder`]. Adding and removing downtracks (subscribing) lives here too.

use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sdp::extmap::{
    SDES_MID_URI, SDES_REPAIR_RTP_STREAM_ID_URI, SDES_RTP_STREAM_ID_URI, TRANSPORT_CC_URI,
};

use crate::egress::{SendHistory, SenderStats};
use crate::forwarder::Forwarder;
use crate::types::{ParticipantKey, PeerKey};

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
    /// The header of the packet being written, kept so its extension list is reused.
    pub(crate) header: rtc::rtp::header::Header,
    /// What was sent, for NACKs.
    pub(crate) history: SendHistory,
    /// Counts and clock mapping for sender reports.
    pub(crate) stats: SenderStats,
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

/// Writes into `header` the subscriber leg's header for a publisher packet with header
/// `incoming`, reusing `header`'s allocations.
pub(crate) fn downtrack_header(
    header: &mut rtc::rtp::header::Header,
    incoming: &rtc::rtp::header::Header,
    params: &LegParams,
    payload_type: u8,
    sequence_number: u16,
    timestamp: u32,
) {
    header.version = 2;
    header.padding = incoming.padding;
    header.marker = incoming.marker;
    header.payload_type = payload_type;
    header.sequence_number = sequence_number;
    header.timestamp = timestamp;
    header.ssrc = params.ssrc;
    header.csrc.clear();
    header.csrc.extend_from_slice(&incoming.csrc);
    header.extension = false;
    header.extension_profile = 0;
    header.extensions.clear();
    header.extensions_padding = 0;
    // An empty value (legal in the two-byte form only) is skipped: rebuilt into the one-byte
    // form, it made the stack's marshal underflow its length field (a panic with overflow
    // checks, a corrupt extension block without).
    for e in incoming.extensions.iter().filter(|e| !e.payload.is_empty()) {
        if let Some(&(_, out_id)) = params.ext.iter().find(|(i, _)| *i == e.id) {
            // Ids come from our own negotiation (1..=14), so this cannot fail in practice;
            // an extension that does not fit is dropped rather than the packet.
            let _ = header.set_extension(out_id, e.payload.clone());
        }
    }
    if let Some((id, mid)) = &params.mid {
        let _ = header.set_extension(*id, mid.clone());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::rtp::header::{Extension, Header};
    use rtc::shared::marshal::{Marshal, Unmarshal};

    /// Found by the `rtp_rtcp` fuzz target: a publisher's two-byte-form header extension with
    /// an empty value, forwarded, must give a packet that marshals and parses.
    #[test]
    fn an_empty_two_byte_extension_is_not_forwarded() {
        let incoming = Header {
            version: 2,
            extension: true,
            extension_profile: 0x1000,
            extensions: vec![
                Extension {
                    id: 3,
                    payload: Bytes::new(),
                },
                Extension {
                    id: 4,
                    payload: Bytes::from_static(&[1, 2, 3]),
                },
            ],
            ..Default::default()
        };
        let params = LegParams {
            ssrc: 7,
            pt: vec![(96, 96)],
            ext: vec![(3, 5), (4, 6)],
            mid: Some((1, Bytes::from_static(b"0"))),
        };
        let mut header = Header::default();
        // Twice: the second write reuses the first's extension list.
        downtrack_header(&mut header, &incoming, &params, 97, 9, 9);
        downtrack_header(&mut header, &incoming, &params, 96, 1, 2);
        let packet = rtc::rtp::Packet {
            header,
            payload: Bytes::from_static(b"payload"),
        };
        let bytes = packet.marshal().expect("marshals");
        let back = rtc::rtp::Packet::unmarshal(&mut &bytes[..]).expect("parses");
        assert_eq!(back.header.payload_type, 96);
        assert_eq!(back.header.get_extension(5), None);
        assert_eq!(back.header.get_extension(1), Some(Bytes::from_static(b"0")));
        assert_eq!(
            back.header.get_extension(6),
            Some(Bytes::from_static(&[1, 2, 3]))
        );
    }
}
