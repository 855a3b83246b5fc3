//! VP8 picture id and TL0PICIDX rewriting (RFC 7741 §4.2), so a downtrack that switches
//! simulcast layers shows its subscriber one continuous stream.
//!
//! Each layer numbers its pictures on its own. After a switch the subscriber would see the
//! picture id jump (backwards, often), which a receiver may take for old frames. The munger
//! keeps an offset per downtrack that makes the first picture of the new layer follow the
//! last one forwarded. While the offset is zero (every downtrack until its first switch) the
//! payload is shared untouched; after that each packet is copied once for that downtrack.

use bytes::{Bytes, BytesMut};

const PID_MASK_15: u16 = 0x7fff;

/// Where a VP8 payload descriptor keeps the fields the munger rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// Picture id, whether it is the 15-bit form, and its byte offset in the payload.
    pub picture_id: Option<(u16, bool, usize)>,
    /// TL0PICIDX and its byte offset.
    pub tl0_pic_idx: Option<(u8, usize)>,
}

impl Vp8Descriptor {
    /// Parses the descriptor at the start of an RTP payload; `None` when it is truncated.
    pub fn parse(p: &[u8]) -> Option<Self> {
        let b0 = *p.first()?;
        let mut out = Vp8Descriptor {
            picture_id: None,
            tl0_pic_idx: None,
        };
        if b0 & 0x80 == 0 {
            return Some(out);
        }
        let x = *p.get(1)?;
        let mut i = 2;
        if x & 0x80 != 0 {
            let m = *p.get(i)?;
            if m & 0x80 != 0 {
                let lo = *p.get(i + 1)?;
                out.picture_id = Some((u16::from(m & 0x7f) << 8 | u16::from(lo), true, i));
                i += 2;
            } else {
                out.picture_id = Some((u16::from(m), false, i));
                i += 1;
            }
        }
        if x & 0x40 != 0 {
            out.tl0_pic_idx = Some((*p.get(i)?, i));
        }
        Some(out)
    }
}

/// Picture id and TL0PICIDX continuity for one downtrack.
#[derive(Debug, Clone, Default)]
pub struct Vp8Munger {
    pid_offset: u16,
    tl0_offset: u8,
    /// The newest picture id and TL0PICIDX forwarded.
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
}

/// Whether 15-bit picture id `a` is newer than `b`.
fn pid_newer(a: u16, b: u16) -> bool {
    let d = a.wrapping_sub(b) & PID_MASK_15;
    d != 0 && d < 0x4000
}

impl Vp8Munger {
    /// The next packet (`first`, a keyframe start of another layer or after a pause) begins a
    /// new picture: offsets make its picture id and TL0PICIDX follow the last forwarded.
    pub fn switch_source(&mut self, first: &Vp8Descriptor) {
        if let (Some((pid, _, _)), Some(last)) = (first.picture_id, self.last_pid) {
            self.pid_offset = last.wrapping_add(1).wrapping_sub(pid) & PID_MASK_15;
        }
        if let (Some((tl0, _)), Some(last)) = (first.tl0_pic_idx, self.last_tl0) {
            self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
        }
    }

    /// The payload to send for `payload` (described by `desc`): shared when nothing changes,
    /// else a copy with the picture id and TL0PICIDX rewritten.
    pub fn munge(&mut self, desc: &Vp8Descriptor, payload: &Bytes) -> Bytes {
        let pid = desc.picture_id.map(|(pid, long, at)| {
            let mask = if long { PID_MASK_15 } else { 0x7f };
            (pid.wrapping_add(self.pid_offset) & mask, long, at)
        });
        let tl0 = desc
            .tl0_pic_idx
            .map(|(t, at)| (t.wrapping_add(self.tl0_offset), at));
        if let Some((p, _, _)) = pid {
            if self.last_pid.is_none_or(|l| pid_newer(p, l)) {
                self.last_pid = Some(p);
            }
        }
        if let Some((t, _)) = tl0 {
            let newer = self.last_tl0.is_none_or(|l| (t.wrapping_sub(l) as i8) > 0);
            if newer {
                self.last_tl0 = Some(t);
            }
        }
        if self.pid_offset == 0 && self.tl0_offset == 0 {
            return payload.clone();
        }
        let mut out = BytesMut::from(&payload[..]);
        if let Some((p, long, at)) = pid {
            if long {
                out[at] = 0x80 | (p >> 8) as u8;
                out[at + 1] = p as u8;
            } else {
                out[at] = p as u8 & 0x7f;
            }
        }
        if let Some((t, at)) = tl0 {
            out[at] = t;
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor with X, I (15-bit picture id) and L (TL0PICIDX), S=1 on keyframes, then
    /// one payload byte.
    fn packet(pid: u16, tl0: u8) -> Bytes {
        Bytes::from(vec![
            0x90,
            0xc0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            0x00,
        ])
    }

    fn fields(p: &Bytes) -> (u16, u8) {
        let d = Vp8Descriptor::parse(p).expect("parses");
        (d.picture_id.expect("pid").0, d.tl0_pic_idx.expect("tl0").0)
    }

    #[test]
    fn descriptors_parse() {
        let d = Vp8Descriptor::parse(&packet(0x1234, 7)).expect("parses");
        assert_eq!(d.picture_id, Some((0x1234, true, 2)));
        assert_eq!(d.tl0_pic_idx, Some((7, 4)));
        // 7-bit picture id, no TL0PICIDX.
        let d = Vp8Descriptor::parse(&[0x90, 0x80, 0x05, 0x00]).expect("parses");
        assert_eq!(d.picture_id, Some((5, false, 2)));
        assert_eq!(d.tl0_pic_idx, None);
        // No extension: nothing to rewrite.
        let d = Vp8Descriptor::parse(&[0x10, 0x00]).expect("parses");
        assert_eq!((d.picture_id, d.tl0_pic_idx), (None, None));
        // Truncated.
        assert_eq!(Vp8Descriptor::parse(&[0x90, 0x80, 0x85]), None);
        assert_eq!(Vp8Descriptor::parse(&[]), None);
    }

    #[test]
    fn a_switch_continues_picture_ids_and_tl0picidx() {
        let mut m = Vp8Munger::default();
        // Layer A: pictures 100, 101 (two packets), 102; shared, untouched.
        for (pid, tl0) in [(100, 10), (101, 11), (101, 11), (102, 12)] {
            let p = packet(pid, tl0);
            let d = Vp8Descriptor::parse(&p).expect("parses");
            let out = m.munge(&d, &p);
            assert_eq!(out.as_ptr(), p.as_ptr(), "no copy before a switch");
        }
        // Layer B starts at picture 7000 / TL0 200: it continues at 103 / 13.
        let first = packet(7000, 200);
        let d = Vp8Descriptor::parse(&first).expect("parses");
        m.switch_source(&d);
        assert_eq!(fields(&m.munge(&d, &first)), (103, 13));
        let next = packet(7001, 201);
        let d = Vp8Descriptor::parse(&next).expect("parses");
        assert_eq!(fields(&m.munge(&d, &next)), (104, 14));
        // Wrapping: back to layer A at picture 32767.
        let wrap = packet(0x7fff, 255);
        let d = Vp8Descriptor::parse(&wrap).expect("parses");
        m.switch_source(&d);
        assert_eq!(fields(&m.munge(&d, &wrap)), (105, 15));
        let after = packet(0, 0);
        let d = Vp8Descriptor::parse(&after).expect("parses");
        assert_eq!(fields(&m.munge(&d, &after)), (106, 16));
    }
}
