//! The media containers the client and load tool read clips from (`chorus_rtp::ivf`,
//! `chorus_rtp::ogg`): IVF (whole-file and streaming readers) and Ogg Opus. Not fed by the
//! network, but by files a user names: they must refuse a bad file, not panic or allocate
//! without bound.
#![no_main]

use chorus_rtp::{ivf, ogg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(clip) = ivf::IvfClip::parse(data) {
        let _ = clip.codec();
        let _ = clip.keyframe_indices();
        let _ = clip.frame_duration();
    }
    if let Ok(mut reader) = ivf::IvfReader::new(data) {
        let _ = reader.header().timestamp_micros(u64::MAX);
        let mut frames = 0;
        while let Ok(Some(frame)) = reader.next_frame() {
            let _ = frame.is_vp8_keyframe();
            frames += 1;
            assert!(frames <= data.len(), "more frames than bytes");
        }
    }
    if let Ok(packets) = ogg::packets(data) {
        for p in &packets {
            let _ = ogg::opus_packet_duration(p);
        }
    }
    let _ = ogg::opus_packets(data);
});
