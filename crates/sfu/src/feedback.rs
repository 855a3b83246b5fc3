//! An interceptor at the wire end of every peer connection's chain that counts RTCP feedback
//! (NACK, PLI, FIR) in both directions and lets keyframe requests through to the application.
//!
//! The default chain ends inbound RTCP before the application; an SFU must relay keyframe
//! requests from subscribers to publishers, so this marks PLI and FIR
//! [`Attribute::DeliverToApplication`]. NACKs stay inside the chain: the NACK responder answers
//! them from its send history.

use std::collections::VecDeque;
use std::time::Instant;

use interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use prometheus::IntCounter;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

use crate::metrics::Metrics;

/// Where in the chain the tap sits: closer to the wire than every default interceptor.
pub const FEEDBACK_TAP_SLOT: usize = 500;

#[derive(Clone)]
struct Counters {
    nack: IntCounter,
    pli: IntCounter,
    fir: IntCounter,
}

impl Counters {
    fn new(m: &Metrics, direction: &str) -> Self {
        Self {
            nack: m.rtcp_feedback.with_label_values(&["nack", direction]),
            pli: m.rtcp_feedback.with_label_values(&["pli", direction]),
            fir: m.rtcp_feedback.with_label_values(&["fir", direction]),
        }
    }

    /// Counts the feedback in a compound packet; true when it holds a keyframe request.
    fn count(&self, packets: &[Box<dyn rtcp::Packet>]) -> bool {
        let mut keyframe = false;
        for p in packets {
            let any = p.as_any();
            if any.is::<TransportLayerNack>() {
                self.nack.inc();
            } else if any.is::<PictureLossIndication>() {
                self.pli.inc();
                keyframe = true;
            } else if any.is::<FullIntraRequest>() {
                self.fir.inc();
                keyframe = true;
            }
        }
        keyframe
    }
}

/// Counts feedback and delivers keyframe requests to the application.
pub struct FeedbackTap {
    inbound: Counters,
    outbound: Counters,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl FeedbackTap {
    /// A tap counting into `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            inbound: Counters::new(metrics, "in"),
            outbound: Counters::new(metrics, "out"),
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if self.inbound.count(packets) {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            self.outbound.count(packets);
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
