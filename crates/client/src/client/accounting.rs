//! Receive accounting: [`TrackReader`] accounts every RTP packet of a remote track in its
//! [`ReceivedTrackStats`] (with capture-to-arrival latency and the optional decode check), for
//! the async connections ([`read_remote_track`]) and the shared engine alike.

use super::shared::{lock, Shared};
use crate::stats::{PacketMeta, ReceivedTrackStats};
use chorus_signal::protocol::TrackKind;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// Accounts every RTP packet of one remote track until it ends.
pub(super) async fn read_remote_track(track: Arc<dyn TrackRemote>, shared: Arc<Shared>) {
    let kind = match track.kind().await {
        RtpCodecKind::Audio => TrackKind::Audio,
        _ => TrackKind::Video,
    };
    let mut mime = None;
    if let Some(ssrc) = track.ssrcs().await.first().copied() {
        mime = track.codec(ssrc).await.map(|c| c.mime_type);
    }
    let mut reader = TrackReader::new(
        &shared,
        track.stream_id().await,
        track.track_id().await,
        kind,
        mime,
    );
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(p) => reader.on_packet(&p, &shared, Arrival::now()),
            TrackRemoteEvent::OnOpen(init) => {
                if let Some(codec) = track.codec(init.ssrc).await {
                    lock(&reader.entry).set_mime_type(codec.mime_type);
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

/// When a packet arrived, on both clocks (the monotonic one for intervals, the wall clock for
/// capture-to-arrival latency).
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    pub(super) at: Instant,
    pub(super) wall: SystemTime,
}

impl Arrival {
    pub(super) fn now() -> Arrival {
        Arrival {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Accounts one remote track's packets ([`ReceivedTrackStats`], capture latency, the optional
/// decode check); shared by the async connection and the [`SharedEngine`](super::SharedEngine).
pub(super) struct TrackReader {
    pub(super) entry: Arc<Mutex<ReceivedTrackStats>>,
    pub(super) decode: Option<crate::decode::TrackDecoder>,
}

impl TrackReader {
    /// Starts accounting a track and lists it in the client's received tracks.
    pub(super) fn new(
        shared: &Shared,
        participant_id: String,
        track_id: String,
        kind: TrackKind,
        mime: Option<String>,
    ) -> TrackReader {
        let mut stats = ReceivedTrackStats::new(participant_id, track_id, kind);
        if let Some(mime) = mime {
            stats.set_mime_type(mime);
        }
        tracing::debug!(participant = %stats.participant_id, track = %stats.track_id, ?kind, "remote track");
        let decode_wanted = shared.decode_sample > 0 && kind == TrackKind::Video;
        stats.keep_frames = decode_wanted;
        let entry = Arc::new(Mutex::new(stats));
        let decode = decode_wanted
            .then(|| crate::decode::TrackDecoder::new(shared.decode_sample, Arc::clone(&entry)))
            .flatten();
        lock(&shared.received).push(Arc::clone(&entry));
        TrackReader { entry, decode }
    }

    pub(super) fn on_packet(&mut self, p: &rtc::rtp::Packet, shared: &Shared, arrival: Arrival) {
        let now = arrival.at;
        let latency = capture_latency(&p.header, shared, arrival.wall);
        let meta = PacketMeta {
            ssrc: p.header.ssrc,
            payload_type: p.header.payload_type,
            sequence_number: p.header.sequence_number,
            timestamp: p.header.timestamp,
            marker: p.header.marker,
            latency,
        };
        let (frame, vp8) = {
            let mut e = lock(&self.entry);
            let frame = e.on_rtp(meta, &p.payload, now);
            (frame, e.format == crate::stats::VideoFormat::Vp8)
        };
        // The decode check is VP8 (libvpx's VP8 decoder) only, on a decode thread.
        if let (Some(frame), Some(decoder), true) = (frame, self.decode.as_ref(), vp8) {
            decoder.submit(frame);
        }
    }
}

/// Capture-to-arrival latency from `abs-capture-time`, else `abs-send-time`.
pub(super) fn capture_latency(
    header: &rtc::rtp::header::Header,
    shared: &Shared,
    now: SystemTime,
) -> Option<Duration> {
    let ext = |id: u8| (id != 0).then(|| header.get_extension(id)).flatten();
    if let Some(stamp) = ext(shared.abs_capture_time_id.load(Ordering::Relaxed))
        .and_then(|b| crate::capture_clock::parse_capture_time(&b))
    {
        return Some(crate::capture_clock::elapsed_since_ntp(stamp, now));
    }
    ext(shared.abs_send_time_id.load(Ordering::Relaxed))
        .and_then(|b| crate::capture_clock::parse(&b))
        .map(|stamp| crate::capture_clock::elapsed_since(stamp, now))
}
