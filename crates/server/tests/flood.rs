//! A flood on the media port while a real call runs: a server, a publisher (alice, audio and
//! video) and two subscribers (bob, carol), all real WebRTC clients over loopback.
//!
//! - The flood: tens of thousands of datagrams in a few seconds from several sockets of their
//!   own: random bytes, STUN checks for unknown ufrags, STUN checks naming the call's real
//!   ufrags with a forged MESSAGE-INTEGRITY, RTP for unknown SSRCs. The call loses less than
//!   0.1 % of its packets, and every flood datagram the server reads is dropped and counted by
//!   reason in `chorus_packets_dropped_total`.
//! - A forged check from the publisher's own address (a spoofed source, as anyone on the path
//!   or able to spoof UDP can send) naming another peer's ufrag must not move the publisher's
//!   address to that peer. Spoofing the source needs a raw socket (CAP_NET_RAW: CI runs as
//!   root).

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use chorus_client::{Client, ClientOptions, ServerMessage, TrackKind};
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(20);

/// The call under test and what is known of it.
struct Call {
    server: chorus_server::RunningServer,
    alice: Client,
    subscribers: Vec<Client>,
    /// The server's ICE ufrag of alice's publisher connection.
    alice_ufrag: String,
    /// The server's ICE ufrags of the subscribers' subscriber connections.
    subscriber_ufrags: Vec<String>,
}

fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .expect("an ice-ufrag in the SDP")
        .to_owned()
}

/// Alice publishes audio and video; bob and carol receive both.
async fn call() -> Call {
    let server = common::server().await;
    let room = common::room();
    let url = format!("ws://{}/ws", server.http_addr);
    let mut alice = Client::join(ClientOptions::new(
        url.clone(),
        common::token(&room, "alice"),
    ))
    .await
    .expect("alice joins");
    let alice_ufrag = match alice
        .wait_event(T, |e| matches!(e, ServerMessage::Answer { .. }))
        .await
        .expect("alice's answer")
    {
        ServerMessage::Answer { sdp } => ufrag(&sdp),
        _ => unreachable!(),
    };
    let mut subscribers = Vec::new();
    let mut subscriber_ufrags = Vec::new();
    for name in ["bob", "carol"] {
        let mut c = Client::join(ClientOptions {
            publish_audio: false,
            publish_video: false,
            ..ClientOptions::new(url.clone(), common::token(&room, name))
        })
        .await
        .expect("joins");
        match c
            .wait_event(T, |e| matches!(e, ServerMessage::Offer { .. }))
            .await
            .expect("a subscriber offer")
        {
            ServerMessage::Offer { sdp } => subscriber_ufrags.push(ufrag(&sdp)),
            _ => unreachable!(),
        }
        subscribers.push(c);
    }
    let alice_id = alice.participant_id().to_owned();
    for c in &subscribers {
        c.wait_until(T, |c| {
            let r = c.received();
            [TrackKind::Audio, TrackKind::Video].iter().all(|k| {
                r.iter().any(|t| {
                    t.participant_id == alice_id && t.active && t.kind == *k && t.packets() >= 100
                })
            })
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} receives alice: {e}: {:#?}",
                c.participant_id(),
                c.received()
            )
        });
        c.wait_connected(T).await.expect("connected");
    }
    Call {
        server,
        alice,
        subscribers,
        alice_ufrag,
        subscriber_ufrags,
    }
}

/// (expected, lost) per (subscriber, kind) of alice's tracks.
fn reception(call: &Call) -> HashMap<(usize, TrackKind), (u64, u64)> {
    let alice = call.alice.participant_id();
    let mut out = HashMap::new();
    for (i, c) in call.subscribers.iter().enumerate() {
        for t in c.received() {
            if t.participant_id == alice && t.active {
                out.insert((i, t.kind), (t.seq.expected(), t.lost()));
            }
        }
    }
    out
}

/// Packets alice's tracks should have brought bob and carol between two readings, and how
/// many of them never arrived (retransmissions repair losses, as in a browser).
fn loss(
    before: &HashMap<(usize, TrackKind), (u64, u64)>,
    after: &HashMap<(usize, TrackKind), (u64, u64)>,
) -> (u64, u64, String) {
    let (mut expected, mut lost, mut detail) = (0, 0, String::new());
    for (k, (e1, l1)) in after {
        let (e0, l0) = before.get(k).copied().unwrap_or((0, 0));
        expected += e1 - e0;
        lost += l1.saturating_sub(l0);
        detail += &format!(
            "{k:?}: {} expected, {} lost; ",
            e1 - e0,
            l1.saturating_sub(l0)
        );
    }
    (expected, lost, detail)
}

/// A STUN binding request naming `username`, with a MESSAGE-INTEGRITY that is not the HMAC of
/// the server's password (a forgery) and a correct FINGERPRINT, as a real check would have.
fn forged_check(username: &str, txid: [u8; 12]) -> Vec<u8> {
    fn attr(m: &mut Vec<u8>, typ: u16, value: &[u8]) {
        m.extend_from_slice(&typ.to_be_bytes());
        m.extend_from_slice(&(value.len() as u16).to_be_bytes());
        m.extend_from_slice(value);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
    }
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&txid);
    attr(&mut m, 0x0006, username.as_bytes()); // USERNAME
    attr(&mut m, 0x0024, &0x6e00_1eff_u32.to_be_bytes()); // PRIORITY
    attr(&mut m, 0x802a, &txid[..8]); // ICE-CONTROLLING
    attr(&mut m, 0x0025, &[]); // USE-CANDIDATE
    attr(&mut m, 0x0008, &[0xab; 20]); // MESSAGE-INTEGRITY, forged
    let len = (m.len() - 20 + 8) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let fingerprint = crc32(&m) ^ 0x5354_554e;
    attr(&mut m, 0x8028, &fingerprint.to_be_bytes()); // FINGERPRINT
    m
}

/// CRC-32 (IEEE, reflected), as STUN's FINGERPRINT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Datagrams the kernel dropped on the server's media socket (its receive buffer full), from
/// the socket's line in `/proc/net/udp`.
fn kernel_drops(media: SocketAddr) -> u64 {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let port = format!(":{:04X}", media.port());
    text.lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|local| local.ends_with(&port))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// A small xorshift generator: the flood is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const REASONS: [&str; 6] = [
    "unknown_source",
    "unknown_ufrag",
    "malformed",
    "stun_unauthenticated",
    "early_check",
    "stack_panic",
];

async fn drops(base: &str) -> HashMap<&'static str, f64> {
    let text = common::scrape(base).await;
    REASONS
        .iter()
        .map(|r| {
            let v = common::sample(
                &text,
                &format!("chorus_packets_dropped_total{{reason=\"{r}\"}}"),
            );
            (*r, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_media_port_costs_the_call_nothing() {
    let call = call().await;
    let base = call.server.base_url();
    let media = call.server.media_addr;
    let real_ufrags: Vec<String> = std::iter::once(call.alice_ufrag.clone())
        .chain(call.subscriber_ufrags.iter().cloned())
        .collect();
    // Four flooders, one per kind, so the drops can be told apart.
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    }
    let before = reception(&call);
    let drops0 = drops(&base).await;
    let kernel0 = kernel_drops(media);
    const PER_KIND: usize = 6_000;
    const ROUNDS: usize = 300; // one every 10 ms: 3 s
    let mut rng = Rng(0x5eed_f100d);
    let started = Instant::now();
    let mut sent = [0usize; 4];
    for round in 0..ROUNDS {
        for _ in 0..PER_KIND / ROUNDS {
            // Random bytes that are neither STUN nor DTLS nor RTP-looking... and some that are.
            let len = 1 + (rng.next() % 600) as usize;
            let mut junk = rng.bytes(len);
            junk[0] = [4u8, 19, 64, 127, 192, 255, 20, 23][(rng.next() % 8) as usize];
            // A binding request for a ufrag nobody has.
            let unknown = forged_check(&format!("u{:015x}:cli", rng.next() >> 4), [1; 12]);
            // A forged check naming a real ufrag (the publisher's or a subscriber's).
            let name = &real_ufrags[(rng.next() % real_ufrags.len() as u64) as usize];
            let mut txid = [0u8; 12];
            txid.copy_from_slice(&rng.bytes(12));
            let spoofed = forged_check(&format!("{name}:attacker"), txid);
            // RTP (version 2, VP8's payload type) for an SSRC nobody sends.
            let mut rtp = vec![0x80, 96];
            rtp.extend_from_slice(&rng.bytes(10));
            let payload_len = 200 + (rng.next() % 1000) as usize;
            rtp.extend_from_slice(&rng.bytes(payload_len));
            for (i, d) in [junk, unknown, spoofed, rtp].iter().enumerate() {
                sockets[i].send_to(d, media).await.expect("send");
                sent[i] += 1;
            }
        }
        let due = started + Duration::from_millis(10 * (round as u64 + 1));
        tokio::time::sleep_until(due.into()).await;
    }
    let flood_time = started.elapsed();
    // The call runs on a little, so that any packet lost in the flood shows as a gap.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = reception(&call);
    let drops1 = drops(&base).await;
    let kernel = kernel_drops(media) - kernel0;
    let delta = |r: &str| drops1[r] - drops0[r];
    let (expected, lost, detail) = loss(&before, &after);
    let total: usize = sent.iter().sum();
    println!(
        "flood: {total} datagrams ({sent:?}: junk, unknown ufrag, forged check, unknown RTP) \
         in {flood_time:?}; kernel drops on the media socket: {kernel}; drops by reason: {:?}; \
         call: {expected} packets expected, {lost} lost ({detail})",
        REASONS.iter().map(|r| (*r, delta(r))).collect::<Vec<_>>()
    );
    assert!(expected > 200, "the call kept flowing: {detail}");
    assert!(
        (lost as f64) < 0.001 * expected as f64,
        "the call lost {lost} of {expected} packets (≥ 0.1 %) under the flood: {detail}; \
         kernel drops on the media socket: {kernel}"
    );
    // Every flood datagram the server read was dropped and counted: junk and unknown RTP as
    // unknown_source, unknown ufrags as unknown_ufrag (the kernel may have dropped a few before
    // the server could read them: those are in `kernel`).
    let read_at_least = |n: usize| n as f64 - kernel as f64;
    assert!(
        delta("unknown_source") >= read_at_least(sent[0] + sent[3]),
        "unknown_source: {} of {}",
        delta("unknown_source"),
        sent[0] + sent[3]
    );
    assert!(
        delta("unknown_ufrag") >= read_at_least(sent[1]),
        "unknown_ufrag: {} of {}",
        delta("unknown_ufrag"),
        sent[1]
    );
    // Forged checks naming a real ufrag are refused, each counted: by the router when it
    // checks MESSAGE-INTEGRITY itself (stun_unauthenticated), else by the peer's ICE agent
    // (malformed).
    let forged = delta("malformed") + delta("stun_unauthenticated");
    assert!(
        forged >= read_at_least(sent[2]),
        "forged checks counted: {forged} of {}",
        sent[2]
    );
    assert_eq!(delta("stack_panic"), 0.0);
    // Everyone is still in the call, and the server is ready.
    let stats = call.server.state.sfu.stats().await.expect("stats");
    assert_eq!(stats.participants, 3, "{stats:?}");
    let ready = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz");
    assert!(ready.status().is_success());
    for c in &call.subscribers {
        c.wait_connected(Duration::from_secs(1))
            .await
            .expect("still connected");
    }
}

/// A raw UDP socket (CAP_NET_RAW): sees every UDP datagram to this host, and sends UDP with a
/// source port of its choosing (the source address is the route's, 127.0.0.1 on loopback).
fn raw_udp_socket() -> StdUdpSocket {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::UDP),
    )
    .expect("a raw socket: this test needs CAP_NET_RAW (run as root, as CI does)");
    let socket = StdUdpSocket::from(socket);
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    socket
}

/// The loopback address that sent the most UDP bytes to `media` over `window`: the publisher's
/// connection, which carries its video.
fn busiest_sender(raw: &StdUdpSocket, media: SocketAddr, window: Duration) -> SocketAddrV4 {
    let mut bytes: HashMap<SocketAddrV4, usize> = HashMap::new();
    let mut buf = [0u8; 65536];
    let end = Instant::now() + window;
    while Instant::now() < end {
        let Ok(n) = raw.recv(&mut buf) else { continue };
        let ip = &buf[..n];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if n < ihl + 8 {
            continue;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let udp = &ip[ihl..];
        let (sport, dport) = (
            u16::from_be_bytes([udp[0], udp[1]]),
            u16::from_be_bytes([udp[2], udp[3]]),
        );
        if dport == media.port() {
            *bytes.entry(SocketAddrV4::new(src, sport)).or_default() += n - ihl - 8;
        }
    }
    bytes
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map(|(a, _)| a)
        .expect("datagrams to the media port")
}

/// `payload` as a UDP datagram from `from` to `to`, sent through the raw socket.
fn send_spoofed(raw: &StdUdpSocket, from: SocketAddrV4, to: SocketAddr, payload: &[u8]) {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no checksum (IPv4)
    udp.extend_from_slice(payload);
    raw.send_to(&udp, SocketAddr::new(to.ip(), 0))
        .expect("raw send");
}

/// The black hole: a forged check naming a known ufrag, sent from the publisher's own
/// address, re-binds that address to the named peer before the check's integrity is verified,
/// so the publisher's media goes to the wrong peer connection (and is dropped there) until the
/// publisher's next real check. A forged check must change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_check_from_the_publishers_address_cannot_take_its_media() {
    let call = call().await;
    let media = call.server.media_addr;
    let raw = raw_udp_socket();
    let alice_addr =
        tokio::task::block_in_place(|| busiest_sender(&raw, media, Duration::from_millis(500)));
    let before = reception(&call);
    // Every 100 ms for 3 s, a forged check from alice's address naming bob's subscriber
    // connection.
    let target = format!("{}:attacker", call.subscriber_ufrags[0]);
    let started = Instant::now();
    let mut forged = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let mut txid = [0u8; 12];
        txid[..8].copy_from_slice(&(forged as u64 + 1).to_be_bytes());
        send_spoofed(&raw, alice_addr, media, &forged_check(&target, txid));
        forged += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = reception(&call);
    let (expected, lost, detail) = loss(&before, &after);
    println!("{forged} forged checks from alice's address {alice_addr}: {expected} packets expected, {lost} lost ({detail})");
    assert!(expected > 200, "the call kept flowing: {detail}");
    assert!(
        (lost as f64) < 0.001 * expected as f64,
        "forged checks from alice's address cost the call {lost} of {expected} packets: {detail}"
    );
}
