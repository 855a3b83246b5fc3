//! ICE-TCP end to end over real loopback sockets: a participant that can only use TCP (a
//! full ICE agent from `rtc` with an active TCP candidate and no UDP at all) joins over the
//! WebSocket, connects both its connections to the engine's passive TCP candidate (RFC 6544,
//! RFC 4571 framing) and gets what a UDP participant gets: media from a UDP publisher (the Rust
//! client, real VP8 and Opus), data messages both ways, NACK/PLI, the metrics. Beside it:
//! garbage, unauthenticated, silent and oversize TCP connections are closed and harm no one,
//! the per-engine connection limit holds, and `media.ice_tcp = false` means no listener and no
//! TCP candidate.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use chorus_client::{Client, ClientOptions, TrackKind};
use chorus_sfu::peer::supported_codecs;
use chorus_signal::protocol::ServerMessage;
use futures::{SinkExt, StreamExt};
use rtc::ice::network_type::NetworkType;
use rtc::ice::tcp_type::TcpType;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::tcp_framing::{frame_packet, TcpFrameDecoder};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);
const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;

/// How a test participant reaches the media engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Udp,
    Tcp,
}

/// What a test participant saw, shared with the test.
#[derive(Debug, Default)]
struct Seen {
    /// [publisher, subscriber] connection connected.
    connected: [bool; 2],
    /// Per SSRC received: (payload type, packets, sequence gaps, last sequence number).
    rtp: HashMap<u32, (u8, u64, u64, u16)>,
    /// Data messages received on the subscriber connection's `chorus` channel.
    data: Vec<String>,
    /// Data messages sent on the publisher connection.
    data_sent: u64,
    /// TCP connections opened: (leg, destination).
    connects: Vec<(usize, SocketAddr)>,
    /// Transports the ICE agent used (from the transmits it asked for).
    protocols: Vec<TransportProtocol>,
    /// The server's passive TCP candidates seen in its descriptions, and its UDP ones.
    tcp_candidates: Vec<String>,
    udp_candidates: Vec<String>,
    /// The server's ICE ufrags (one per connection).
    ufrags: Vec<String>,
    participant_id: String,
}

impl Seen {
    fn packets(&self, pt: u8) -> u64 {
        self.rtp.values().filter(|r| r.0 == pt).map(|r| r.1).sum()
    }
    fn gaps(&self) -> u64 {
        self.rtp.values().map(|r| r.2).sum()
    }
}

/// A request from the test to a participant's task.
enum Ask {
    /// Send a PLI and a NACK for the video it receives.
    Feedback,
    Leave,
}

/// One connection of a test participant: its peer connection and its sockets.
struct Leg {
    pc: RTCPeerConnection,
    /// TCP: a connection per remote address, opened when the ICE agent first sends there.
    tcp: HashMap<SocketAddr, tokio::net::tcp::OwnedWriteHalf>,
    udp: Option<Arc<UdpSocket>>,
}

/// What a leg's reader tasks hand the participant's loop.
struct Inbound {
    leg: usize,
    local: SocketAddr,
    peer: SocketAddr,
    protocol: TransportProtocol,
    data: Vec<u8>,
}

fn peer_connection(via: Via) -> RTCPeerConnection {
    let mut me = MediaEngine::default();
    for (c, kind) in supported_codecs() {
        me.register_codec(c, kind).expect("codec");
    }
    let registry = rtc::interceptor::Registry::new();
    let registry = register_default_interceptors(registry, &mut me).expect("interceptors");
    let network = match via {
        Via::Udp => NetworkType::Udp4,
        Via::Tcp => NetworkType::Tcp4,
    };
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_network_types(vec![network])
                .build(),
        )
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .expect("peer connection")
}

/// Adds our one host candidate: a UDP socket's, or an active TCP one (port 9, RFC 6544).
fn add_candidate(pc: &mut RTCPeerConnection, via: Via, udp: Option<SocketAddr>) {
    let (network, port, tcp_type) = match (via, udp) {
        (Via::Udp, Some(a)) => ("udp", a.port(), TcpType::Unspecified),
        _ => ("tcp", 9, TcpType::Active),
    };
    let c = CandidateHostConfig {
        base_config: CandidateConfig {
            network: network.into(),
            address: "127.0.0.1".into(),
            port,
            component: 1,
            ..Default::default()
        },
        tcp_type,
    }
    .new_candidate_host()
    .expect("candidate");
    let init = RTCIceCandidate::from(&c).to_json().expect("json");
    pc.add_local_candidate(init).expect("local candidate");
}

/// Notes the server's candidates a description carries.
fn note_candidates(sdp: &str, seen: &Mutex<Seen>) {
    let mut s = seen.lock().expect("lock");
    for ufrag in sdp.lines().filter_map(|l| l.strip_prefix("a=ice-ufrag:")) {
        if !s.ufrags.iter().any(|u| u == ufrag) {
            s.ufrags.push(ufrag.to_owned());
        }
    }
    for line in sdp.lines().filter(|l| l.starts_with("a=candidate:")) {
        let line = line.trim_start_matches("a=").to_owned();
        if line.contains(" tcp ") {
            if !s.tcp_candidates.contains(&line) {
                s.tcp_candidates.push(line);
            }
        } else if !s.udp_candidates.contains(&line) {
            s.udp_candidates.push(line);
        }
    }
}

/// A participant driven by `rtc` on real sockets: joins `room` as `identity`, publishes one
/// Opus-looking audio track and a data channel (sending a message every 100 ms once open),
/// answers subscriber offers, counts what it receives. Runs until asked to leave.
struct Participant {
    seen: Arc<Mutex<Seen>>,
    ask: tokio::sync::mpsc::UnboundedSender<Ask>,
    task: tokio::task::JoinHandle<()>,
}

impl Participant {
    async fn join(base: &str, room: &str, identity: &str, via: Via) -> Participant {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ask, asks) = tokio::sync::mpsc::unbounded_channel();
        let mut ws = common::ws_connect(base).await;
        let joined = common::ws_join(&mut ws, &common::token(room, identity)).await;
        let ServerMessage::Joined { participant, .. } = joined else {
            panic!("join: {joined:?}");
        };
        seen.lock().expect("lock").participant_id = participant.id;
        let task = tokio::spawn(run(ws, via, identity.to_owned(), seen.clone(), asks));
        Participant { seen, ask, task }
    }

    fn seen<R>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.seen.lock().expect("lock"))
    }

    fn id(&self) -> String {
        self.seen(|s| s.participant_id.clone())
    }

    async fn leave(self) {
        let _ = self.ask.send(Ask::Leave);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// The participant's loop: signaling, sockets, timers, media.
async fn run(
    mut ws: common::Ws,
    via: Via,
    identity: String,
    seen: Arc<Mutex<Seen>>,
    mut asks: tokio::sync::mpsc::UnboundedReceiver<Ask>,
) {
    let (in_tx, mut inbound) = tokio::sync::mpsc::unbounded_channel::<Inbound>();
    let mut legs: Vec<Leg> = Vec::new();
    for leg in 0..2 {
        let mut pc = peer_connection(via);
        let udp = match via {
            Via::Udp => {
                let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("udp"));
                let local = s.local_addr().expect("addr");
                let (tx, reader) = (in_tx.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok((n, from)) = reader.recv_from(&mut buf).await {
                        let msg = Inbound {
                            leg,
                            local,
                            peer: from,
                            protocol: TransportProtocol::UDP,
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                });
                add_candidate(&mut pc, via, Some(local));
                Some(s)
            }
            Via::Tcp => {
                add_candidate(&mut pc, via, None);
                None
            }
        };
        legs.push(Leg {
            pc,
            tcp: HashMap::new(),
            udp,
        });
    }
    // Leg 0 publishes: an audio track and a data channel, offered at once.
    let now = Instant::now();
    let audio_ssrc = 0x0a0d_0000 + u32::from(identity.as_bytes()[0]);
    let audio = MediaStreamTrack::new(
        format!("{identity}-stream"),
        format!("{identity}-audio"),
        "audio".into(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(audio_ssrc),
                ..Default::default()
            },
            codec: supported_codecs()[0].0.rtp_codec.clone(),
            ..Default::default()
        }],
    );
    let sender: RTCRtpSenderId = legs[0].pc.add_track(audio).expect("track");
    legs[0]
        .pc
        .create_data_channel("chat", None)
        .expect("data channel");
    let offer = legs[0].pc.create_offer(None).expect("offer");
    legs[0]
        .pc
        .set_local_description(now, offer.clone())
        .expect("local offer");
    send(
        &mut ws,
        serde_json::json!({"type": "offer", "sdp": offer.sdp}),
    )
    .await;

    let mut chat = None;
    let (mut seq, mut ts, mut sent) = (0u16, 0u32, 0u64);
    let mut media_tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let deadline = legs
            .iter_mut()
            .filter_map(|l| l.pc.poll_timeout())
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(100));
        tokio::select! {
            msg = ws.next() => {
                let Some(Ok(Message::Text(text))) = msg else { break };
                let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else { continue };
                let now = Instant::now();
                match msg {
                    ServerMessage::Answer { sdp } => {
                        note_candidates(&sdp, &seen);
                        let answer = RTCSessionDescription::answer(sdp).expect("answer");
                        legs[0].pc.set_remote_description(now, answer).expect("remote answer");
                    }
                    ServerMessage::Offer { sdp } => {
                        note_candidates(&sdp, &seen);
                        let offer = RTCSessionDescription::offer(sdp).expect("offer");
                        let pc = &mut legs[1].pc;
                        pc.set_remote_description(now, offer).expect("remote offer");
                        let answer = pc.create_answer(None).expect("answer");
                        pc.set_local_description(now, answer.clone()).expect("local answer");
                        send(&mut ws, serde_json::json!({"type": "answer", "sdp": answer.sdp})).await;
                    }
                    _ => {}
                }
            }
            Some(first) = inbound.recv() => {
                let now = Instant::now();
                let mut batch = vec![first];
                while let Ok(more) = inbound.try_recv() {
                    batch.push(more);
                }
                for m in batch {
                    let _ = legs[m.leg].pc.handle_read(TaggedBytesMut {
                        now,
                        transport: TransportContext {
                            local_addr: m.local,
                            peer_addr: m.peer,
                            ecn: None,
                            transport_protocol: m.protocol,
                        },
                        message: BytesMut::from(&m.data[..]),
                    });
                }
            }
            _ = media_tick.tick() => {
                let now = Instant::now();
                if seen.lock().expect("lock").connected[0] {
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(960);
                    let packet = rtc::rtp::Packet {
                        header: rtc::rtp::header::Header {
                            version: 2,
                            payload_type: OPUS_PT,
                            sequence_number: seq,
                            timestamp: ts,
                            ssrc: audio_ssrc,
                            ..Default::default()
                        },
                        // An Opus DTX-like frame: the server does not decode.
                        payload: bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]),
                    };
                    if let Some(mut s) = legs[0].pc.rtp_sender(sender) {
                        let _ = s.write_rtp(now, packet);
                    }
                    if seq % 5 == 0 {
                        if let Some(mut dc) = chat.and_then(|id| legs[0].pc.data_channel(id)) {
                            sent += 1;
                            if dc.send_text(now, format!("{identity} says {sent}")).is_ok() {
                                seen.lock().expect("lock").data_sent = sent;
                            }
                        }
                    }
                }
            }
            ask = asks.recv() => match ask {
                Some(Ask::Feedback) => feedback(&mut legs[1].pc, &seen),
                Some(Ask::Leave) | None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                for l in &mut legs {
                    let _ = l.pc.handle_timeout(now);
                }
            }
        }
        // Whatever the connections want sent, their events and what they received.
        for (i, leg) in legs.iter_mut().enumerate() {
            while let Some(out) = leg.pc.poll_write() {
                let protocol = out.transport.transport_protocol;
                seen.lock().expect("lock").protocols.push(protocol);
                if let Some(to) = transmit(leg, i, out, &in_tx).await {
                    seen.lock().expect("lock").connects.push((i, to));
                }
            }
            while let Some(ev) = leg.pc.poll_event() {
                match ev {
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => {
                        seen.lock().expect("lock").connected[i] =
                            s == RTCPeerConnectionState::Connected;
                    }
                    RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id))
                        if i == 0 =>
                    {
                        chat = Some(id);
                    }
                    _ => {}
                }
            }
            while let Some(m) = leg.pc.poll_read() {
                let mut s = seen.lock().expect("lock");
                match m.message {
                    RTCMessage::RtpPacket(_, p) => {
                        let h = &p.header;
                        let e = s.rtp.entry(h.ssrc).or_insert((
                            h.payload_type,
                            0,
                            0,
                            h.sequence_number.wrapping_sub(1),
                        ));
                        if h.sequence_number != e.3.wrapping_add(1) {
                            e.2 += 1;
                        }
                        e.1 += 1;
                        e.3 = h.sequence_number;
                    }
                    RTCMessage::DataChannelMessage(_, msg) => {
                        s.data.push(String::from_utf8_lossy(&msg.data).into_owned());
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = ws.send(Message::text(r#"{"type":"leave"}"#)).await;
    for l in &mut legs {
        let _ = l.pc.close();
    }
}

/// A PLI and a NACK for the video the subscriber connection receives.
fn feedback(pc: &mut RTCPeerConnection, seen: &Mutex<Seen>) {
    let video = seen
        .lock()
        .expect("lock")
        .rtp
        .iter()
        .find(|(_, r)| r.0 == VP8_PT)
        .map(|(ssrc, r)| (*ssrc, r.3));
    let Some((ssrc, last)) = video else { return };
    let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
        sender_ssrc: 1,
        media_ssrc: ssrc,
    };
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
        nack_pairs_from_sequence_numbers, TransportLayerNack,
    };
    let nack = TransportLayerNack {
        sender_ssrc: 1,
        media_ssrc: ssrc,
        nacks: nack_pairs_from_sequence_numbers(&[last.wrapping_sub(3), last.wrapping_sub(2)]),
    };
    let receivers: Vec<_> = pc.get_receivers().collect();
    for r in receivers {
        if let Some(mut receiver) = pc.rtp_receiver(r) {
            let _ = receiver.write_rtcp(Instant::now(), vec![Box::new(pli), Box::new(nack)]);
            return;
        }
    }
}

/// Sends one packet the way its transport says: on the UDP socket, or framed on the TCP
/// connection to its destination (connected on first use, with a reader task).
async fn transmit(
    leg: &mut Leg,
    index: usize,
    out: TaggedBytesMut,
    in_tx: &tokio::sync::mpsc::UnboundedSender<Inbound>,
) -> Option<SocketAddr> {
    let to = out.transport.peer_addr;
    if out.transport.transport_protocol == TransportProtocol::UDP {
        if let Some(s) = &leg.udp {
            let _ = s.send_to(&out.message, to).await;
        }
        return None;
    }
    let mut connected = None;
    let wr = match leg.tcp.entry(to) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(to)).await
            else {
                return None;
            };
            connected = Some(to);
            let local = stream.local_addr().expect("local");
            let (mut rd, wr) = stream.into_split();
            let tx = in_tx.clone();
            tokio::spawn(async move {
                let mut decoder = TcpFrameDecoder::new();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => decoder.extend_from_slice(&buf[..n]),
                    }
                    while let Some(data) = decoder.next_packet() {
                        let msg = Inbound {
                            leg: index,
                            local,
                            peer: to,
                            protocol: TransportProtocol::TCP,
                            data,
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                }
            });
            v.insert(wr)
        }
    };
    if wr.write_all(&frame_packet(&out.message)).await.is_err() {
        leg.tcp.remove(&to);
    }
    connected
}

async fn send(ws: &mut common::Ws, msg: serde_json::Value) {
    common::ws_send(ws, &msg.to_string()).await;
}

/// Whether `tcp` is read until the server closes it within `within` (EOF or reset).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A STUN binding request naming `ufrag` (signed with `pwd`, or unsigned), RFC 4571-framed.
fn framed_check(ufrag: &str, pwd: Option<&str>) -> Vec<u8> {
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{Message as StunMessage, Setter, TransactionId, BINDING_REQUEST};
    use rtc::stun::textattrs::Username;
    let crypto = rtc::crypto::default_provider().expect("crypto");
    let mut setters: Vec<Box<dyn Setter + '_>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(Username::new(
            rtc::stun::attributes::ATTR_USERNAME,
            format!("{ufrag}:client"),
        )),
    ];
    if let Some(pwd) = pwd {
        setters.push(Box::new(
            MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_owned(),
                crypto.crypto(),
            ),
        ));
    }
    let mut m = StunMessage::new();
    m.build(&setters).expect("stun");
    frame_packet(&m.raw)
}

fn tcp_candidate_addr(candidate: &str) -> SocketAddr {
    let f: Vec<&str> = candidate.split_whitespace().collect();
    format!("{}:{}", f[4], f[5])
        .parse()
        .expect("candidate address")
}

fn priority(candidate: &str) -> u32 {
    candidate
        .split_whitespace()
        .nth(3)
        .expect("priority")
        .parse()
        .expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_over_tcp_gets_media_data_and_feedback_both_ways() {
    let srv = common::server().await;
    let base = srv.base_url();
    let room = common::room();
    let url = format!("ws://{}/ws", srv.http_addr);
    // Alice: the Rust client over UDP, publishing real Opus and VP8.
    let alice = Client::join(ClientOptions::new(url, common::token(&room, "alice")))
        .await
        .expect("alice joins");
    // Bob: only TCP. Carol: UDP, to hear Bob's data messages and send him hers.
    let bob = Participant::join(&base, &room, "bob", Via::Tcp).await;
    let carol = Participant::join(&base, &room, "carol", Via::Udp).await;
    let (bob_id, carol_id) = (bob.id(), carol.id());

    common::eventually("bob connected over TCP, receiving everyone", T, || async {
        let state = bob.seen(|s| {
            (
                s.connected,
                s.rtp
                    .values()
                    .filter(|r| r.0 == OPUS_PT && r.1 >= 50)
                    .count(),
                s.packets(VP8_PT),
                s.data.iter().filter(|d| d.contains(&carol_id)).count(),
            )
        });
        // Alice's audio and carol's (two Opus streams), alice's video, carol's messages.
        common::ok_if(
            state.0 == [true, true] && state.1 == 2 && state.2 >= 50 && state.3 >= 3,
            state,
        )
    })
    .await;
    common::eventually("carol hears bob's audio and data", T, || async {
        let state = carol.seen(|s| {
            (
                s.connected,
                s.rtp
                    .values()
                    .filter(|r| r.0 == OPUS_PT && r.1 >= 50)
                    .count(),
                s.data.iter().filter(|d| d.contains(&bob_id)).count(),
                s.rtp.clone(),
            )
        });
        common::ok_if(
            state.0 == [true, true] && state.1 == 2 && state.2 >= 3,
            state,
        )
    })
    .await;
    alice
        .wait_until(T, |c| {
            c.received().iter().any(|t| {
                t.participant_id == bob_id && t.kind == TrackKind::Audio && t.packets() >= 50
            })
        })
        .await
        .unwrap_or_else(|e| panic!("alice hears bob: {e}: {:#?}", alice.received()));

    // Every packet bob's ICE agent sent went over TCP; the server offered him a passive TCP
    // candidate below its UDP one.
    bob.seen(|s| {
        assert!(!s.protocols.is_empty());
        assert!(
            s.protocols.iter().all(|p| *p == TransportProtocol::TCP),
            "bob used UDP: {:?}",
            s.protocols
        );
        assert_eq!(s.gaps(), 0, "TCP loses nothing: {:?}", s.rtp);
        let tcp = &s.tcp_candidates[0];
        assert!(tcp.contains("typ host tcptype passive"), "{tcp}");
        assert!(priority(tcp) < priority(&s.udp_candidates[0]), "{s:#?}");
        assert_eq!(tcp_candidate_addr(tcp), srv.media_addr, "same port as UDP");
    });
    // Carol, with UDP, never used TCP.
    carol.seen(|s| assert!(s.protocols.iter().all(|p| *p == TransportProtocol::UDP)));

    // Bob's PLI and NACK reach the server over TCP and are acted on.
    let fb = |s: &str, t: &str| {
        common::sample(
            s,
            &format!("chorus_rtcp_feedback_total{{direction=\"in\",type=\"{t}\"}}"),
        )
    };
    let before = common::scrape(&base).await;
    let (pli0, nack0) = (fb(&before, "pli"), fb(&before, "nack"));
    let _ = bob.ask.send(Ask::Feedback);
    common::eventually("bob's PLI and NACK counted", T, || async {
        let m = common::scrape(&base).await;
        let got = (fb(&m, "pli"), fb(&m, "nack"));
        common::ok_if(got.0 > pli0 && got.1 > nack0, got)
    })
    .await;

    // The engine's TCP metrics: bob's two connections (one per connection of his, to the
    // one passive candidate each was offered), and any the Rust client's ICE agent opened
    // beside its UDP path (as Chromium does); frames both ways, none dropped.
    let m = common::scrape(&base).await;
    let open = common::sample(&m, "chorus_engine_tcp_connections");
    let connects = bob.seen(|s| s.connects.clone());
    assert_eq!(connects.len(), 2, "{connects:?}");
    assert!(connects.iter().all(|(_, to)| *to == srv.media_addr));
    assert!(open >= 2.0, "{m}");
    assert!(common::sample(&m, "chorus_engine_tcp_frames_total{direction=\"in\"") > 100.0);
    assert!(common::sample(&m, "chorus_engine_tcp_frames_total{direction=\"out\"") > 100.0);
    for reason in [
        "tcp_backlog",
        "tcp_no_connection",
        "tcp_unauthenticated",
        "tcp_oversize",
    ] {
        let dropped = common::sample(
            &m,
            &format!("chorus_packets_dropped_total{{reason=\"{reason}\"}}"),
        );
        assert_eq!(dropped, 0.0, "{reason}");
    }

    // Bob leaves: his connections are closed and their routes gone.
    bob.leave().await;
    common::eventually("bob's TCP connections closed", T, || async {
        let m = common::scrape(&base).await;
        let n = common::sample(&m, "chorus_engine_tcp_connections");
        common::ok_if(n == open - 2.0, n)
    })
    .await;
    carol.leave().await;
    alice.leave().await;
    common::eventually("every TCP connection closed", T, || async {
        let m = common::scrape(&base).await;
        let n = common::sample(&m, "chorus_engine_tcp_connections");
        common::ok_if(n == 0.0, n)
    })
    .await;
    srv.shutdown(Duration::from_secs(2)).await;
}

/// Waits until both hear the other's audio, and returns their Opus packet counts.
async fn both_hear(a: &Participant, b: &Participant, more_than: (u64, u64)) -> (u64, u64) {
    common::eventually("audio both ways", T, || async {
        let got = (
            a.seen(|s| s.packets(OPUS_PT)),
            b.seen(|s| s.packets(OPUS_PT)),
        );
        common::ok_if(got.0 > more_than.0 + 25 && got.1 > more_than.1 + 25, got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_silent_and_unauthenticated_connections_are_closed_and_harm_no_one() {
    let srv = common::server_with(|c| {
        c.media.engines = 1;
        c.media.max_tcp_connections = 4;
    })
    .await;
    let base = srv.base_url();
    let room = common::room();
    let bob = Participant::join(&base, &room, "bob", Via::Tcp).await;
    let carol = Participant::join(&base, &room, "carol", Via::Udp).await;
    let heard = both_hear(&bob, &carol, (0, 0)).await;
    let media = srv.media_addr;
    let dropped = |m: &str, reason: &str| {
        common::sample(
            m,
            &format!("chorus_packets_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    let connect = || async move { TcpStream::connect(media).await.expect("tcp connects") };

    // The limit: bob's two connections and two silent ones fill it; a fifth is closed at once.
    let mut silent = [connect().await, connect().await];
    common::eventually("four connections", T, || async {
        let n = common::sample(
            &common::scrape(&base).await,
            "chorus_engine_tcp_connections",
        );
        common::ok_if(n == 4.0, n)
    })
    .await;
    let mut over = connect().await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "over the limit"
    );
    // A connection that says nothing is closed after the authentication timeout (5 s).
    let started = Instant::now();
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(8)).await,
            "silent connection"
        );
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(3), "closed after {waited:?}");

    // Each of these first frames closes its connection at once.
    let known = carol.seen(|s| s.ufrags.clone());
    assert!(!known.is_empty());
    let mut http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(); // length 0x4745: oversize
    http.extend_from_slice(&[0u8; 64]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("http", http),
        ("framed rtp-looking garbage", frame_packet(&[0x80; 200])),
        (
            "unknown ufrag",
            framed_check("nosuchufrag", Some("whatever-password")),
        ),
        (
            "known ufrag, wrong password",
            framed_check(&known[0], Some("wrong-password")),
        ),
        ("known ufrag, unsigned", framed_check(&known[0], None)),
    ];
    for (what, bytes) in &cases {
        let mut c = connect().await;
        c.write_all(bytes).await.expect("write");
        assert!(
            closed_within(&mut c, Duration::from_secs(2)).await,
            "{what}"
        );
    }
    let m = common::scrape(&base).await;
    assert_eq!(dropped(&m, "tcp_over_limit"), 1.0, "{m}");
    assert_eq!(dropped(&m, "tcp_auth_timeout"), 2.0);
    assert_eq!(dropped(&m, "tcp_unauthenticated"), cases.len() as f64);
    assert!(dropped(&m, "tcp_oversize") >= 1.0);
    common::eventually("only bob's connections left", T, || async {
        let n = common::sample(
            &common::scrape(&base).await,
            "chorus_engine_tcp_connections",
        );
        common::ok_if(n == 2.0, n)
    })
    .await;
    // None of it touched the call.
    both_hear(&bob, &carol, heard).await;
    bob.seen(|s| assert_eq!(s.connects.len(), 2, "bob never had to reconnect"));
    bob.leave().await;
    carol.leave().await;
    srv.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ice_tcp_there_is_no_listener_and_no_tcp_candidate() {
    let srv = common::server_with(|c| c.media.ice_tcp = false).await;
    let base = srv.base_url();
    let room = common::room();
    let carol = Participant::join(&base, &room, "carol", Via::Udp).await;
    let dave = Participant::join(&base, &room, "dave", Via::Udp).await;
    both_hear(&carol, &dave, (0, 0)).await;
    carol.seen(|s| {
        assert!(s.tcp_candidates.is_empty(), "{:?}", s.tcp_candidates);
        assert!(!s.udp_candidates.is_empty());
    });
    let refused = TcpStream::connect(srv.media_addr).await;
    assert!(refused.is_err(), "nothing listens on TCP");
    let m = common::scrape(&base).await;
    assert_eq!(common::sample(&m, "chorus_engine_tcp_connections"), 0.0);
    carol.leave().await;
    dave.leave().await;
    srv.shutdown(Duration::from_secs(2)).await;
}
