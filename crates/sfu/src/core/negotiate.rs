//! Offers and answers: the publisher connection answers the client's offers, the subscriber
//! connection offers (again on every change, coalesced and spaced out) and applies the
//! client's answers, a WHEP player's offer is answered in one exchange, and trickled
//! candidates are applied. ICE restarts: a client offer with new ICE credentials restarts the
//! publisher connection's ICE (the answer carries fresh server credentials); a resumed
//! session restarts the subscriber connection's ICE with a new offer ([`Core::resume`]).
//! Every local description re-registers the connection's ufrag with the router
//! ([`Core::sync_ice_credentials`]), so the new credentials route and the old ones no longer do.

use std::time::{Duration, Instant};

use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::RTCPeerConnection;
use rtc::sdp::SessionDescription;
use tracing::{debug, warn};

use super::Core;
use crate::peer::add_local_candidates;
use crate::types::{CandidateInit, Origin, ParticipantDesc, PeerRole, RoomEvent};
use crate::types::{ParticipantKey, PeerKey, TrackKey};
use crate::SfuError;

impl Core {
    /// See [`crate::SessionHandle`].
    pub fn publisher_offer(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        sdp: String,
    ) -> Result<String, SfuError> {
        let key = self.peer_of(participant, PeerRole::Publisher)?;
        let advertised = self.advertised.clone();
        let peer = self.peers.get_mut(&key).ok_or(SfuError::Gone)?;
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        peer.pc
            .set_remote_description(now, offer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        peer.remote_known = true;
        let early = std::mem::take(&mut peer.early_checks);
        peer.expected_inbound = peer
            .pc
            .get_transceivers()
            .collect::<Vec<_>>()
            .into_iter()
            .filter(|t| {
                peer.pc
                    .rtp_transceiver(*t)
                    .is_some_and(|t| t.direction().has_recv())
            })
            .count();
        let mut trickle = Vec::new();
        if !peer.candidates_added {
            trickle = add_local_candidates(&mut peer.pc, &advertised)?;
            peer.candidates_added = true;
        }
        let sdp = local_answer(&mut peer.pc, now)?;
        let ufrag = self.sync_ice_credentials(key, &sdp);
        self.mark_dirty(key);
        self.trickle(participant, PeerRole::Publisher, &sdp, &ufrag, trickle);
        for (from, data) in early {
            self.read_into_peer(now, key, from, data);
        }
        Ok(sdp)
    }

    /// Sends our candidates as trickle messages too (they are already in the SDP), tagged with
    /// the first media section of `sdp`.
    pub(crate) fn trickle(
        &mut self,
        participant: ParticipantKey,
        role: PeerRole,
        sdp: &str,
        ufrag: &str,
        candidates: Vec<RTCIceCandidateInit>,
    ) {
        let parsed = SessionDescription::unmarshal(&mut std::io::Cursor::new(sdp.as_bytes()));
        let mid = parsed.ok().and_then(|d| {
            let first = d.media_descriptions.first()?;
            first.attribute("mid").flatten().map(str::to_owned)
        });
        for c in candidates {
            let candidate = CandidateInit {
                candidate: c.candidate,
                sdp_mid: mid.clone(),
                sdp_mline_index: Some(0),
                username_fragment: Some(ufrag.to_owned()),
            };
            self.send_event(participant, RoomEvent::Candidate { role, candidate });
        }
    }

    /// See [`crate::SessionHandle`].
    pub fn subscriber_answer(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        sdp: String,
    ) -> Result<(), SfuError> {
        let key = self.peer_of(participant, PeerRole::Subscriber)?;
        let peer = self.peers.get_mut(&key).ok_or(SfuError::Gone)?;
        if !peer.awaiting_answer {
            return Err(SfuError::InvalidState("no subscriber offer is outstanding"));
        }
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        peer.pc
            .set_remote_description(now, answer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        debug!(sdp = %peer.pc.remote_description().map(|d| d.sdp.as_str()).unwrap_or(""), "subscriber answer");
        peer.awaiting_answer = false;
        peer.remote_known = true;
        let early = std::mem::take(&mut peer.early_checks);
        let again = std::mem::take(&mut peer.renegotiate);
        let outbound: Vec<TrackKey> = peer.outbound.values().copied().collect();
        for tk in outbound {
            if let Some(t) = self.tracks.get_mut(&tk) {
                // Every answer may renumber payload types or extension ids on this leg:
                // resolve each downtrack's mapping again on its next packet.
                for dt in t.downtracks.iter_mut().filter(|d| d.peer == key) {
                    dt.negotiated = true;
                    dt.params = None;
                }
            }
        }
        for (from, data) in early {
            self.read_into_peer(now, key, from, data);
        }
        self.mark_dirty(key);
        if again {
            self.negotiate(now, participant);
        }
        Ok(())
    }

    /// WHEP: answers a player's offer, subscribing it to one publisher's tracks.
    pub(crate) fn playback_offer(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
        sdp: String,
        identity: Option<String>,
    ) -> Result<String, SfuError> {
        let key = self.peer_of(participant, PeerRole::Subscriber)?;
        let room = self
            .participants
            .get(&participant)
            .ok_or(SfuError::Gone)?
            .room
            .clone();
        let tracks = self
            .rooms
            .get(&room)
            .map(|r| r.tracks.clone())
            .unwrap_or_default();
        let publisher = match &identity {
            Some(identity) => self
                .participants
                .iter()
                .find(|(_, p)| p.room == room && &p.identity == identity && !p.published.is_empty())
                .map(|(k, _)| *k)
                .ok_or_else(|| SfuError::NotFound(format!("no publisher {identity:?} in room")))?,
            None => tracks
                .iter()
                .rev()
                .filter_map(|tk| self.tracks.get(tk))
                .map(|t| t.publisher)
                .find(|p| *p != participant)
                .ok_or_else(|| SfuError::NotFound("no publisher in room".into()))?,
        };
        let (published, expected) = self
            .participants
            .get(&publisher)
            .and_then(|p| {
                Some((
                    p.published.len(),
                    self.peers.get(&p.publisher?)?.expected_inbound,
                ))
            })
            .unwrap_or((0, 0));
        if published < expected {
            return Err(SfuError::NotReady(format!(
                "publisher has {published} of its {expected} tracks flowing"
            )));
        }
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        {
            let peer = self.peers.get_mut(&key).ok_or(SfuError::Gone)?;
            peer.pc
                .set_remote_description(now, offer)
                .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
            // The player checks only after our answer, so nothing can be waiting here.
            peer.remote_known = true;
        }
        let published = self
            .participants
            .get(&publisher)
            .map(|p| p.published.clone());
        for tk in published.unwrap_or_default() {
            self.add_downtrack(participant, tk);
        }
        let advertised = self.advertised.clone();
        let peer = self.peers.get_mut(&key).ok_or(SfuError::Gone)?;
        add_local_candidates(&mut peer.pc, &advertised)?;
        peer.candidates_added = true;
        let sdp = local_answer(&mut peer.pc, now)?;
        self.sync_ice_credentials(key, &sdp);
        for t in self.tracks.values_mut() {
            for dt in t.downtracks.iter_mut().filter(|d| d.peer == key) {
                dt.negotiated = true;
            }
        }
        self.mark_dirty(key);
        Ok(sdp)
    }

    /// Applies a trickled client candidate.
    pub(crate) fn add_candidate(
        &mut self,
        participant: ParticipantKey,
        role: PeerRole,
        candidate: CandidateInit,
    ) -> Result<(), SfuError> {
        let key = self.peer_of(participant, role)?;
        let peer = self.peers.get_mut(&key).ok_or(SfuError::Gone)?;
        if candidate.candidate.is_empty() {
            return Ok(()); // end of candidates
        }
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_mline_index,
            username_fragment: candidate.username_fragment,
            url: None,
        };
        // ICE-lite does not need remote candidates to connect (checks come to us), so a
        // candidate the stack cannot use is reported but harmless.
        peer.pc
            .add_remote_candidate(init)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))
    }

    /// Sends a new subscriber offer, or notes that one is due once the outstanding one is
    /// answered.
    pub(crate) fn negotiate(&mut self, now: Instant, participant: ParticipantKey) {
        let Some(p) = self.participants.get(&participant) else {
            return;
        };
        if p.request.origin != Origin::WebSocket {
            return; // WHEP cannot renegotiate
        }
        let Some(key) = p.subscriber else { return };
        let advertised = self.advertised.clone();
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.awaiting_answer {
            peer.renegotiate = true;
            return;
        }
        // Every offer carries every track, so offers cost O(tracks) and a busy room would
        // cost O(n²) per join: space them out in proportion to their size, coalescing the
        // changes that arrive meanwhile.
        let interval = offer_interval(peer.outbound.len());
        if let Some(last) = peer.last_offer {
            if now < last + interval {
                if peer.offer_due.is_none() {
                    peer.offer_due = Some(last + interval);
                    self.mark_dirty(key); // re-arms the peer's timer
                }
                return;
            }
        }
        if peer.last_offer.is_some() {
            // A re-offer: within the engine's SDP budget, else when it will be.
            let sections = peer.outbound.len() as f64 + 1.0;
            if let Some(wait) = self.offer_budget.take(now, sections) {
                if peer.offer_due.is_none() {
                    peer.offer_due = Some(now + wait);
                    self.mark_dirty(key); // re-arms the peer's timer
                }
                return;
            }
        }
        peer.offer_due = None;
        peer.last_offer = Some(now);
        let mut trickle = Vec::new();
        let result = (|| -> Result<String, SfuError> {
            if !peer.candidates_added {
                trickle = add_local_candidates(&mut peer.pc, &advertised)?;
                peer.candidates_added = true;
            }
            let offer = peer.pc.create_offer(None).map_err(SfuError::rtc)?;
            apply_local(&mut peer.pc, now, offer)
        })();
        match result {
            Ok(sdp) => {
                debug!(%sdp, "subscriber offer");
                peer.awaiting_answer = true;
                let ufrag = self.sync_ice_credentials(key, &sdp);
                self.mark_dirty(key);
                self.send_event(participant, RoomEvent::SubscriberOffer(sdp.clone()));
                self.trickle(participant, PeerRole::Subscriber, &sdp, &ufrag, trickle);
            }
            Err(e) => warn!("subscriber offer failed: {e}"),
        }
    }
}

/// The media sections an engine may still put into subscriber re-offers: a token bucket of
/// `media.offer_sections_per_sec`, holding a tenth of a second's worth, so SDP work comes in
/// short slices between the datagrams (a long block of it delays ICE and DTLS answers, and
/// the clients' DTLS retransmission backs off by seconds).
#[derive(Debug)]
pub(crate) struct OfferBudget {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl OfferBudget {
    /// A budget of `per_sec` sections a second; 0: unbounded.
    pub(crate) fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec);
        Self {
            per_sec,
            burst: per_sec / 10.0,
            tokens: per_sec / 10.0,
            at: None,
        }
    }

    /// Takes `sections` at `now`, or says how long until they will be there. An offer bigger
    /// than the whole bucket goes when the bucket is full (and leaves it in debt), so no
    /// connection waits forever.
    pub(crate) fn take(&mut self, now: Instant, sections: f64) -> Option<Duration> {
        if self.per_sec == 0.0 {
            return None;
        }
        let elapsed = self
            .at
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.at = Some(now);
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        let need = sections.min(self.burst);
        if self.tokens >= need {
            self.tokens -= sections;
            return None;
        }
        // Whole milliseconds, at least one: the wait is what the peer's timer is set to.
        let secs = (need - self.tokens) / self.per_sec;
        Some(Duration::from_millis((secs * 1000.0).ceil().max(1.0) as u64))
    }
}

impl Core {
    /// Routes STUN checks naming the ICE credentials of `sdp` (a local description just
    /// applied) to peer `key`, and no longer those it had before (an ICE restart, or the
    /// first description of a new connection). Returns the peer's ufrag now.
    pub(crate) fn sync_ice_credentials(&mut self, key: PeerKey, sdp: &str) -> String {
        let Some(peer) = self.peers.get_mut(&key) else {
            return String::new();
        };
        let Some((ufrag, pwd)) = ice_credentials(sdp) else {
            warn!("a local description without ICE credentials");
            return peer.ufrag.clone();
        };
        if peer.ufrag != ufrag {
            let old = std::mem::replace(&mut peer.ufrag, ufrag.to_owned());
            self.router.replace_credentials(&old, ufrag, pwd, key);
        }
        ufrag.to_owned()
    }

    /// The client's signaling came back after a gap (a resumed WebSocket): restarts ICE on
    /// the subscriber connection with a new offer (any offer outstanding may never have
    /// reached the client; it is superseded) and returns the room as it is now.
    pub(crate) fn resume(
        &mut self,
        now: Instant,
        participant: ParticipantKey,
    ) -> Result<(ParticipantDesc, Vec<ParticipantDesc>), SfuError> {
        let me = self.participant_desc(participant).ok_or(SfuError::Gone)?;
        let room = self
            .participants
            .get(&participant)
            .map(|p| p.room.clone())
            .ok_or(SfuError::Gone)?;
        let others = self
            .room_members(&room)
            .into_iter()
            .filter(|k| *k != participant)
            .filter_map(|k| self.participant_desc(k))
            .collect();
        if let Ok(key) = self.peer_of(participant, PeerRole::Subscriber) {
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.pc.restart_ice();
                peer.awaiting_answer = false;
                peer.renegotiate = false;
                peer.last_offer = None;
                peer.offer_due = None;
                // The client checks with its new credentials as soon as it has answered:
                // hold those checks until the answer is applied, as for a first offer.
                peer.remote_known = false;
            }
            self.negotiate(now, participant);
        }
        Ok((me, others))
    }
}

/// The `a=ice-ufrag` and `a=ice-pwd` of an SDP (the first of each: a bundle shares them).
fn ice_credentials(sdp: &str) -> Option<(&str, &str)> {
    let value = |prefix: &str| {
        sdp.lines()
            .find_map(|l| l.trim_end().strip_prefix(prefix))
            .filter(|v| !v.is_empty())
    };
    Some((value("a=ice-ufrag:")?, value("a=ice-pwd:")?))
}

/// Least time between two subscriber offers for a connection sending `tracks` tracks: 20 ms
/// plus 10 ms per track, at most three seconds.
fn offer_interval(tracks: usize) -> Duration {
    Duration::from_millis((20 + 10 * tracks as u64).min(3000))
}

/// Creates an answer, applies it locally and returns its SDP.
fn local_answer(pc: &mut RTCPeerConnection, now: Instant) -> Result<String, SfuError> {
    let answer = pc.create_answer(None).map_err(SfuError::rtc)?;
    apply_local(pc, now, answer)
}

/// Applies a local description and returns the SDP as applied (with our candidates).
fn apply_local(
    pc: &mut RTCPeerConnection,
    now: Instant,
    description: RTCSessionDescription,
) -> Result<String, SfuError> {
    pc.set_local_description(now, description)
        .map_err(SfuError::rtc)?;
    pc.local_description().map(|d| d.sdp).ok_or(SfuError::Rtc(
        "no local description after setting it".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_credentials_are_read_from_the_first_section() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\na=ice-pwd:secretsecretsecret\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:other\r\n";
        assert_eq!(ice_credentials(sdp), Some(("abcd", "secretsecretsecret")));
        assert_eq!(ice_credentials("v=0\r\na=ice-ufrag:x\r\n"), None);
        assert_eq!(
            ice_credentials("v=0\r\na=ice-ufrag:\r\na=ice-pwd:p\r\n"),
            None
        );
    }

    #[test]
    fn the_offer_budget_spaces_re_offers_out() {
        let t0 = Instant::now();
        let mut b = OfferBudget::new(10_000);
        // A tenth of a second's worth at once, then waits in proportion to the deficit.
        assert_eq!(b.take(t0, 600.0), None);
        assert_eq!(b.take(t0, 400.0), None);
        assert_eq!(b.take(t0, 200.0), Some(Duration::from_millis(20)));
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(b.take(t1, 200.0), None);
        // Bigger than the bucket: goes once the bucket is full, leaving a debt.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(b.take(t2, 3_000.0), None);
        assert_eq!(b.take(t2, 1.0), Some(Duration::from_millis(201)));
        // 0: no bound.
        assert_eq!(OfferBudget::new(0).take(t0, 1e9), None);
    }
}
