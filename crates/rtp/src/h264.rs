//! H.264 over RTP (RFC 6184): whether a payload starts a keyframe. A single NAL unit, each NAL
//! unit of a STAP-A aggregate, or the first fragment of an FU-A is checked for an IDR slice
//! (type 5) or a sequence parameter set (type 7, which encoders send right before an IDR).

/// NAL unit type of a STAP-A aggregation packet.
const STAP_A: u8 = 24;
/// NAL unit type of an FU-A fragment.
const FU_A: u8 = 28;

/// Whether a NAL unit type begins a keyframe: IDR slice or SPS.
fn is_key(nal_type: u8) -> bool {
    nal_type == 5 || nal_type == 7
}

/// Whether an RTP payload is the first packet of a keyframe.
pub fn starts_keyframe(p: &[u8]) -> bool {
    let Some((&b0, mut rest)) = p.split_first() else {
        return false;
    };
    match b0 & 0x1f {
        STAP_A => {
            // 16-bit sizes, each followed by a NAL unit.
            while let [hi, lo, after @ ..] = rest {
                let size = usize::from(u16::from_be_bytes([*hi, *lo]));
                let Some(nal) = after.get(..size) else {
                    return false;
                };
                if nal.first().is_some_and(|h| is_key(h & 0x1f)) {
                    return true;
                }
                rest = &after[size..];
            }
            false
        }
        // FU-A: start bit and the fragmented NAL's type.
        FU_A => rest
            .first()
            .is_some_and(|fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_keyframe_starts() {
        let table: &[(&[u8], bool, &str)] = &[
            (&[0x65, 0x88], true, "IDR"),
            (&[0x67, 0x42], true, "SPS"),
            (&[0x41, 0x9a], false, "non-IDR slice"),
            (
                &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68],
                true,
                "stap-a with SPS",
            ),
            (
                &[0x78, 0x00, 0x01, 0x68, 0x00, 0x01, 0x65],
                true,
                "stap-a, IDR second",
            ),
            (&[0x78, 0x00, 0x01, 0x68], false, "stap-a, PPS only"),
            (&[0x78, 0x00, 0x09, 0x67], false, "stap-a truncated"),
            (&[0x78, 0x00], false, "stap-a, no unit"),
            (&[0x7c, 0x85], true, "fu-a start of IDR"),
            (&[0x7c, 0x05], false, "fu-a middle of IDR"),
            (&[0x7c, 0x81], false, "fu-a start of non-IDR"),
            (&[0x7c], false, "fu-a truncated"),
            (&[], false, "empty"),
        ];
        for (payload, want, name) in table {
            assert_eq!(starts_keyframe(payload), *want, "{name}");
        }
    }
}
