//! Load-test scenarios: TOML files in `loadtest/scenarios/`, overridable from the command line.

use serde::{Deserialize, Deserializer, Serialize};
use std::path::Path;
use std::time::Duration;

/// A load-test scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in the run directory's name (default: the file stem).
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Number of rooms.
    #[serde(default = "one")]
    pub rooms: u32,
    /// Publishing participants per room (they also subscribe to everyone else).
    #[serde(default)]
    pub publishers: u32,
    /// Receive-only participants per room (token without the publish grant).
    #[serde(default)]
    pub subscribers: u32,
    /// Steady-state time after the last initial join, e.g. `"30s"` or `"2m"`.
    #[serde(
        default = "default_duration",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub duration: Duration,
    /// Initial joins per second.
    #[serde(default = "default_ramp_up")]
    pub ramp_up: f64,
    /// After the ramp, this many participants per second leave and are replaced by a new one
    /// (subscribers first; publishers only when a room has no subscribers).
    #[serde(default)]
    pub churn: f64,
    /// How bots signal: the WebSocket protocol, or WHIP (publishers) and WHEP (subscribers).
    #[serde(default)]
    pub protocol: Protocol,
    /// The simulcast layer subscribers ask for: `low`, `medium`, `high` (the server's
    /// default) or `mixed` (a third of the subscribers each).
    #[serde(default)]
    pub quality: SubscriberQuality,
    /// What each publisher sends.
    #[serde(default)]
    pub media: Media,
    /// Impairment of what the bots receive.
    #[serde(default)]
    pub impairment: Impairment,
}

/// Loss and delay injected on every bot's receive side, below NACK handling (so
/// retransmissions can repair the loss).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Impairment {
    /// Percentage of incoming RTP packets dropped (0-100), retransmissions included.
    #[serde(default)]
    pub loss_percent: f64,
    /// Each incoming RTP packet is delayed by a random 0..=jitter_ms milliseconds.
    #[serde(default)]
    pub jitter_ms: u32,
}

/// How bots join.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Protocol {
    /// The WebSocket protocol (`<url>/ws`): publishers publish and receive everyone else,
    /// subscribers receive everyone.
    #[default]
    #[serde(rename = "ws")]
    #[value(name = "ws")]
    Ws,
    /// Publishers publish with WHIP (`POST <url>/whip/<room>`) and receive nothing;
    /// subscribers play the room's most recent publisher with WHEP (`POST <url>/whep/<room>`).
    #[serde(rename = "whip-whep")]
    #[value(name = "whip-whep")]
    WhipWhep,
}

/// Which simulcast layer subscribing bots ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SubscriberQuality {
    /// The lowest layer.
    Low,
    /// The middle layer.
    Medium,
    /// The highest layer.
    #[default]
    High,
    /// Low, medium and high in turn, by the bot's slot in its room.
    Mixed,
}

impl SubscriberQuality {
    /// What the bot in `slot` asks for.
    pub fn for_slot(self, slot: u32) -> chorus_client::Quality {
        use chorus_client::Quality;
        match self {
            Self::Low => Quality::Low,
            Self::Medium => Quality::Medium,
            Self::High => Quality::High,
            Self::Mixed => [Quality::Low, Quality::Medium, Quality::High][(slot % 3) as usize],
        }
    }
}

/// One simulcast encoding of generated video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulcastLayer {
    /// Its `rid`.
    pub rid: String,
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
}

fn default_layers() -> Vec<SimulcastLayer> {
    [
        ("q", 320, 180, 150),
        ("h", 640, 360, 500),
        ("f", 1280, 720, 1500),
    ]
    .into_iter()
    .map(|(rid, width, height, bitrate_kbps)| SimulcastLayer {
        rid: rid.into(),
        width,
        height,
        bitrate_kbps,
    })
    .collect()
}

/// Where publishers' media comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MediaSource {
    /// The built-in 160x120 VP8 clip and Opus silence frames.
    #[default]
    Clip,
    /// A moving test pattern encoded with libvpx and a talk/silence signal encoded with
    /// libopus.
    Generated,
    /// `video_file` (IVF: VP8, VP9 or AV1) and/or `audio_file` (Ogg Opus), looped.
    File,
}

/// What each publisher sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// Publish an Opus track.
    #[serde(default = "yes")]
    pub audio: bool,
    /// Publish a video track.
    #[serde(default = "yes")]
    pub video: bool,
    /// Video codec of generated video: `vp8` or `vp9` (the clip is VP8, a file brings its
    /// own).
    #[serde(default)]
    pub codec: VideoCodec,
    /// Where the media comes from.
    #[serde(default)]
    pub source: MediaSource,
    /// Generated media only: encode a few seconds once per process and loop them in every bot
    /// (true), or run an encoder per bot (false).
    #[serde(default = "yes")]
    pub cheap: bool,
    /// Generated video width.
    #[serde(default = "default_width")]
    pub width: u32,
    /// Generated video height.
    #[serde(default = "default_height")]
    pub height: u32,
    /// Generated video frame rate.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Generated video: time between periodic keyframes.
    #[serde(
        default = "default_keyframe_interval",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub keyframe_interval: Duration,
    /// Target video bitrate in kbit/s of generated video (default 500). With other sources
    /// the clip's own bitrate is what is sent.
    #[serde(default)]
    pub bitrate_kbps: Option<u32>,
    /// `source = "file"`: an IVF file to loop (VP8, VP9 or AV1).
    #[serde(default)]
    pub video_file: Option<String>,
    /// `source = "file"`: an Ogg Opus file to loop.
    #[serde(default)]
    pub audio_file: Option<String>,
    /// Decode every Nth group of pictures of every received VP8 track with libvpx and count
    /// decode errors (0: off).
    #[serde(default)]
    pub decode_sample: u32,
    /// Publish generated video as simulcast: one encoding per `layers` entry (needs
    /// `source = "generated"`; `width`/`height`/`bitrate_kbps` are then unused).
    #[serde(default)]
    pub simulcast: bool,
    /// The simulcast encodings, lowest first (default: q 320x180 150 kbit/s, h 640x360 500
    /// kbit/s, f 1280x720 1500 kbit/s).
    #[serde(default = "default_layers")]
    pub layers: Vec<SimulcastLayer>,
    /// Publishers per room whose audio is live; the others are listeners. Default: all of
    /// them.
    #[serde(default)]
    pub talkers: Option<u32>,
    /// Whether listeners (publishers beyond `talkers`) publish their microphone muted, so
    /// every participant negotiates one audio section per participant (`true`), or join
    /// without publishing audio, as large-room clients do until someone speaks up (`false`,
    /// the default).
    #[serde(default)]
    pub listeners_publish: bool,
}

impl Default for Media {
    fn default() -> Self {
        Self {
            audio: true,
            video: true,
            codec: VideoCodec::Vp8,
            source: MediaSource::Clip,
            cheap: true,
            width: default_width(),
            height: default_height(),
            fps: default_fps(),
            keyframe_interval: default_keyframe_interval(),
            bitrate_kbps: None,
            video_file: None,
            audio_file: None,
            decode_sample: 0,
            simulcast: false,
            layers: default_layers(),
            talkers: None,
            listeners_publish: false,
        }
    }
}

/// Video codecs generated video may use (a file brings its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// VP8.
    #[default]
    Vp8,
    /// VP9 profile 0 (generated video only).
    Vp9,
}

impl VideoCodec {
    /// The libvpx codec.
    pub fn vpx(self) -> chorus_client::vpx::VpxCodec {
        match self {
            Self::Vp8 => chorus_client::vpx::VpxCodec::Vp8,
            Self::Vp9 => chorus_client::vpx::VpxCodec::Vp9,
        }
    }
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_duration() -> Duration {
    Duration::from_secs(30)
}
fn default_ramp_up() -> f64 {
    10.0
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    360
}
fn default_fps() -> u32 {
    30
}
fn default_keyframe_interval() -> Duration {
    Duration::from_secs(2)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?} ({e}), try \"30s\"")))
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// A scenario that cannot be used; the message names the file (or flag) and the key.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: key `{key}`: {message}")]
pub struct ScenarioError {
    /// The file, or `command line`.
    pub source_name: String,
    /// The offending key, dotted (`media.codec`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Scenario {
    /// Parses and validates a scenario; `source_name` (the file name) prefixes errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ScenarioError> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .and_then(|span| key_at(text, span.start))
                .unwrap_or_else(|| "?".into());
            ScenarioError {
                source_name: source_name.to_owned(),
                key,
                message: e.message().trim().to_owned(),
            }
        })?;
        if s.name.is_empty() {
            s.name = Path::new(source_name)
                .file_stem()
                .map(|x| x.to_string_lossy().into_owned())
                .unwrap_or_else(|| "scenario".into());
        }
        s.validate().map_err(|(key, message)| ScenarioError {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            message,
        })?;
        Ok(s)
    }

    /// Reads a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read scenario {}: {e}", path.display()))?;
        Ok(Self::parse(&text, &path.display().to_string())?)
    }

    /// Checks values; `Err((key, message))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.rooms == 0 {
            return Err(("rooms", "must be at least 1".into()));
        }
        if self.publishers + self.subscribers == 0 {
            return Err((
                "publishers",
                "publishers + subscribers must be at least 1".into(),
            ));
        }
        if !(self.ramp_up.is_finite() && self.ramp_up > 0.0) {
            return Err((
                "ramp_up",
                format!("must be > 0 joins/s, got {}", self.ramp_up),
            ));
        }
        if !(self.churn.is_finite() && self.churn >= 0.0) {
            return Err((
                "churn",
                format!("must be >= 0 per second, got {}", self.churn),
            ));
        }
        if self.duration.is_zero() {
            return Err(("duration", "must be positive".into()));
        }
        if self.publishers > 0 && !self.media.audio && !self.media.video {
            return Err(("media.audio", "publishers must send audio or video".into()));
        }
        if let Some(t) = self.media.talkers {
            if t > self.publishers {
                return Err((
                    "media.talkers",
                    format!(
                        "{t} talkers but only {} publishers per room",
                        self.publishers
                    ),
                ));
            }
        }
        if self.media.bitrate_kbps == Some(0) {
            return Err(("media.bitrate_kbps", "must be positive".into()));
        }
        let m = &self.media;
        if m.source == MediaSource::Generated {
            let even = |v: u32| (16..=4096).contains(&v) && v.is_multiple_of(2);
            if !even(m.width) {
                return Err(("media.width", "must be even, 16..=4096".into()));
            }
            if !even(m.height) {
                return Err(("media.height", "must be even, 16..=4096".into()));
            }
            if !(1..=120).contains(&m.fps) {
                return Err(("media.fps", "must be 1..=120".into()));
            }
            if m.keyframe_interval.is_zero() {
                return Err(("media.keyframe_interval", "must be positive".into()));
            }
        }
        if m.codec != VideoCodec::Vp8 && m.video && m.source != MediaSource::Generated {
            return Err((
                "media.codec",
                "only generated video can be VP9 (the built-in clip is VP8, a file brings its own codec)"
                    .into(),
            ));
        }
        if m.simulcast && m.video {
            if m.source != MediaSource::Generated {
                return Err((
                    "media.simulcast",
                    "needs media.source = \"generated\" (each layer is encoded with libvpx)".into(),
                ));
            }
            if !(2..=3).contains(&m.layers.len()) {
                return Err(("media.layers", "simulcast needs 2 or 3 layers".into()));
            }
            for (i, l) in m.layers.iter().enumerate() {
                let valid_rid = !l.rid.is_empty()
                    && l.rid.len() <= 16
                    && l.rid.chars().all(|c| c.is_ascii_alphanumeric());
                if !valid_rid || m.layers[..i].iter().any(|o| o.rid == l.rid) {
                    return Err((
                        "media.layers",
                        format!("rid {:?} must be unique, 1-16 letters or digits", l.rid),
                    ));
                }
                let even = |v: u32| (16..=4096).contains(&v) && v.is_multiple_of(2);
                if !even(l.width) || !even(l.height) || l.bitrate_kbps == 0 {
                    return Err((
                        "media.layers",
                        format!(
                            "layer {:?}: width and height must be even, 16..=4096, and \
                             bitrate_kbps positive",
                            l.rid
                        ),
                    ));
                }
            }
        }
        if m.source == MediaSource::File && m.video_file.is_none() && m.audio_file.is_none() {
            return Err((
                "media.source",
                "\"file\" needs media.video_file and/or media.audio_file".into(),
            ));
        }
        if !(self.impairment.loss_percent.is_finite()
            && (0.0..=100.0).contains(&self.impairment.loss_percent))
        {
            return Err(("impairment.loss_percent", "must be 0..=100".into()));
        }
        Ok(())
    }

    /// Participants joining initially.
    pub fn participants(&self) -> u32 {
        self.rooms * (self.publishers + self.subscribers)
    }

    /// Publishers per room whose audio is live.
    pub fn talkers(&self) -> u32 {
        self.media.talkers.unwrap_or(self.publishers)
    }
}

/// The dotted key whose value or name starts at byte `offset` (line `key = ...` under the last
/// `[table]` header above it).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text.get(line_start..line_end)?.trim();
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = match line.split_once('=') {
        Some((k, _)) => k.trim().to_owned(),
        None if line.starts_with('[') => {
            return Some(
                line.trim_matches(|c| c == '[' || c == ']')
                    .trim()
                    .to_owned(),
            )
        }
        None => return table,
    };
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Scenario::parse(text, "bad.toml") {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_and_name() {
        let s = Scenario::parse("publishers = 1\nsubscribers = 2\n", "dir/x.toml").expect("ok");
        assert_eq!(s.name, "x");
        assert_eq!(s.rooms, 1);
        assert_eq!(s.duration, Duration::from_secs(30));
        assert!(s.media.audio && s.media.video && !s.media.simulcast);
        assert_eq!(s.media.source, MediaSource::Clip);
        assert_eq!(s.protocol, Protocol::Ws);
        let w =
            Scenario::parse("publishers = 1\nprotocol = \"whip-whep\"\n", "w.toml").expect("ok");
        assert_eq!(w.protocol, Protocol::WhipWhep);
        assert!(s.media.cheap);
        assert_eq!((s.media.width, s.media.height, s.media.fps), (640, 360, 30));
        let g = Scenario::parse(
            "publishers = 1\n[media]\nsource = \"generated\"\ncheap = false\n\
             keyframe_interval = \"1s\"\ndecode_sample = 2\n\
             [impairment]\nloss_percent = 2.5\njitter_ms = 20\n",
            "g.toml",
        )
        .expect("ok");
        assert_eq!(g.media.source, MediaSource::Generated);
        assert!(!g.media.cheap);
        assert_eq!(g.media.keyframe_interval, Duration::from_secs(1));
        assert_eq!(g.media.decode_sample, 2);
        assert_eq!(g.impairment.jitter_ms, 20);
        assert_eq!(s.participants(), 3);
        assert_eq!(s.talkers(), 1);
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = err("publishers = 1\nroomz = 2\n");
        assert!(e.starts_with("bad.toml: key `roomz`:"), "{e}");
        assert!(e.contains("unknown field"), "{e}");

        let e = err("publishers = 1\n[media]\ncodec = \"h264\"\n");
        assert!(e.starts_with("bad.toml: key `media.codec`:"), "{e}");
        assert!(e.contains("vp8"), "{e}");

        let e = err("publishers = 1\n[media]\ncodec = \"vp9\"\n");
        assert!(e.starts_with("bad.toml: key `media.codec`:"), "{e}");

        let e = err("publishers = 1\n[media]\nvideo = true\nframerate = 3\n");
        assert!(e.starts_with("bad.toml: key `media.framerate`:"), "{e}");

        let e = err("publishers = 1\n[media]\nsource = \"generated\"\nwidth = 641\n");
        assert!(e.starts_with("bad.toml: key `media.width`:"), "{e}");

        let e = err("publishers = 1\n[media]\nsource = \"file\"\n");
        assert!(e.starts_with("bad.toml: key `media.source`:"), "{e}");

        let e = err("publishers = 1\n[impairment]\nloss_percent = 101\n");
        assert!(
            e.starts_with("bad.toml: key `impairment.loss_percent`:"),
            "{e}"
        );

        let e = err("publishers = -1\n");
        assert!(e.starts_with("bad.toml: key `publishers`:"), "{e}");

        let e = err("publishers = 1\nduration = \"soon\"\n");
        assert!(e.starts_with("bad.toml: key `duration`:"), "{e}");

        let e = err("publishers = 1\nprotocol = \"whip\"\n");
        assert!(e.starts_with("bad.toml: key `protocol`:"), "{e}");

        let e = err("publishers = 1\nrooms = 0\n");
        assert_eq!(e, "bad.toml: key `rooms`: must be at least 1");

        let e = err("publishers = 2\n[media]\ntalkers = 3\n");
        assert!(e.starts_with("bad.toml: key `media.talkers`:"), "{e}");

        let e = err("publishers = 1\n[media]\nsimulcast = true\n");
        assert!(e.starts_with("bad.toml: key `media.simulcast`:"), "{e}");

        let e = err(
            "publishers = 1\n[media]\nsource = \"generated\"\nsimulcast = true\n\
             layers = [{ rid = \"a\", width = 320, height = 180, bitrate_kbps = 100 },\
             { rid = \"a\", width = 640, height = 360, bitrate_kbps = 300 }]\n",
        );
        assert!(e.starts_with("bad.toml: key `media.layers`:"), "{e}");

        let e = err("publishers = 1\nquality = \"best\"\n");
        assert!(e.starts_with("bad.toml: key `quality`:"), "{e}");

        let e = err("publishers = 1\nramp_up = 0\n");
        assert!(e.starts_with("bad.toml: key `ramp_up`:"), "{e}");
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../loadtest/scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("scenario dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
                names.push(s.name);
            }
        }
        names.sort();
        for want in ["audio-200", "churn", "fanout-1x50", "meeting-10", "soak"] {
            assert!(names.iter().any(|n| n == want), "{names:?}");
        }
    }
}
