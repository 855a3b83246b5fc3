//! Local media, written through sample-based local tracks: Opus (silence, a looped clip of
//! encoded frames, or live-encoded generated audio) and VP8 (a looped clip or live-encoded
//! generated video, see [`crate::generate`]). Every frame carries its capture time in the
//! `abs-capture-time` and/or `abs-send-time` extension ([`crate::capture_clock`]), and audio
//! frames with a known level carry `ssrc-audio-level`.

pub use crate::frame::{AudioClip, AudioFrame, OPUS_FRAME_DURATION, OPUS_SILENCE_FRAME};
use crate::generate::{GeneratedVideo, LiveAudio, LiveVideo};
use crate::ivf::{IvfClip, IvfCodec};
use bytes::Bytes;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_AV1, MIME_TYPE_OPUS, MIME_TYPE_VP8, MIME_TYPE_VP9,
};
use rtc::rtp::extension::abs_send_time_extension::AbsSendTimeExtension;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::PayloadType;
use rtc::shared::marshal::{Marshal, MarshalSize};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::rtp_transceiver::RtpSender;

/// While muted, audio sends one silence frame per this many frame times (400 ms), as an Opus
/// encoder in DTX mode does during silence: the track stays alive (published, and its SSRC
/// known) at 1/20 of the packet rate.
const DTX_EVERY: u32 = 20;
/// The VP8 clip published when no other is configured: 160x120, 30 fps, 3 s, keyframe every 1 s.
pub const DEFAULT_VP8_CLIP: &[u8] = include_bytes!("../tests/data/vp8_160x120_30fps.ivf");

/// The `ssrc-audio-level` extension's URI (RFC 6464).
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// What a publisher sends on its audio track.
#[derive(Debug, Clone, Default)]
pub enum AudioSource {
    /// A 3-byte Opus silence frame every 20 ms ([`OPUS_SILENCE_FRAME`]).
    #[default]
    Silence,
    /// A loop of encoded packets (generated once, or read from an Ogg Opus file), started at
    /// a random packet so publishers sharing a clip do not talk in unison.
    Clip(Arc<AudioClip>),
    /// The generated talk/silence signal of this seed, encoded live with libopus.
    Live(u64),
}

/// What a publisher sends on its video track.
#[derive(Debug, Clone)]
pub enum VideoSource {
    /// A loop of encoded VP8 frames (the built-in clip, a file, or generated once). A keyframe
    /// request jumps to the next keyframe of the loop.
    Clip(Arc<IvfClip>),
    /// The test pattern encoded live with libvpx; a keyframe request forces a keyframe.
    Live(GeneratedVideo),
    /// Simulcast: one encoding per layer, lowest quality first, each sent with its `rid`
    /// (RFC 8853) on one track. A layer's source must not itself be `Simulcast`.
    Simulcast(Vec<SimulcastLayer>),
}

/// One simulcast encoding of a [`VideoSource::Simulcast`] track.
#[derive(Debug, Clone)]
pub struct SimulcastLayer {
    /// Its `rid`, e.g. `q`, `h`, `f`.
    pub rid: String,
    /// What it sends.
    pub source: VideoSource,
}

impl VideoSource {
    /// The codec this source sends (a clip's own; VP8 for a clip of unknown codec).
    pub fn codec(&self) -> IvfCodec {
        match self {
            VideoSource::Clip(clip) => clip.codec().unwrap_or(IvfCodec::Vp8),
            VideoSource::Live(settings) => match settings.codec {
                crate::vpx::VpxCodec::Vp8 => IvfCodec::Vp8,
                crate::vpx::VpxCodec::Vp9 => IvfCodec::Vp9,
            },
            VideoSource::Simulcast(layers) => {
                layers.first().map_or(IvfCodec::Vp8, |l| l.source.codec())
            }
        }
    }

    /// The `rid`s this source sends, lowest first; empty without simulcast.
    pub fn rids(&self) -> Vec<String> {
        match self {
            VideoSource::Simulcast(layers) => layers.iter().map(|l| l.rid.clone()).collect(),
            _ => Vec::new(),
        }
    }
}

/// Which header extensions the answer accepted for a local track.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    pub abs_send_time: bool,
    pub abs_capture_time: bool,
    pub audio_level: bool,
    /// `sdes:mid` and `sdes:rtp-stream-id` values to stamp on every packet (simulcast: the
    /// receiver binds each layer's SSRC by them).
    pub mid_rid: Option<(Bytes, Bytes)>,
}

impl Extensions {
    pub async fn negotiated(sender: &Arc<dyn RtpSender>) -> Self {
        Self {
            abs_send_time: negotiated_extension(sender, crate::capture_clock::ABS_SEND_TIME_URI)
                .await,
            abs_capture_time: negotiated_extension(
                sender,
                crate::capture_clock::ABS_CAPTURE_TIME_URI,
            )
            .await,
            audio_level: negotiated_extension(sender, AUDIO_LEVEL_URI).await,
            mid_rid: None,
        }
    }
}

/// A header extension written as given.
struct RawExtension(Bytes);

impl MarshalSize for RawExtension {
    fn marshal_size(&self) -> usize {
        self.0.len()
    }
}

impl Marshal for RawExtension {
    fn marshal_to(&self, buf: &mut [u8]) -> rtc::shared::error::Result<usize> {
        let n = self.0.len();
        buf.get_mut(..n)
            .ok_or(rtc::shared::error::Error::BufferTooShort)?
            .copy_from_slice(&self.0);
        Ok(n)
    }
}

/// The `abs-capture-time` payload without the optional clock offset: a 64-bit NTP timestamp.
struct AbsCaptureTime(u64);

impl MarshalSize for AbsCaptureTime {
    fn marshal_size(&self) -> usize {
        8
    }
}

impl Marshal for AbsCaptureTime {
    fn marshal_to(&self, buf: &mut [u8]) -> rtc::shared::error::Result<usize> {
        let out = buf
            .get_mut(..8)
            .ok_or(rtc::shared::error::Error::BufferTooShort)?;
        out.copy_from_slice(&self.0.to_be_bytes());
        Ok(8)
    }
}

/// Payload type the publisher offers for Opus.
pub(crate) const OPUS_PAYLOAD_TYPE: PayloadType = 111;
/// Payload type the publisher offers for VP8.
pub(crate) const VP8_PAYLOAD_TYPE: PayloadType = 96;

pub(crate) fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: OPUS_PAYLOAD_TYPE,
    }
}

pub(crate) fn vp8_codec() -> RTCRtpCodecParameters {
    video_codec(MIME_TYPE_VP8, "", VP8_PAYLOAD_TYPE)
}

fn video_codec(mime: &str, fmtp: &str, payload_type: PayloadType) -> RTCRtpCodecParameters {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")],
        },
        payload_type,
    }
}

/// The codec a publisher offers for `source`: the source's own (VP8, VP9 profile 0 or AV1;
/// VP8 when there is no source, for the built-in clip).
pub(crate) fn video_codec_for(source: Option<&VideoSource>) -> RTCRtpCodecParameters {
    match source.map(VideoSource::codec) {
        Some(IvfCodec::Vp9) => video_codec(MIME_TYPE_VP9, "profile-id=0", 98),
        Some(IvfCodec::Av1) => video_codec(MIME_TYPE_AV1, "", 45),
        Some(IvfCodec::Vp8) | None => vp8_codec(),
    }
}

/// Counters for one published track.
#[derive(Debug, Default)]
pub(crate) struct SendCounters {
    pub frames: AtomicU64,
    pub keyframes: AtomicU64,
    pub bytes: AtomicU64,
    pub keyframe_requests: AtomicU64,
    pub write_errors: AtomicU64,
    pub paused: AtomicBool,
    pub keyframe_wanted: AtomicBool,
}

/// What the client has sent on one published track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentTrackStats {
    /// Audio or video.
    pub kind: chorus_signal::protocol::TrackKind,
    /// The track id in the publisher's own SDP (matches [`TrackInfo::publisher_track_id`]).
    ///
    /// [`TrackInfo::publisher_track_id`]: chorus_signal::protocol::TrackInfo::publisher_track_id
    pub local_track_id: String,
    /// Encoded frames written (Opus frames or VP8 frames).
    pub frames: u64,
    /// VP8 keyframes written.
    pub keyframes: u64,
    /// Encoded bytes written.
    pub bytes: u64,
    /// PLI/FIR requests received from the server.
    pub keyframe_requests: u64,
    /// Frames that could not be written.
    pub write_errors: u64,
    /// Whether sending is paused because the track is muted.
    pub paused: bool,
    /// Per simulcast encoding, lowest first; empty without simulcast.
    pub layers: Vec<SentLayerStats>,
}

/// What the client has sent on one simulcast encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentLayerStats {
    /// The encoding's `rid`.
    pub rid: String,
    /// Encoded frames written.
    pub frames: u64,
    /// Encoded bytes written.
    pub bytes: u64,
    /// PLI/FIR requests received for this encoding.
    pub keyframe_requests: u64,
}

/// One encoding of a local track: its `rid` (empty without simulcast), SSRC and counters.
pub(crate) struct LocalLayer {
    pub rid: String,
    pub ssrc: u32,
    pub counters: Arc<SendCounters>,
}

/// One local track on the publisher connection: its id, encodings and counters.
pub(crate) struct LocalTrack {
    pub kind: chorus_signal::protocol::TrackKind,
    pub track_id: String,
    /// One per encoding; one without simulcast.
    pub layers: Vec<LocalLayer>,
}

impl LocalTrack {
    /// A track of `kind` with one encoding per `rids` entry (simulcast) or a single one when
    /// `rids` is empty, each with a random SSRC.
    pub fn new(kind: chorus_signal::protocol::TrackKind, rids: &[String]) -> Self {
        let prefix = match kind {
            chorus_signal::protocol::TrackKind::Audio => "audio",
            chorus_signal::protocol::TrackKind::Video => "video",
        };
        let track_id = format!("{prefix}-{:08x}", rand::random::<u32>());
        let single = [String::new()];
        let rids = if rids.is_empty() { &single[..] } else { rids };
        let layers = rids
            .iter()
            .map(|rid| LocalLayer {
                rid: rid.clone(),
                ssrc: rand::random::<u32>(),
                counters: Arc::new(SendCounters::default()),
            })
            .collect();
        Self {
            kind,
            track_id,
            layers,
        }
    }

    /// The async connection's sample track for this track, in stream `stream_id`, with its
    /// encodings (rids and SSRCs).
    pub fn sample_track(
        &self,
        stream_id: &str,
        video_codec: &RTCRtpCodecParameters,
    ) -> Result<Arc<TrackLocalStaticSample>, webrtc::error::Error> {
        let (codec, rtp_kind, prefix) = match self.kind {
            chorus_signal::protocol::TrackKind::Audio => {
                (opus_codec(), RtpCodecKind::Audio, "audio")
            }
            chorus_signal::protocol::TrackKind::Video => {
                (video_codec.clone(), RtpCodecKind::Video, "video")
            }
        };
        let encodings = self
            .layers
            .iter()
            .map(|l| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: l.rid.clone(),
                    ssrc: Some(l.ssrc),
                    ..Default::default()
                },
                active: true,
                codec: codec.rtp_codec.clone(),
                ..Default::default()
            })
            .collect();
        let track = TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                stream_id.to_owned(),
                self.track_id.clone(),
                prefix.to_owned(),
                rtp_kind,
                encodings,
            ),
        )?;
        Ok(Arc::new(track))
    }

    /// Pauses (muted) or resumes every encoding.
    pub fn set_paused(&self, paused: bool) {
        for l in &self.layers {
            l.counters.paused.store(paused, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> SentTrackStats {
        let sum = |f: fn(&SendCounters) -> &AtomicU64| {
            self.layers
                .iter()
                .map(|l| f(&l.counters).load(Ordering::Relaxed))
                .sum()
        };
        SentTrackStats {
            kind: self.kind,
            local_track_id: self.track_id.clone(),
            frames: sum(|c| &c.frames),
            keyframes: sum(|c| &c.keyframes),
            bytes: sum(|c| &c.bytes),
            keyframe_requests: sum(|c| &c.keyframe_requests),
            write_errors: sum(|c| &c.write_errors),
            paused: self
                .layers
                .iter()
                .any(|l| l.counters.paused.load(Ordering::Relaxed)),
            layers: self
                .layers
                .iter()
                .filter(|l| !l.rid.is_empty())
                .map(|l| SentLayerStats {
                    rid: l.rid.clone(),
                    frames: l.counters.frames.load(Ordering::Relaxed),
                    bytes: l.counters.bytes.load(Ordering::Relaxed),
                    keyframe_requests: l.counters.keyframe_requests.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// The payload type the answer negotiated for a sender, falling back to what was offered.
pub(crate) async fn negotiated_payload_type(
    sender: &Arc<dyn RtpSender>,
    fallback: PayloadType,
) -> PayloadType {
    match sender.get_parameters().await {
        Ok(p) => p
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .unwrap_or(fallback),
        Err(_) => fallback,
    }
}

/// Whether the answer negotiated the header extension `uri` for a sender.
pub(crate) async fn negotiated_extension(sender: &Arc<dyn RtpSender>, uri: &str) -> bool {
    sender.get_parameters().await.is_ok_and(|p| {
        p.rtp_parameters
            .header_extensions
            .iter()
            .any(|e| e.uri == uri)
    })
}

/// Reads RTCP the server sends about a local track; flags keyframe requests. Runs until the
/// track is unbound.
pub(crate) async fn read_local_rtcp(
    track: Arc<TrackLocalStaticSample>,
    layers: Vec<(u32, Arc<SendCounters>)>,
) {
    while let Some(event) = track.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        for (ssrc, counters) in &layers {
            let wants_keyframe = packets
                .iter()
                .filter_map(|p| crate::keyframe::keyframe_request_ssrc(p.as_ref()))
                .any(|media_ssrc| media_ssrc == *ssrc || layers.len() == 1);
            if !wants_keyframe {
                continue;
            }
            counters.keyframe_requests.fetch_add(1, Ordering::Relaxed);
            counters.keyframe_wanted.store(true, Ordering::Relaxed);
        }
    }
}

/// Where a send loop writes.
pub(crate) struct Output {
    pub track: Arc<TrackLocalStaticSample>,
    pub ssrc: u32,
    pub payload_type: PayloadType,
    pub extensions: Extensions,
    pub counters: Arc<SendCounters>,
}

async fn write(out: &Output, data: Bytes, duration: Duration, level: Option<u8>) {
    let counters = &out.counters;
    let len = data.len() as u64;
    let sample = Sample {
        data,
        duration,
        ..Sample::new(Instant::now())
    };
    let mut writer = out.track.sample_writer(out.ssrc, out.payload_type);
    // The capture stamp subscribers measure latency from (see `capture_clock`).
    let captured = SystemTime::now();
    if out.extensions.abs_capture_time {
        writer = writer.with_extension(HeaderExtension::Custom {
            uri: Cow::Borrowed(crate::capture_clock::ABS_CAPTURE_TIME_URI),
            extension: Box::new(AbsCaptureTime(crate::capture_clock::ntp(captured))),
        });
    }
    if out.extensions.abs_send_time {
        writer = writer.with_extension(HeaderExtension::AbsSendTime(AbsSendTimeExtension {
            timestamp: u64::from(crate::capture_clock::abs_send_time(captured)),
        }));
    }
    if let Some((mid, rid)) = &out.extensions.mid_rid {
        writer = writer
            .with_extension(HeaderExtension::Custom {
                uri: Cow::Borrowed(rtc::sdp::extmap::SDES_MID_URI),
                extension: Box::new(RawExtension(mid.clone())),
            })
            .with_extension(HeaderExtension::Custom {
                uri: Cow::Borrowed(rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI),
                extension: Box::new(RawExtension(rid.clone())),
            });
    }
    if let (true, Some(level)) = (out.extensions.audio_level, level) {
        writer = writer.with_extension(HeaderExtension::AudioLevel(AudioLevelExtension {
            level: level.min(127),
            voice: level < 127,
        }));
    }
    match writer.write_sample(&sample).await {
        Ok(()) => {
            counters.frames.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(len, Ordering::Relaxed);
        }
        Err(e) => {
            counters.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "writing sample failed");
        }
    }
}

/// One muted-audio (DTX) silence frame.
async fn write_dtx(out: &Output) {
    write(
        out,
        Bytes::from_static(&OPUS_SILENCE_FRAME),
        OPUS_FRAME_DURATION * DTX_EVERY,
        Some(127),
    )
    .await;
}

/// Sends audio from `source`, forever (until the task is aborted).
pub(crate) async fn send_audio(out: Output, source: AudioSource) {
    match source {
        AudioSource::Silence => {
            let clip = AudioClip {
                frames: vec![AudioFrame {
                    data: Bytes::from_static(&OPUS_SILENCE_FRAME),
                    duration: OPUS_FRAME_DURATION,
                    level: Some(127),
                }],
            };
            loop_audio(&out, &clip, 0).await
        }
        AudioSource::Clip(clip) => {
            let start = rand::random_range(0..clip.frames.len().max(1));
            loop_audio(&out, &clip, start).await
        }
        AudioSource::Live(seed) => {
            let mut live = match LiveAudio::new(seed) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the Opus encoder");
                    out.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let mut ticker = tokio::time::interval(OPUS_FRAME_DURATION);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut dtx = 0u32;
            loop {
                ticker.tick().await;
                // Keep the signal running while muted, as a microphone would.
                let frame = match live.next_frame() {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!(error = %e, "Opus encoding failed");
                        out.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if out.counters.paused.load(Ordering::Relaxed) {
                    dtx += 1;
                    if dtx % DTX_EVERY == 1 {
                        write_dtx(&out).await;
                    }
                    continue;
                }
                dtx = 0;
                write(&out, frame.data, frame.duration, frame.level).await;
            }
        }
    }
}

/// Loops the packets of `clip` at their own durations, from packet `start` on.
async fn loop_audio(out: &Output, clip: &AudioClip, start: usize) {
    if clip.frames.is_empty() {
        return;
    }
    let mut next = start % clip.frames.len();
    let mut due = tokio::time::Instant::now();
    let mut dtx = 0u32;
    loop {
        tokio::time::sleep_until(due).await;
        let frame = &clip.frames[next];
        next = (next + 1) % clip.frames.len();
        // Never fall more than a second behind (a stalled runtime would otherwise burst).
        let now = tokio::time::Instant::now();
        due = (due + frame.duration).max(now - Duration::from_secs(1));
        if out.counters.paused.load(Ordering::Relaxed) {
            dtx += 1;
            if dtx % DTX_EVERY == 1 {
                write_dtx(out).await;
            }
            continue;
        }
        dtx = 0;
        write(out, frame.data.clone(), frame.duration, frame.level).await;
    }
}

/// Sends video from `source`, forever (until the task is aborted).
pub(crate) async fn send_video(out: Output, source: VideoSource) {
    match source {
        VideoSource::Simulcast(_) => {
            // Each layer runs its own loop with its own source (see `PendingMedia::start`).
            tracing::warn!("nested simulcast source");
            out.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        VideoSource::Clip(clip) => loop_video(&out, &clip).await,
        VideoSource::Live(settings) => {
            let mut live = match LiveVideo::new(settings) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the VP8 encoder");
                    out.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let duration = settings.frame_duration();
            let mut ticker = tokio::time::interval(duration);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if out.counters.paused.load(Ordering::Relaxed) {
                    continue;
                }
                let force = out.counters.keyframe_wanted.swap(false, Ordering::Relaxed);
                match live.next_frame(force) {
                    Ok(Some((data, keyframe))) => {
                        if keyframe {
                            out.counters.keyframes.fetch_add(1, Ordering::Relaxed);
                        }
                        write(&out, data, duration, None).await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "VP8 encoding failed");
                        out.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Loops a VP8 clip forever at its frame rate. A keyframe request makes the loop jump to the
/// next keyframe in the clip (wrapping to the first) unless the next frame already is one.
async fn loop_video(out: &Output, clip: &IvfClip) {
    let counters = &out.counters;
    let duration = clip.frame_duration();
    let keyframes = clip.keyframe_indices();
    let mut ticker = tokio::time::interval(duration);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0usize;
    loop {
        ticker.tick().await;
        if counters.paused.load(Ordering::Relaxed) {
            continue;
        }
        if counters.keyframe_wanted.swap(false, Ordering::Relaxed) {
            next = next_keyframe(&keyframes, next).unwrap_or(next);
        }
        let Some(frame) = clip.frames.get(next) else {
            next = 0;
            continue;
        };
        if clip.is_keyframe(next) {
            counters.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        write(out, frame.data.clone(), duration, None).await;
        next = (next + 1) % clip.frames.len();
    }
}

/// The first keyframe index at or after `from`, wrapping around; `None` without keyframes.
pub(crate) fn next_keyframe(keyframes: &[usize], from: usize) -> Option<usize> {
    keyframes
        .iter()
        .copied()
        .find(|&k| k >= from)
        .or_else(|| keyframes.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_jumps_wrap_around() {
        let kf = [0, 30, 60];
        assert_eq!(next_keyframe(&kf, 0), Some(0));
        assert_eq!(next_keyframe(&kf, 1), Some(30));
        assert_eq!(next_keyframe(&kf, 30), Some(30));
        assert_eq!(next_keyframe(&kf, 61), Some(0));
        assert_eq!(next_keyframe(&[], 5), None);
    }

    #[test]
    fn the_default_clip_is_valid_vp8() {
        let clip = IvfClip::parse(DEFAULT_VP8_CLIP).expect("default clip parses");
        assert_eq!(&clip.header.fourcc, b"VP80");
        assert!(clip.frames[0].is_vp8_keyframe());
        assert!(clip.keyframe_indices().len() >= 2);
    }
}
