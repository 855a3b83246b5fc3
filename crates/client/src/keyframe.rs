//! An interceptor that lets inbound keyframe requests (PLI, FIR) reach the application.
//!
//! In webrtc 0.21 inbound RTCP ends at the interceptor chain's terminus unless an interceptor
//! marks a packet with [`Attribute::DeliverToApplication`]; without this, `TrackLocal::poll`
//! never yields the server's PLIs.

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The slot of the [`RtcpCounter`]: wire-most, below every default interceptor, so it sees the
/// RTCP they generate (NACKs) on its way out.
pub(crate) const COUNTER_SLOT: usize = 500;

/// RTCP feedback a peer connection sent.
#[derive(Debug, Default)]
pub(crate) struct RtcpSent {
    pub nacks: AtomicU64,
    pub nacked_packets: AtomicU64,
    pub plis: AtomicU64,
    pub firs: AtomicU64,
}

/// Counts outgoing NACK, PLI and FIR packets; passes everything through unchanged.
pub(crate) struct RtcpCounter {
    pub sent: Arc<RtcpSent>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl RtcpCounter {
    pub fn new(sent: Arc<RtcpSent>) -> Self {
        Self {
            sent,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpCounter {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for p in packets {
                let any = p.as_any();
                if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                    self.sent.nacks.fetch_add(1, Ordering::Relaxed);
                    let n: u64 = nack
                        .nacks
                        .iter()
                        .map(|pair| 1 + u64::from(pair.lost_packets.count_ones()))
                        .sum();
                    self.sent.nacked_packets.fetch_add(n, Ordering::Relaxed);
                } else if any.is::<PictureLossIndication>() {
                    self.sent.plis.fetch_add(1, Ordering::Relaxed);
                } else if any.is::<FullIntraRequest>() {
                    self.sent.firs.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for RtcpCounter {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// The slot this interceptor takes: after every default interceptor, so they all see the
/// RTCP first.
pub(crate) const SLOT: usize = 14_000;

/// The media SSRC an RTCP packet asks a keyframe of, if it is a PLI or FIR.
pub(crate) fn keyframe_request_ssrc(packet: &dyn rtc::rtcp::Packet) -> Option<u32> {
    let any = packet.as_any();
    if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
        return Some(pli.media_ssrc);
    }
    let fir = any.downcast_ref::<FullIntraRequest>()?;
    Some(fir.fir.first().map_or(fir.media_ssrc, |e| e.ssrc))
}

/// Marks inbound PLI/FIR for delivery to the application and lets everything else end at the
/// terminus as usual.
#[derive(Default)]
pub(crate) struct KeyframeRequestForwarder {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| keyframe_request_ssrc(p.as_ref()).is_some())
                .cloned()
                .collect();
            if requests.is_empty() {
                // Not ours: forward unchanged, the terminus drops it unless someone vouched.
                self.read_queue.push_back(msg);
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
