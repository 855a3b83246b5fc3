//! A minimal Ogg reader (RFC 3533) and Ogg Opus packet loader (RFC 7845), plus the small
//! writer tests use to build files.
//!
//! Pages are `OggS`, version 0, a header-type byte, granule position (u64), serial number
//! (u32), page sequence (u32), CRC-32 (u32, polynomial 0x04C11DB7 over the page with the CRC
//! field zeroed), a segment count and the lacing table; a packet is the concatenation of
//! segments up to the first one shorter than 255 bytes, and may continue on the next page.
//! Only the first logical stream is read.

use bytes::Bytes;
use std::time::Duration;

/// Errors reading an Ogg (Opus) stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OggError {
    /// A page does not start with `OggS`.
    #[error("not an Ogg stream (no OggS capture pattern at byte {0})")]
    BadCapture(usize),
    /// Unsupported stream structure version.
    #[error("unsupported Ogg version {0}")]
    BadVersion(u8),
    /// The stream ended inside a page.
    #[error("Ogg stream truncated inside the page at byte {0}")]
    Truncated(usize),
    /// A page's CRC does not match.
    #[error("Ogg page at byte {0} fails its CRC check")]
    BadCrc(usize),
    /// The first packet is not an `OpusHead`.
    #[error("not an Ogg Opus stream (no OpusHead)")]
    NotOpus,
    /// The stream has no audio packets.
    #[error("Ogg Opus stream has no audio packets")]
    Empty,
    /// An audio packet has no usable TOC byte.
    #[error("Opus packet {0} is malformed")]
    BadPacket(usize),
}

/// One Ogg page header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageHeader {
    /// Header type flags (0x01 continued packet, 0x02 first page, 0x04 last page).
    pub header_type: u8,
    /// Granule position.
    pub granule_position: u64,
    /// Logical stream serial number.
    pub serial: u32,
    /// Page sequence number.
    pub sequence: u32,
}

/// CRC-32 as Ogg defines it: polynomial 0x04C11DB7, no reflection, initial value and final
/// XOR zero.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Splits an Ogg stream into the packets of its first logical stream, checking every page's
/// CRC.
pub fn packets(data: &[u8]) -> Result<Vec<Vec<u8>>, OggError> {
    let mut out = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut serial = None;
    let mut pos = 0;
    while pos < data.len() {
        let (header, segments, body, len) = page(data, pos)?;
        let start = pos;
        pos += len;
        if *serial.get_or_insert(header.serial) != header.serial {
            continue;
        }
        if header.header_type & 0x01 == 0 {
            // Not a continuation: drop any unfinished packet (a corrupt or cut stream).
            partial.clear();
        }
        let mut offset = 0;
        for &lace in segments {
            let end = offset + usize::from(lace);
            partial.extend_from_slice(body.get(offset..end).ok_or(OggError::Truncated(start))?);
            offset = end;
            if lace < 255 {
                out.push(std::mem::take(&mut partial));
            }
        }
    }
    Ok(out)
}

/// A parsed page: header, lacing table, body, total length.
type Page<'a> = (PageHeader, &'a [u8], &'a [u8], usize);

/// Parses the page at `pos`.
fn page(data: &[u8], pos: usize) -> Result<Page<'_>, OggError> {
    let rest = &data[pos..];
    if rest.len() < 27 {
        return Err(if rest.starts_with(b"OggS") || rest.len() < 4 {
            OggError::Truncated(pos)
        } else {
            OggError::BadCapture(pos)
        });
    }
    if &rest[0..4] != b"OggS" {
        return Err(OggError::BadCapture(pos));
    }
    if rest[4] != 0 {
        return Err(OggError::BadVersion(rest[4]));
    }
    let u32_at = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let header = PageHeader {
        header_type: rest[5],
        granule_position: u64::from(u32_at(6)) | (u64::from(u32_at(10)) << 32),
        serial: u32_at(14),
        sequence: u32_at(18),
    };
    let crc = u32_at(22);
    let nsegs = usize::from(rest[26]);
    let segments = rest.get(27..27 + nsegs).ok_or(OggError::Truncated(pos))?;
    let body_len: usize = segments.iter().map(|&s| usize::from(s)).sum();
    let len = 27 + nsegs + body_len;
    let whole = rest.get(..len).ok_or(OggError::Truncated(pos))?;
    let mut check = whole.to_vec();
    check[22..26].fill(0);
    if crc32(&check) != crc {
        return Err(OggError::BadCrc(pos));
    }
    Ok((header, segments, &whole[27 + nsegs..], len))
}

/// The duration of an Opus packet from its TOC byte (RFC 6716 §3.1); `None` when malformed.
pub fn opus_packet_duration(packet: &[u8]) -> Option<Duration> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame size in units of 2.5 ms.
    let frame_units: u32 = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    if frames == 0 {
        return None;
    }
    Some(Duration::from_micros(
        u64::from(frame_units * frames) * 2_500,
    ))
}

/// One Opus audio packet of an Ogg Opus file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusPacket {
    /// The encoded packet.
    pub data: Bytes,
    /// Its duration, from its TOC byte.
    pub duration: Duration,
}

/// Reads an Ogg Opus file: skips the `OpusHead` and `OpusTags` header packets and returns the
/// audio packets with their durations.
pub fn opus_packets(data: &[u8]) -> Result<Vec<OpusPacket>, OggError> {
    let packets = packets(data)?;
    let mut it = packets.into_iter();
    match it.next() {
        Some(head) if head.starts_with(b"OpusHead") && head.len() >= 19 => {}
        _ => return Err(OggError::NotOpus),
    }
    let out = it
        .filter(|p| !p.starts_with(b"OpusTags"))
        .enumerate()
        .map(|(i, p)| {
            let duration = opus_packet_duration(&p).ok_or(OggError::BadPacket(i))?;
            Ok(OpusPacket {
                data: Bytes::from(p),
                duration,
            })
        })
        .collect::<Result<Vec<_>, OggError>>()?;
    if out.is_empty() {
        return Err(OggError::Empty);
    }
    Ok(out)
}

/// Appends one page with this lacing table and body, and its CRC, to `out` (logical stream
/// serial `0x1234_5678`).
pub fn write_page(
    out: &mut Vec<u8>,
    sequence: u32,
    flags: u8,
    granule: u64,
    lacing_body: (&[u8], &[u8]),
) {
    let (lacing, body) = lacing_body;
    let start = out.len();
    out.extend_from_slice(b"OggS");
    out.push(0);
    out.push(flags);
    out.extend_from_slice(&granule.to_le_bytes());
    out.extend_from_slice(&0x1234_5678u32.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(lacing.len() as u8);
    out.extend_from_slice(lacing);
    out.extend_from_slice(body);
    let crc = crc32(&out[start..]);
    out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
}

/// The lacing table and body of `packets`, each laced whole.
pub fn lacing(packets: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
    let (mut lace, mut body) = (Vec::new(), Vec::new());
    for p in packets {
        let mut n = p.len();
        while n >= 255 {
            lace.push(255);
            n -= 255;
        }
        lace.push(n as u8);
        body.extend_from_slice(p);
    }
    (lace, body)
}

/// A complete mono 48 kHz Ogg Opus file of `packets` (one page each after the two header
/// pages).
pub fn opus_file(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.extend_from_slice(&[1, 1, 0x38, 0x01, 0x80, 0xBB, 0, 0, 0, 0, 0]);
    let mut out = Vec::new();
    let (l, b) = lacing(&[&head]);
    write_page(&mut out, 0, 0x02, 0, (&l, &b));
    let (l, b) = lacing(&[b"OpusTags\x05\0\0\0chorus\0\0\0\0"]);
    write_page(&mut out, 1, 0, 0, (&l, &b));
    for (i, p) in packets.iter().enumerate() {
        let (l, b) = lacing(&[p]);
        let flags = if i + 1 == packets.len() { 0x04 } else { 0 };
        write_page(
            &mut out,
            2 + i as u32,
            flags,
            960 * (i as u64 + 1),
            (&l, &b),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_ogg_reference() {
        // CRC-32/CKSUM's check value (same polynomial and init) without its final XOR.
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0x89A1_897F);
    }

    #[test]
    fn reads_packets_across_pages_and_lacing() {
        let big: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        let exact = vec![7u8; 255];
        let mut data = Vec::new();
        // Page 0: a small packet and the first 300 bytes of `big` (255 + 45, unterminated:
        // the lacing ends with 255 so the packet continues).
        let (l, b) = (vec![3, 255], [&[1u8, 2, 3][..], &big[..255]].concat());
        write_page(&mut data, 0, 0x02, 0, (&l, &b));
        // Page 1 (continued): the remaining 345 bytes, then `exact` with its zero lace.
        let (l, b) = (vec![255, 90, 255, 0], [&big[255..], &exact[..]].concat());
        write_page(&mut data, 1, 0x01, 0, (&l, &b));
        let got = packets(&data).expect("parses");
        assert_eq!(got, vec![vec![1, 2, 3], big, exact]);
    }

    #[test]
    fn rejects_corruption() {
        let file = opus_file(&[vec![0xF8, 0xFF, 0xFE]]);
        let mut bad = file.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        assert!(matches!(opus_packets(&bad), Err(OggError::BadCrc(_))));
        assert!(matches!(
            opus_packets(&file[..file.len() - 1]),
            Err(OggError::Truncated(_))
        ));
        assert_eq!(
            opus_packets(b"RIFF....WAVEfmt xxxxxxxxxxxxxxxxxxxxxxx"),
            Err(OggError::BadCapture(0))
        );
        let mut not_opus = Vec::new();
        let (l, b) = lacing(&[b"\x01vorbis"]);
        write_page(&mut not_opus, 0, 0x02, 0, (&l, &b));
        assert_eq!(opus_packets(&not_opus), Err(OggError::NotOpus));
        assert_eq!(opus_packets(&opus_file(&[])), Err(OggError::Empty));
    }

    #[test]
    fn opus_durations_come_from_the_toc() {
        // TOC arithmetic: CELT 2.5 ms x code 3 with 4 frames; SILK 60 ms; hybrid 10 ms x 2.
        assert_eq!(
            opus_packet_duration(&[(16 << 3) | 3, 4]),
            Some(Duration::from_millis(10))
        );
        assert_eq!(
            opus_packet_duration(&[3 << 3]),
            Some(Duration::from_millis(60))
        );
        assert_eq!(
            opus_packet_duration(&[(12 << 3) | 1]),
            Some(Duration::from_millis(20))
        );
        assert_eq!(opus_packet_duration(&[]), None);
        assert_eq!(opus_packet_duration(&[3, 0]), None);
        // A file's packets come with their durations (TOC 0xF8: CELT 20 ms, one frame).
        let got = opus_packets(&opus_file(&[vec![0xF8, 0xFF, 0xFE], vec![0xF8]])).expect("parses");
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].data[..], &[0xF8, 0xFF, 0xFE]);
        assert!(got.iter().all(|p| p.duration == Duration::from_millis(20)));
    }
}
