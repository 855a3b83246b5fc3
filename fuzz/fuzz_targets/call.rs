//! A running call: the media plane's test harness (`crates/sfu/tests/harness`: the core, a
//! connected VP8 publisher and two connected subscribers, over memory on a virtual clock) is
//! built once and fed, input after input, what connected peers can send it once DTLS is up:
//!
//! - RTP from the publisher with arbitrary payloads (VP8 descriptors, keyframe bits, picture
//!   ids), markers, sequence number and timestamp jumps, and header extensions of the
//!   negotiated ids with arbitrary values, encrypted by the publisher's own SRTP context: the
//!   core decrypts, parses and forwards them (layer choice, keyframe detection, rewriting);
//! - RTCP from the publisher and from either subscriber (whatever `rtcp::packet::unmarshal`
//!   accepts of the input, re-encrypted as SRTCP): reports, NACKs (answered from the send
//!   history), PLI/FIR (relayed as keyframe requests);
//! - raw datagrams from the peers' own addresses (SRTP/SRTCP/DTLS garbage with a live session);
//! - the clock moving on.
//!
//! Stateful on purpose (a call lives long); a connection that fails is rebuilt. A panic
//! anywhere, also one the core contains, fails the run.
#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use chorus_fuzz::harness::{Net, VIDEO_SSRC};
use chorus_fuzz::Input;
use libfuzzer_sys::fuzz_target;

struct Call {
    net: Net,
    /// Header extension ids negotiated for the publisher's video.
    ext_ids: Vec<u8>,
}

impl Call {
    fn new() -> Call {
        let net = Net::new(2);
        let sdp = net
            .publisher
            .pc
            .local_description()
            .expect("publisher offer")
            .sdp;
        let ext_ids = sdp
            .lines()
            .filter_map(|l| l.strip_prefix("a=extmap:"))
            .filter_map(|l| l.split([' ', '/']).next())
            .filter_map(|id| id.parse().ok())
            .collect();
        Call { net, ext_ids }
    }

    fn healthy(&self) -> bool {
        self.net.publisher.connected && self.net.subscribers.iter().all(|(c, _, _)| c.connected)
    }
}

thread_local! {
    static CALL: RefCell<Option<Call>> = const { RefCell::new(None) };
}

fn rtp(call: &mut Call, input: &mut Input<'_>, flags: u8) {
    let net = &mut call.net;
    let step = input.u16().unwrap_or(1);
    net.seq = net
        .seq
        .wrapping_add(if flags & 0x08 != 0 { step } else { step % 4 });
    net.timestamp = net.timestamp.wrapping_add(
        u32::from(input.u16().unwrap_or(3000)) * if flags & 0x10 != 0 { 97 } else { 1 },
    );
    let mut header = rtc::rtp::header::Header {
        version: 2,
        marker: flags & 0x20 != 0,
        payload_type: 96,
        sequence_number: net.seq,
        timestamp: net.timestamp,
        ssrc: VIDEO_SSRC,
        ..Default::default()
    };
    // The two-byte form (RFC 8285) allows empty values and long ones.
    let two_byte = flags & 0x01 != 0;
    if two_byte {
        header.extension = true;
        header.extension_profile = 0x1000;
    }
    for _ in 0..(flags >> 6) {
        let Some(pick) = input.u8() else { break };
        if call.ext_ids.is_empty() {
            break;
        }
        let id = call.ext_ids[usize::from(pick) % call.ext_ids.len()];
        let value = input.chunk(40);
        if value.is_empty() && !two_byte {
            // The stack's own marshal cannot write that (see docs/robustness.md).
            continue;
        }
        let _ = header.set_extension(id, Bytes::copy_from_slice(value));
    }
    let packet = rtc::rtp::Packet {
        header,
        payload: Bytes::copy_from_slice(input.chunk(1200)),
    };
    let now = net.now;
    if let Some(mut sender) = net.publisher.pc.rtp_sender(net.video_sender) {
        let _ = sender.write_rtp(now, packet);
    }
}

fn rtcp(call: &mut Call, input: &mut Input<'_>, from: u8) {
    let net = &mut call.net;
    let mut raw = input.chunk(1200);
    let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut raw) else {
        return;
    };
    let now = net.now;
    match usize::from(from) % 3 {
        0 => {
            if let Some(mut sender) = net.publisher.pc.rtp_sender(net.video_sender) {
                let _ = sender.write_rtcp(now, packets);
            }
        }
        i => {
            let pc = &mut net.subscribers[i - 1].0.pc;
            let receivers: Vec<_> = pc.get_receivers().collect();
            if let Some(id) = receivers.last().copied() {
                if let Some(mut receiver) = pc.rtp_receiver(id) {
                    let _ = receiver.write_rtcp(now, packets);
                }
            }
        }
    }
}

fn raw(call: &mut Call, input: &mut Input<'_>, from: u8) {
    let net = &mut call.net;
    let addr = match usize::from(from) % 3 {
        0 => net.publisher.addr,
        i => net.subscribers[i - 1].0.addr,
    };
    let data = input.chunk(1500).to_vec();
    let now = net.now;
    net.core.handle_datagram(now, &data, addr);
}

fuzz_target!(|data: &[u8]| {
    CALL.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !slot.as_ref().is_some_and(Call::healthy) {
            *slot = Some(Call::new());
        }
        let call = slot.as_mut().expect("built");
        let mut input = Input::new(data);
        while let Some(tag) = input.u8() {
            match tag & 0x7 {
                0..=3 => rtp(call, &mut input, tag),
                4 => rtcp(call, &mut input, tag >> 3),
                5 => raw(call, &mut input, tag >> 3),
                _ => call.net.advance(Duration::from_millis(
                    u64::from(input.u8().unwrap_or(1)) * 2,
                )),
            }
            call.net.pump();
        }
        // Keep the call alive: time moves on, timers (reports, consent checks) run, and
        // subscriber offers are answered.
        call.net.advance(Duration::from_millis(20));
        call.net.pump();
        call.net.answer_offers();
    });
});
