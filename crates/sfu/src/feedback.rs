//! An interceptor at the wire end of every peer connection's chain that counts RTCP feedback
//! (NACK, PLI, FIR) in both directions and lets keyframe requests through to the application.
//!
//! The default chain ends inbound RTCP before the application; an SFU must relay keyframe
//! requests from subscribers to publishers, so this marks PLI and FIR
//! [`Attribute::DeliverToApplication`]. On a subscriber connection NACKs are delivered too,
//! after this tap cut them to the connection's retransmission budget ([`NackBudget`]: no packet
//! resent twice within 100 ms, a bounded rate per downtrack): the core answers them from the
//! downtrack's send history ([`crate::egress`]).

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
use crate::nack::NackBudget;

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

/// Counts feedback, budgets NACKs and delivers keyframe requests to the application.
pub struct FeedbackTap {
    inbound: Counters,
    outbound: Counters,
    budget: NackBudget,
    deliver_nacks: bool,
    nack_duplicate: IntCounter,
    nack_over_budget: IntCounter,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl FeedbackTap {
    /// A tap counting into `metrics`; `deliver_nacks`: hand budgeted NACKs to the application
    /// (a subscriber connection, whose packets the application sent itself).
    pub fn new(metrics: &Metrics, deliver_nacks: bool) -> Self {
        Self {
            inbound: Counters::new(metrics, "in"),
            outbound: Counters::new(metrics, "out"),
            budget: NackBudget::default(),
            deliver_nacks,
            nack_duplicate: metrics.dropped.with_label_values(&["nack_duplicate"]),
            nack_over_budget: metrics.dropped.with_label_values(&["nack_over_budget"]),
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
        let now = msg.now;
        // Whether the application gets it: keyframe requests, and NACKs where it answers them.
        let mut keyframe = false;
        if let Packet::Rtcp(packets) = &mut msg.message.packet {
            keyframe = self.inbound.count(packets);
            let nacks = self.budget_nacks(now, packets);
            keyframe |= nacks && self.deliver_nacks;
        }
        if keyframe {
            msg.message.add(Attribute::DeliverToApplication);
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

impl FeedbackTap {
    /// Replaces each NACK of a compound packet by what the budget allows of it; true when a
    /// NACK is left.
    fn budget_nacks(&mut self, now: Instant, packets: &mut Vec<Box<dyn rtcp::Packet>>) -> bool {
        if !packets
            .iter()
            .any(|p| p.as_any().is::<TransportLayerNack>())
        {
            return false;
        }
        let mut any = false;
        let mut kept: Vec<Box<dyn rtcp::Packet>> = Vec::with_capacity(packets.len());
        for p in packets.drain(..) {
            let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() else {
                kept.push(p);
                continue;
            };
            let filtered = self.budget.filter(now, nack);
            self.nack_duplicate.inc_by(filtered.duplicate as u64);
            self.nack_over_budget.inc_by(filtered.over_budget as u64);
            if let Some(nack) = filtered.nack {
                kept.push(Box::new(nack));
                any = true;
            }
        }
        *packets = kept;
        any
    }
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
