//! The publisher endpoint's tests: an in-process server side (DTLS, SRTP) that answers,
//! connects and reads what the publisher sends.

use super::super::transport::tests::{check_response, dtls_server, peer_srtp, Fixture};
use super::super::transport::Srtp;
use super::description::{
    EXT_ABS_CAPTURE_TIME, EXT_AUDIO_LEVEL, EXT_MID, EXT_RID, EXT_TRANSPORT_CC,
};
use super::*;
use crate::ivf::IvfClip;
use crate::media::{AudioSource, SendCounters};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::nack_pairs_from_sequence_numbers;
use rtc::shared::marshal::Unmarshal;

/// A sent RTP packet as the server sees it.
struct Seen {
    datagram: Bytes,
    packet: rtc::rtp::Packet,
}

impl Seen {
    fn extension(&self, id: u8) -> Option<Bytes> {
        self.packet.header.get_extension(id)
    }
}

struct Harness {
    p: Publisher,
    server: SocketAddr,
    peer: Srtp,
    audio: Arc<SendCounters>,
    q: (u32, Arc<SendCounters>),
    h: (u32, Arc<SendCounters>),
    t0: Instant,
}

impl Harness {
    /// A publisher of silence and a two-layer VP8 simulcast track, answered and connected
    /// to an in-process DTLS server.
    fn connected() -> Harness {
        let Fixture {
            shared: _,
            ours,
            theirs,
            t0,
            local,
            server,
            _signaling,
        } = Fixture::new();
        let clip =
            Arc::new(IvfClip::parse(crate::media::DEFAULT_VP8_CLIP).expect("the built-in clip"));
        let counters = || Arc::new(SendCounters::default());
        let (audio, q, h) = (counters(), counters(), counters());
        let tracks = vec![
            PublishTrack {
                kind: TrackKind::Audio,
                stream_id: "alice".into(),
                track_id: "mic".into(),
                layers: vec![PublishLayer {
                    rid: String::new(),
                    ssrc: 11,
                    counters: Arc::clone(&audio),
                    source: LoopSource::audio(&AudioSource::Silence).expect("a loop"),
                }],
            },
            PublishTrack {
                kind: TrackKind::Video,
                stream_id: "alice".into(),
                track_id: "cam".into(),
                layers: [("q", 21, &q), ("h", 22, &h)]
                    .into_iter()
                    .map(|(rid, ssrc, c)| PublishLayer {
                        rid: rid.into(),
                        ssrc,
                        counters: Arc::clone(c),
                        source: LoopSource::Video(Arc::clone(&clip)),
                    })
                    .collect(),
            },
        ];
        let mut p = Publisher::new(t0, local, ours, tracks);
        let answer = format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
             a=fingerprint:sha-256 {fp}\r\na=group:BUNDLE 0 1\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
             a=ice-ufrag:srv\r\na=ice-pwd:secret\r\na=setup:passive\r\na=rtcp-mux\r\n\
             a=rtpmap:111 opus/48000/2\r\na=extmap:1 {mid}\r\na=extmap:4 {level}\r\n\
             a=extmap:5 {twcc}\r\na=recvonly\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
             a=ice-ufrag:srv\r\na=ice-pwd:secret\r\na=setup:passive\r\n\
             a=rtpmap:96 VP8/90000\r\na=extmap:1 {mid}\r\na=extmap:3 {capture}\r\n\
             a=extmap:5 {twcc}\r\na=extmap:10 {rid}\r\na=recvonly\r\n\
             a=rid:q recv\r\na=rid:h recv\r\na=simulcast:recv q;h\r\n",
            fp = theirs.fingerprint.to_uppercase(),
            mid = EXT_MID.1,
            level = EXT_AUDIO_LEVEL.1,
            twcc = EXT_TRANSPORT_CC.1,
            capture = EXT_ABS_CAPTURE_TIME.1,
            rid = EXT_RID.1,
        );
        p.apply_answer(t0, &answer).expect("answer");
        assert!(
            p.transport.dtls_client,
            "a passive answer leaves us the client"
        );
        p.handle_timeout(t0);
        let (to, check) = p.poll_transmit().expect("a connectivity check");
        assert_eq!((to, check.first()), (server, Some(&0u8)));
        let response = check_response(&p.transport.identity, "secret", local);
        p.handle_read(t0, server, &response);
        assert_eq!(p.transport.state, RTCPeerConnectionState::Connecting);
        let mut dtls = dtls_server(&theirs, server);
        for _ in 0..20 {
            while let Some((_, datagram)) = p.poll_transmit() {
                if matches!(datagram.first(), Some(20..=63)) {
                    let _ = dtls.read(t0, local, None, datagram[..].into());
                }
            }
            while let Some(t) = dtls.poll_transmit() {
                p.handle_read(t0, server, &t.message);
            }
            if p.transport.srtp.is_some() {
                break;
            }
        }
        assert_eq!(p.transport.state, RTCPeerConnectionState::Connected);
        let peer = peer_srtp(&dtls, local, &theirs).expect("the server's keys");
        Harness {
            p,
            server,
            peer,
            audio,
            q: (21, q),
            h: (22, h),
            t0,
        }
    }

    /// Runs the publisher's timers every 5 ms from `from` to `to` (ms after connecting);
    /// returns the RTP packets and the RTCP datagrams sent.
    fn run(&mut self, from: u64, to: u64) -> (Vec<Seen>, Vec<Vec<u8>>) {
        let (mut rtp, mut rtcp) = (Vec::new(), Vec::new());
        for ms in (from..to).step_by(5) {
            self.p.handle_timeout(self.t0 + Duration::from_millis(ms));
            while let Some((to, datagram)) = self.p.poll_transmit() {
                assert_eq!(to, self.server);
                match (datagram.first(), datagram.get(1)) {
                    (Some(128..=191), Some(192..=223)) => rtcp.push(
                        self.peer
                            .remote
                            .decrypt_rtcp(&datagram)
                            .expect("SRTCP decrypts")
                            .to_vec(),
                    ),
                    (Some(128..=191), _) => {
                        let plain = self
                            .peer
                            .remote
                            .decrypt_rtp(&datagram)
                            .expect("SRTP decrypts");
                        let packet =
                            rtc::rtp::Packet::unmarshal(&mut &plain[..]).expect("RTP parses");
                        rtp.push(Seen { datagram, packet });
                    }
                    _ => {}
                }
            }
        }
        (rtp, rtcp)
    }

    fn rtcp(&mut self, at_ms: u64, packet: Box<dyn rtc::rtcp::packet::Packet>) {
        let plain = rtc::rtcp::packet::marshal(&[packet]).expect("marshal");
        let datagram = self.peer.local.encrypt_rtcp(&plain).expect("encrypt");
        let at = self.t0 + Duration::from_millis(at_ms);
        self.p.handle_read(at, self.server, &datagram);
    }
}

#[test]
fn the_offer_is_a_browsers_with_simulcast_and_the_host_candidate() {
    let h = Harness::connected();
    let offer = h.p.offer();
    for wanted in [
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=ssrc:11 msid:alice mic",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=msid:alice cam",
        "a=rid:q send",
        "a=simulcast:send q;h",
        "a=rtcp-fb:96 nack pli",
        "a=setup:actpass",
        "a=sendonly",
        "a=candidate:1 1 udp 2130706431 127.1.0.1 5000 typ host",
        "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "transport-wide-cc",
    ] {
        assert!(offer.contains(wanted), "{wanted} in {offer}");
    }
    // Simulcast layers are bound by rid, not announced by SSRC.
    assert!(!offer.contains("a=ssrc:21"));
}

#[test]
fn frames_are_paced_packetized_and_stamped() {
    let mut h = Harness::connected();
    let (rtp, rtcp) = h.run(0, 1_000);
    let of = |ssrc: u32| {
        rtp.iter()
            .filter(move |s| s.packet.header.ssrc == ssrc)
            .collect::<Vec<_>>()
    };
    // Audio: a silence frame every 20 ms, stamped with mid and the silence level.
    let audio = of(11);
    assert_eq!(audio.len(), 50);
    for pair in audio.windows(2) {
        let (a, b) = (&pair[0].packet.header, &pair[1].packet.header);
        assert_eq!(b.sequence_number, a.sequence_number.wrapping_add(1));
        assert_eq!(b.timestamp.wrapping_sub(a.timestamp), 960);
    }
    assert_eq!(audio[0].extension(1).as_deref(), Some(&b"0"[..]));
    assert_eq!(audio[0].extension(4).as_deref(), Some(&[127u8][..]));
    assert_eq!(h.audio.frames.load(Ordering::Relaxed), 50);
    // Video: 30 frames per second per layer, the last packet of each marked, every packet
    // naming its track and layer.
    for (ssrc, rid, counters) in [(h.q.0, "q", &h.q.1), (h.h.0, "h", &h.h.1)] {
        let video = of(ssrc);
        let frames: Vec<u32> = video
            .iter()
            .filter(|s| s.packet.header.marker)
            .map(|s| s.packet.header.timestamp)
            .collect();
        assert_eq!(frames.len(), 30, "{rid}");
        assert_eq!(counters.frames.load(Ordering::Relaxed), 30);
        assert_eq!(counters.keyframes.load(Ordering::Relaxed), 1);
        for pair in frames.windows(2) {
            assert_eq!(pair[1].wrapping_sub(pair[0]), 3000);
        }
        for s in &video {
            assert_eq!(s.packet.header.payload_type, 96);
            assert_eq!(s.extension(1).as_deref(), Some(&b"1"[..]));
            assert_eq!(s.extension(10).as_deref(), Some(rid.as_bytes()));
            assert_eq!(s.extension(3).map(|e| e.len()), Some(8));
            // VP8 descriptor with a picture id.
            assert_eq!(s.packet.payload[0] & 0x80, 0x80);
            assert_eq!(s.packet.payload[1] & 0x80, 0x80);
        }
        // The first packet starts a keyframe (the loop's first frame).
        assert_eq!(video[0].packet.payload[0] & 0x10, 0x10);
        assert!(chorus_rtp::vp8::starts_keyframe(&video[0].packet.payload));
        assert!(!chorus_rtp::vp8::starts_keyframe(&video[1].packet.payload));
    }
    // One transport-wide sequence across the connection's packets, in send order.
    let twcc: Vec<u16> = rtp
        .iter()
        .map(|s| {
            let e = s.extension(5).expect("transport-wide sequence number");
            u16::from_be_bytes([e[0], e[1]])
        })
        .collect();
    for pair in twcc.windows(2) {
        assert_eq!(pair[1], pair[0].wrapping_add(1));
    }
    // A sender report per stream after a second.
    let (_, rtcp2) = h.run(1_000, 1_005);
    let reports: Vec<u32> = rtcp
        .iter()
        .chain(&rtcp2)
        .flat_map(|d| rtc::rtcp::packet::unmarshal(&mut &d[..]).expect("RTCP parses"))
        .filter_map(|p| p.as_any().downcast_ref::<SenderReport>().map(|sr| sr.ssrc))
        .collect();
    for ssrc in [11, 21, 22] {
        assert!(reports.contains(&ssrc), "SR for {ssrc}: {reports:?}");
    }
}

#[test]
fn nacks_are_answered_from_history_and_plis_bring_a_keyframe() {
    let mut h = Harness::connected();
    let (rtp, _) = h.run(0, 500);
    let q: Vec<&Seen> = rtp
        .iter()
        .filter(|s| s.packet.header.ssrc == h.q.0)
        .collect();
    let lost = [&q[3], &q[7]];
    let seqs: Vec<u16> = lost
        .iter()
        .map(|s| s.packet.header.sequence_number)
        .collect();
    h.rtcp(
        500,
        Box::new(TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: h.q.0,
            nacks: nack_pairs_from_sequence_numbers(&seqs),
        }),
    );
    let mut resent = Vec::new();
    while let Some((_, datagram)) = h.p.poll_transmit() {
        resent.push(datagram);
    }
    // The very datagrams sent before (same sequence numbers and encryption).
    assert_eq!(
        resent,
        vec![lost[0].datagram.clone(), lost[1].datagram.clone()]
    );
    // A NACK for audio (no history) or an unknown SSRC sends nothing.
    for media_ssrc in [11, 99] {
        h.rtcp(
            500,
            Box::new(TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc,
                nacks: nack_pairs_from_sequence_numbers(&[1, 2]),
            }),
        );
        assert!(h.p.poll_transmit().is_none());
    }

    // A PLI for the h layer: its next frame is a keyframe; q carries on.
    let keyframes = |c: &SendCounters| c.keyframes.load(Ordering::Relaxed);
    let (q_before, h_before) = (keyframes(&h.q.1), keyframes(&h.h.1));
    h.rtcp(
        505,
        Box::new(PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: h.h.0,
        }),
    );
    assert_eq!(h.h.1.keyframe_requests.load(Ordering::Relaxed), 1);
    let (rtp, _) = h.run(505, 540);
    let first_h = rtp
        .iter()
        .find(|s| s.packet.header.ssrc == h.h.0)
        .expect("an h frame");
    assert!(chorus_rtp::vp8::starts_keyframe(&first_h.packet.payload));
    assert_eq!(keyframes(&h.h.1), h_before + 1);
    assert_eq!(keyframes(&h.q.1), q_before);
}

#[test]
fn muted_tracks_send_nothing_but_audio_dtx() {
    let mut h = Harness::connected();
    h.run(0, 100);
    for c in [&h.audio, &h.q.1, &h.h.1] {
        c.paused.store(true, Ordering::Relaxed);
    }
    let (rtp, _) = h.run(100, 1_300);
    assert!(rtp.iter().all(|s| s.packet.header.ssrc == 11));
    // One silence frame per 400 ms.
    assert_eq!(rtp.len(), 3, "{:?}", rtp.len());
    for c in [&h.q.1, &h.h.1] {
        c.paused.store(false, Ordering::Relaxed);
    }
    h.audio.paused.store(false, Ordering::Relaxed);
    // Unmuted: media resumes at once, without a burst of the muted time's frames.
    let (rtp, _) = h.run(1_300, 1_400);
    let video = rtp
        .iter()
        .filter(|s| s.packet.header.ssrc == h.q.0 && s.packet.header.marker);
    assert!((3..=4).contains(&video.count()));
}

#[test]
fn garbage_after_connecting_harms_nothing() {
    let mut h = Harness::connected();
    for i in 0..5_000u32 {
        let len = 1 + (i % 300) as usize;
        let mut datagram: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        datagram[0] = [0, 1, 20, 22, 23, 128, 144, 200, 255][i as usize % 9];
        if let Some(b) = datagram.get_mut(1) {
            if i % 3 == 0 {
                *b = 205;
            }
        }
        h.p.handle_read(h.t0, h.server, &datagram);
    }
    assert_eq!(h.p.transport.state, RTCPeerConnectionState::Connected);
    let (rtp, _) = h.run(0, 100);
    assert!(!rtp.is_empty(), "media still flows");
}
