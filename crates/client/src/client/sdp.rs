//! SDP for the engine's endpoints, through `rtc::sdp`: the server's descriptions parsed into
//! [`SessionDescription`]s and read here (its ICE and DTLS parameters as a [`Remote`]; per
//! media section mid, direction, codecs, header extensions, sources), and ours built as
//! [`SessionDescription`] values the crate marshals. What an endpoint offers or answers is its
//! own (`publisher/description.rs`, `receiver/description.rs`); how SDP is read and written is
//! here, once for both.

use std::io::Cursor;
use std::net::SocketAddr;

use rtc::sdp::description::common::{Address, Attribute, ConnectionInformation};
use rtc::sdp::description::media::{MediaDescription, MediaName, RangedPort};
use rtc::sdp::description::session::{Origin, TimeDescription, Timing};
use rtc::sdp::direction::Direction;
use rtc::sdp::extmap::ExtMap;
use rtc::sdp::SessionDescription;

use super::error::ClientError;

/// Parses a description.
pub(super) fn parse(sdp: &str) -> Result<SessionDescription, ClientError> {
    SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
        .map_err(|e| ClientError::Protocol(format!("SDP: {e}")))
}

/// Every attribute of a description: the session's, then each media section's in order.
fn all_attributes(d: &SessionDescription) -> impl Iterator<Item = &Attribute> {
    d.attributes
        .iter()
        .chain(d.media_descriptions.iter().flat_map(|m| &m.attributes))
}

/// What the server's description says about its side.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Remote {
    pub(super) ufrag: String,
    pub(super) pwd: String,
    pub(super) fingerprint: String,
    /// Its candidates (UDP host candidates in practice).
    pub(super) candidates: Vec<SocketAddr>,
}

impl Remote {
    /// Reads the ICE credentials, the sha-256 fingerprint and the candidates of a description
    /// (the first of each credential, at session level or in any section).
    pub(super) fn of(d: &SessionDescription) -> Result<Remote, ClientError> {
        let mut remote = Remote::default();
        for a in all_attributes(d) {
            let value = a.value.as_deref().unwrap_or("").trim();
            match a.key.as_str() {
                "ice-ufrag" if remote.ufrag.is_empty() => remote.ufrag = value.to_owned(),
                "ice-pwd" if remote.pwd.is_empty() => remote.pwd = value.to_owned(),
                "fingerprint" if remote.fingerprint.is_empty() => {
                    if let Some(("sha-256", fp)) = value.split_once(' ') {
                        remote.fingerprint = fp.trim().to_owned();
                    }
                }
                "candidate" => {
                    if let Some(addr) = candidate_addr(value) {
                        remote.candidates.push(addr);
                    }
                }
                _ => {}
            }
        }
        if remote.ufrag.is_empty() || remote.pwd.is_empty() {
            return Err(ClientError::Protocol(
                "description without ICE credentials".into(),
            ));
        }
        if remote.fingerprint.is_empty() {
            return Err(ClientError::Protocol(
                "description without a sha-256 fingerprint".into(),
            ));
        }
        Ok(remote)
    }

    /// Parses `sdp` and reads its [`Remote`] parameters.
    #[cfg(test)]
    pub(super) fn parse(sdp: &str) -> Result<Remote, ClientError> {
        Remote::of(&parse(sdp)?)
    }

    /// Whether `other` keeps the ICE and DTLS parameters (restarts are not supported).
    pub(super) fn same_session(&self, other: &Remote) -> bool {
        (&self.ufrag, &self.pwd, &self.fingerprint)
            == (&other.ufrag, &other.pwd, &other.fingerprint)
    }
}

/// Whether the description takes the DTLS client role (`a=setup:active` anywhere).
pub(super) fn setup_active(d: &SessionDescription) -> bool {
    all_attributes(d)
        .any(|a| a.key == "setup" && a.value.as_deref().map(str::trim) == Some("active"))
}

/// A trickled UDP candidate's address (`candidate:... udp <prio> <ip> <port> typ ...`, with
/// or without `a=`).
pub(super) fn parse_candidate(candidate: &str) -> Option<SocketAddr> {
    let value = candidate.strip_prefix("a=").unwrap_or(candidate);
    candidate_addr(value.strip_prefix("candidate:")?)
}

/// The address of a UDP candidate attribute's value (`<foundation> <component> udp <prio>
/// <ip> <port> typ ...`).
fn candidate_addr(value: &str) -> Option<SocketAddr> {
    let fields: Vec<&str> = value.split_whitespace().collect();
    if fields.len() < 6 || !fields[2].eq_ignore_ascii_case("udp") {
        return None;
    }
    let ip: std::net::IpAddr = fields[4].parse().ok()?;
    let port: u16 = fields[5].parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// Whether a media section was rejected (port 0).
pub(super) fn is_rejected(m: &MediaDescription) -> bool {
    m.media_name.port.value == 0
}

/// A media section's `a=mid`.
pub(super) fn mid(m: &MediaDescription) -> Option<&str> {
    m.attribute("mid").flatten().map(str::trim)
}

/// A media section's direction attribute (the last one), `Unspecified` without one.
pub(super) fn direction(m: &MediaDescription) -> Direction {
    m.attributes
        .iter()
        .rev()
        .filter(|a| a.value.is_none())
        .map(|a| Direction::new(&a.key))
        .find(|d| *d != Direction::Unspecified)
        .unwrap_or(Direction::Unspecified)
}

/// A media section's header extensions: `(id, uri)` of each `a=extmap` that parses.
pub(super) fn extensions(m: &MediaDescription) -> impl Iterator<Item = (u16, String)> + '_ {
    m.attributes
        .iter()
        .filter(|a| a.key == "extmap")
        .filter_map(|a| {
            let e = ExtMap::unmarshal(&mut Cursor::new(a.to_string())).ok()?;
            Some((e.value, e.uri?.as_str().to_owned()))
        })
}

/// A media section's first payload type (the preferred codec).
pub(super) fn first_payload_type(m: &MediaDescription) -> Option<u8> {
    m.media_name.formats.first()?.parse().ok()
}

/// A media section's `a=msid`: stream and track ids.
pub(super) fn msid(m: &MediaDescription) -> Option<(&str, &str)> {
    m.attribute("msid").flatten()?.trim().split_once(' ')
}

/// A media section's `a=ssrc` lines: the SSRC and the rest (`cname:...`, `msid:...`).
pub(super) fn ssrc_lines(m: &MediaDescription) -> impl Iterator<Item = (u32, &str)> {
    m.attributes
        .iter()
        .filter(|a| a.key == "ssrc")
        .filter_map(|a| {
            let value = a.value.as_deref()?;
            let (ssrc, rest) = value.split_once(' ').unwrap_or((value, ""));
            Some((ssrc.parse().ok()?, rest))
        })
}

/// An `a=key:value` attribute.
pub(super) fn value(key: &str, value: impl Into<String>) -> Attribute {
    Attribute::new(key.to_owned(), Some(value.into()))
}

/// An `a=key` attribute.
pub(super) fn flag(key: &str) -> Attribute {
    Attribute::new(key.to_owned(), None)
}

/// A session section (`o=` from 127.0.0.1, version 2, a random session id) with `attributes`.
pub(super) fn session(attributes: Vec<Attribute>) -> SessionDescription {
    SessionDescription {
        version: 0,
        origin: Origin {
            username: "-".into(),
            session_id: rand::random::<u64>() >> 1,
            session_version: 2,
            network_type: "IN".into(),
            address_type: "IP4".into(),
            unicast_address: "127.0.0.1".into(),
        },
        session_name: "-".into(),
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: Vec::new(),
        }],
        attributes,
        ..Default::default()
    }
}

/// An offer's session attributes: every section bundled, mixed extensions allowed, and the
/// stream, if any, in `msid-semantic`.
pub(super) fn offer_session(mids: &[&str], stream: Option<&str>) -> SessionDescription {
    let wms = match stream {
        Some(stream) => format!(" WMS {stream}"),
        None => " WMS".to_owned(),
    };
    session(vec![
        value("group", format!("BUNDLE {}", mids.join(" "))),
        flag("extmap-allow-mixed"),
        value("msid-semantic", wms),
    ])
}

/// The `c=IN IP4 0.0.0.0` of every section (ICE decides the address).
pub(super) fn no_connection() -> ConnectionInformation {
    ConnectionInformation {
        network_type: "IN".into(),
        address_type: "IP4".into(),
        address: Some(Address {
            address: "0.0.0.0".into(),
            ttl: None,
            range: None,
        }),
    }
}

/// The DTLS role a description of ours takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Setup {
    /// Either role (an offer).
    ActPass,
    /// The DTLS client (an answer).
    Active,
}

/// Our side of a media section: ICE credentials and certificate fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ours {
    pub(super) ufrag: String,
    pub(super) pwd: String,
    /// sha-256, upper case as browsers write it.
    pub(super) fingerprint: String,
}

impl Ours {
    /// The attributes of our transport in a media section, with the DTLS role `setup`.
    pub(super) fn attributes(&self, setup: Setup) -> [Attribute; 4] {
        let setup = match setup {
            Setup::ActPass => "actpass",
            Setup::Active => "active",
        };
        [
            value("ice-ufrag", self.ufrag.as_str()),
            value("ice-pwd", self.pwd.as_str()),
            value("fingerprint", format!("sha-256 {}", self.fingerprint)),
            value("setup", setup),
        ]
    }
}

/// A codec we offer: payload type, rtpmap (`name/rate[/channels]`) and fmtp (may be empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Codec {
    pub(super) payload_type: u8,
    pub(super) rtpmap: &'static str,
    pub(super) fmtp: &'static str,
}

/// What goes into one RTP section we offer.
pub(super) struct RtpSection<'a> {
    /// `audio` or `video`.
    pub(super) kind: &'a str,
    pub(super) mid: &'a str,
    pub(super) codecs: &'a [Codec],
    /// `a=rtcp-fb` values for every codec (`nack`, `nack pli`, ...).
    pub(super) feedback: &'a [&'a str],
    /// `(id, uri)` of the header extensions offered.
    pub(super) extensions: &'a [(u8, &'a str)],
    pub(super) direction: Direction,
}

impl RtpSection<'_> {
    /// The section, `m=` to the direction; the caller appends sources and the candidate.
    pub(super) fn build(&self, ours: &Ours, setup: Setup) -> MediaDescription {
        let mut attributes = vec![value("mid", self.mid)];
        attributes.extend(ours.attributes(setup));
        attributes.extend([flag("rtcp-mux"), flag("rtcp-rsize")]);
        for codec in self.codecs {
            let pt = codec.payload_type;
            attributes.push(value("rtpmap", format!("{pt} {}", codec.rtpmap)));
            if !codec.fmtp.is_empty() {
                attributes.push(value("fmtp", format!("{pt} {}", codec.fmtp)));
            }
            for fb in self.feedback {
                attributes.push(value("rtcp-fb", format!("{pt} {fb}")));
            }
        }
        for (id, uri) in self.extensions {
            attributes.push(value("extmap", format!("{id} {uri}")));
        }
        attributes.push(flag(&self.direction.to_string()));
        MediaDescription {
            media_name: MediaName {
                media: self.kind.to_owned(),
                port: RangedPort {
                    value: 9,
                    range: None,
                },
                protos: ["UDP", "TLS", "RTP", "SAVPF"].map(String::from).to_vec(),
                formats: self
                    .codecs
                    .iter()
                    .map(|c| c.payload_type.to_string())
                    .collect(),
            },
            connection_information: Some(no_connection()),
            attributes,
            ..Default::default()
        }
    }
}

/// Appends our one host candidate, `local`, and the end of candidates (no trickle).
pub(super) fn add_host_candidate(m: &mut MediaDescription, local: SocketAddr) {
    m.attributes.push(value(
        "candidate",
        format!(
            "1 1 udp 2130706431 {} {} typ host",
            local.ip(),
            local.port()
        ),
    ));
    m.attributes.push(flag("end-of-candidates"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_parameters_come_from_any_section() {
        let remote = Remote::parse(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
             a=fingerprint:sha-256 AA:BB\r\nm=audio 9 X 111\r\na=ice-ufrag:u\r\n\
             a=ice-pwd:p\r\na=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
             a=candidate:2 1 tcp 2130706431 127.0.0.1 7882 typ host\r\n",
        )
        .expect("remote");
        assert_eq!((remote.ufrag.as_str(), remote.pwd.as_str()), ("u", "p"));
        assert_eq!(remote.fingerprint, "AA:BB");
        assert_eq!(
            remote.candidates,
            vec!["127.0.0.1:7882".parse::<SocketAddr>().expect("addr")]
        );
        assert!(Remote::parse("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n").is_err());
        assert!(Remote::parse(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        )
        .is_err());
    }

    #[test]
    fn trickled_candidates_parse_with_or_without_the_prefix() {
        let addr = Some("10.0.0.1:7882".parse::<SocketAddr>().expect("addr"));
        assert_eq!(
            parse_candidate("candidate:1 1 udp 2130706431 10.0.0.1 7882 typ host"),
            addr
        );
        assert_eq!(
            parse_candidate("a=candidate:1 1 UDP 2130706431 10.0.0.1 7882 typ host"),
            addr
        );
        assert_eq!(
            parse_candidate("candidate:1 1 tcp 2130706431 10.0.0.1 7882 typ host"),
            None
        );
        assert_eq!(parse_candidate("1 1 udp 2130706431 10.0.0.1 7882"), None);
    }

    #[test]
    fn sections_are_read_and_written_by_the_crate() {
        let ours = Ours {
            ufrag: "u".into(),
            pwd: "p".into(),
            fingerprint: "AB:CD".into(),
        };
        let codecs = [Codec {
            payload_type: 98,
            rtpmap: "VP9/90000",
            fmtp: "profile-id=0",
        }];
        let mut section = RtpSection {
            kind: "video",
            mid: "1",
            codecs: &codecs,
            feedback: &["nack", "nack pli"],
            extensions: &[(1, rtc::sdp::extmap::SDES_MID_URI)],
            direction: Direction::SendOnly,
        }
        .build(&ours, Setup::ActPass);
        section.attributes.push(value("msid", "s t"));
        section.attributes.push(value("ssrc", "7 cname:c"));
        add_host_candidate(&mut section, "127.0.0.1:5000".parse().expect("addr"));
        let mut offer = offer_session(&["1"], Some("s"));
        offer.media_descriptions.push(section);
        let text = offer.marshal();
        assert!(text.starts_with("v=0\r\no=- "), "{text}");
        assert!(text.contains(" 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"));
        assert!(text.contains("a=group:BUNDLE 1\r\na=extmap-allow-mixed\r\n"));
        assert!(text.contains("a=msid-semantic: WMS s\r\n"));
        assert!(text.contains(
            "m=video 9 UDP/TLS/RTP/SAVPF 98\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
             a=ice-ufrag:u\r\na=ice-pwd:p\r\na=fingerprint:sha-256 AB:CD\r\n\
             a=setup:actpass\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:98 VP9/90000\r\n\
             a=fmtp:98 profile-id=0\r\na=rtcp-fb:98 nack\r\na=rtcp-fb:98 nack pli\r\n\
             a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendonly\r\n"
        ));
        assert!(text.ends_with(
            "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        ));

        let parsed = parse(&text).expect("our own offer parses");
        let m = &parsed.media_descriptions[0];
        assert!(!is_rejected(m));
        assert_eq!(mid(m), Some("1"));
        assert_eq!(direction(m), Direction::SendOnly);
        assert_eq!(first_payload_type(m), Some(98));
        assert_eq!(msid(m), Some(("s", "t")));
        assert_eq!(ssrc_lines(m).collect::<Vec<_>>(), vec![(7, "cname:c")]);
        assert_eq!(
            extensions(m).collect::<Vec<_>>(),
            vec![(1, rtc::sdp::extmap::SDES_MID_URI.to_owned())]
        );
        assert_eq!(
            m.codecs().get(&98).map(|c| c.rtcp_feedback.clone()),
            Some(vec!["nack".to_owned(), "nack pli".to_owned()])
        );
        assert!(!setup_active(&parsed));
        let remote = Remote::of(&parsed).expect("remote");
        assert_eq!(
            (remote.ufrag.as_str(), remote.fingerprint.as_str()),
            ("u", "AB:CD")
        );
    }
}
