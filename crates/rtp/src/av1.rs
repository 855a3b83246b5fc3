//! AV1 over RTP and in files: the RTP aggregation header (AV1 RTP specification §4.4), OBU
//! framing (AV1 spec 5.3), LEB128 sizes (4.10.5) and the frame size a sequence header declares
//! (5.5.1).
//!
//! ```text
//! aggregation header: |Z|Y| W |N|-|-|-|
//! ```
//! Z: the first element continues an OBU; Y: the last one continues in the next packet; W:
//! the element count (0: each element carries its length); N: the packet starts a new coded
//! video sequence (a keyframe).

use crate::bits::BitReader;
use crate::frame::FrameStart;

/// `obu_type` of a sequence header, which starts every coded video sequence (keyframes).
pub const OBU_SEQUENCE_HEADER: u8 = 1;

/// One OBU: its type, its payload, and how many bytes of the input it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obu<'a> {
    /// `obu_type`.
    pub obu_type: u8,
    /// The OBU's payload (after the header, extension and size).
    pub payload: &'a [u8],
    /// Bytes of the input the OBU took, header included.
    pub len: usize,
}

impl<'a> Obu<'a> {
    /// The OBU at the start of `data`: the header, the extension byte if flagged, the size if
    /// present (else the OBU runs to the end of `data`).
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let header = *data.first()?;
        let obu_type = (header >> 3) & 0x0f;
        let mut i = if header & 0x04 != 0 { 2 } else { 1 };
        let end = if header & 0x02 != 0 {
            let (size, n) = leb128(data.get(i..)?)?;
            i += n;
            i.checked_add(usize::try_from(size).ok()?)?
        } else {
            data.len()
        };
        Some(Obu {
            obu_type,
            payload: data.get(i..end)?,
            len: end,
        })
    }
}

/// The OBUs of a low-overhead OBU stream (a temporal unit, as IVF holds it), up to the first
/// malformed one.
pub fn obus(mut data: &[u8]) -> impl Iterator<Item = Obu<'_>> {
    std::iter::from_fn(move || {
        let obu = Obu::parse(data)?;
        data = data.get(obu.len..)?;
        Some(obu)
    })
}

/// An unsigned LEB128 value and the bytes it took.
pub fn leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in data.iter().take(8).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// `max_frame_width_minus_1 + 1` and `max_frame_height_minus_1 + 1` of a sequence header OBU
/// payload.
pub fn sequence_size(seq: &[u8]) -> Option<(u16, u16)> {
    let mut r = BitReader::new(seq);
    let _profile = r.read(3)?;
    let _still_picture = r.flag()?;
    if r.flag()? {
        // reduced_still_picture_header: one level, nothing else.
        r.read(5)?;
    } else {
        let mut buffer_delay_bits = 0;
        let mut decoder_model_info = false;
        if r.flag()? {
            // timing_info
            r.read(32)?; // num_units_in_display_tick
            r.read(32)?; // time_scale
            if r.flag()? {
                r.uvlc()?; // num_ticks_per_picture_minus_1
            }
            decoder_model_info = r.flag()?;
            if decoder_model_info {
                buffer_delay_bits = r.read(5)? as usize + 1;
                r.read(32)?; // num_units_in_decoding_tick
                r.read(5)?; // buffer_removal_time_length_minus_1
                r.read(5)?; // frame_presentation_time_length_minus_1
            }
        }
        let initial_display_delay = r.flag()?;
        let operating_points = r.read(5)? + 1;
        for _ in 0..operating_points {
            r.read(12)?; // operating_point_idc
            if r.read(5)? > 7 {
                r.read(1)?; // seq_tier
            }
            if decoder_model_info && r.flag()? {
                r.read(buffer_delay_bits)?; // decoder_buffer_delay
                r.read(buffer_delay_bits)?; // encoder_buffer_delay
                r.read(1)?; // low_delay_mode_flag
            }
            if initial_display_delay && r.flag()? {
                r.read(4)?;
            }
        }
    }
    let width_bits = r.read(4)? as usize + 1;
    let height_bits = r.read(4)? as usize + 1;
    let width = r.read(width_bits)? + 1;
    let height = r.read(height_bits)? + 1;
    Some((u16::try_from(width).ok()?, u16::try_from(height).ok()?))
}

/// Whether an AV1 temporal unit (low-overhead OBU stream, as IVF holds it) starts a new coded
/// video sequence: it carries a sequence header OBU, which encoders emit with each keyframe.
pub fn is_keyframe(unit: &[u8]) -> bool {
    obus(unit).any(|o| o.obu_type == OBU_SEQUENCE_HEADER)
}

/// Whether an RTP payload is the first packet of a keyframe: N=1 in the aggregation header
/// (a new coded video sequence starts).
pub fn starts_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x08 != 0)
}

/// A packet starts a frame when it follows the end of a temporal unit (`at_start`, the
/// previous packet's marker) and does not continue an OBU (Z=0); N=1 (a new coded video
/// sequence) makes it a keyframe, whose size comes from a leading sequence header.
pub fn frame_start(payload: &[u8], at_start: bool) -> Option<FrameStart> {
    let header = *payload.first()?;
    let keyframe = header & 0x08 != 0;
    (at_start && header & 0x80 == 0).then(|| FrameStart {
        keyframe,
        size: keyframe.then(|| payload_size(payload)).flatten(),
        picture_id: None,
    })
}

/// The frame size a keyframe packet announces: its first OBU element, when that is the
/// sequence header (as encoders send it at the start of a coded video sequence).
pub fn payload_size(payload: &[u8]) -> Option<(u16, u16)> {
    let w = (payload.first()? >> 4) & 0x03;
    let mut rest = payload.get(1..)?;
    // The first element's length is given unless it is the only one (W=1).
    if w != 1 {
        let (len, n) = leb128(rest)?;
        rest = rest.get(n..n.checked_add(usize::try_from(len).ok()?)?)?;
    }
    let obu = Obu::parse(rest)?;
    (obu.obu_type == OBU_SEQUENCE_HEADER)
        .then(|| sequence_size(obu.payload))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ivf::IvfClip;

    fn sequence_header(clip: &IvfClip) -> Obu<'_> {
        obus(&clip.frames[0].data)
            .find(|o| o.obu_type == OBU_SEQUENCE_HEADER)
            .expect("the first temporal unit has a sequence header")
    }

    fn clip() -> IvfClip {
        IvfClip::parse(include_bytes!(
            "../../client/tests/data/av1_160x120_30fps.ivf"
        ))
        .expect("AV1 clip")
    }

    #[test]
    fn the_fixture_declares_its_size_in_its_sequence_header() {
        let clip = clip();
        assert_eq!(
            sequence_size(sequence_header(&clip).payload),
            Some((160, 120))
        );
        assert!(is_keyframe(&clip.frames[0].data));
        assert!(!is_keyframe(&clip.frames[1].data));
        assert!(!is_keyframe(&[0x12, 0x00]));
        assert!(!is_keyframe(&[0x12, 0x05, 0x00])); // size beyond the end
        type Leb128Case = (&'static [u8], Option<(u64, usize)>);
        let table: &[Leb128Case] = &[
            (&[0x00], Some((0, 1))),
            (&[0x7f, 0xff], Some((127, 1))),
            (&[0x80, 0x01], Some((128, 2))),
            (&[0x80], None),
            (&[0xff; 9], None),
            (&[], None),
        ];
        for (data, want) in table {
            assert_eq!(leb128(data), *want, "{data:02x?}");
        }
    }

    #[test]
    fn frame_size_comes_from_the_sequence_header() {
        let clip = clip();
        let seq = sequence_header(&clip);
        // As an RTP packet: the only element (W=1) of a new coded video sequence (N=1), its
        // size field dropped as packetizers do.
        // No extension, no size field.
        let header = OBU_SEQUENCE_HEADER << 3;
        let mut rtp = vec![0x18, header];
        rtp.extend_from_slice(seq.payload);
        let start = frame_start(&rtp, true).expect("frame start");
        assert!(start.keyframe);
        assert_eq!(start.size, Some((160, 120)));
        // W=0: the element carries its length.
        let mut rtp = vec![0x08, (seq.payload.len() + 1) as u8, header];
        rtp.extend_from_slice(seq.payload);
        assert_eq!(payload_size(&rtp), Some((160, 120)));
        // Truncated headers give no size, never a panic.
        for cut in 0..rtp.len() {
            let _ = payload_size(&rtp[..cut]);
        }
        assert_eq!(payload_size(&rtp[..4]), None);
    }

    #[test]
    fn frame_and_keyframe_starts() {
        let table: &[(&[u8], bool, Option<bool>, &str)] = &[
            (&[0x18], true, Some(true), "new sequence"),
            (&[0x10], false, Some(false), "continuing sequence"),
            (&[0x90], false, None, "continues an OBU"),
            (&[], false, None, "empty"),
        ];
        for (payload, key, start, name) in table {
            assert_eq!(starts_keyframe(payload), *key, "{name}");
            assert_eq!(
                frame_start(payload, true).map(|s| s.keyframe),
                *start,
                "{name}"
            );
            assert_eq!(frame_start(payload, false), None, "{name}");
        }
    }
}
