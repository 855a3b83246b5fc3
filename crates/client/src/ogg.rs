//! Ogg Opus audio for `--audio-file`: the container reader lives in [`chorus_rtp::ogg`] (all of
//! it re-exported here); this module turns its packets into an [`AudioClip`].

use crate::media::{AudioClip, AudioFrame};
pub use chorus_rtp::ogg::*;

/// Loads an Ogg Opus file: skips the `OpusHead` and `OpusTags` header packets and keeps the
/// audio packets with their durations (levels unknown).
pub fn parse_opus(data: &[u8]) -> Result<AudioClip, OggError> {
    let frames = opus_packets(data)?
        .into_iter()
        .map(|p| AudioFrame {
            data: p.data,
            duration: p.duration,
            level: None,
        })
        .collect();
    Ok(AudioClip { frames })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn loads_real_opus_packets_with_durations() {
        let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
            .expect("encoder");
        let pcm: Vec<i16> = (0..960)
            .map(|i| ((i as f32 / 20.0).sin() * 8000.0) as i16)
            .collect();
        let packets: Vec<Vec<u8>> = (0..10)
            .map(|_| enc.encode_vec(&pcm, 1500).expect("encode"))
            .collect();
        let clip = parse_opus(&opus_file(&packets)).expect("parses");
        assert_eq!(clip.frames.len(), 10);
        for (f, p) in clip.frames.iter().zip(&packets) {
            assert_eq!(&f.data[..], &p[..]);
            assert_eq!(f.duration, Duration::from_millis(20));
            assert_eq!(f.level, None);
        }
        // Errors are the reader's.
        assert_eq!(parse_opus(&opus_file(&[])).err(), Some(OggError::Empty));
    }
}
