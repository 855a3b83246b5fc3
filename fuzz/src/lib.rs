//! What Chorus's fuzz targets share: a cursor that turns the fuzzer's bytes into decisions
//! ([`Input`]), STUN binding requests with a real or a wrong MESSAGE-INTEGRITY ([`stun`]),
//! a fresh media-plane core with a joined participant ([`setup`]), and the in-process call of
//! the media plane's tests ([`harness`], the very file `crates/sfu/tests/harness/mod.rs`).
//!
//! The targets themselves are in `fuzz_targets/`; `docs/robustness.md` says what each one
//! covers, how to run it and what it found.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../crates/sfu/tests/harness/mod.rs"]
pub mod harness;

/// A cursor over the fuzzer's input. Reads past the end yield `None` (or fewer bytes), so a
/// target simply stops when the input runs out.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    /// The next byte.
    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    /// A chunk whose length (at most `max`) is the next two bytes.
    pub fn chunk(&mut self, max: usize) -> &'a [u8] {
        let len = self.u16().map_or(0, |l| usize::from(l) % (max + 1));
        self.bytes(len)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// STUN binding requests as an ICE agent sends them (RFC 8445 §7.1.2).
pub mod stun {
    use hmac::{Hmac, Mac};
    use sha1::Sha1;

    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

    fn attr(m: &mut Vec<u8>, typ: u16, value: &[u8]) {
        m.extend_from_slice(&typ.to_be_bytes());
        m.extend_from_slice(&(value.len() as u16).to_be_bytes());
        m.extend_from_slice(value);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
    }

    fn set_len(m: &mut [u8], body: usize) {
        m[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    }

    /// What goes into a binding request.
    pub struct Check<'a> {
        /// USERNAME (`server-ufrag:client-ufrag` for a check to the server).
        pub username: &'a [u8],
        /// Transaction id.
        pub txid: [u8; 12],
        /// More attributes (type, value) after PRIORITY, ICE-CONTROLLING and USE-CANDIDATE.
        pub extra: Vec<(u16, &'a [u8])>,
        /// MESSAGE-INTEGRITY keyed with this password (the server's `ice-pwd`); none without.
        pub key: Option<&'a [u8]>,
        /// Flip a bit of the MESSAGE-INTEGRITY value (a forged check).
        pub corrupt: bool,
        /// Append FINGERPRINT.
        pub fingerprint: bool,
    }

    /// Encodes `check` as a STUN binding request.
    pub fn binding_request(check: &Check<'_>) -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0, 0];
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&check.txid);
        attr(&mut m, 0x0006, check.username);
        attr(&mut m, 0x0024, &0x6e7f_1eff_u32.to_be_bytes()); // PRIORITY
        attr(&mut m, 0x802a, &check.txid[..8]); // ICE-CONTROLLING tie-breaker
        attr(&mut m, 0x0025, &[]); // USE-CANDIDATE
        for (typ, value) in &check.extra {
            attr(&mut m, *typ, value);
        }
        if let Some(key) = check.key {
            // The length covers MESSAGE-INTEGRITY itself while it is computed (RFC 5389 §15.4).
            let covered = m.len() - 20 + 24;
            set_len(&mut m, covered);
            let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key");
            mac.update(&m);
            let mut tag = mac.finalize().into_bytes().to_vec();
            if check.corrupt {
                tag[0] ^= 0x01;
            }
            attr(&mut m, 0x0008, &tag);
        }
        if check.fingerprint {
            let covered = m.len() - 20 + 8;
            set_len(&mut m, covered);
            let crc = rtc::stun::fingerprint::fingerprint_value(&m);
            attr(&mut m, 0x8028, &crc.to_be_bytes());
        }
        let body = m.len() - 20;
        set_len(&mut m, body);
        m
    }
}

/// A fresh media-plane core, joins and a client's offer, as the server's engine sets them up.
pub mod setup {
    use std::net::SocketAddr;
    use std::sync::OnceLock;
    use std::time::Instant;

    use chorus_sfu::core::Core;
    use chorus_sfu::peer::{add_local_candidates, supported_codecs};
    use chorus_sfu::{JoinRequest, MediaConfig, Metrics, Origin, Permissions, Quality};
    use rtc::media_stream::MediaStreamTrack;
    use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
    use rtc::peer_connection::configuration::media_engine::MediaEngine;
    use rtc::peer_connection::configuration::RTCConfigurationBuilder;
    use rtc::peer_connection::RTCPeerConnectionBuilder;
    use rtc::rtp_transceiver::rtp_sender::{
        RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    };

    /// The core's media address.
    pub const CORE_ADDR: &str = "127.0.0.1:7882";
    /// The address the client's offer names as its candidate.
    pub const CLIENT_ADDR: &str = "127.0.0.1:20000";

    /// A core as the engine builds it, on [`CORE_ADDR`], with metrics of its own.
    pub fn core() -> Core {
        let addr: SocketAddr = CORE_ADDR.parse().expect("addr");
        let config = MediaConfig {
            bind_ip: addr.ip(),
            udp_port: addr.port(),
            ..Default::default()
        };
        Core::new(config, Metrics::unregistered(), addr)
    }

    /// A join request for `identity` in room `fuzz`.
    pub fn request(identity: &str, origin: Origin, publish: bool, subscribe: bool) -> JoinRequest {
        JoinRequest {
            room: "fuzz".into(),
            identity: identity.into(),
            name: identity.into(),
            permissions: Permissions {
                publish,
                subscribe,
                publish_data: true,
            },
            auto_subscribe: true,
            quality: Quality::High,
            origin,
        }
    }

    /// A client's publisher offer (one VP8 video track, its candidate at [`CLIENT_ADDR`]) and
    /// the ICE ufrag in it; made once, by the WebRTC stack the server uses.
    pub fn client_offer() -> &'static (String, String) {
        static OFFER: OnceLock<(String, String)> = OnceLock::new();
        OFFER.get_or_init(|| {
            let now = Instant::now();
            let mut me = MediaEngine::default();
            for (c, kind) in supported_codecs() {
                me.register_codec(c, kind).expect("codec");
            }
            let registry =
                register_default_interceptors(rtc::interceptor::Registry::new(), &mut me)
                    .expect("interceptors");
            let mut pc = RTCPeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(me)
                .with_interceptor_registry(registry)
                .build(now)
                .expect("client pc");
            let addr: SocketAddr = CLIENT_ADDR.parse().expect("addr");
            add_local_candidates(&mut pc, &[addr]).expect("candidate");
            let track = MediaStreamTrack::new(
                "fuzz-stream".into(),
                "fuzz-video".into(),
                "video".into(),
                RtpCodecKind::Video,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(0x1234_5678),
                        ..Default::default()
                    },
                    codec: supported_codecs()[1].0.rtp_codec.clone(),
                    ..Default::default()
                }],
            );
            pc.add_track(track).expect("track");
            let offer = pc.create_offer(None).expect("offer");
            pc.set_local_description(now, offer).expect("local");
            let sdp = pc.local_description().expect("local description").sdp;
            let ufrag = sdp_attr(&sdp, "ice-ufrag").expect("ufrag").to_owned();
            (sdp, ufrag)
        })
    }

    /// The first `a=<name>:` attribute value in an SDP.
    pub fn sdp_attr<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
        sdp.lines()
            .filter_map(|l| l.trim_end().strip_prefix("a="))
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}
