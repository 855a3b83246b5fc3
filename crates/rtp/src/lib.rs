//! Chorus's RTP and codec knowledge, in one place for the server (`chorus-sfu`) and the client
//! (`chorus-client`): what an RTP payload says about the video frame it carries, how sequence
//! numbers and arrival times are accounted, and the containers test media comes in.
//!
//! Everything here works on bytes only (no WebRTC stack, no I/O beyond [`std::io::Read`]),
//! never panics on malformed input (parsers return `None` or an error) and allocates only where
//! it builds something new (a rewritten payload, a parsed file).
//!
//! # Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`codec`] | [`VideoCodec`] (from a MIME type, keyframe starts), fmtp parameters and profile matching |
//! | [`frame`] | [`FrameStart`]: what a frame's first packet says (keyframe, size, picture id) |
//! | [`vp8`] | the VP8 payload descriptor (RFC 7741), keyframe starts and sizes, [`vp8::Vp8Munger`] (picture id rewriting) |
//! | [`vp9`] | the VP9 payload descriptor (RFC 9628), keyframes and sizes from the uncompressed header |
//! | [`h264`] | H.264 keyframe starts (RFC 6184: single NAL, STAP-A, FU-A) |
//! | [`av1`] | the AV1 aggregation header, OBUs, LEB128 and the sequence header's frame size |
//! | [`bits`] | [`bits::BitReader`], the MSB-first bit cursor VP9 and AV1 headers need |
//! | [`seq`] | [`seq::SeqExtender`]: 16-bit sequence numbers as 64-bit counters |
//! | [`jitter`] | [`jitter::Jitter`]: RFC 3550 interarrival jitter |
//! | [`ivf`] | the IVF container (VP8/VP9/AV1 clips) |
//! | [`ogg`] | the Ogg container and Ogg Opus packets |
//!
//! Codec modules take RTP payloads in functions named `starts_keyframe` / `frame_start` and
//! encoded frames (as IVF holds them) in `is_keyframe` / `keyframe_size`.

pub mod av1;
pub mod bits;
pub mod codec;
pub mod frame;
pub mod h264;
pub mod ivf;
pub mod jitter;
pub mod ogg;
pub mod seq;
pub mod vp8;
pub mod vp9;

pub use codec::{fmtp_param, same_profile, VideoCodec};
pub use frame::FrameStart;
