//! The WebRTC stack's RTP and RTCP parsers as the server uses them after SRTP/SRTCP
//! decryption: an RTP packet and its header extensions (`Header::get_extension`, and the
//! rebuild the forwarder does with `set_extension`), and RTCP compound packets
//! (`rtcp::packet::unmarshal`), with what the feedback tap and the interceptors ask of them.
//! Third-party code: a panic here is contained by the core (`stack_panic`) but still a finding.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    if let Ok(p) = rtc::rtp::Packet::unmarshal(&mut buf) {
        let ids = p.header.get_extension_ids();
        let mut rebuilt = rtc::rtp::header::Header {
            version: 2,
            payload_type: p.header.payload_type,
            sequence_number: p.header.sequence_number,
            timestamp: p.header.timestamp,
            ssrc: p.header.ssrc,
            marker: p.header.marker,
            padding: p.header.padding,
            csrc: p.header.csrc.clone(),
            ..Default::default()
        };
        for id in 0..=15u8 {
            let Some(value) = p.header.get_extension(id) else {
                continue;
            };
            assert!(ids.contains(&id));
            // The forwarder copies only ids its negotiation maps (`LegParams::ext`, from the
            // extmap ids 1..=14): id 0 (a non-RFC 8285 extension block) and 15 (reserved) stay.
            if (1..=14).contains(&id) {
                // As the forwarder does (`downtrack_header`): an empty value (two-byte form
                // only) is not copied; rebuilt into the one-byte form it made the stack's
                // marshal underflow.
                if !value.is_empty() {
                    let _ = rebuilt.set_extension(id, value);
                }
            }
        }
        let _ = p.marshal_size();
        if let Ok(bytes) = p.marshal() {
            let _ = rtc::rtp::Packet::unmarshal(&mut &bytes[..]);
        }
        let out = rtc::rtp::Packet {
            header: rebuilt,
            payload: Bytes::copy_from_slice(&p.payload),
        };
        if let Ok(bytes) = out.marshal() {
            // What the server builds and marshals parses again, to the same payload.
            let back = rtc::rtp::Packet::unmarshal(&mut &bytes[..]).expect("parses again");
            assert_eq!(back.payload, out.payload, "{out:?}");
        }
    }
    let mut buf = data;
    if let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut buf) {
        for p in &packets {
            let _ = p.header();
            let _ = p.destination_ssrc();
            let _ = p.raw_size();
            // `Debug`, as the stack's logs format packets; not `Display`: REMB's panics on a
            // bitrate of 10^21 b/s or more (rtc-rtcp 0.21.1, docs/robustness.md), and nothing
            // in Chorus or the stack displays a received packet.
            let _ = format!("{p:?}");
            let any = p.as_any();
            if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                for pair in &nack.nacks {
                    let _ = pair.packet_list();
                }
            }
            let _ = any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>();
        }
        if let Ok(bytes) = rtc::rtcp::packet::marshal(&packets) {
            let _ = rtc::rtcp::packet::unmarshal(&mut &bytes[..]);
        }
    }
});
