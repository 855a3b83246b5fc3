//! A minimal reader for IVF files, the container `vpxenc` and ffmpeg write VP8/VP9/AV1 frames
//! into.
//!
//! Layout (all little endian): a 32-byte file header — `DKIF`, version (u16), header length
//! (u16), codec FourCC, width (u16), height (u16), timebase denominator (u32), timebase
//! numerator (u32), frame count (u32), unused (u32) — followed by frames, each a 12-byte header
//! (payload size u32, timestamp u64 in timebase units) and the payload.

use bytes::Bytes;
use std::io::{self, Read};

pub use crate::av1::is_keyframe as is_av1_keyframe;
pub use crate::vp8::is_keyframe as is_vp8_keyframe;
pub use crate::vp9::{is_keyframe as is_vp9_keyframe, keyframe_size as vp9_keyframe_size};

/// Size of the IVF file header in bytes.
pub const IVF_FILE_HEADER_LEN: usize = 32;
/// Size of an IVF frame header in bytes.
pub const IVF_FRAME_HEADER_LEN: usize = 12;
/// Frames larger than this are rejected as corrupt rather than allocated.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Errors reading an IVF stream.
#[derive(Debug, thiserror::Error)]
pub enum IvfError {
    /// The stream does not start with `DKIF`.
    #[error("not an IVF stream (bad signature)")]
    BadSignature,
    /// The header declares a length shorter than the fixed 32-byte header.
    #[error("IVF header length {0} is shorter than 32 bytes")]
    BadHeaderLength(u16),
    /// The stream ended inside the file header.
    #[error("IVF stream truncated inside the file header")]
    TruncatedHeader,
    /// The stream ended inside a frame header or payload.
    #[error("IVF stream truncated inside frame {index}")]
    TruncatedFrame {
        /// Zero-based index of the incomplete frame.
        index: u64,
    },
    /// A frame declares a size above [`MAX_FRAME_LEN`].
    #[error("IVF frame {index} declares {len} bytes, more than the {MAX_FRAME_LEN} allowed")]
    FrameTooLarge {
        /// Zero-based index of the frame.
        index: u64,
        /// Declared payload size.
        len: usize,
    },
    /// The file has no frames.
    #[error("IVF stream has no frames")]
    Empty,
    /// Reading failed.
    #[error("reading IVF stream: {0}")]
    Io(#[from] io::Error),
}

/// The IVF file header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvfHeader {
    /// Codec FourCC, e.g. `*b"VP80"`.
    pub fourcc: [u8; 4],
    /// Frame width in pixels.
    pub width: u16,
    /// Frame height in pixels.
    pub height: u16,
    /// Timebase denominator (the frame rate for a 1/fps timebase).
    pub timebase_denominator: u32,
    /// Timebase numerator.
    pub timebase_numerator: u32,
    /// Frame count as declared in the header (not always accurate).
    pub frame_count: u32,
}

impl IvfHeader {
    /// Parses a 32-byte IVF file header.
    pub fn parse(buf: &[u8; IVF_FILE_HEADER_LEN]) -> Result<Self, IvfError> {
        if &buf[0..4] != b"DKIF" {
            return Err(IvfError::BadSignature);
        }
        let header_len = u16::from_le_bytes([buf[6], buf[7]]);
        if usize::from(header_len) < IVF_FILE_HEADER_LEN {
            return Err(IvfError::BadHeaderLength(header_len));
        }
        Ok(Self {
            fourcc: [buf[8], buf[9], buf[10], buf[11]],
            width: u16::from_le_bytes([buf[12], buf[13]]),
            height: u16::from_le_bytes([buf[14], buf[15]]),
            timebase_denominator: u32::from_le_bytes([buf[16], buf[17], buf[18], buf[19]]),
            timebase_numerator: u32::from_le_bytes([buf[20], buf[21], buf[22], buf[23]]),
            frame_count: u32::from_le_bytes([buf[24], buf[25], buf[26], buf[27]]),
        })
    }

    /// Converts a frame timestamp in timebase units to microseconds; `None` for a zero
    /// denominator.
    pub fn timestamp_micros(&self, ts: u64) -> Option<u64> {
        if self.timebase_denominator == 0 {
            return None;
        }
        let micros = u128::from(ts) * u128::from(self.timebase_numerator) * 1_000_000
            / u128::from(self.timebase_denominator);
        u64::try_from(micros).ok()
    }
}

/// One IVF frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvfFrame {
    /// Presentation timestamp in timebase units.
    pub timestamp: u64,
    /// The encoded frame.
    pub data: Bytes,
}

impl IvfFrame {
    /// Whether this is a VP8 keyframe (bit 0 of the VP8 frame tag is 0 for key frames).
    pub fn is_vp8_keyframe(&self) -> bool {
        is_vp8_keyframe(&self.data)
    }
}

/// The video codecs an IVF file may hold that the client can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvfCodec {
    /// FourCC `VP80`.
    Vp8,
    /// FourCC `VP90`.
    Vp9,
    /// FourCC `AV01`.
    Av1,
}

impl IvfCodec {
    /// The codec of a FourCC, if supported.
    pub fn from_fourcc(fourcc: &[u8; 4]) -> Option<Self> {
        match fourcc {
            b"VP80" => Some(Self::Vp8),
            b"VP90" => Some(Self::Vp9),
            b"AV01" => Some(Self::Av1),
            _ => None,
        }
    }

    /// Whether an encoded frame of this codec is a keyframe.
    pub fn is_keyframe(self, frame: &[u8]) -> bool {
        match self {
            Self::Vp8 => is_vp8_keyframe(frame),
            Self::Vp9 => is_vp9_keyframe(frame),
            Self::Av1 => is_av1_keyframe(frame),
        }
    }
}

/// Streams frames out of an IVF source.
#[derive(Debug)]
pub struct IvfReader<R> {
    reader: R,
    header: IvfHeader,
    index: u64,
}

impl<R: Read> IvfReader<R> {
    /// Reads and validates the file header.
    pub fn new(mut reader: R) -> Result<Self, IvfError> {
        let mut buf = [0u8; IVF_FILE_HEADER_LEN];
        read_exact_or(&mut reader, &mut buf, IvfError::TruncatedHeader)?;
        let header = IvfHeader::parse(&buf)?;
        // Skip any header bytes beyond the 32 we understand.
        let header_len = u16::from_le_bytes([buf[6], buf[7]]);
        let extra = usize::from(header_len) - IVF_FILE_HEADER_LEN;
        if extra > 0 {
            let mut skip = vec![0u8; extra];
            read_exact_or(&mut reader, &mut skip, IvfError::TruncatedHeader)?;
        }
        Ok(Self {
            reader,
            header,
            index: 0,
        })
    }

    /// The file header.
    pub fn header(&self) -> &IvfHeader {
        &self.header
    }

    /// Reads the next frame; `Ok(None)` at a clean end of stream.
    pub fn next_frame(&mut self) -> Result<Option<IvfFrame>, IvfError> {
        let index = self.index;
        let mut fh = [0u8; IVF_FRAME_HEADER_LEN];
        // A clean end of stream is zero bytes of frame header.
        let mut filled = 0;
        while filled < fh.len() {
            match self.reader.read(&mut fh[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(IvfError::TruncatedFrame { index }),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(IvfError::FrameTooLarge { index, len });
        }
        let timestamp =
            u64::from_le_bytes([fh[4], fh[5], fh[6], fh[7], fh[8], fh[9], fh[10], fh[11]]);
        let mut data = vec![0u8; len];
        read_exact_or(
            &mut self.reader,
            &mut data,
            IvfError::TruncatedFrame { index },
        )?;
        self.index += 1;
        Ok(Some(IvfFrame {
            timestamp,
            data: Bytes::from(data),
        }))
    }
}

impl<R: Read> Iterator for IvfReader<R> {
    type Item = Result<IvfFrame, IvfError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

/// A whole IVF clip held in memory.
#[derive(Debug, Clone)]
pub struct IvfClip {
    /// The file header.
    pub header: IvfHeader,
    /// All frames, in file order.
    pub frames: Vec<IvfFrame>,
}

impl IvfClip {
    /// Parses a complete IVF file; fails on any truncation or when there are no frames.
    pub fn parse(data: &[u8]) -> Result<Self, IvfError> {
        let mut reader = IvfReader::new(data)?;
        let mut frames = Vec::new();
        while let Some(frame) = reader.next_frame()? {
            frames.push(frame);
        }
        if frames.is_empty() {
            return Err(IvfError::Empty);
        }
        Ok(Self {
            header: reader.header,
            frames,
        })
    }

    /// The clip's codec, when the client can send it.
    pub fn codec(&self) -> Option<IvfCodec> {
        IvfCodec::from_fourcc(&self.header.fourcc)
    }

    /// Whether frame `i` is a keyframe (by the clip's codec; VP8 when unknown).
    pub fn is_keyframe(&self, i: usize) -> bool {
        let codec = self.codec().unwrap_or(IvfCodec::Vp8);
        self.frames
            .get(i)
            .is_some_and(|f| codec.is_keyframe(&f.data))
    }

    /// Indices of the keyframes.
    pub fn keyframe_indices(&self) -> Vec<usize> {
        (0..self.frames.len())
            .filter(|&i| self.is_keyframe(i))
            .collect()
    }

    /// The nominal duration of one frame: one timebase tick, or 1/30 s when the header is
    /// unusable.
    pub fn frame_duration(&self) -> std::time::Duration {
        const FALLBACK: std::time::Duration = std::time::Duration::from_micros(33_333);
        match self.header.timestamp_micros(1) {
            Some(us) if (1_000..=1_000_000).contains(&us) => std::time::Duration::from_micros(us),
            _ => FALLBACK,
        }
    }
}

fn read_exact_or<R: Read>(reader: &mut R, buf: &mut [u8], eof: IvfError) -> Result<(), IvfError> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(eof),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &[u8] = include_bytes!("../../client/tests/data/vp8_160x120_30fps.ivf");

    fn header_bytes(frame_count: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(b"DKIF");
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&32u16.to_le_bytes());
        h.extend_from_slice(b"VP80");
        h.extend_from_slice(&160u16.to_le_bytes());
        h.extend_from_slice(&120u16.to_le_bytes());
        h.extend_from_slice(&30u32.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&frame_count.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    }

    fn frame_bytes(ts: u64, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(&ts.to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn parses_the_fixture() {
        let clip = IvfClip::parse(FIXTURE).expect("fixture parses");
        assert_eq!(&clip.header.fourcc, b"VP80");
        assert_eq!((clip.header.width, clip.header.height), (160, 120));
        assert_eq!(clip.header.timebase_denominator, 30);
        assert_eq!(clip.header.timebase_numerator, 1);
        assert_eq!(clip.frames.len(), 90);
        assert_eq!(clip.header.frame_count, 90);
        assert_eq!(clip.keyframe_indices(), vec![0, 30, 60]);
        for (i, f) in clip.frames.iter().enumerate() {
            assert_eq!(f.timestamp, i as u64);
            assert!(!f.data.is_empty());
        }
        assert_eq!(
            clip.frame_duration(),
            std::time::Duration::from_micros(33_333)
        );
        // VP8 keyframes carry the start code 9d 01 2a after the 3-byte frame tag.
        let kf = &clip.frames[0].data;
        assert_eq!(&kf[3..6], &[0x9d, 0x01, 0x2a]);
    }

    #[test]
    fn vp9_and_av1_fixtures_have_their_keyframes_found() {
        for (data, fourcc, codec) in [
            (
                &include_bytes!("../../client/tests/data/vp9_160x120_30fps.ivf")[..],
                b"VP90",
                IvfCodec::Vp9,
            ),
            (
                &include_bytes!("../../client/tests/data/av1_160x120_30fps.ivf")[..],
                b"AV01",
                IvfCodec::Av1,
            ),
        ] {
            let clip = IvfClip::parse(data).expect("fixture parses");
            assert_eq!(&clip.header.fourcc, fourcc);
            assert_eq!(clip.codec(), Some(codec));
            assert_eq!(clip.frames.len(), 90);
            // ffmpeg -g 30: a keyframe every second.
            assert_eq!(clip.keyframe_indices(), vec![0, 30, 60], "{fourcc:?}");
        }
        // Frame-level keyframe and size checks: the `vp9` and `av1` module tests.
    }

    #[test]
    fn streams_frames_and_stops_cleanly() {
        let mut data = header_bytes(2);
        data.extend(frame_bytes(0, &[0x10, 0x02, 0x00]));
        data.extend(frame_bytes(1, &[0x11]));
        let reader = IvfReader::new(&data[..]).expect("header");
        let frames: Vec<_> = reader.collect::<Result<_, _>>().expect("frames");
        assert_eq!(frames.len(), 2);
        assert!(frames[0].is_vp8_keyframe());
        assert!(!frames[1].is_vp8_keyframe());
        assert_eq!(frames[1].data.as_ref(), &[0x11]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            IvfReader::new(&b"DKIF"[..]),
            Err(IvfError::TruncatedHeader)
        ));
        let mut bad = header_bytes(0);
        bad[0] = b'X';
        assert!(matches!(
            IvfReader::new(&bad[..]),
            Err(IvfError::BadSignature)
        ));
        let mut short = header_bytes(0);
        short[6] = 16;
        assert!(matches!(
            IvfReader::new(&short[..]),
            Err(IvfError::BadHeaderLength(16))
        ));
        assert!(matches!(
            IvfClip::parse(&header_bytes(0)),
            Err(IvfError::Empty)
        ));

        // Truncated inside a frame header, then inside a payload.
        let mut data = header_bytes(1);
        data.extend_from_slice(&[5, 0, 0]);
        assert!(matches!(
            IvfClip::parse(&data),
            Err(IvfError::TruncatedFrame { index: 0 })
        ));
        let mut data = header_bytes(2);
        data.extend(frame_bytes(0, &[0, 1, 2]));
        let mut second = frame_bytes(1, &[0, 1, 2, 3]);
        second.truncate(14);
        data.extend(second);
        assert!(matches!(
            IvfClip::parse(&data),
            Err(IvfError::TruncatedFrame { index: 1 })
        ));

        let mut huge = header_bytes(1);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            IvfClip::parse(&huge),
            Err(IvfError::FrameTooLarge { index: 0, .. })
        ));
    }

    #[test]
    fn skips_extended_headers_and_handles_zero_timebase() {
        let mut data = header_bytes(1);
        data[6] = 36;
        data.extend_from_slice(&[0xAA; 4]);
        data.extend(frame_bytes(7, &[0x00]));
        let clip = IvfClip::parse(&data).expect("parses");
        assert_eq!(clip.frames[0].timestamp, 7);

        let mut h = clip.header.clone();
        h.timebase_denominator = 0;
        assert_eq!(h.timestamp_micros(1), None);
        assert!(!is_vp8_keyframe(&[]));
    }
}
