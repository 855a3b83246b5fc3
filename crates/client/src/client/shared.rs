//! [`Shared`]: the state a client's handle, signaling tasks, connection handlers and engine
//! endpoints share (connection states, the room view, received-track accounting, tasks), and
//! the public snapshots of it ([`ConnectionStates`], [`RtcpSentStats`]).

use super::error::ClientError;
use super::signaling::{CandidateGate, Outgoing};
use crate::keyframe::RtcpSent;
use crate::stats::{OfferedTrack, ReceivedTrackStats};
use chorus_signal::protocol::{ClientMessage, ParticipantInfo, Target};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use webrtc::peer_connection::RTCPeerConnectionState;

/// The state of both peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStates {
    /// Publisher connection state.
    pub publisher: RTCPeerConnectionState,
    /// Subscriber connection state.
    pub subscriber: RTCPeerConnectionState,
    /// Whether the server's answer to the publisher offer has been applied.
    pub publisher_answered: bool,
    /// Subscriber offers applied so far (each answered).
    pub subscriber_offers: u32,
}

impl Default for ConnectionStates {
    fn default() -> Self {
        Self {
            publisher: RTCPeerConnectionState::New,
            subscriber: RTCPeerConnectionState::New,
            publisher_answered: false,
            subscriber_offers: 0,
        }
    }
}

/// RTCP feedback the client has sent (both connections; in practice the subscriber
/// connection's NACKs and keyframe requests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcpSentStats {
    /// NACK packets sent.
    pub nacks: u64,
    /// Packets those NACKs asked for.
    pub nacked_packets: u64,
    /// Picture loss indications sent.
    pub plis: u64,
    /// Full intra requests sent.
    pub firs: u64,
}

/// State shared by the client handle, the signaling tasks and the peer connection handlers.
pub(super) struct Shared {
    pub(super) out: mpsc::UnboundedSender<Outgoing>,
    pub(super) states: watch::Sender<ConnectionStates>,
    pub(super) publisher_gate: CandidateGate,
    pub(super) subscriber_gate: CandidateGate,
    pub(super) received: Mutex<Vec<Arc<Mutex<ReceivedTrackStats>>>>,
    pub(super) offered: Mutex<Vec<OfferedTrack>>,
    pub(super) room: Mutex<BTreeMap<String, ParticipantInfo>>,
    pub(super) tasks: Mutex<Vec<AbortHandle>>,
    /// The `abs-send-time` extension id of the latest subscriber offer (0: none).
    pub(super) abs_send_time_id: AtomicU8,
    /// The `abs-capture-time` extension id of the latest subscriber offer (0: none).
    pub(super) abs_capture_time_id: AtomicU8,
    /// See [`ClientOptions::decode_sample`].
    pub(super) decode_sample: u32,
    pub(super) rtcp_sent: Arc<RtcpSent>,
    /// Turns true once a connection's ICE gathering is complete (WHIP/WHEP wait for it).
    pub(super) gathered: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn new(
        out: mpsc::UnboundedSender<Outgoing>,
        room: BTreeMap<String, ParticipantInfo>,
        decode_sample: u32,
    ) -> Arc<Self> {
        Arc::new(Shared {
            out,
            states: watch::Sender::new(ConnectionStates::default()),
            publisher_gate: CandidateGate::new(Target::Publisher),
            subscriber_gate: CandidateGate::new(Target::Subscriber),
            received: Mutex::new(Vec::new()),
            offered: Mutex::new(Vec::new()),
            room: Mutex::new(room),
            tasks: Mutex::new(Vec::new()),
            abs_send_time_id: AtomicU8::new(0),
            abs_capture_time_id: AtomicU8::new(0),
            decode_sample,
            rtcp_sent: Arc::new(RtcpSent::default()),
            gathered: watch::Sender::new(false),
        })
    }

    /// Remembers the capture-stamp extension ids of the SDP that describes received media.
    pub(super) fn set_extension_ids(&self, sdp: &str) {
        let ext_id = crate::capture_clock::extmap_id(sdp).unwrap_or(0);
        self.abs_send_time_id.store(ext_id, Ordering::Relaxed);
        let ext_id =
            crate::capture_clock::extmap_id_of(sdp, crate::capture_clock::ABS_CAPTURE_TIME_URI)
                .unwrap_or(0);
        self.abs_capture_time_id.store(ext_id, Ordering::Relaxed);
    }

    /// Per remote track, what has been received so far (see [`Client::received`](super::Client::received)).
    pub(super) fn received(&self) -> Vec<ReceivedTrackStats> {
        let offered = lock(&self.offered).clone();
        let entries = lock(&self.received).clone();
        entries
            .iter()
            .map(|e| {
                let mut s = lock(e).clone();
                s.active = offered
                    .iter()
                    .any(|o| o.track_id == s.track_id && o.participant_id == s.participant_id);
                s
            })
            .collect()
    }

    /// RTCP feedback sent so far.
    pub(super) fn rtcp_sent(&self) -> RtcpSentStats {
        let s = &self.rtcp_sent;
        RtcpSentStats {
            nacks: s.nacks.load(Ordering::Relaxed),
            nacked_packets: s.nacked_packets.load(Ordering::Relaxed),
            plis: s.plis.load(Ordering::Relaxed),
            firs: s.firs.load(Ordering::Relaxed),
        }
    }

    pub(super) fn abort_tasks(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
    pub(super) fn send(&self, msg: ClientMessage) -> Result<(), ClientError> {
        self.out
            .send(Outgoing::Message(msg))
            .map_err(|_| ClientError::Closed)
    }

    pub(super) fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(fut);
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle.abort_handle());
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_signal::protocol::TrackKind;
    use std::sync::atomic::Ordering;

    #[test]
    fn received_tracks_are_active_while_offered() {
        let (out, _rx) = mpsc::unbounded_channel();
        let shared = Shared::new(out, BTreeMap::new(), 0);
        for track in ["a", "b"] {
            let stats = ReceivedTrackStats::new("p".into(), track.into(), TrackKind::Audio);
            lock(&shared.received).push(Arc::new(Mutex::new(stats)));
        }
        *lock(&shared.offered) = vec![OfferedTrack {
            participant_id: "p".into(),
            track_id: "b".into(),
            media: "audio".into(),
        }];
        let got: Vec<_> = shared
            .received()
            .into_iter()
            .map(|s| (s.track_id, s.active))
            .collect();
        assert_eq!(got, vec![("a".into(), false), ("b".into(), true)]);
    }

    #[test]
    fn rtcp_sent_is_a_snapshot_of_the_counters() {
        let (out, _rx) = mpsc::unbounded_channel();
        let shared = Shared::new(out, BTreeMap::new(), 0);
        shared.rtcp_sent.nacks.fetch_add(2, Ordering::Relaxed);
        shared
            .rtcp_sent
            .nacked_packets
            .fetch_add(5, Ordering::Relaxed);
        shared.rtcp_sent.plis.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            shared.rtcp_sent(),
            RtcpSentStats {
                nacks: 2,
                nacked_packets: 5,
                plis: 1,
                firs: 0,
            }
        );
    }

    #[test]
    fn send_fails_once_the_writer_is_gone() {
        let (out, rx) = mpsc::unbounded_channel();
        let shared = Shared::new(out, BTreeMap::new(), 0);
        assert!(shared.send(ClientMessage::Leave {}).is_ok());
        drop(rx);
        assert!(matches!(
            shared.send(ClientMessage::Leave {}),
            Err(ClientError::Closed)
        ));
    }
}
