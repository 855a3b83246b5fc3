//! Encoded audio frames and clips ([`AudioFrame`], [`AudioClip`]) and the Opus frame
//! constants: the plain types both the senders ([`crate::media`]) and the generators
//! ([`crate::generate`]) and the Ogg reader ([`crate::ogg`]) use, so that imports between them
//! run one way.

use bytes::Bytes;
use std::time::Duration;

/// A 20 ms Opus CELT silence frame (TOC 0xF8: config 31, mono, one frame), as browsers send.
pub const OPUS_SILENCE_FRAME: [u8; 3] = [0xF8, 0xFF, 0xFE];
/// Opus frame duration.
pub const OPUS_FRAME_DURATION: Duration = Duration::from_millis(20);

/// One encoded Opus packet of an [`AudioClip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    /// The Opus packet.
    pub data: Bytes,
    /// Its duration (from the TOC byte; 20 ms for generated audio).
    pub duration: Duration,
    /// RFC 6464 level (−dBov, 127 = silence) when known.
    pub level: Option<u8>,
}

/// Encoded Opus packets looped by a publisher with fresh timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioClip {
    /// The packets, in order.
    pub frames: Vec<AudioFrame>,
}
