//! Receive-side accounting: sequence continuity, VP8 frame boundaries, per-track counters.

use chorus_signal::protocol::TrackKind;
use std::time::Instant;

/// What the client has received on one remote track of the subscriber connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedTrackStats {
    /// The publisher's participant id (the `msid` stream id).
    pub participant_id: String,
    /// The server's track id (the `msid` track id, [`TrackInfo::id`]).
    ///
    /// [`TrackInfo::id`]: chorus_signal::protocol::TrackInfo::id
    pub track_id: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Negotiated codec MIME type, e.g. `video/VP8`, when known.
    pub mime_type: Option<String>,
    /// Whether the latest subscriber offer still carries this track in an active media section.
    /// A track removed by renegotiation stays listed with `active == false`.
    pub active: bool,
    /// SSRC of the most recent packet (0 before any packet).
    pub ssrc: u32,
    /// Payload type of the most recent packet.
    pub payload_type: u8,
    /// Sequence-number accounting.
    pub seq: SeqStats,
    /// Payload bytes received (RTP payload only).
    pub bytes: u64,
    /// VP8 frames started (packets with S=1 and partition index 0). Zero for audio.
    pub frames: u64,
    /// VP8 keyframes started. Zero for audio.
    pub keyframes: u64,
    /// Packets with the RTP marker bit set.
    pub markers: u64,
    /// When the first packet arrived.
    pub first_packet_at: Option<Instant>,
    /// When the latest packet arrived.
    pub last_packet_at: Option<Instant>,
}

impl ReceivedTrackStats {
    /// A track with nothing received yet.
    pub fn new(participant_id: String, track_id: String, kind: TrackKind) -> Self {
        Self {
            participant_id,
            track_id,
            kind,
            mime_type: None,
            active: true,
            ssrc: 0,
            payload_type: 0,
            seq: SeqStats::default(),
            bytes: 0,
            frames: 0,
            keyframes: 0,
            markers: 0,
            first_packet_at: None,
            last_packet_at: None,
        }
    }

    /// Packets received.
    pub fn packets(&self) -> u64 {
        self.seq.packets
    }

    /// Accounts one RTP packet.
    pub fn on_packet(
        &mut self,
        ssrc: u32,
        payload_type: u8,
        seq: u16,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) {
        self.ssrc = ssrc;
        self.payload_type = payload_type;
        self.seq.push(seq);
        self.bytes += payload.len() as u64;
        if marker {
            self.markers += 1;
        }
        if self.kind == TrackKind::Video {
            match vp8_frame_start(payload) {
                Some(Vp8FrameStart { keyframe: true }) => {
                    self.frames += 1;
                    self.keyframes += 1;
                }
                Some(Vp8FrameStart { keyframe: false }) => self.frames += 1,
                None => {}
            }
        }
        self.first_packet_at.get_or_insert(now);
        self.last_packet_at = Some(now);
    }
}

/// Sequence-number continuity of one RTP stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqStats {
    /// Packets seen.
    pub packets: u64,
    /// Sequence number of the first packet.
    pub first: Option<u16>,
    /// Sequence number of the latest packet.
    pub last: Option<u16>,
    /// Discontinuities: packets whose sequence number is not `last + 1 (mod 2^16)`. Loss,
    /// reordering, duplicates and a rewrite done wrong all count.
    pub gaps: u64,
    /// Sum of the sizes of forward jumps (`seq - last - 1` when the jump is less than half the
    /// sequence space): an estimate of packets missing.
    pub missing: u64,
    /// Packets that went backwards (reordered, duplicated or retransmitted).
    pub backwards: u64,
}

impl SeqStats {
    /// Accounts the next packet's sequence number.
    pub fn push(&mut self, seq: u16) {
        self.packets += 1;
        if let Some(last) = self.last {
            let expected = last.wrapping_add(1);
            if seq != expected {
                self.gaps += 1;
                let jump = seq.wrapping_sub(expected);
                if jump < 0x8000 {
                    self.missing += u64::from(jump);
                } else {
                    self.backwards += 1;
                }
            }
        } else {
            self.first = Some(seq);
        }
        self.last = Some(seq);
    }
}

/// A VP8 RTP payload that starts a new frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8FrameStart {
    /// Whether the frame is a keyframe.
    pub keyframe: bool,
}

/// Parses the VP8 payload descriptor (RFC 7741 §4.2) and, when the packet begins a frame
/// (S=1, PID=0), reports whether that frame is a keyframe (P bit of the VP8 payload header is
/// 0). `None` for continuation packets and malformed payloads.
pub fn vp8_frame_start(payload: &[u8]) -> Option<Vp8FrameStart> {
    let b0 = *payload.first()?;
    let extended = b0 & 0x80 != 0;
    let start = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    if !start || partition != 0 {
        return None;
    }
    let mut i = 1;
    if extended {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let pid = *payload.get(i)?;
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    let header = *payload.get(i)?;
    Some(Vp8FrameStart {
        keyframe: header & 0x01 == 0,
    })
}

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
/// `sendonly` or `sendrecv`, and an `a=msid` line.
pub fn offered_tracks(sdp: &str) -> Vec<OfferedTrack> {
    struct Section {
        media: String,
        port_zero: bool,
        sending: bool,
        msid: Option<(String, String)>,
    }
    fn finish(section: Option<Section>, out: &mut Vec<OfferedTrack>) {
        if let Some(Section {
            media,
            port_zero: false,
            sending: true,
            msid: Some((s, t)),
        }) = section
        {
            out.push(OfferedTrack {
                participant_id: s,
                track_id: t,
                media,
            });
        }
    }
    let mut out = Vec::new();
    let mut current: Option<Section> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            finish(current.take(), &mut out);
            let mut parts = m.split_whitespace();
            let media = parts.next().unwrap_or_default().to_owned();
            let port_zero = parts.next().is_some_and(|p| p == "0");
            current = Some(Section {
                media,
                port_zero,
                sending: true,
                msid: None,
            });
        } else if let Some(section) = current.as_mut() {
            match line {
                "a=sendonly" | "a=sendrecv" => section.sending = true,
                "a=recvonly" | "a=inactive" => section.sending = false,
                _ => {
                    if let Some(msid) = line.strip_prefix("a=msid:") {
                        let mut parts = msid.split_whitespace();
                        if let (Some(s), Some(t)) = (parts.next(), parts.next()) {
                            section.msid = Some((s.to_owned(), t.to_owned()));
                        }
                    }
                }
            }
        }
    }
    finish(current, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuous_sequences_have_no_gaps_even_across_wraparound() {
        let mut s = SeqStats::default();
        for seq in (65_530u16..=65_535).chain(0..10) {
            s.push(seq);
        }
        assert_eq!(s.packets, 16);
        assert_eq!(s.first, Some(65_530));
        assert_eq!(s.last, Some(9));
        assert_eq!((s.gaps, s.missing, s.backwards), (0, 0, 0));
    }

    #[test]
    fn losses_reorders_and_duplicates_are_counted() {
        let mut s = SeqStats::default();
        for seq in [10u16, 11, 14, 15, 13, 16, 16, 17] {
            s.push(seq);
        }
        // 11->14 (missing 2), 15->13 (back), 13->16 (missing 2), 16->16 (dup = back).
        assert_eq!(s.gaps, 4);
        assert_eq!(s.missing, 4);
        assert_eq!(s.backwards, 2);
        assert_eq!(s.packets, 8);

        let mut w = SeqStats::default();
        w.push(65_535);
        w.push(2);
        assert_eq!((w.gaps, w.missing, w.backwards), (1, 2, 0));
    }

    #[test]
    fn vp8_descriptors_are_parsed() {
        // Minimal descriptor, S=1 PID=0, keyframe header (P=0).
        assert_eq!(
            vp8_frame_start(&[0x10, 0x00, 0x9d]),
            Some(Vp8FrameStart { keyframe: true })
        );
        // Minimal descriptor, interframe (P=1).
        assert_eq!(
            vp8_frame_start(&[0x10, 0x01]),
            Some(Vp8FrameStart { keyframe: false })
        );
        // Continuation packet.
        assert_eq!(vp8_frame_start(&[0x00, 0x00]), None);
        // Start of a later partition.
        assert_eq!(vp8_frame_start(&[0x11, 0x00]), None);
        // X=1, I=1 with a 15-bit picture id, then keyframe header.
        assert_eq!(
            vp8_frame_start(&[0x90, 0x80, 0x81, 0x23, 0x00]),
            Some(Vp8FrameStart { keyframe: true })
        );
        // X=1, I=1 (7-bit), L=1, T=1, then interframe header.
        assert_eq!(
            vp8_frame_start(&[0x90, 0xE0, 0x05, 0x07, 0x20, 0x01]),
            Some(Vp8FrameStart { keyframe: false })
        );
        // Truncated descriptors.
        assert_eq!(vp8_frame_start(&[]), None);
        assert_eq!(vp8_frame_start(&[0x90, 0x80, 0x81]), None);
        assert_eq!(vp8_frame_start(&[0x10]), None);
    }

    #[test]
    fn received_stats_count_frames_and_bytes() {
        let now = Instant::now();
        let mut s = ReceivedTrackStats::new("PA".into(), "TR_v".into(), TrackKind::Video);
        s.on_packet(5, 96, 100, false, &[0x10, 0x00, 1, 2], now);
        s.on_packet(5, 96, 101, true, &[0x00, 3, 4], now);
        s.on_packet(5, 96, 102, true, &[0x10, 0x01, 5], now);
        assert_eq!(s.packets(), 3);
        assert_eq!(s.bytes, 10);
        assert_eq!((s.frames, s.keyframes, s.markers), (2, 1, 2));
        assert_eq!((s.ssrc, s.payload_type, s.seq.gaps), (5, 96, 0));

        let mut a = ReceivedTrackStats::new("PA".into(), "TR_a".into(), TrackKind::Audio);
        a.on_packet(6, 111, 7, true, &[0xF8, 0xFF, 0xFE], now);
        assert_eq!((a.frames, a.keyframes, a.bytes), (0, 0, 3));
    }

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
