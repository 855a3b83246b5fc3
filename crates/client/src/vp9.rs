//! Marks inter-predicted VP9 frames in outgoing RTP (an interceptor on the publisher side).
//!
//! webrtc-rs's VP9 payloader writes the flexible-mode descriptor `I=1 F=1` with a picture id
//! but never the P (inter-picture predicted) bit, so every frame looks like a keyframe to a
//! receiver or an SFU deciding where a subscriber may start. This interceptor reads each
//! frame's uncompressed header (VP9 §6.2) and, for inter frames, sets P and adds the one
//! P_DIFF the flexible mode then requires (1: the previous picture). It runs application-side
//! of the NACK responder, so retransmissions carry the same descriptor. The descriptor rewrite
//! itself is [`chorus_rtp::vp9::mark_inter`].

use chorus_rtp::vp9::is_keyframe as is_vp9_keyframe;
/// The descriptor fix itself (publisher.rs uses it at this path too).
pub(crate) use chorus_rtp::vp9::mark_inter;
use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_VP9;
use rtc::sansio::Protocol;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Application-most: outgoing packets are fixed before any default interceptor keeps them.
pub(crate) const SLOT: usize = 20_000;

/// B: the packet begins a frame.
const B: u8 = 0x08;

#[derive(Default)]
pub(crate) struct Vp9InterFrames {
    /// VP9 streams by SSRC -> whether the frame being sent is inter-predicted.
    streams: HashMap<u32, bool>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
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
