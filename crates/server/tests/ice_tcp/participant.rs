//! The test participant of the ICE-TCP tests: a full ICE agent from `rtc` on real loopback
//! sockets, over UDP (a host candidate) or over TCP only (an active candidate, RFC 6544; every
//! packet RFC 4571-framed with `rtc`'s own framing, not the server's), joining over the
//! WebSocket like any client: it publishes an Opus-looking audio track and a data channel,
//! answers subscriber offers, and counts what it receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
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

/// Opus's payload type in Chorus's offers.
pub const OPUS_PT: u8 = 111;
/// VP8's.
pub const VP8_PT: u8 = 96;

/// How a test participant reaches the media engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Udp,
    Tcp,
}

/// What a test participant saw, shared with the test.
#[derive(Debug, Default)]
pub struct Seen {
    /// [publisher, subscriber] connection connected.
    pub connected: [bool; 2],
    /// Per SSRC received: (payload type, packets, sequence gaps, last sequence number).
    pub rtp: HashMap<u32, (u8, u64, u64, u16)>,
    /// Data messages received on the subscriber connection's `chorus` channel.
    pub data: Vec<String>,
    /// Data messages sent on the publisher connection.
    pub data_sent: u64,
    /// TCP connections opened: (leg, destination).
    pub connects: Vec<(usize, SocketAddr)>,
    /// Transports the ICE agent used (from the transmits it asked for).
    pub protocols: Vec<TransportProtocol>,
    /// The server's passive TCP candidates seen in its descriptions, and its UDP ones.
    pub tcp_candidates: Vec<String>,
    pub udp_candidates: Vec<String>,
    /// The server's ICE ufrags (one per connection).
    pub ufrags: Vec<String>,
    pub participant_id: String,
}

impl Seen {
    pub fn packets(&self, pt: u8) -> u64 {
        self.rtp.values().filter(|r| r.0 == pt).map(|r| r.1).sum()
    }
    pub fn gaps(&self) -> u64 {
        self.rtp.values().map(|r| r.2).sum()
    }
}

/// A request from the test to a participant's task.
pub enum Ask {
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
pub struct Participant {
    pub seen: Arc<Mutex<Seen>>,
    pub ask: tokio::sync::mpsc::UnboundedSender<Ask>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Participant {
    pub async fn join(base: &str, room: &str, identity: &str, via: Via) -> Participant {
        Self::join_as(base, room, identity, via, true).await
    }

    /// A participant that only receives (it offers its track but sends nothing on it).
    pub async fn listener(base: &str, room: &str, identity: &str, via: Via) -> Participant {
        Self::join_as(base, room, identity, via, false).await
    }

    async fn join_as(base: &str, room: &str, identity: &str, via: Via, talks: bool) -> Participant {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ask, asks) = tokio::sync::mpsc::unbounded_channel();
        let mut ws = crate::common::ws_connect(base).await;
        let joined = crate::common::ws_join(&mut ws, &crate::common::token(room, identity)).await;
        let ServerMessage::Joined { participant, .. } = joined else {
            panic!("join: {joined:?}");
        };
        seen.lock().expect("lock").participant_id = participant.id;
        let task = tokio::spawn(run(ws, via, talks, identity.to_owned(), seen.clone(), asks));
        Participant { seen, ask, task }
    }

    pub fn seen<R>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.seen.lock().expect("lock"))
    }

    pub fn id(&self) -> String {
        self.seen(|s| s.participant_id.clone())
    }

    pub async fn leave(self) {
        let _ = self.ask.send(Ask::Leave);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// The participant's loop: signaling, sockets, timers, media.
async fn run(
    mut ws: crate::common::Ws,
    via: Via,
    talks: bool,
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
                // The connections' timers run at least this often (consent checks, reports),
                // whatever their own deadlines say.
                for l in &mut legs {
                    let _ = l.pc.handle_timeout(now);
                }
                if talks && seen.lock().expect("lock").connected[0] {
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

async fn send(ws: &mut crate::common::Ws, msg: serde_json::Value) {
    crate::common::ws_send(ws, &msg.to_string()).await;
}
