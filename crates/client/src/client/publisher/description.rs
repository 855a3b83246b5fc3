//! The publisher's SDP: its offer, a browser's (one `sendonly` section per track with its
//! `msid`, simulcast as `a=rid`/`a=simulcast` (RFC 8853) or a plain `a=ssrc`, our host
//! candidate, no trickle), and what the server's answer keeps of it (payload type and header
//! extension ids per section). Read and written through [`super::super::sdp`].

use std::collections::HashMap;
use std::net::SocketAddr;

use chorus_signal::protocol::TrackKind;
use rtc::sdp::direction::Direction;
use rtc::sdp::SessionDescription;

use super::super::sdp::{self, Ours, RtpSection, Setup};
use super::tracks::{Codec, ExtensionIds, Track};

/// The header extensions the publisher offers, with their ids.
pub(super) const EXT_MID: (u8, &str) = (1, rtc::sdp::extmap::SDES_MID_URI);
pub(super) const EXT_ABS_SEND_TIME: (u8, &str) = (2, crate::capture_clock::ABS_SEND_TIME_URI);
pub(super) const EXT_ABS_CAPTURE_TIME: (u8, &str) = (3, crate::capture_clock::ABS_CAPTURE_TIME_URI);
pub(super) const EXT_AUDIO_LEVEL: (u8, &str) = (4, crate::media::AUDIO_LEVEL_URI);
pub(super) const EXT_TRANSPORT_CC: (u8, &str) = (5, rtc::sdp::extmap::TRANSPORT_CC_URI);
pub(super) const EXT_RID: (u8, &str) = (10, rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI);

/// How a codec is offered: payload type, rtpmap and fmtp.
pub(super) fn offered(codec: Codec) -> sdp::Codec {
    let (payload_type, rtpmap, fmtp) = match codec {
        Codec::Opus => (111, "opus/48000/2", "minptime=10;useinbandfec=1"),
        Codec::Vp8 => (96, "VP8/90000", ""),
        Codec::Vp9 => (98, "VP9/90000", "profile-id=0"),
        Codec::Av1 => (45, "AV1/90000", ""),
    };
    sdp::Codec {
        payload_type,
        rtpmap,
        fmtp,
    }
}

/// Our offer: one `sendonly` section per track, `local` as the host candidate in each.
pub(super) fn offer(
    tracks: &[Track],
    ours: &Ours,
    local: SocketAddr,
    cname: &str,
) -> SessionDescription {
    let mids: Vec<&str> = tracks
        .iter()
        .map(|t| std::str::from_utf8(&t.mid).unwrap_or("0"))
        .collect();
    let stream = tracks.first().map_or("-", |t| t.stream_id.as_str());
    let mut offer = sdp::offer_session(&mids, Some(stream));
    for (track, mid) in tracks.iter().zip(mids) {
        let (kind, feedback, extensions): (_, &[&str], _) = match track.kind {
            TrackKind::Audio => (
                "audio",
                &["transport-cc"],
                [
                    EXT_MID,
                    EXT_ABS_SEND_TIME,
                    EXT_ABS_CAPTURE_TIME,
                    EXT_TRANSPORT_CC,
                    EXT_AUDIO_LEVEL,
                ],
            ),
            TrackKind::Video => (
                "video",
                &["transport-cc", "nack", "nack pli", "ccm fir"],
                [
                    EXT_MID,
                    EXT_ABS_SEND_TIME,
                    EXT_ABS_CAPTURE_TIME,
                    EXT_TRANSPORT_CC,
                    EXT_RID,
                ],
            ),
        };
        let mut m = RtpSection {
            kind,
            mid,
            codecs: &[offered(track.codec)],
            feedback,
            extensions: &extensions,
            direction: Direction::SendOnly,
        }
        .build(ours, Setup::ActPass);
        m.attributes.push(sdp::value(
            "msid",
            format!("{} {}", track.stream_id, track.track_id),
        ));
        let simulcast = track.layers.iter().any(|l| !l.rid.is_empty());
        if simulcast {
            let rids: Vec<&str> = track
                .layers
                .iter()
                .map(|l| std::str::from_utf8(&l.rid).unwrap_or(""))
                .collect();
            for rid in &rids {
                m.attributes.push(sdp::value("rid", format!("{rid} send")));
            }
            m.attributes
                .push(sdp::value("simulcast", format!("send {}", rids.join(";"))));
        } else if let Some(layer) = track.layers.first() {
            m.attributes
                .push(sdp::value("ssrc", format!("{} cname:{cname}", layer.ssrc)));
            m.attributes.push(sdp::value(
                "ssrc",
                format!("{} msid:{} {}", layer.ssrc, track.stream_id, track.track_id),
            ));
        }
        sdp::add_host_candidate(&mut m, local);
        offer.media_descriptions.push(m);
    }
    offer
}

/// What the answer says about one of our sections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct AnsweredSection {
    pub(super) payload_type: Option<u8>,
    pub(super) extensions: ExtensionIds,
}

/// The accepted sections of an answer by mid: the payload type chosen and the extension ids
/// kept. A section with port 0 is rejected and left out.
pub(super) fn parse_answer(answer: &SessionDescription) -> HashMap<String, AnsweredSection> {
    let mut out = HashMap::new();
    for m in &answer.media_descriptions {
        if sdp::is_rejected(m) {
            continue;
        }
        let Some(mid) = sdp::mid(m) else {
            continue;
        };
        let mut answered = AnsweredSection {
            payload_type: sdp::first_payload_type(m),
            ..Default::default()
        };
        for (id, uri) in sdp::extensions(m) {
            // The one-byte header form carries ids 1-14.
            let Some(id) = u8::try_from(id).ok().filter(|id| (1..=14).contains(id)) else {
                continue;
            };
            let ids = &mut answered.extensions;
            for (slot, (_, known)) in [
                (&mut ids.mid, EXT_MID),
                (&mut ids.rid, EXT_RID),
                (&mut ids.abs_send_time, EXT_ABS_SEND_TIME),
                (&mut ids.abs_capture_time, EXT_ABS_CAPTURE_TIME),
                (&mut ids.audio_level, EXT_AUDIO_LEVEL),
                (&mut ids.transport_cc, EXT_TRANSPORT_CC),
            ] {
                if uri == known {
                    *slot = id;
                }
            }
        }
        out.insert(mid.to_owned(), answered);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_decides_payload_types_and_extension_ids() {
        let answer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                      m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                      m=video 9 UDP/TLS/RTP/SAVPF 100\r\na=mid:1\r\n\
                      a=extmap:7 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
                      a=extmap:15 http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time\r\n\
                      a=extmap:2/sendrecv http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n";
        let parsed = parse_answer(&sdp::parse(answer).expect("SDP"));
        assert!(!parsed.contains_key("0"), "a rejected section");
        let video = parsed.get("1").expect("video");
        assert_eq!(video.payload_type, Some(100));
        assert_eq!(video.extensions.mid, 7);
        assert_eq!(video.extensions.abs_send_time, 2);
        assert_eq!(
            video.extensions.abs_capture_time, 0,
            "15 needs the two-byte form"
        );
        assert_eq!(video.extensions.rid, 0);
    }
}
