//! The receiver's SDP: what it reads from the server's offer (or answer, playing over WHEP),
//! the answer it writes (every offered section accepted receive-only, transport-cc left out,
//! `setup:active`) and its WHEP offer. Read and written through [`super::super::sdp`].

use std::net::SocketAddr;

use chorus_signal::protocol::TrackKind;
use rtc::sdp::direction::Direction;
use rtc::sdp::SessionDescription;

use super::super::error::ClientError;
use super::super::sdp::{self, Codec, Ours, Remote, RtpSection, Setup};

/// A track the server announced it sends, by its (first) SSRC.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OfferedStream {
    pub(super) ssrc: u32,
    pub(super) stream_id: String,
    pub(super) track_id: String,
    pub(super) kind: TrackKind,
    pub(super) mime: Option<String>,
    pub(super) clock_rate: u32,
    pub(super) nack: bool,
    pub(super) pli: bool,
}

/// What an offer tells the receiver.
#[derive(Debug)]
pub(super) struct ParsedOffer {
    pub(super) remote: Remote,
    pub(super) streams: Vec<OfferedStream>,
}

/// Reads the server's ICE credentials, fingerprint, candidates and the tracks it sends (by
/// SSRC) from an offer (or an answer to our offer).
pub(super) fn parse_offer(d: &SessionDescription) -> Result<ParsedOffer, ClientError> {
    let mut offer = ParsedOffer {
        remote: Remote::of(d)?,
        streams: Vec::new(),
    };
    for m in &d.media_descriptions {
        let kind = match m.media_name.media.as_str() {
            "audio" => TrackKind::Audio,
            "video" => TrackKind::Video,
            _ => continue,
        };
        if sdp::is_rejected(m) {
            continue;
        }
        if !matches!(sdp::direction(m), Direction::SendOnly | Direction::SendRecv) {
            continue;
        }
        let codecs = m.codecs();
        let (mime, clock_rate) = sdp::first_payload_type(m)
            .and_then(|pt| codecs.get(&pt))
            .filter(|c| !c.name.is_empty() && c.clock_rate > 0)
            .map(|c| {
                let prefix = if kind == TrackKind::Audio {
                    "audio"
                } else {
                    "video"
                };
                (Some(format!("{prefix}/{}", c.name)), c.clock_rate)
            })
            .unwrap_or((None, 90_000));
        let feedback = |wanted: &str| {
            codecs
                .values()
                .any(|c| c.rtcp_feedback.iter().any(|fb| fb.trim() == wanted))
        };
        let (nack, pli) = (feedback("nack"), feedback("nack pli"));
        let mut ssrcs: Vec<u32> = Vec::new();
        let mut ssrc_msid = None;
        for (ssrc, rest) in sdp::ssrc_lines(m) {
            if !ssrcs.contains(&ssrc) {
                ssrcs.push(ssrc);
            }
            if let Some((s, t)) = rest
                .strip_prefix("msid:")
                .and_then(|v| v.trim().split_once(' '))
            {
                ssrc_msid = Some((s, t));
            }
        }
        let Some((stream_id, track_id)) = sdp::msid(m).or(ssrc_msid) else {
            continue;
        };
        // The first SSRC is the media's (a second would be a repair stream).
        if let Some(ssrc) = ssrcs.first() {
            offer.streams.push(OfferedStream {
                ssrc: *ssrc,
                stream_id: stream_id.to_owned(),
                track_id: track_id.to_owned(),
                kind,
                mime,
                clock_rate,
                nack,
                pli,
            });
        }
    }
    Ok(offer)
}

/// The codecs of the WHEP offer's audio section.
const AUDIO_CODECS: [Codec; 1] = [Codec {
    payload_type: 111,
    rtpmap: "opus/48000/2",
    fmtp: "minptime=10;useinbandfec=1",
}];

/// The codecs of the WHEP offer's video section: every one the client accounts.
const VIDEO_CODECS: [Codec; 4] = [
    Codec {
        payload_type: 96,
        rtpmap: "VP8/90000",
        fmtp: "",
    },
    Codec {
        payload_type: 98,
        rtpmap: "VP9/90000",
        fmtp: "profile-id=0",
    },
    Codec {
        payload_type: 102,
        rtpmap: "H264/90000",
        fmtp: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    },
    Codec {
        payload_type: 45,
        rtpmap: "AV1/90000",
        fmtp: "",
    },
];

/// A `recvonly` offer for one audio and one video track with every codec the client accounts,
/// the header extensions it measures with, NACK/PLI/FIR feedback, and `local` as the one
/// host candidate (gathering is complete: WHEP does not trickle).
pub(super) fn build_offer(local: SocketAddr, ours: &Ours) -> SessionDescription {
    let common = [
        (1, rtc::sdp::extmap::SDES_MID_URI),
        (2, crate::capture_clock::ABS_SEND_TIME_URI),
        (3, crate::capture_clock::ABS_CAPTURE_TIME_URI),
    ];
    let audio_extensions = [
        common[0],
        common[1],
        common[2],
        (4, crate::media::AUDIO_LEVEL_URI),
    ];
    let mut offer = sdp::offer_session(&["0", "1"], None);
    for section in [
        RtpSection {
            kind: "audio",
            mid: "0",
            codecs: &AUDIO_CODECS,
            feedback: &[],
            extensions: &audio_extensions,
            direction: Direction::RecvOnly,
        },
        RtpSection {
            kind: "video",
            mid: "1",
            codecs: &VIDEO_CODECS,
            feedback: &["nack", "nack pli", "ccm fir"],
            extensions: &common,
            direction: Direction::RecvOnly,
        },
    ] {
        let mut m = section.build(ours, Setup::ActPass);
        sdp::add_host_candidate(&mut m, local);
        offer.media_descriptions.push(m);
    }
    offer
}

/// The answer to `offer`: every section accepted as it was offered (codecs, feedback, header
/// extensions other than transport-wide congestion control, which we do not report), receiving
/// only, with our ICE credentials and fingerprint, as the DTLS client.
pub(super) fn build_answer(offer: &SessionDescription, ours: &Ours) -> SessionDescription {
    let mut attributes: Vec<_> = offer
        .attributes
        .iter()
        .filter(|a| a.key == "group" || (a.key == "extmap-allow-mixed" && a.value.is_none()))
        .cloned()
        .collect();
    attributes.push(sdp::value("msid-semantic", " WMS"));
    let mut answer = sdp::session(attributes);
    for m in &offer.media_descriptions {
        let rejected = sdp::is_rejected(m);
        let mut media_name = m.media_name.clone();
        if !rejected {
            media_name.port.value = 9;
        }
        let transport_cc = sdp::extensions(m)
            .find(|(_, uri)| uri.contains("transport-wide-cc"))
            .map(|(id, _)| id);
        let application = m.media_name.media == "application";
        let mut direction = None;
        let mut attributes = Vec::new();
        for a in &m.attributes {
            let value = a.value.as_deref().unwrap_or("");
            match a.key.as_str() {
                "mid" | "rtcp-mux" | "rtcp-rsize" | "rtpmap" | "fmtp" | "sctp-port"
                | "max-message-size" => attributes.push(a.clone()),
                "rtcp-fb" if !value.contains("transport-cc") => attributes.push(a.clone()),
                "extmap" => {
                    let id = value
                        .split([' ', '/'])
                        .next()
                        .and_then(|id| id.parse::<u16>().ok());
                    if transport_cc.is_none() || id != transport_cc {
                        attributes.push(a.clone());
                    }
                }
                "sendonly" | "sendrecv" => direction = Some(Direction::RecvOnly),
                "recvonly" | "inactive" => direction = Some(Direction::Inactive),
                _ => {}
            }
        }
        if !rejected {
            attributes.extend(ours.attributes(Setup::Active));
            if !application {
                let direction = direction.unwrap_or(Direction::Inactive);
                attributes.push(sdp::flag(&direction.to_string()));
            }
        }
        answer.media_descriptions.push(rtc::sdp::MediaDescription {
            media_name,
            connection_information: Some(sdp::no_connection()),
            attributes,
            ..Default::default()
        });
    }
    answer
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::client) const OFFER: &str =
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
a=fingerprint:sha-256 AA:BB\r\na=group:BUNDLE 0 1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=setup:actpass\r\na=mid:0\r\n\
a=ice-ufrag:srv\r\na=ice-pwd:secret\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 nack\r\na=rtcp-fb:96 transport-cc\r\na=rtpmap:97 VP9/90000\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time\r\n\
a=ssrc:1234 cname:x\r\na=ssrc:1234 msid:alice cam\r\na=msid:alice cam\r\na=sendonly\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
a=sctp-port:5000\r\n";

    fn parsed(sdp: &str) -> Result<ParsedOffer, ClientError> {
        parse_offer(&sdp::parse(sdp)?)
    }

    #[test]
    fn offer_yields_credentials_candidates_and_tracks() {
        let offer = parsed(OFFER).expect("offer");
        assert_eq!(offer.remote.ufrag, "srv");
        assert_eq!(offer.remote.pwd, "secret");
        assert_eq!(offer.remote.fingerprint, "AA:BB");
        assert_eq!(
            offer.remote.candidates,
            vec!["127.0.0.1:7882".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(offer.streams.len(), 1);
        let s = &offer.streams[0];
        assert_eq!(
            (s.ssrc, s.stream_id.as_str(), s.track_id.as_str()),
            (1234, "alice", "cam")
        );
        assert_eq!(s.mime.as_deref(), Some("video/VP8"));
        assert!(s.nack);
    }

    #[test]
    fn answer_receives_everything_offered_without_transport_cc() {
        let ours = Ours {
            ufrag: "me".into(),
            pwd: "pw".into(),
            fingerprint: "AB:CD".into(),
        };
        let answer = build_answer(&sdp::parse(OFFER).expect("offer"), &ours).marshal();
        assert!(answer.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"));
        assert!(answer.contains("a=recvonly\r\n"));
        assert!(answer.contains("a=setup:active\r\n"));
        assert!(answer.contains("a=fingerprint:sha-256 AB:CD\r\n"));
        assert!(answer.contains("a=ice-ufrag:me\r\n"));
        assert!(answer.contains("abs-capture-time"));
        assert!(!answer.contains("transport-wide-cc"));
        assert!(!answer.contains("transport-cc"));
        assert!(!answer.contains("a=ssrc"));
        assert!(answer.contains("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"));
        assert!(answer.contains("a=group:BUNDLE 0 1\r\n"));
    }

    #[test]
    fn offers_without_credentials_are_refused() {
        assert!(parsed("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n").is_err());
        assert!(parsed(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        )
        .is_err());
    }
}
