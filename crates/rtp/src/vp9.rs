//! VP9 over RTP: the payload descriptor (RFC 9628 §4.2), where frames and keyframes start,
//! and a keyframe's size, from the scalability structure or the frame's uncompressed header
//! (VP9 spec §6.2).
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |I|P|L|F|B|E|V|Z| (REQUIRED)
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PICTURE ID  | (7 or 15 bits)
//!      +-+-+-+-+-+-+-+-+
//! L:   | TID |U| SID |D| (+ TL0PICIDX in non-flexible mode)
//!      +-+-+-+-+-+-+-+-+
//! P,F: | P_DIFF      |N| (up to 3 times)
//!      +-+-+-+-+-+-+-+-+
//! V:   | SS            | (scalability structure)
//! ```

use crate::bits::BitReader;
use crate::frame::FrameStart;
use bytes::{BufMut, BytesMut};

/// I: a picture id follows.
const I: u8 = 0x80;
/// P: inter-picture predicted.
const P: u8 = 0x40;
/// L: layer indices follow.
const L: u8 = 0x20;
/// F: flexible mode.
const F: u8 = 0x10;
/// B: beginning of a frame.
const B: u8 = 0x08;
/// V: a scalability structure follows.
const V: u8 = 0x02;

/// Whether an RTP payload is the first packet of a keyframe: not inter-predicted (P=0) and
/// the beginning of a frame (B=1).
pub fn starts_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & P == 0 && b & B != 0)
}

/// B=1 begins a frame; P=0 (not inter-predicted) makes it a keyframe (for the base spatial
/// layer); the picture id follows when I=1. A keyframe's size comes from the scalability
/// structure when present (V=1, as browsers send), else from the frame's uncompressed header.
/// `None` for continuation packets and malformed payloads.
pub fn frame_start(payload: &[u8]) -> Option<FrameStart> {
    let b0 = *payload.first()?;
    if b0 & B == 0 {
        return None;
    }
    let (flexible, predicted) = (b0 & F != 0, b0 & P != 0);
    let mut i = 1;
    let picture_id = if b0 & I != 0 {
        let m = *payload.get(1)?;
        Some(if m & 0x80 != 0 {
            i += 2;
            (u16::from(m & 0x7f) << 8 | u16::from(*payload.get(2)?), true)
        } else {
            i += 1;
            (u16::from(m), false)
        })
    } else {
        None
    };
    if b0 & L != 0 {
        i += if flexible { 1 } else { 2 }; // layer indices (+ TL0PICIDX)
    }
    if flexible && predicted {
        // P_DIFFs, each with N set while another follows.
        while payload.get(i)? & 0x01 != 0 {
            i += 1;
        }
        i += 1;
    }
    let keyframe = !predicted;
    let mut size = None;
    if b0 & V != 0 {
        // Scalability structure: N_S-1 (3 bits), Y, G; with Y a width and height per layer.
        let ss = *payload.get(i)?;
        let layers = usize::from(ss >> 5) + 1;
        if ss & 0x10 != 0 {
            let at = i + 1 + (layers - 1) * 4; // the highest spatial layer
            let b = payload.get(at..at + 4)?;
            size = Some((
                u16::from_be_bytes([b[0], b[1]]),
                u16::from_be_bytes([b[2], b[3]]),
            ));
        }
    } else if keyframe {
        size = payload.get(i..).and_then(keyframe_size);
    }
    Some(FrameStart {
        keyframe,
        size,
        picture_id,
    })
}

/// Sets P and appends P_DIFF=1 (the previous picture) to the 3-byte flexible-mode descriptor
/// `I=1 F=1 M=1` of an inter frame's packet, as webrtc-rs's payloader leaves it out; `None` for
/// a descriptor of another shape.
pub fn mark_inter(payload: &[u8]) -> Option<BytesMut> {
    let (&b0, rest) = payload.split_first()?;
    if b0 & (I | F) != I | F || b0 & P != 0 || rest.first()? & 0x80 == 0 || rest.len() < 2 {
        return None;
    }
    let mut out = BytesMut::with_capacity(payload.len() + 1);
    out.put_u8(b0 | P);
    out.put_slice(&rest[..2]);
    out.put_u8(1 << 1); // P_DIFF = 1, N = 0: the previous picture
    out.put_slice(&rest[2..]);
    Some(out)
}

/// Whether an encoded VP9 frame is a keyframe: the uncompressed header (VP9 spec §6.2) starts
/// with frame_marker (2 bits, `10`), the profile (2 bits, plus a reserved bit for profile 3),
/// show_existing_frame and frame_type (0 = KEY_FRAME).
pub fn is_keyframe(frame: &[u8]) -> bool {
    let Some(&b) = frame.first() else {
        return false;
    };
    if b >> 6 != 0b10 {
        return false;
    }
    let profile = ((b >> 5) & 1) | (((b >> 4) & 1) << 1);
    let shift = if profile == 3 { 2 } else { 3 };
    let show_existing = (b >> shift) & 1;
    let frame_type = (b >> (shift - 1)) & 1;
    show_existing == 0 && frame_type == 0
}

/// The frame size a VP9 keyframe's uncompressed header declares (VP9 spec §6.2: after the
/// sync code, the color config, then `frame_width_minus_1` and `frame_height_minus_1`).
pub fn keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    let mut bits = BitReader::new(frame);
    if bits.read(2)? != 0b10 {
        return None;
    }
    let profile = bits.read(1)? | bits.read(1)? << 1;
    if profile == 3 {
        bits.read(1)?;
    }
    // show_existing_frame, frame_type (0 = key), show_frame, error_resilient_mode.
    if bits.read(1)? != 0 || bits.read(1)? != 0 {
        return None;
    }
    bits.read(2)?;
    if bits.read(24)? != 0x49_83_42 {
        return None;
    }
    if profile >= 2 {
        bits.read(1)?; // ten_or_twelve_bit
    }
    let color_space = bits.read(3)?;
    if color_space != 7 {
        bits.read(1)?; // color_range
        if profile == 1 || profile == 3 {
            bits.read(3)?; // subsampling_x, subsampling_y, reserved
        }
    } else if profile == 1 || profile == 3 {
        bits.read(1)?;
    }
    let w = bits.read(16)? + 1;
    let h = bits.read(16)? + 1;
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ivf::IvfClip;

    fn clip() -> IvfClip {
        IvfClip::parse(include_bytes!(
            "../../client/tests/data/vp9_160x120_30fps.ivf"
        ))
        .expect("fixture parses")
    }

    #[test]
    fn descriptors_give_keyframes_and_sizes() {
        let clip = clip();
        // As the client sends it: I=1 F=1 B=1, a 15-bit picture id, then the keyframe.
        let mut key = vec![0x98, 0x81, 0x02];
        key.extend_from_slice(&clip.frames[0].data[..16]);
        let start = frame_start(&key).expect("frame start");
        assert_eq!(
            (start.keyframe, start.size, start.picture_id),
            (true, Some((160, 120)), Some((0x102, true)))
        );
        assert!(starts_keyframe(&key));
        // An inter frame: P=1 with one P_DIFF.
        let mut inter = vec![0xd8, 0x81, 0x03, 0x02];
        inter.extend_from_slice(&clip.frames[1].data[..8]);
        let start = frame_start(&inter).expect("frame start");
        assert_eq!((start.keyframe, start.size), (false, None));
        assert!(!starts_keyframe(&inter));
        // As Chromium sends a keyframe: V=1 with a scalability structure giving 320x180.
        let ss = [0x9a, 0x81, 0x04, 0x10, 0x01, 0x40, 0x00, 0xb4, 0x00];
        assert_eq!(
            frame_start(&ss).expect("frame start").size,
            Some((320, 180))
        );
        // Not the beginning of a frame; truncated.
        assert_eq!(frame_start(&[0x90, 0x81, 0x05]), None);
        assert_eq!(frame_start(&[0x9a, 0x81]), None);
        assert_eq!(frame_start(&[]), None);
    }

    #[test]
    fn keyframe_starts() {
        let table: &[(&[u8], bool, &str)] = &[
            (&[0x08], true, "begin, not predicted"),
            (&[0x48], false, "predicted"),
            (&[0x00], false, "not begin"),
            (&[], false, "empty"),
        ];
        for (payload, want, name) in table {
            assert_eq!(starts_keyframe(payload), *want, "{name}");
        }
    }

    #[test]
    fn frame_headers_give_keyframes_and_sizes() {
        let clip = clip();
        assert_eq!(keyframe_size(&clip.frames[0].data), Some((160, 120)));
        assert_eq!(keyframe_size(&clip.frames[1].data), None);
        assert!(is_keyframe(&clip.frames[0].data));
        assert!(!is_keyframe(&[]));
        assert!(!is_keyframe(&[0x86])); // frame_type 1: inter
    }

    #[test]
    fn inter_frames_get_p_and_one_p_diff() {
        // I=1 F=1 B=1, 15-bit picture id 0x0102, then an inter frame header byte.
        let p = [0x98, 0x81, 0x02, 0x86, 0xaa];
        assert_eq!(
            &mark_inter(&p).expect("rewritten")[..],
            &[0xd8, 0x81, 0x02, 0x02, 0x86, 0xaa]
        );
        // Already marked, or not the payloader's shape: left alone.
        assert!(mark_inter(&[0xd8, 0x81, 0x02, 0x02]).is_none());
        assert!(mark_inter(&[0x08, 0x86]).is_none());
        assert!(mark_inter(&[0x98, 0x01, 0x86]).is_none());
        assert!(mark_inter(&[]).is_none());
    }
}
