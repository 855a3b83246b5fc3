//! Simulcast: the layers of a published video track and which one each downtrack forwards.
//!
//! A publisher may send one track as several encodings (RFC 8853 `rid`s, e.g. `q`/`h`/`f` at
//! quarter, half and full resolution). Every downtrack forwards exactly one of them. It asks
//! for a [`Quality`]; its [`LayerSelector`] switches to the matching layer only on one of that
//! layer's keyframes, so the subscriber's decoder never sees a frame it cannot decode, and
//! keeps forwarding the current layer until then. When the wanted layer stops flowing (its
//! publisher paused it), the selector targets the best layer below it that still flows.

use std::time::{Duration, Instant};

use crate::keyframe::KeyframeThrottle;

/// A layer with no packet for this long is taken as paused by its publisher (a browser stops
/// sending its top layer when its uplink estimate falls): downtracks that want it fall back to
/// the best layer still flowing until it returns.
pub const LAYER_TIMEOUT: Duration = Duration::from_secs(1);

/// Most layers a track keeps (further `rid`s are not forwarded).
pub const MAX_LAYERS: usize = 8;

/// The quality a subscriber asks for; mapped onto the layers a track has (a track with fewer
/// layers gives its best one not above the request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quality {
    /// The lowest layer (e.g. 320x180).
    Low,
    /// The middle layer (e.g. 640x360).
    Medium,
    /// The highest layer (e.g. 1280x720). The default.
    #[default]
    High,
}

impl Quality {
    /// The index of the layer this quality selects among `layers` layers ordered low to high:
    /// the lowest, the middle (rounding up: of two layers the higher) or the highest.
    pub fn layer(self, layers: usize) -> u8 {
        let top = layers.clamp(1, MAX_LAYERS) - 1;
        (match self {
            Quality::Low => 0,
            Quality::Medium => top.div_ceil(2),
            Quality::High => top,
        }) as u8
    }
}

/// One encoding of a published track.
#[derive(Debug)]
pub struct Layer {
    /// The `rid`, empty for a track without simulcast.
    pub rid: String,
    /// The SSRC, once the first packet bound it (0 until then).
    pub ssrc: u32,
    /// Keyframe requests to this layer are throttled separately from the other layers.
    pub throttle: KeyframeThrottle,
    /// When its latest packet arrived.
    pub last_packet: Option<Instant>,
}

impl Layer {
    /// A layer whose SSRC is learnt from its first packet.
    pub fn new(rid: impl Into<String>, ssrc: u32, pli_interval: Duration) -> Self {
        Self {
            rid: rid.into(),
            ssrc,
            throttle: KeyframeThrottle::new(pli_interval),
            last_packet: None,
        }
    }
}

/// Orders `rids` from the lowest to the highest quality: by their conventional names when all
/// of them have one (`q`/`h`/`f` as browsers and LiveKit use, `l`/`m`/`h`, `low`/`mid`/`high`,
/// or numbers with 0 the lowest), otherwise in the order given (the SDP's, which is the order
/// the sender listed its encodings in, lowest first by convention).
pub fn order_rids(rids: &[String]) -> Vec<String> {
    const SCHEMES: [&[&str]; 3] = [&["q", "h", "f"], &["l", "m", "h"], &["low", "mid", "high"]];
    for scheme in SCHEMES {
        if rids.iter().all(|r| scheme.contains(&r.as_str())) {
            let mut out = rids.to_vec();
            out.sort_by_key(|r| scheme.iter().position(|s| *s == r.as_str()));
            return out;
        }
    }
    if rids.iter().all(|r| r.parse::<u32>().is_ok()) {
        let mut out = rids.to_vec();
        out.sort_by_key(|r| r.parse::<u32>().unwrap_or(0));
        return out;
    }
    rids.to_vec()
}

/// What a downtrack does with one packet of layer `layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward it: it is the layer being forwarded.
    Forward,
    /// Forward it as the first packet of a new layer (rebase sequence numbers and timestamps).
    Switch,
    /// Not forwarded, and a keyframe of this layer is wanted to start or switch.
    WantKeyframe,
    /// Not forwarded: some other layer is being forwarded, or wanted.
    Skip,
}

/// Which layer one downtrack forwards and which it wants. Sans-IO: the forwarding path tells
/// it about packets and it decides.
#[derive(Debug, Clone)]
pub struct LayerSelector {
    current: Option<u8>,
    /// The layer the subscriber's quality selects.
    wanted: u8,
    /// The layer to forward: `wanted`, or the best one below it still flowing.
    target: u8,
    /// Whether a layer may start on any packet (audio) or only on a keyframe (video).
    needs_keyframe: bool,
}

impl LayerSelector {
    /// A selector that wants `target` and forwards nothing yet. Audio (`needs_keyframe`
    /// false) starts on its first packet.
    pub fn new(target: u8, needs_keyframe: bool) -> Self {
        Self {
            current: None,
            wanted: target,
            target,
            needs_keyframe,
        }
    }

    /// The layer being forwarded, if any.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// The layer wanted.
    pub fn target(&self) -> u8 {
        self.target
    }

    /// The layer the subscriber's quality selects.
    pub fn wanted(&self) -> u8 {
        self.wanted
    }

    /// Asks for another layer; the switch happens on its next keyframe.
    pub fn set_wanted(&mut self, wanted: u8) {
        self.wanted = wanted;
        self.target = wanted;
    }

    /// Follows which layers are flowing (bit `i` set: layer `i` had a packet lately): the
    /// target becomes the wanted layer if it flows, else the best flowing layer below it, else
    /// the lowest flowing one above it. Returns whether the target changed.
    pub fn retarget(&mut self, flowing: u8) -> bool {
        if flowing == 0 {
            return false;
        }
        let below = flowing & (((2u16 << self.wanted) - 1) as u8);
        let target = if below != 0 {
            7 - below.leading_zeros() as u8
        } else {
            flowing.trailing_zeros() as u8
        };
        let changed = target != self.target;
        self.target = target;
        changed
    }

    /// Forgets the current layer, so the next forwarded packet must be a keyframe (e.g. after
    /// the subscriber's leg was renegotiated away and back).
    pub fn restart(&mut self) {
        self.current = None;
    }

    /// Decides on a packet of `layer`; `keyframe` says whether it starts a keyframe and is
    /// only called when it matters.
    pub fn decide(&mut self, layer: u8, keyframe: impl FnOnce() -> bool) -> Decision {
        if self.current == Some(layer) {
            return Decision::Forward;
        }
        if layer != self.target {
            return Decision::Skip;
        }
        if self.needs_keyframe && !keyframe() {
            return Decision::WantKeyframe;
        }
        let first = self.current.is_none();
        self.current = Some(layer);
        if first {
            Decision::Forward
        } else {
            Decision::Switch
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rids_are_ordered_low_to_high() {
        assert_eq!(
            order_rids(&strings(&["f", "h", "q"])),
            strings(&["q", "h", "f"])
        );
        assert_eq!(
            order_rids(&strings(&["h", "l", "m"])),
            strings(&["l", "m", "h"])
        );
        assert_eq!(
            order_rids(&strings(&["2", "0", "1"])),
            strings(&["0", "1", "2"])
        );
        assert_eq!(order_rids(&strings(&["hi", "lo"])), strings(&["hi", "lo"]));
        // "h" alone is ambiguous but harmless: one layer.
        assert_eq!(order_rids(&strings(&["h"])), strings(&["h"]));
    }

    #[test]
    fn quality_maps_onto_the_layers_a_track_has() {
        assert_eq!(Quality::High.layer(3), 2);
        assert_eq!(Quality::Medium.layer(3), 1);
        assert_eq!(Quality::Low.layer(3), 0);
        assert_eq!(Quality::High.layer(2), 1);
        assert_eq!(Quality::Medium.layer(2), 1);
        assert_eq!(Quality::High.layer(1), 0);
        assert_eq!(Quality::High.layer(0), 0);
        assert_eq!(Quality::High.layer(4), 3);
        assert_eq!(Quality::Medium.layer(4), 2);
        assert_eq!(Quality::Low.layer(4), 0);
    }

    #[test]
    fn video_starts_and_switches_only_on_keyframes_of_the_target() {
        let mut s = LayerSelector::new(0, true);
        assert_eq!(s.decide(1, || true), Decision::Skip);
        assert_eq!(s.decide(0, || false), Decision::WantKeyframe);
        assert_eq!(s.decide(0, || true), Decision::Forward);
        assert_eq!(s.decide(0, || false), Decision::Forward);
        s.set_wanted(2);
        // Still forwarding layer 0 until layer 2 has a keyframe.
        assert_eq!(s.decide(0, || false), Decision::Forward);
        assert_eq!(s.decide(1, || true), Decision::Skip);
        assert_eq!(s.decide(2, || false), Decision::WantKeyframe);
        assert_eq!(s.decide(0, || false), Decision::Forward);
        assert_eq!(s.decide(2, || true), Decision::Switch);
        assert_eq!(s.current(), Some(2));
        assert_eq!(s.decide(0, || true), Decision::Skip);
        assert_eq!(s.decide(2, || false), Decision::Forward);
    }

    #[test]
    fn a_paused_layer_falls_back_to_the_best_one_flowing() {
        let mut s = LayerSelector::new(2, true);
        // Only the low layer flows at first: start there.
        assert!(s.retarget(0b001));
        assert_eq!(s.target(), 0);
        assert_eq!(s.decide(0, || true), Decision::Forward);
        // All three flow: climb to the wanted one on its keyframe.
        assert!(s.retarget(0b111));
        assert_eq!(s.target(), 2);
        assert_eq!(s.decide(2, || true), Decision::Switch);
        // The top layer pauses: the middle one is the best below it.
        assert!(s.retarget(0b011));
        assert_eq!(s.target(), 1);
        assert!(!s.retarget(0b011));
        // Wanting low while only the top layer flows: take the lowest above.
        s.set_wanted(0);
        assert!(s.retarget(0b100));
        assert_eq!(s.target(), 2);
        // Nothing known to flow: keep what there is.
        assert!(!s.retarget(0));
        assert_eq!(s.wanted(), 0);
    }

    #[test]
    fn audio_starts_on_any_packet() {
        let mut s = LayerSelector::new(0, false);
        assert_eq!(s.decide(0, || unreachable!()), Decision::Forward);
        s.restart();
        assert_eq!(s.current(), None);
        assert_eq!(s.decide(0, || unreachable!()), Decision::Forward);
    }
}
