//! Published tracks: what a publisher's track is on the server, its life (published on its
//! first packet, muted, unpublished) and its packet path: one incoming packet handed to the
//! [`Forwarder`](crate::forwarder::Forwarder) of every downtrack, and keyframe requests back to
//! the publisher.

use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::rtp_transceiver::RTCRtpReceiverId;

use crate::downtrack::DownTrack;
use crate::metrics::KindCounters;
use crate::simulcast::Layer;
use crate::types::{ParticipantKey, PeerKey};
use crate::types::{TrackDesc, TrackKind};
use chorus_rtp::VideoCodec;

pub(crate) struct PublishedTrack {
    pub(crate) id: String,
    pub(crate) kind: TrackKind,
    pub(crate) publisher: ParticipantKey,
    pub(crate) peer: PeerKey,
    pub(crate) receiver: RTCRtpReceiverId,
    pub(crate) codec: RTCRtpCodec,
    /// Payload type -> MIME type on the publisher's leg.
    pub(crate) pt_mime: Vec<(u8, String, String)>,
    /// Extension id -> URI on the publisher's leg.
    pub(crate) ext_uri: Vec<(u8, String)>,
    pub(crate) publisher_track_id: String,
    /// Set for video codecs whose keyframes we recognise.
    pub(crate) video_codec: Option<VideoCodec>,
    /// The encodings, lowest quality first: one without simulcast, one per `rid` with it.
    pub(crate) layers: Vec<Layer>,
    pub(crate) muted: bool,
    pub(crate) counters: KindCounters,
    pub(crate) downtracks: Vec<DownTrack>,
}

impl PublishedTrack {
    pub(crate) fn desc(&self) -> TrackDesc {
        TrackDesc {
            id: self.id.clone(),
            kind: self.kind,
            mime_type: self.codec.mime_type.clone(),
            publisher_track_id: self.publisher_track_id.clone(),
            muted: self.muted,
            layers: if self.layers.len() > 1 {
                self.layers.iter().map(|l| l.rid.clone()).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The layer index of a packet's SSRC, binding a simulcast layer's SSRC on its first
    /// packet (the stack has matched it to its `rid` by then).
    pub(crate) fn layer_of(&mut self, ssrc: u32, pc: Option<&mut RTCPeerConnection>) -> Option<u8> {
        if let Some(i) = self.layers.iter().position(|l| l.ssrc == ssrc) {
            return Some(i as u8);
        }
        let rid = if self.layers.len() == 1 && self.layers[0].rid.is_empty() {
            String::new()
        } else {
            let receiver = pc?.rtp_receiver(self.receiver)?;
            receiver.track().rid(ssrc)?.to_owned()
        };
        let i = self
            .layers
            .iter()
            .position(|l| l.rid == rid && l.ssrc == 0)?;
        self.layers[i].ssrc = ssrc;
        Some(i as u8)
    }
}
