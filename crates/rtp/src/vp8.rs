//! VP8 over RTP: the payload descriptor (RFC 7741 §4.2), where frames and keyframes start, a
//! keyframe's size (RFC 6386 §9.1), and [`Vp8Munger`], which rewrites picture ids and
//! TL0PICIDX so that a downtrack switching simulcast layers shows one continuous stream.
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |X|R|N|S|R| PID | (REQUIRED)
//!      +-+-+-+-+-+-+-+-+
//! X:   |I|L|T|K| RSV   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PictureID   | (OPTIONAL, 7 or 15 bits)
//!      +-+-+-+-+-+-+-+-+
//! L:   |   TL0PICIDX   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! T/K: |TID|Y| KEYIDX  | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! ```
//!
//! The VP8 payload header follows the descriptor; bit 0 of its first byte (P) is 0 on keyframes.

use crate::frame::FrameStart;
use bytes::{Bytes, BytesMut};

const PID_MASK_15: u16 = 0x7fff;

/// A picture id in a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureId {
    /// The value (7 or 15 bits).
    pub value: u16,
    /// Whether it is the 15-bit form (M=1).
    pub long: bool,
    /// Byte offset of its first byte in the payload.
    pub offset: usize,
}

/// A TL0PICIDX in a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tl0PicIdx {
    /// The value.
    pub value: u8,
    /// Byte offset in the payload.
    pub offset: usize,
}

/// The TID/Y/KEYIDX byte of a descriptor (present when T or K is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TidKeyIdx {
    /// Temporal layer index (valid when T=1).
    pub tid: u8,
    /// Layer sync bit.
    pub layer_sync: bool,
    /// Temporal key frame index (valid when K=1).
    pub key_idx: u8,
}

/// A parsed VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// Descriptor length in bytes: where the VP8 payload starts.
    pub len: usize,
    /// N: the frame is not used as a reference.
    pub non_reference: bool,
    /// S: the packet starts a partition.
    pub start_of_partition: bool,
    /// PID: the partition index.
    pub partition_id: u8,
    /// The picture id, when I=1.
    pub picture_id: Option<PictureId>,
    /// TL0PICIDX, when L=1.
    pub tl0_pic_idx: Option<Tl0PicIdx>,
    /// TID/Y/KEYIDX, when T=1 or K=1.
    pub tid_key_idx: Option<TidKeyIdx>,
}

impl Vp8Descriptor {
    /// Parses the descriptor at the start of an RTP payload; `None` when it is truncated.
    pub fn parse(p: &[u8]) -> Option<Self> {
        let b0 = *p.first()?;
        let mut out = Vp8Descriptor {
            len: 1,
            non_reference: b0 & 0x20 != 0,
            start_of_partition: b0 & 0x10 != 0,
            partition_id: b0 & 0x07,
            picture_id: None,
            tl0_pic_idx: None,
            tid_key_idx: None,
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
                out.picture_id = Some(PictureId {
                    value: u16::from(m & 0x7f) << 8 | u16::from(lo),
                    long: true,
                    offset: i,
                });
                i += 2;
            } else {
                out.picture_id = Some(PictureId {
                    value: u16::from(m),
                    long: false,
                    offset: i,
                });
                i += 1;
            }
        }
        if x & 0x40 != 0 {
            out.tl0_pic_idx = Some(Tl0PicIdx {
                value: *p.get(i)?,
                offset: i,
            });
            i += 1;
        }
        if x & 0x30 != 0 {
            let b = *p.get(i)?;
            out.tid_key_idx = Some(TidKeyIdx {
                tid: b >> 6,
                layer_sync: b & 0x20 != 0,
                key_idx: b & 0x1f,
            });
            i += 1;
        }
        out.len = i;
        Some(out)
    }

    /// Whether the packet begins a frame: S=1 and partition index 0.
    pub fn starts_frame(&self) -> bool {
        self.start_of_partition && self.partition_id == 0
    }
}

/// The length of the payload descriptor at the start of an RTP payload; `None` when truncated.
pub fn descriptor_len(payload: &[u8]) -> Option<usize> {
    Vp8Descriptor::parse(payload).map(|d| d.len)
}

/// Whether an encoded VP8 frame is a keyframe (RFC 6386 §9.1: the P bit of the frame tag).
pub fn is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

/// The width and height a keyframe's header declares: after the 3-byte frame tag, the start
/// code `9d 01 2a` and 14-bit little-endian width and height.
pub fn keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    let b = frame.get(3..10)?;
    (b[..3] == [0x9d, 0x01, 0x2a]).then(|| {
        (
            u16::from_le_bytes([b[3], b[4]]) & 0x3fff,
            u16::from_le_bytes([b[5], b[6]]) & 0x3fff,
        )
    })
}

/// Whether an RTP payload is the first packet of a keyframe.
pub fn starts_keyframe(payload: &[u8]) -> bool {
    frame_start(payload).is_some_and(|s| s.keyframe)
}

/// When the packet begins a frame (S=1, PID=0): whether that frame is a keyframe, its size
/// when the packet holds a keyframe header, and the picture id. `None` for continuation
/// packets and malformed payloads.
pub fn frame_start(payload: &[u8]) -> Option<FrameStart> {
    let d = Vp8Descriptor::parse(payload)?;
    if !d.starts_frame() {
        return None;
    }
    let frame = payload.get(d.len..)?;
    frame.first()?;
    let keyframe = is_keyframe(frame);
    Some(FrameStart {
        keyframe,
        size: keyframe.then(|| keyframe_size(frame)).flatten(),
        picture_id: d.picture_id.map(|p| (p.value, p.long)),
    })
}

/// Picture id and TL0PICIDX continuity for one downtrack.
///
/// Each simulcast layer numbers its pictures on its own. After a switch the subscriber would
/// see the picture id jump (backwards, often), which a receiver may take for old frames. The
/// munger keeps an offset per downtrack that makes the first picture of the new layer follow
/// the last one forwarded. While the offset is zero (every downtrack until its first switch)
/// the payload is shared untouched; after that each packet is copied once for that downtrack.
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
        if let (Some(pid), Some(last)) = (first.picture_id, self.last_pid) {
            self.pid_offset = last.wrapping_add(1).wrapping_sub(pid.value) & PID_MASK_15;
        }
        if let (Some(tl0), Some(last)) = (first.tl0_pic_idx, self.last_tl0) {
            self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0.value);
        }
    }

    /// The payload to send for `payload` (described by `desc`): shared when nothing changes,
    /// else a copy with the picture id and TL0PICIDX rewritten.
    pub fn munge(&mut self, desc: &Vp8Descriptor, payload: &Bytes) -> Bytes {
        let pid = desc.picture_id.map(|p| {
            let mask = if p.long { PID_MASK_15 } else { 0x7f };
            PictureId {
                value: p.value.wrapping_add(self.pid_offset) & mask,
                ..p
            }
        });
        let tl0 = desc.tl0_pic_idx.map(|t| Tl0PicIdx {
            value: t.value.wrapping_add(self.tl0_offset),
            ..t
        });
        if let Some(p) = pid {
            if self.last_pid.is_none_or(|l| pid_newer(p.value, l)) {
                self.last_pid = Some(p.value);
            }
        }
        if let Some(t) = tl0 {
            let newer = self
                .last_tl0
                .is_none_or(|l| (t.value.wrapping_sub(l) as i8) > 0);
            if newer {
                self.last_tl0 = Some(t.value);
            }
        }
        if self.pid_offset == 0 && self.tl0_offset == 0 {
            return payload.clone();
        }
        let mut out = BytesMut::from(&payload[..]);
        if let Some(p) = pid {
            if p.long {
                out[p.offset] = 0x80 | (p.value >> 8) as u8;
                out[p.offset + 1] = p.value as u8;
            } else {
                out[p.offset] = p.value as u8 & 0x7f;
            }
        }
        if let Some(t) = tl0 {
            out[t.offset] = t.value;
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
        (
            d.picture_id.expect("pid").value,
            d.tl0_pic_idx.expect("tl0").value,
        )
    }

    fn pid(value: u16, long: bool, offset: usize) -> Option<PictureId> {
        Some(PictureId {
            value,
            long,
            offset,
        })
    }

    #[test]
    fn descriptors_parse() {
        let d = Vp8Descriptor::parse(&packet(0x1234, 7)).expect("parses");
        assert_eq!(d.picture_id, pid(0x1234, true, 2));
        assert_eq!(
            d.tl0_pic_idx,
            Some(Tl0PicIdx {
                value: 7,
                offset: 4
            })
        );
        assert_eq!((d.len, d.tid_key_idx), (5, None));
        // 7-bit picture id, no TL0PICIDX.
        let d = Vp8Descriptor::parse(&[0x90, 0x80, 0x05, 0x00]).expect("parses");
        assert_eq!(d.picture_id, pid(5, false, 2));
        assert_eq!(d.tl0_pic_idx, None);
        assert_eq!(d.len, 3);
        // No extension: nothing to rewrite.
        let d = Vp8Descriptor::parse(&[0x10, 0x00]).expect("parses");
        assert_eq!((d.picture_id, d.tl0_pic_idx), (None, None));
        assert!(d.starts_frame());
        // N=1, partition 3, X with T and K: TID 2, Y, KEYIDX 5.
        let d = Vp8Descriptor::parse(&[0xb3, 0x30, 0xa5]).expect("parses");
        assert!(d.non_reference && d.start_of_partition && !d.starts_frame());
        assert_eq!(d.partition_id, 3);
        assert_eq!(
            d.tid_key_idx,
            Some(TidKeyIdx {
                tid: 2,
                layer_sync: true,
                key_idx: 5
            })
        );
        // Truncated.
        assert_eq!(Vp8Descriptor::parse(&[0x90, 0x80, 0x85]), None);
        assert_eq!(Vp8Descriptor::parse(&[0x90, 0x40]), None);
        assert_eq!(Vp8Descriptor::parse(&[0x90, 0x10]), None);
        assert_eq!(Vp8Descriptor::parse(&[]), None);
    }

    #[test]
    fn descriptor_lengths() {
        let table: &[(&[u8], Option<usize>)] = &[
            (&[0x10, 0x00], Some(1)),
            (&[0x90, 0x80, 0x81, 0x23, 0x00], Some(4)),
            (&[0x90, 0xe0, 0x05, 0x07, 0x20, 0x01], Some(5)),
            (&[0x90, 0xf0, 0x85, 0x01, 0x07, 0x20], Some(6)),
            (&[0x90, 0x80], None),
            (&[], None),
        ];
        for (payload, want) in table {
            assert_eq!(descriptor_len(payload), *want, "{payload:02x?}");
        }
    }

    #[test]
    fn frame_starts_are_found() {
        let start = |keyframe, size, picture_id| {
            Some(FrameStart {
                keyframe,
                size,
                picture_id,
            })
        };
        let table: &[(&[u8], Option<FrameStart>, &str)] = &[
            (
                &[0x10, 0x00, 0x9d],
                start(true, None, None),
                "minimal, keyframe",
            ),
            (
                &[0x10, 0x01],
                start(false, None, None),
                "minimal, interframe",
            ),
            (
                &[
                    0x10, 0x50, 0x12, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
                ],
                start(true, Some((640, 360)), None),
                "keyframe header: 640x360",
            ),
            (&[0x00, 0x00], None, "continuation"),
            (&[0x11, 0x00], None, "later partition"),
            (
                &[0x90, 0x80, 0x81, 0x23, 0x00],
                start(true, None, Some((0x123, true))),
                "15-bit picture id",
            ),
            (
                &[0x90, 0xE0, 0x05, 0x07, 0x20, 0x01],
                start(false, None, Some((5, false))),
                "7-bit picture id, L, T",
            ),
            (&[], None, "empty"),
            (&[0x90, 0x80, 0x81], None, "truncated picture id"),
            (&[0x10], None, "no payload header"),
        ];
        for (payload, want, name) in table {
            assert_eq!(frame_start(payload), *want, "{name}");
            assert_eq!(
                starts_keyframe(payload),
                want.is_some_and(|s| s.keyframe),
                "{name}"
            );
        }
        assert!(!is_keyframe(&[]));
        assert!(is_keyframe(&[0x10, 0x02]));
        assert!(!is_keyframe(&[0x11]));
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
