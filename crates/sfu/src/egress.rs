//! The lean egress path: forwarded RTP goes from the forwarder straight to the wire.
//!
//! A rewritten packet is marshalled into one reused buffer, sealed with the subscriber
//! connection's own SRTP context (`RTCPeerConnection::local_srtp_context`, the one context
//! that connection sends with, so no second context ever encrypts under its keys) and queued
//! for the selected candidate pair. rtc's handler pipeline and interceptors never see it, so
//! what they did for it is done here, per downtrack:
//! - [`SendHistory`]: what was sent, to answer the subscriber's NACKs. An entry holds the
//!   publisher's packet (shared by every downtrack, reference counted) and the rewritten
//!   fields, so the history costs a few words per packet, not a copy.
//! - [`SenderStats`]: packet and octet counts and the RTP/wall-clock mapping of the last frame,
//!   for the sender reports the core writes every second (`Core::send_reports`).
//!
//! RTCP on these connections (sender reports, keyframe requests toward subscribers) still goes
//! through rtc, protected by the same context.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtc::rtp::header::Header;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::shared::time::SystemInstant;
use rtc::srtp::context::Context;
use rtcp::sender_report::SenderReport;

/// Send-history slots of a video downtrack (a power of two): ~3 s of a 1.5 Mbit/s layer.
pub const VIDEO_HISTORY: usize = 512;
/// Send-history slots of an audio downtrack (a power of two): ~2.5 s of Opus.
pub const AUDIO_HISTORY: usize = 128;

/// Why a packet could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The header did not marshal (an extension the leg cannot carry).
    #[error("marshal: {0}")]
    Marshal(rtc::shared::error::Error),
    /// SRTP refused it (key exhausted, cipher error).
    #[error("srtp: {0}")]
    Srtp(rtc::shared::error::Error),
}

/// Marshals `header` and `payload` into `scratch` (grown once, then reused) and seals the
/// packet with `srtp`: the datagram to send.
pub fn seal(
    srtp: &mut Context,
    scratch: &mut Vec<u8>,
    header: Header,
    payload: Bytes,
) -> (Result<BytesMut, EgressError>, Header) {
    let packet = rtc::rtp::Packet { header, payload };
    let len = packet.marshal_size();
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    let sealed = match packet.marshal_to(&mut scratch[..len]) {
        Ok(n) => srtp
            .encrypt_rtp_with_header(&scratch[..n], &packet.header)
            .map_err(EgressError::Srtp),
        Err(e) => Err(EgressError::Marshal(e)),
    };
    (sealed, packet.header)
}

/// One packet a downtrack sent: enough to send it again.
#[derive(Clone)]
pub struct Sent {
    /// The publisher's packet it was made from (its header extensions and CSRCs).
    pub source: Rc<rtc::rtp::Packet>,
    /// The payload sent (the publisher's, or a rewritten copy for VP8 picture ids).
    pub payload: Bytes,
    /// Its sequence number on the subscriber's leg.
    pub seq: u16,
    /// Its RTP timestamp on the subscriber's leg.
    pub timestamp: u32,
    /// Its payload type on the subscriber's leg.
    pub payload_type: u8,
}

/// A ring of the packets a downtrack sent, indexed by their sequence numbers.
pub struct SendHistory {
    slots: Box<[Option<Sent>]>,
}

impl SendHistory {
    /// A history of `slots` packets (rounded up to a power of two).
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1).next_power_of_two();
        Self {
            slots: vec![None; slots].into_boxed_slice(),
        }
    }

    fn index(&self, seq: u16) -> usize {
        usize::from(seq) & (self.slots.len() - 1)
    }

    /// Records a packet sent (replacing the one `slots` sequence numbers before it).
    pub fn record(&mut self, sent: Sent) {
        let i = self.index(sent.seq);
        self.slots[i] = Some(sent);
    }

    /// The packet sent with `seq`, if it is still held.
    pub fn get(&self, seq: u16) -> Option<&Sent> {
        self.slots[self.index(seq)]
            .as_ref()
            .filter(|s| s.seq == seq)
    }
}

/// What a downtrack's sender reports say: counts, and where its RTP clock stood.
pub struct SenderStats {
    clock_rate: u32,
    packets: u32,
    octets: u32,
    /// The RTP timestamp of the last frame started, and when it went out.
    last: Option<(u32, Instant)>,
    /// Packets sent since the last report.
    since_report: u32,
}

impl SenderStats {
    /// Stats of a stream whose RTP clock runs at `clock_rate` Hz.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            packets: 0,
            octets: 0,
            last: None,
            since_report: 0,
        }
    }

    /// Counts a packet sent at `now`.
    pub fn sent(&mut self, now: Instant, timestamp: u32, payload_len: usize) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        self.since_report = self.since_report.saturating_add(1);
        // The mapping moves on the first packet of each frame: later packets of a large frame
        // go out a little later with the same timestamp.
        if self.last.is_none_or(|(ts, _)| ts != timestamp) {
            self.last = Some((timestamp, now));
        }
    }

    /// The sender report for `ssrc` at `now`, when the wall clock reads `wall`, if anything
    /// was sent since the last one.
    pub fn report(&mut self, now: Instant, wall: SystemInstant, ssrc: u32) -> Option<SenderReport> {
        let (ts, at) = self.last?;
        if self.since_report == 0 {
            return None;
        }
        self.since_report = 0;
        let elapsed = now.saturating_duration_since(at);
        let ticks = (elapsed.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000) as u32;
        Some(SenderReport {
            ssrc,
            ntp_time: wall.ntp(now),
            rtp_time: ts.wrapping_add(ticks),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sent(seq: u16) -> Sent {
        Sent {
            source: Rc::new(rtc::rtp::Packet::default()),
            payload: Bytes::from_static(b"p"),
            seq,
            timestamp: u32::from(seq) * 10,
            payload_type: 96,
        }
    }

    #[test]
    fn history_answers_what_it_still_holds() {
        let mut h = SendHistory::new(100);
        for seq in 65_500u16..=65_535 {
            h.record(sent(seq));
        }
        for seq in 0u16..100 {
            h.record(sent(seq));
        }
        // 128 slots: the last 128 sequence numbers, across the wrap.
        assert_eq!(h.get(99).map(|s| s.timestamp), Some(990));
        assert_eq!(h.get(65_535).map(|s| s.seq), Some(65_535));
        assert!(h.get(65_500).is_none(), "overwritten by 92");
        assert!(h.get(100).is_none(), "never sent");
    }

    #[test]
    fn sender_report_extrapolates_the_last_frame() {
        let t0 = Instant::now();
        let mut s = SenderStats::new(90_000);
        let wall = SystemInstant::from_epoch(Duration::from_secs(1_000_000));
        assert!(s.report(t0, wall, 1).is_none(), "nothing sent");
        s.sent(t0, 1_000, 1_200);
        s.sent(t0 + Duration::from_millis(5), 1_000, 800);
        let wall = SystemInstant::from_epoch(Duration::from_secs(1_000_000));
        let at = t0 + Duration::from_millis(100);
        let r = s.report(at, wall, 7).expect("a report");
        assert_eq!(r.ntp_time, wall.ntp(at));
        assert_eq!((r.ssrc, r.packet_count, r.octet_count), (7, 2, 2_000));
        // 100 ms after the frame's first packet at 90 kHz.
        assert_eq!(r.rtp_time, 1_000 + 9_000);
        assert!(
            s.report(t0 + Duration::from_millis(200), wall, 7).is_none(),
            "nothing new"
        );
    }

    #[test]
    fn seal_round_trips_through_srtp() {
        use rtc::srtp::protection_profile::ProtectionProfile;
        let key = [7u8; 16];
        let salt = [9u8; 12];
        let ctx = || {
            Context::new(
                &key,
                &salt,
                ProtectionProfile::AeadAes128Gcm,
                None,
                None,
                rtc::crypto::default_provider()
                    .expect("a crypto provider")
                    .crypto(),
            )
            .expect("context")
        };
        let (mut tx, mut rx) = (ctx(), ctx());
        let mut scratch = Vec::new();
        let header = Header {
            version: 2,
            payload_type: 96,
            sequence_number: 42,
            timestamp: 1234,
            ssrc: 0xdead_beef,
            ..Default::default()
        };
        let (sealed, header) = seal(
            &mut tx,
            &mut scratch,
            header,
            Bytes::from_static(b"hello world"),
        );
        let sealed = sealed.expect("sealed");
        assert_eq!(
            header.sequence_number, 42,
            "the header comes back for reuse"
        );
        let plain = rx.decrypt_rtp(&sealed).expect("opens");
        assert_eq!(&plain[12..], b"hello world");
    }
}
