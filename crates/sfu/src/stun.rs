//! Just enough STUN parsing to route a datagram from an unknown address: is it a STUN binding
//! request, and what ufrag does its USERNAME name?
//!
//! The ICE agent inside each peer connection does the real STUN work (integrity, fingerprint,
//! response); the router only needs the local ufrag (the part of USERNAME before `:`) to find
//! the peer connection a new address belongs to.

/// STUN magic cookie (RFC 5389).
const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Attribute type of USERNAME.
const ATTR_USERNAME: u16 = 0x0006;
/// Length of the STUN header.
const HEADER_LEN: usize = 20;

/// What the first byte of a datagram on the media port says it is (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// 0..=3: STUN.
    Stun,
    /// 20..=63: DTLS.
    Dtls,
    /// 128..=191: RTP or RTCP.
    Rtp,
    /// Anything else: not ours.
    Unknown,
}

/// Classifies a datagram by its first byte.
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(0..=3) => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Dtls,
        Some(128..=191) => DatagramKind::Rtp,
        _ => DatagramKind::Unknown,
    }
}

/// The local ufrag named by a STUN message's USERNAME (`local:remote`), if the datagram is a
/// well-formed STUN message that carries one.
pub fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < HEADER_LEN || classify(datagram) != DatagramKind::Stun {
        return None;
    }
    let length = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let cookie = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    if cookie != MAGIC_COOKIE || !length.is_multiple_of(4) || HEADER_LEN + length > datagram.len() {
        return None;
    }
    let mut attrs = &datagram[HEADER_LEN..HEADER_LEN + length];
    while attrs.len() >= 4 {
        let typ = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = u16::from_be_bytes([attrs[2], attrs[3]]) as usize;
        let value = attrs.get(4..4 + len)?;
        if typ == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            let local = username.split(':').next()?;
            return (!local.is_empty()).then_some(local);
        }
        let padded = 4 + len.div_ceil(4) * 4;
        attrs = attrs.get(padded..)?;
    }
    None
}

/// A STUN binding request carrying `attrs` (type, value), for tests.
#[cfg(test)]
pub(crate) fn binding_request(attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (typ, value) in attrs {
        body.extend_from_slice(&typ.to_be_bytes());
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
    msg.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    msg.extend_from_slice(&[7u8; 12]);
    msg.extend_from_slice(&body);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_local_ufrag_after_other_attributes() {
        let msg = binding_request(&[(0x8022, b"soft"), (ATTR_USERNAME, b"srv1:cli2")]);
        assert_eq!(local_ufrag(&msg), Some("srv1"));
    }

    #[test]
    fn rejects_what_is_not_a_usable_stun_message() {
        let mut bad_cookie = binding_request(&[(ATTR_USERNAME, b"a:b")]);
        bad_cookie[4] = 0;
        let mut truncated = binding_request(&[(ATTR_USERNAME, b"a:b")]);
        truncated.truncate(24);
        let mut overlong_attr = binding_request(&[(ATTR_USERNAME, b"abcd:efgh")]);
        overlong_attr[23] = 200;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short", vec![0, 1, 0, 0]),
            ("rtp", {
                let mut m = binding_request(&[(ATTR_USERNAME, b"a:b")]);
                m[0] = 0x80;
                m
            }),
            ("no username", binding_request(&[(0x8022, b"soft")])),
            ("empty ufrag", binding_request(&[(ATTR_USERNAME, b":b")])),
            ("bad cookie", bad_cookie),
            ("truncated", truncated),
            ("overlong attribute", overlong_attr),
            (
                "not utf8",
                binding_request(&[(ATTR_USERNAME, &[0xff, 0xfe, b':'])]),
            ),
        ];
        for (name, msg) in cases {
            assert_eq!(local_ufrag(&msg), None, "{name}");
        }
    }

    #[test]
    fn classifies_by_first_byte() {
        let table = [
            (0u8, DatagramKind::Stun),
            (3, DatagramKind::Stun),
            (22, DatagramKind::Dtls),
            (128, DatagramKind::Rtp),
            (191, DatagramKind::Rtp),
            (64, DatagramKind::Unknown),
            (255, DatagramKind::Unknown),
        ];
        for (byte, kind) in table {
            assert_eq!(classify(&[byte, 0]), kind, "{byte}");
        }
        assert_eq!(classify(&[]), DatagramKind::Unknown);
    }
}
