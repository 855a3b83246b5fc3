//! Marks inter-predicted VP9 frames in outgoing RTP (an interceptor on the publisher side).
//!
//! webrtc-rs's VP9 payloader writes the flexible-mode descriptor `I=1 F=1` with a picture id
//! but never the P (inter-picture predicted) bit, so every frame looks like a keyframe to a
//! receiver or an SFU deciding where a subscriber may start. This interceptor reads each
//! frame's uncompressed header (VP9 §6.2) and, for inter frames, sets P and adds the one
//! P_DIFF the flexible mode then requires (1: the previous picture). It runs application-side
//! of the NACK responder, so retransmissions carry the same descriptor.

use crate::ivf::is_vp9_keyframe;
use bytes::{BufMut, BytesMut};
use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_VP9;
use rtc::sansio::Protocol;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Application-most: outgoing packets are fixed before any default interceptor keeps them.
pub(crate) const SLOT: usize = 20_000;

/// The descriptor the payloader writes: I (picture id present) and F (flexible mode).
const I_F: u8 = 0x90;
const P: u8 = 0x40;
const B: u8 = 0x08;

#[derive(Default)]
pub(crate) struct Vp9InterFrames {
    /// VP9 streams by SSRC -> whether the frame being sent is inter-predicted.
    streams: HashMap<u32, bool>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

/// Sets P and appends P_DIFF=1 to the 3-byte descriptor `I=1 F=1 M=1` of an inter frame's
/// packet; returns `None` for a descriptor of another shape.
pub(crate) fn mark_inter(payload: &[u8]) -> Option<BytesMut> {
    let (&b0, rest) = payload.split_first()?;
    if b0 & I_F != I_F || b0 & P != 0 || rest.first()? & 0x80 == 0 || rest.len() < 2 {
        return None;
    }
    let mut out = BytesMut::with_capacity(payload.len() + 1);
    out.put_u8(b0 | P);
    out.put_slice(&rest[..2]);
    out.put_u8(1 << 1); // P_DIFF = 1, N = 0: the previous picture
    out.put_slice(&rest[2..]);
    Some(out)
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Vp9InterFrames {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(rtp) = &mut msg.message.packet {
            if let Some(inter) = self.streams.get_mut(&rtp.header.ssrc) {
                let payload = &rtp.payload;
                if payload.first().is_some_and(|b| b & B != 0) {
                    // The frame starts after the 3-byte descriptor.
                    *inter = !payload.get(3..).is_some_and(is_vp9_keyframe);
                }
                if *inter {
                    if let Some(fixed) = mark_inter(payload) {
                        rtp.payload = fixed.freeze();
                    }
                }
            }
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for Vp9InterFrames {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if info.mime_type.eq_ignore_ascii_case(MIME_TYPE_VP9) {
            self.streams.insert(info.ssrc, false);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.streams.remove(&info.ssrc);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

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
