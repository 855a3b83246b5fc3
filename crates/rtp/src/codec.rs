//! What is common to the video codecs: [`VideoCodec`] (which codec a MIME type names, and
//! whether an RTP payload starts a keyframe, so a new subscriber's decoder starts clean) and
//! fmtp parameters.

/// Video codecs whose keyframes the forwarder can recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8 (RFC 7741).
    Vp8,
    /// VP9 (RFC 9628).
    Vp9,
    /// H.264 (RFC 6184).
    H264,
    /// AV1 (AV1 RTP specification).
    Av1,
}

impl VideoCodec {
    /// The codec for a MIME type such as `video/VP8` (case-insensitive).
    pub fn from_mime(mime: &str) -> Option<Self> {
        let sub = mime.rsplit('/').next()?.to_ascii_lowercase();
        match sub.as_str() {
            "vp8" => Some(Self::Vp8),
            "vp9" => Some(Self::Vp9),
            "h264" => Some(Self::H264),
            "av1" => Some(Self::Av1),
            _ => None,
        }
    }

    /// Whether `payload` is the first packet of a keyframe.
    pub fn starts_keyframe(self, payload: &[u8]) -> bool {
        match self {
            Self::Vp8 => crate::vp8::starts_keyframe(payload),
            Self::Vp9 => crate::vp9::starts_keyframe(payload),
            Self::H264 => crate::h264::starts_keyframe(payload),
            Self::Av1 => crate::av1::starts_keyframe(payload),
        }
    }
}

/// The value of `key` in an fmtp line such as `profile-id=0;x=1`.
pub fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim())
}

/// Whether two fmtp lines of codec `mime` describe the same profile: H264 by profile
/// (`profile_idc` and `profile-iop`, the first four hex digits of `profile-level-id`; the level
/// may differ) and packetization mode; VP9 by `profile-id`; other codecs always match.
pub fn same_profile(mime: &str, a: &str, b: &str) -> bool {
    match VideoCodec::from_mime(mime) {
        Some(VideoCodec::H264) => {
            let profile = |f: &str| {
                fmtp_param(f, "profile-level-id")
                    .and_then(|p| p.get(..4))
                    .map(str::to_ascii_lowercase)
            };
            let mode = |f: &str| {
                fmtp_param(f, "packetization-mode")
                    .unwrap_or("0")
                    .to_owned()
            };
            profile(a) == profile(b) && mode(a) == mode(b)
        }
        Some(VideoCodec::Vp9) => {
            fmtp_param(a, "profile-id").unwrap_or("0") == fmtp_param(b, "profile-id").unwrap_or("0")
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_keyframe_starts() {
        let table: &[(VideoCodec, &[u8], bool, &str)] = &[
            (
                VideoCodec::Vp8,
                &[0x10, 0x00],
                true,
                "vp8 key, no extensions",
            ),
            (VideoCodec::Vp8, &[0x10, 0x01], false, "vp8 delta"),
            (
                VideoCodec::Vp8,
                &[0x00, 0x00],
                false,
                "vp8 not start of partition",
            ),
            (VideoCodec::Vp8, &[0x11, 0x00], false, "vp8 partition 1"),
            (
                VideoCodec::Vp8,
                &[0x90, 0x80, 0x81, 0x23, 0x00],
                true,
                "vp8 key, 15-bit picture id",
            ),
            (
                VideoCodec::Vp8,
                &[0x90, 0xe0, 0x05, 0x07, 0x01],
                false,
                "vp8 delta, pid+tl0",
            ),
            (VideoCodec::Vp8, &[0x90, 0x80], false, "vp8 truncated"),
            (VideoCodec::Vp8, &[], false, "empty"),
            (VideoCodec::Vp9, &[0x08], true, "vp9 begin, not predicted"),
            (VideoCodec::Vp9, &[0x48], false, "vp9 predicted"),
            (VideoCodec::Vp9, &[0x00], false, "vp9 not begin"),
            (VideoCodec::H264, &[0x65, 0x88], true, "h264 IDR"),
            (VideoCodec::H264, &[0x67, 0x42], true, "h264 SPS"),
            (VideoCodec::H264, &[0x41, 0x9a], false, "h264 non-IDR slice"),
            (
                VideoCodec::H264,
                &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68],
                true,
                "stap-a with SPS",
            ),
            (
                VideoCodec::H264,
                &[0x78, 0x00, 0x09, 0x67],
                false,
                "stap-a truncated",
            ),
            (VideoCodec::H264, &[0x7c, 0x85], true, "fu-a start of IDR"),
            (VideoCodec::H264, &[0x7c, 0x05], false, "fu-a middle of IDR"),
            (
                VideoCodec::H264,
                &[0x7c, 0x81],
                false,
                "fu-a start of non-IDR",
            ),
            (VideoCodec::Av1, &[0x18], true, "av1 new sequence"),
            (VideoCodec::Av1, &[0x10], false, "av1 continuing"),
        ];
        for (codec, payload, want, name) in table {
            assert_eq!(codec.starts_keyframe(payload), *want, "{name}");
        }
    }

    #[test]
    fn matches_profiles_not_levels() {
        let h264 = |pli: &str, mode: u8| {
            format!("level-asymmetry-allowed=1;packetization-mode={mode};profile-level-id={pli}")
        };
        let table = [
            ("video/H264", h264("42e01f", 1), h264("42e034", 1), true),
            ("video/H264", h264("42e01f", 1), h264("640032", 1), false),
            ("video/H264", h264("42e01f", 1), h264("42e01f", 0), false),
            (
                "video/VP9",
                "profile-id=0".to_owned(),
                "profile-id=2".to_owned(),
                false,
            ),
            ("video/VP9", "profile-id=0".to_owned(), String::new(), true),
            ("video/VP8", String::new(), "x=1".to_owned(), true),
        ];
        for (mime, a, b, want) in table {
            assert_eq!(same_profile(mime, &a, &b), want, "{mime} {a} vs {b}");
        }
        assert_eq!(fmtp_param("a=1; profile-id = 2", "profile-id"), Some("2"));
    }

    #[test]
    fn maps_mime_types() {
        assert_eq!(VideoCodec::from_mime("video/VP8"), Some(VideoCodec::Vp8));
        assert_eq!(VideoCodec::from_mime("video/h264"), Some(VideoCodec::H264));
        assert_eq!(VideoCodec::from_mime("audio/opus"), None);
    }
}
