//! Capture timestamps for glass-to-glass latency between bots on one machine.
//!
//! Every frame the client sends carries the `abs-capture-time` RTP header extension
//! (<http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time>: the 64-bit NTP timestamp
//! of the capture, 8 bytes, or 16 with an estimated clock offset) when the server negotiates
//! it, and the `abs-send-time` RTP header extension
//! (<http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time>: 24-bit, 6.18 fixed-point
//! seconds of the NTP wall clock) stamped with the frame's **capture** time, i.e. when the media
//! task produced the frame, before packetization. Chorus forwards the extension unchanged
//! (only its id is remapped per subscriber), so a subscriber reading the same wall clock — any
//! client on the same machine, or machines with synchronized clocks — measures
//! capture-to-arrival latency per frame. The value wraps every 64 s, so latencies of 64 s or
//! more alias; anything above 32 s is reported as 32 s.
//!
//! Receivers prefer `abs-capture-time` (no wrap, 1/2^32 s resolution) and fall back to
//! `abs-send-time` when a packet does not carry it.

use std::io::Cursor;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rtc::sdp::extmap::ExtMap;
use rtc::sdp::SessionDescription;

/// The extension's URI.
pub const ABS_SEND_TIME_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";

/// The `abs-capture-time` extension's URI.
pub const ABS_CAPTURE_TIME_URI: &str =
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time";

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The 64-bit NTP timestamp (32.32 fixed point) of a wall-clock time.
pub fn ntp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The 24-bit `abs-send-time` value (6.18 fixed-point seconds) of a wall-clock time.
pub fn abs_send_time(t: SystemTime) -> u32 {
    ((ntp(t) >> 14) & 0x00FF_FFFF) as u32
}

/// Time elapsed from an `abs-send-time` stamp to `now`, modulo 64 s. Stamps from the future
/// (clock skew) read as up to 32 s and are capped there.
pub fn elapsed_since(stamp: u32, now: SystemTime) -> Duration {
    let diff = abs_send_time(now).wrapping_sub(stamp) & 0x00FF_FFFF;
    let diff = diff.min(1 << 23);
    Duration::from_nanos((u64::from(diff) * 1_000_000_000) >> 18)
}

/// Reads the capture timestamp (the first 8 bytes, big endian) of an `abs-capture-time`
/// payload.
pub fn parse_capture_time(payload: &[u8]) -> Option<u64> {
    let b: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Time elapsed from a 64-bit NTP capture stamp to `now`; stamps from the future (clock skew)
/// read as zero.
pub fn elapsed_since_ntp(stamp: u64, now: SystemTime) -> Duration {
    let diff = ntp(now).saturating_sub(stamp);
    Duration::from_nanos(((u128::from(diff) * 1_000_000_000) >> 32) as u64)
}

/// Reads the 3-byte extension payload.
pub fn parse(payload: &[u8]) -> Option<u32> {
    match payload {
        [a, b, c, ..] => Some(u32::from(*a) << 16 | u32::from(*b) << 8 | u32::from(*c)),
        _ => None,
    }
}

/// The extension id an SDP assigns to `abs-send-time` (first `a=extmap` line for it).
pub fn extmap_id(sdp: &str) -> Option<u8> {
    extmap_id_of(sdp, ABS_SEND_TIME_URI)
}

/// The extension id an SDP assigns to `uri` (first `a=extmap` attribute for it, session or
/// media level); `None` when the SDP does not parse or does not name it.
pub fn extmap_id_of(sdp: &str, wanted: &str) -> Option<u8> {
    let desc = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes())).ok()?;
    let media = desc.media_descriptions.iter().flat_map(|m| &m.attributes);
    desc.attributes
        .iter()
        .chain(media)
        .filter(|a| a.key == "extmap")
        .filter_map(|a| {
            let line = format!("extmap:{}", a.value.as_deref()?);
            ExtMap::unmarshal(&mut Cursor::new(line.as_bytes())).ok()
        })
        .find(|e| e.uri.as_ref().is_some_and(|u| u.as_str() == wanted))
        .and_then(|e| u8::try_from(e.value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_with_microsecond_resolution() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_063) + Duration::from_millis(999);
        let stamp = abs_send_time(t0);
        for ms in [0u64, 1, 20, 150, 2_500, 31_000] {
            let got = elapsed_since(stamp, t0 + Duration::from_millis(ms));
            let want = Duration::from_millis(ms);
            assert!(
                got.abs_diff(want) < Duration::from_micros(10),
                "{ms}: {got:?}"
            );
        }
        // A stamp from the future is capped.
        assert_eq!(
            elapsed_since(stamp, t0 - Duration::from_millis(1)),
            Duration::from_secs(32)
        );
        assert_eq!(parse(&[0x01, 0x02, 0x03]), Some(0x010203));
        assert_eq!(parse(&[0x01]), None);
    }

    #[test]
    fn finds_the_extmap_id() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                   a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
                   a=extmap:3/sendrecv http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n";
        assert_eq!(extmap_id(sdp), Some(3));
        assert_eq!(extmap_id("v=0\r\n"), None);
        let sdp = format!("{sdp}a=extmap:7 {ABS_CAPTURE_TIME_URI}\r\n");
        assert_eq!(extmap_id_of(&sdp, ABS_CAPTURE_TIME_URI), Some(7));
    }

    #[test]
    fn capture_time_stamps_round_trip() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_micros(123_456);
        let stamp = ntp(t0);
        let mut payload = stamp.to_be_bytes().to_vec();
        assert_eq!(parse_capture_time(&payload), Some(stamp));
        payload.extend_from_slice(&[0; 8]); // with the optional clock offset
        assert_eq!(parse_capture_time(&payload), Some(stamp));
        assert_eq!(parse_capture_time(&payload[..7]), None);
        let got = elapsed_since_ntp(stamp, t0 + Duration::from_millis(42));
        assert!(got.abs_diff(Duration::from_millis(42)) < Duration::from_micros(1));
        assert_eq!(
            elapsed_since_ntp(stamp, t0 - Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
