//! The AV1 bitstream the client reads: OBU framing (AV1 spec 5.3), LEB128 sizes (4.10.5) and
//! the frame size a sequence header declares (5.5.1).

use crate::bits::BitReader;

/// `obu_type` of a sequence header, which starts every coded video sequence (keyframes).
pub(crate) const OBU_SEQUENCE_HEADER: u8 = 1;

/// One OBU: its type, its payload, and how many bytes of the input it took.
pub(crate) struct Obu<'a> {
    pub obu_type: u8,
    pub payload: &'a [u8],
    pub len: usize,
}

impl<'a> Obu<'a> {
    /// The OBU at the start of `data`: the header, the extension byte if flagged, the size if
    /// present (else the OBU runs to the end of `data`).
    pub(crate) fn parse(data: &'a [u8]) -> Option<Self> {
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
pub(crate) fn obus(mut data: &[u8]) -> impl Iterator<Item = Obu<'_>> {
    std::iter::from_fn(move || {
        let obu = Obu::parse(data)?;
        data = data.get(obu.len..)?;
        Some(obu)
    })
}

/// An unsigned LEB128 value and the bytes it took.
pub(crate) fn leb128(data: &[u8]) -> Option<(u64, usize)> {
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
pub(crate) fn sequence_size(seq: &[u8]) -> Option<(u16, u16)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_declares_its_size_in_its_sequence_header() {
        let clip =
            crate::ivf::IvfClip::parse(include_bytes!("../tests/data/av1_160x120_30fps.ivf"))
                .expect("AV1 clip");
        let seq = obus(&clip.frames[0].data)
            .find(|o| o.obu_type == OBU_SEQUENCE_HEADER)
            .expect("sequence header");
        assert_eq!(sequence_size(seq.payload), Some((160, 120)));
        assert_eq!(leb128(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(leb128(&[0x80]), None);
    }
}
