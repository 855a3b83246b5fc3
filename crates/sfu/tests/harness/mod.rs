//! An in-process network for the sans-IO [`Core`]: client peer connections (also sans-IO `rtc`)
//! exchange datagrams with the core through memory, so whole calls run without sockets.
//! Shared by the integration tests and the forwarding benchmark.
//!
//! Time is virtual: [`Net::now`] is the only clock, handed to the core and to every client
//! connection, and [`Net::run_until`] advances it instead of sleeping, so seconds of call time
//! run in milliseconds. Datagrams can be lost on the way ([`Net::set_loss`]), chosen by a
//! seeded generator: a run is the same every time.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chorus_sfu::core::Core;
use chorus_sfu::peer::supported_codecs;
use chorus_sfu::{JoinRequest, MediaConfig, Metrics, Origin, Permissions, RoomEvent};
use std::collections::VecDeque;

use rtc::data_channel::{RTCDataChannelId, RTCDataChannelMessage};
use rtc::interceptor::{Attribute, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::mpsc;

pub const CORE_ADDR: &str = "127.0.0.1:7882";
pub const VIDEO_SSRC: u32 = 0x1234_5678;

/// A client-side peer connection on the virtual network.
pub struct ClientPeer {
    pub pc: RTCPeerConnection,
    pub addr: SocketAddr,
    pub connected: bool,
    pub rtp_received: u64,
    pub last_seq: Option<u16>,
    pub seq_gaps: u64,
    /// Datagrams received from the core.
    pub datagrams_in: u64,
    /// Every distinct sequence number received (retransmissions land here once).
    pub seqs: std::collections::HashSet<u16>,
    /// The last RTP packet received.
    pub last_rtp: Option<LastRtp>,
    /// Sender reports received: the report, the last RTP packet before it, and when.
    pub sender_reports: Vec<(SenderReport, Option<LastRtp>, Instant)>,
    /// Whether the application reads what the connection received; a client that stops
    /// reading leaves data in its SCTP receive buffer, which closes its receive window.
    pub reading: bool,
    /// Its open data channel (the publisher's own, a subscriber's `chorus`).
    pub data_channel: Option<RTCDataChannelId>,
    /// Data-channel messages read.
    pub data_received: u64,
    /// The last data-channel message read.
    pub last_data: Option<RTCDataChannelMessage>,
}

/// (SSRC, RTP timestamp) of a received RTP packet, and when it arrived.
pub type LastRtp = (u32, u32, Instant);

/// Lets sender reports through to the application (the default chain terminates RTCP).
struct SenderReportTap {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for SenderReportTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if packets.iter().any(|p| p.as_any().is::<SenderReport>()) {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl rtc::interceptor::Interceptor for SenderReportTap {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

impl ClientPeer {
    /// A client at `addr`; `receive_buffer` sets its SCTP receive buffer (window) in bytes.
    fn new(addr: SocketAddr, now: Instant, receive_buffer: Option<u32>) -> ClientPeer {
        let mut me = MediaEngine::default();
        for (c, kind) in supported_codecs() {
            me.register_codec(c, kind).unwrap();
        }
        let tap = SenderReportTap {
            read: VecDeque::new(),
            write: VecDeque::new(),
        };
        let registry = Registry::new().with(Slot::Custom(500), tap);
        let registry = register_default_interceptors(registry, &mut me).unwrap();
        let mut settings = SettingEngineBuilder::new();
        if let Some(bytes) = receive_buffer {
            settings = settings.with_sctp_max_receive_buffer_size(bytes);
        }
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(settings.build())
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .build(now)
            .unwrap();
        chorus_sfu::peer::add_local_candidates(
            &mut pc,
            &chorus_sfu::peer::Advertised::udp(vec![addr]),
        )
        .unwrap();
        ClientPeer {
            pc,
            addr,
            connected: false,
            rtp_received: 0,
            last_seq: None,
            seq_gaps: 0,
            datagrams_in: 0,
            seqs: std::collections::HashSet::new(),
            last_rtp: None,
            sender_reports: Vec::new(),
            reading: true,
            data_channel: None,
            data_received: 0,
            last_data: None,
        }
    }
}

/// The core, a publisher and subscribers, wired through memory.
pub struct Net {
    pub core: Core,
    pub core_addr: SocketAddr,
    pub publisher: ClientPeer,
    pub publisher_key: u64,
    pub video_sender: RTCRtpSenderId,
    pub subscribers: Vec<(ClientPeer, u64, mpsc::Receiver<RoomEvent>)>,
    pub seq: u16,
    pub timestamp: u32,
    /// The virtual clock.
    pub now: Instant,
    /// Datagrams lost on the way, both directions.
    pub link: Link,
    /// Clients cut off the network (they vanished): nothing to or from them arrives.
    pub cut: Vec<SocketAddr>,
    /// Further publishers (participant key, their video sender), joined with
    /// [`Net::add_publisher`].
    pub guests: Vec<(ClientPeer, u64, RTCRtpSenderId)>,
    /// The core's metrics (the same counters).
    pub metrics: Metrics,
    transmits: Vec<(SocketAddr, BytesMut)>,
}

/// Seeded random loss on the virtual network.
#[derive(Debug, Clone)]
pub struct Link {
    /// Probability, in millionths, that a datagram is lost.
    loss_ppm: u32,
    /// xorshift64 state.
    state: u64,
    /// Datagrams lost so far.
    pub lost: u64,
}

impl Link {
    fn lossless() -> Link {
        Link {
            loss_ppm: 0,
            state: 1,
            lost: 0,
        }
    }

    /// Whether the next datagram is lost.
    fn drops(&mut self) -> bool {
        if self.loss_ppm == 0 {
            return false;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let lost = (self.state % 1_000_000) < u64::from(self.loss_ppm);
        self.lost += u64::from(lost);
        lost
    }
}

fn request(identity: &str, publish: bool, subscribe: bool) -> JoinRequest {
    JoinRequest {
        room: "bench".into(),
        identity: identity.into(),
        name: identity.into(),
        permissions: Permissions {
            publish,
            subscribe,
            publish_data: publish,
        },
        auto_subscribe: true,
        quality: chorus_sfu::Quality::High,
        origin: Origin::WebSocket,
    }
}

/// A VP8 keyframe-looking payload of `len` bytes (descriptor S=1, PID=0; P bit clear).
pub fn vp8_payload(len: usize, keyframe: bool) -> Bytes {
    let mut p = vec![0u8; len.max(3)];
    p[0] = 0x10;
    p[1] = if keyframe { 0x00 } else { 0x01 };
    Bytes::from(p)
}

impl Net {
    /// Sets up the core, one connected video publisher and `n` connected subscribers that
    /// receive its track.
    pub fn new(n: usize) -> Net {
        Net::new_with(n, |_| {})
    }

    /// [`Net::new`] with the core's configuration adjusted by `tweak`.
    pub fn new_with(n: usize, tweak: impl FnOnce(&mut MediaConfig)) -> Net {
        Net::build(n, tweak, None)
    }

    /// [`Net::new_with`] where the publisher also opens a data channel (open when this
    /// returns) and subscriber `i` has an SCTP receive buffer of `receive_buffer(i)` bytes
    /// (`None`: the default 1 MiB); every subscriber's `chorus` channel is open.
    pub fn with_data(
        n: usize,
        receive_buffer: impl Fn(usize) -> Option<u32>,
        tweak: impl FnOnce(&mut MediaConfig),
    ) -> Net {
        let mut net = Net::build(n, tweak, Some(&receive_buffer));
        net.run_until(Duration::from_secs(10), |n| {
            n.publisher.data_channel.is_some()
                && n.subscribers
                    .iter()
                    .all(|(c, _, _)| c.data_channel.is_some())
        });
        net
    }

    fn build(
        n: usize,
        tweak: impl FnOnce(&mut MediaConfig),
        data: Option<&dyn Fn(usize) -> Option<u32>>,
    ) -> Net {
        let core_addr: SocketAddr = CORE_ADDR.parse().unwrap();
        let mut config = MediaConfig {
            bind_ip: core_addr.ip(),
            udp_port: core_addr.port(),
            ..Default::default()
        };
        tweak(&mut config);
        let metrics = Metrics::unregistered();
        let mut core = Core::new(config, metrics.clone(), core_addr);
        let now = Instant::now();
        let joined = core.join(now, request("pub", true, false)).unwrap();
        let mut publisher = ClientPeer::new("127.0.0.1:20000".parse().unwrap(), now, None);
        let track = MediaStreamTrack::new(
            "pub-stream".into(),
            "pub-video".into(),
            "video".into(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(VIDEO_SSRC),
                    ..Default::default()
                },
                codec: supported_codecs()[1].0.rtp_codec.clone(),
                ..Default::default()
            }],
        );
        let video_sender = publisher.pc.add_track(track).unwrap();
        if data.is_some() {
            publisher.pc.create_data_channel("data", None).unwrap();
        }
        let offer = publisher.pc.create_offer(None).unwrap();
        publisher
            .pc
            .set_local_description(now, offer.clone())
            .unwrap();
        let answer = core.publisher_offer(now, joined.key, offer.sdp).unwrap();
        publisher
            .pc
            .set_remote_description(now, RTCSessionDescription::answer(answer).unwrap())
            .unwrap();
        core.drain(now);
        let mut net = Net {
            core,
            core_addr,
            publisher,
            publisher_key: joined.key,
            video_sender,
            subscribers: Vec::new(),
            seq: 1000,
            timestamp: 90_000,
            now,
            link: Link::lossless(),
            cut: Vec::new(),
            guests: Vec::new(),
            metrics,
            transmits: Vec::new(),
        };
        net.run_until(Duration::from_secs(10), |n| n.publisher.connected);
        // First media publishes the track on the server.
        net.send_video(true, 1000);
        net.pump();
        for i in 0..n {
            let addr: SocketAddr = format!("127.0.0.1:{}", 30000 + i).parse().unwrap();
            let joined = net
                .core
                .join(net.now, request(&format!("sub{i}"), false, true))
                .unwrap();
            let buffer = data.and_then(|f| f(i));
            net.subscribers.push((
                ClientPeer::new(addr, net.now, buffer),
                joined.key,
                joined.events,
            ));
        }
        net.core.drain(net.now);
        net.answer_offers();
        net.run_until(Duration::from_secs(10), |n| {
            n.subscribers.iter().all(|(c, _, _)| c.connected)
        });
        // Let every downtrack resolve and see a keyframe.
        for _ in 0..5 {
            net.send_video(true, 1000);
            net.pump();
        }
        net
    }

    /// Answers every subscriber offer waiting in the subscribers' event queues.
    pub fn answer_offers(&mut self) {
        let now = self.now;
        for (client, key, events) in &mut self.subscribers {
            while let Ok(ev) = events.try_recv() {
                if let RoomEvent::SubscriberOffer(sdp) = ev {
                    client
                        .pc
                        .set_remote_description(now, RTCSessionDescription::offer(sdp).unwrap())
                        .unwrap();
                    let answer = client.pc.create_answer(None).unwrap();
                    client
                        .pc
                        .set_local_description(now, answer.clone())
                        .unwrap();
                    self.core.subscriber_answer(now, *key, answer.sdp).unwrap();
                }
            }
        }
        self.core.drain(now);
    }

    /// Loses each datagram with probability `loss` (0..=1) from now on, chosen by a generator
    /// seeded with `seed`.
    pub fn set_loss(&mut self, seed: u64, loss: f64) {
        self.link = Link {
            loss_ppm: (loss.clamp(0.0, 1.0) * 1e6) as u32,
            state: seed.max(1),
            lost: 0,
        };
    }

    /// Has subscriber `i` send a NACK for `seqs` of the video stream it receives (the SSRC of
    /// its last RTP packet); false if it has received nothing yet.
    pub fn send_nack(&mut self, i: usize, seqs: &[u16]) -> bool {
        let now = self.now;
        let c = &mut self.subscribers[i].0;
        let Some((ssrc, _, _)) = c.last_rtp else {
            return false;
        };
        let nack = rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: ssrc,
            nacks: rtc::rtcp::transport_feedbacks::transport_layer_nack::nack_pairs_from_sequence_numbers(seqs),
        };
        let receivers: Vec<_> = c.pc.get_receivers().collect();
        for r in receivers {
            if let Some(mut receiver) = c.pc.rtp_receiver(r) {
                return receiver.write_rtcp(now, vec![Box::new(nack)]).is_ok();
            }
        }
        false
    }

    /// Has the publisher send `text` on its data channel; false if the stack refused it.
    pub fn send_data(&mut self, text: &str) -> bool {
        let now = self.now;
        let Some(id) = self.publisher.data_channel else {
            return false;
        };
        self.publisher
            .pc
            .data_channel(id)
            .is_some_and(|mut c| c.send_text(now, text).is_ok())
    }

    /// `chorus_packets_dropped_total{reason}` so far.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.metrics.dropped.with_label_values(&[reason]).get()
    }

    /// Datagrams the core sent to subscriber `i` so far.
    pub fn sent_to(&self, i: usize) -> u64 {
        self.subscribers[i].0.datagrams_in
    }

    /// Joins a further publisher of one video track (SSRC `ssrc`) from `addr`, connects it
    /// and has it send a keyframe, so its track is published; returns its index in
    /// [`Net::guests`].
    pub fn add_publisher(&mut self, identity: &str, addr: SocketAddr, ssrc: u32) -> usize {
        let now = self.now;
        let joined = self.core.join(now, request(identity, true, false)).unwrap();
        let mut client = ClientPeer::new(addr, now, None);
        let track = MediaStreamTrack::new(
            format!("{identity}-stream"),
            format!("{identity}-video"),
            "video".into(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: supported_codecs()[1].0.rtp_codec.clone(),
                ..Default::default()
            }],
        );
        let sender = client.pc.add_track(track).unwrap();
        let offer = client.pc.create_offer(None).unwrap();
        client.pc.set_local_description(now, offer.clone()).unwrap();
        let answer = self
            .core
            .publisher_offer(now, joined.key, offer.sdp)
            .unwrap();
        client
            .pc
            .set_remote_description(now, RTCSessionDescription::answer(answer).unwrap())
            .unwrap();
        self.core.drain(now);
        self.guests.push((client, joined.key, sender));
        let i = self.guests.len() - 1;
        self.run_until(Duration::from_secs(10), |n| n.guests[i].0.connected);
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: 96,
                sequence_number: 1,
                timestamp: 3000,
                ssrc,
                ..Default::default()
            },
            payload: vp8_payload(500, true),
        };
        let now = self.now;
        let (client, _, sender) = &mut self.guests[i];
        client
            .pc
            .rtp_sender(*sender)
            .unwrap()
            .write_rtp(now, packet)
            .unwrap();
        self.pump();
        self.answer_offers();
        i
    }

    /// A participant that joins (subscribe only) and never connects: its room events.
    pub fn join_idle(&mut self, identity: &str) -> mpsc::Receiver<RoomEvent> {
        let now = self.now;
        let joined = self.core.join(now, request(identity, false, true)).unwrap();
        self.core.drain(now);
        joined.events
    }

    /// Moves the virtual clock forward.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Has the publisher write one video packet of `len` bytes.
    pub fn send_video(&mut self, keyframe: bool, len: usize) {
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(3000);
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: 96,
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: VIDEO_SSRC,
                ..Default::default()
            },
            payload: vp8_payload(len, keyframe),
        };
        let mut sender = self.publisher.pc.rtp_sender(self.video_sender).unwrap();
        sender.write_rtp(self.now, packet).unwrap();
    }

    /// The publisher's outgoing datagrams (SRTP), taken off its peer connection.
    pub fn publisher_datagrams(&mut self) -> Vec<BytesMut> {
        let mut out = Vec::new();
        while let Some(t) = self.publisher.pc.poll_write() {
            out.push(t.message);
        }
        out
    }

    fn client_mut(&mut self, addr: SocketAddr) -> Option<&mut ClientPeer> {
        if self.publisher.addr == addr {
            return Some(&mut self.publisher);
        }
        let guests = self.guests.iter_mut().map(|(c, _, _)| c);
        self.subscribers
            .iter_mut()
            .map(|(c, _, _)| c)
            .chain(guests)
            .find(|c| c.addr == addr)
    }

    /// Moves datagrams both ways and runs due timers until nothing is left to do.
    pub fn pump(&mut self) {
        for _ in 0..100 {
            let now = self.now;
            let mut moved = false;
            let mut to_core = Vec::new();
            for c in std::iter::once(&mut self.publisher)
                .chain(self.subscribers.iter_mut().map(|(c, _, _)| c))
                .chain(self.guests.iter_mut().map(|(c, _, _)| c))
            {
                while let Some(t) = c.pc.poll_write() {
                    to_core.push((c.addr, t.message));
                }
                while let Some(ev) = c.pc.poll_event() {
                    match ev {
                        RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => {
                            c.connected = s == RTCPeerConnectionState::Connected;
                        }
                        RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                            c.data_channel = Some(id);
                        }
                        _ => {}
                    }
                }
                while let Some(m) = c.reading.then(|| c.pc.poll_read()).flatten() {
                    match m.message {
                        RTCMessage::DataChannelMessage(_, data) => {
                            c.data_received += 1;
                            c.last_data = Some(data);
                        }
                        RTCMessage::RtcpPacket(_, packets) => {
                            for p in packets {
                                if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                                    c.sender_reports.push((sr.clone(), c.last_rtp, now));
                                }
                            }
                        }
                        RTCMessage::RtpPacket(_, p) => {
                            c.last_rtp = Some((p.header.ssrc, p.header.timestamp, now));
                            c.rtp_received += 1;
                            c.seqs.insert(p.header.sequence_number);
                            if let Some(last) = c.last_seq {
                                if p.header.sequence_number != last.wrapping_add(1) {
                                    c.seq_gaps += 1;
                                }
                            }
                            c.last_seq = Some(p.header.sequence_number);
                        }
                        _ => {}
                    }
                }
                if c.pc.poll_timeout().is_some_and(|t| t <= now) {
                    let _ = c.pc.handle_timeout(now);
                    moved = true;
                }
            }
            for (from, data) in to_core {
                moved = true;
                if self.link.drops() || self.cut.contains(&from) {
                    continue;
                }
                self.core.handle_datagram(now, &data, from);
            }
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            let mut transmits = std::mem::take(&mut self.transmits);
            self.core.take_transmits(&mut transmits);
            for (to, data) in transmits.drain(..) {
                moved = true;
                if self.link.drops() || self.cut.contains(&to) {
                    continue;
                }
                let core_addr = self.core_addr;
                if let Some(c) = self.client_mut(to) {
                    c.datagrams_in += 1;
                    let _ = c.pc.handle_read(TaggedBytesMut {
                        now,
                        transport: TransportContext {
                            local_addr: to,
                            peer_addr: core_addr,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: data,
                    });
                }
            }
            self.transmits = transmits;
            if !moved {
                return;
            }
        }
    }

    /// Pumps, advancing the virtual clock 2 ms a round so timers come due, until `done` or
    /// `limit` of virtual time.
    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) {
        let deadline = self.now + limit;
        while !done(self) {
            assert!(
                self.now < deadline,
                "virtual network did not settle in {limit:?}"
            );
            self.pump();
            self.answer_offers();
            self.advance(Duration::from_millis(2));
        }
    }
}
