//! The tracks a subscriber offer carries: [`offered_tracks`] reads them from the SDP.

use rtc::sdp::{MediaDescription, SessionDescription};
use std::io::Cursor;

/// A track the server currently offers on the subscriber connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedTrack {
    /// `msid` stream id: the publisher's participant id.
    pub participant_id: String,
    /// `msid` track id: the server's track id.
    pub track_id: String,
    /// `audio` or `video` from the `m=` line.
    pub media: String,
}

/// Lists the tracks an SDP offers to send: media sections with a non-zero port, direction
/// `sendonly` or `sendrecv` (the default), and an `a=msid` line. An SDP that does not parse
/// offers nothing.
pub fn offered_tracks(sdp: &str) -> Vec<OfferedTrack> {
    let Ok(session) = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes())) else {
        return Vec::new();
    };
    session
        .media_descriptions
        .iter()
        .filter(|m| m.media_name.port.value != 0 && sending(m))
        .filter_map(|m| {
            let msid = m.attribute("msid").flatten()?;
            let mut parts = msid.split_whitespace();
            Some(OfferedTrack {
                participant_id: parts.next()?.to_owned(),
                track_id: parts.next()?.to_owned(),
                media: m.media_name.media.clone(),
            })
        })
        .collect()
}

/// Whether a media section sends: its last direction attribute, `sendrecv` when none.
fn sending(m: &MediaDescription) -> bool {
    m.attributes
        .iter()
        .rev()
        .find_map(|a| match a.key.as_str() {
            "sendonly" | "sendrecv" => Some(true),
            "recvonly" | "inactive" => Some(false),
            _ => None,
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_tracks_follow_direction_port_and_msid() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:PA TR_a\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=inactive\r\na=msid:PA TR_v\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=sendonly\r\na=msid:PB TR_x\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendrecv\r\na=msid:PB TR_y\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:4\r\na=sendonly\r\n";
        let tracks = offered_tracks(sdp);
        assert_eq!(
            tracks,
            vec![
                OfferedTrack {
                    participant_id: "PA".into(),
                    track_id: "TR_a".into(),
                    media: "audio".into()
                },
                OfferedTrack {
                    participant_id: "PB".into(),
                    track_id: "TR_y".into(),
                    media: "video".into()
                },
            ]
        );
        assert!(offered_tracks("").is_empty());
    }
}
