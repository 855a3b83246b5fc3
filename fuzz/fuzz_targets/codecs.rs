//! Video payload descriptors (`chorus_rtp`), which the forwarder runs on every publisher
//! packet: keyframe detection for VP8, VP9, H264 and AV1 (`VideoCodec::starts_keyframe`), the
//! frame-start functions the client's accounting uses, the VP8 descriptor
//! (`Vp8Descriptor::parse`) and picture-id rewriting (`Vp8Munger`), VP9 and AV1 header
//! readers. The first byte steers the munger; the rest is the payload.
#![no_main]

use bytes::Bytes;
use chorus_rtp::vp8::{Vp8Descriptor, Vp8Munger};
use chorus_rtp::{av1, h264, vp8, vp9, VideoCodec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    for codec in [
        VideoCodec::Vp8,
        VideoCodec::Vp9,
        VideoCodec::H264,
        VideoCodec::Av1,
    ] {
        let _ = codec.starts_keyframe(payload);
    }
    let _ = h264::starts_keyframe(payload);
    let _ = vp8::frame_start(payload);
    let _ = vp8::keyframe_size(payload);
    let _ = vp9::frame_start(payload);
    let _ = vp9::is_keyframe(payload);
    let _ = vp9::keyframe_size(payload);
    if let Some(out) = vp9::mark_inter(payload) {
        // P set, P_DIFF inserted after the picture id, the rest untouched.
        assert_eq!(out.len(), payload.len() + 1);
        assert_eq!(out[4..], payload[3..]);
    }
    let _ = av1::frame_start(payload, sel & 1 == 1);
    let _ = av1::payload_size(payload);
    let _ = av1::sequence_size(payload);
    let _ = av1::is_keyframe(payload);
    let _ = av1::leb128(payload);
    let _ = av1::obus(payload).take(4096).count();

    // VP8: the descriptor lies inside the payload, and the munger rewrites only the picture
    // id and TL0PICIDX, by the offsets a layer switch sets.
    let Some(desc) = Vp8Descriptor::parse(payload) else {
        return;
    };
    assert!(desc.len <= payload.len());
    assert_eq!(vp8::descriptor_len(payload), Some(desc.len));
    if let Some(p) = desc.picture_id {
        assert!(p.offset + if p.long { 2 } else { 1 } <= desc.len);
    }
    if let Some(t) = desc.tl0_pic_idx {
        assert!(t.offset < desc.len);
    }
    let payload = Bytes::copy_from_slice(payload);
    let mut munger = Vp8Munger::default();
    let first = munger.munge(&desc, &payload);
    assert_eq!(
        first, payload,
        "no switch yet: the payload is shared untouched"
    );
    // A switch to a source whose picture ids are elsewhere: rewrite from here on.
    let mut other = desc;
    if let Some(p) = other.picture_id.as_mut() {
        p.value = p.value.wrapping_add(u16::from(sel) << 4) & if p.long { 0x7fff } else { 0x7f };
    }
    if let Some(t) = other.tl0_pic_idx.as_mut() {
        t.value = t.value.wrapping_add(sel);
    }
    munger.switch_source(&other);
    let out = munger.munge(&desc, &payload);
    assert_eq!(out.len(), payload.len());
    let back = Vp8Descriptor::parse(&out).expect("a rewritten descriptor parses");
    assert_eq!(back.len, desc.len);
    assert_eq!(
        back.picture_id.map(|p| (p.long, p.offset)),
        desc.picture_id.map(|p| (p.long, p.offset))
    );
    assert_eq!(
        back.tl0_pic_idx.map(|t| t.offset),
        desc.tl0_pic_idx.map(|t| t.offset)
    );
    assert_eq!(
        out[desc.len..],
        payload[desc.len..],
        "only the descriptor changes"
    );
});
