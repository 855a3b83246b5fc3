//! Generated media: a moving I420 test pattern encoded to VP8 with libvpx, and a talk/silence
//! signal encoded to Opus with libopus.
//!
//! Publishers either encode live (one encoder per client, see [`VideoSource::Live`] and
//! [`AudioSource::Live`]) or, in **cheap mode**, loop a few seconds encoded once per process
//! ([`encode_video_loop`], [`encode_audio_loop`]) with fresh timestamps.
//!
//! [`VideoSource::Live`]: crate::media::VideoSource::Live
//! [`AudioSource::Live`]: crate::media::AudioSource::Live

use crate::frame::{AudioClip, AudioFrame, OPUS_FRAME_DURATION};
use crate::ivf::{IvfClip, IvfFrame, IvfHeader};
use crate::vpx::{VpxCodec, VpxEncoder, VpxEncoderConfig, VpxError};
use bytes::Bytes;
use std::time::Duration;

/// Opus sample rate.
pub const OPUS_SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms Opus frame at 48 kHz.
pub const OPUS_FRAME_SAMPLES: usize = 960;

/// Errors producing generated media.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// libvpx failed.
    #[error(transparent)]
    Vpx(#[from] VpxError),
    /// libopus failed.
    #[error("libopus: {0}")]
    Opus(#[from] opus::Error),
    /// A setting is out of range.
    #[error("invalid generated media setting: {0}")]
    Invalid(String),
}

/// Settings of generated video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedVideo {
    /// VP8 (default) or VP9.
    pub codec: VpxCodec,
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Time between periodic keyframes.
    pub keyframe_interval: Duration,
}

impl Default for GeneratedVideo {
    /// 640x360, 30 fps, 500 kbit/s, a keyframe every 2 s.
    fn default() -> Self {
        Self {
            codec: VpxCodec::Vp8,
            width: 640,
            height: 360,
            fps: 30,
            bitrate_kbps: 500,
            keyframe_interval: Duration::from_secs(2),
        }
    }
}

impl GeneratedVideo {
    /// Frames between periodic keyframes (at least 1).
    pub fn keyframe_every(&self) -> u32 {
        ((self.keyframe_interval.as_secs_f64() * f64::from(self.fps)).round() as u32).max(1)
    }

    /// The duration of one frame.
    pub fn frame_duration(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.fps.max(1)))
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), GenerateError> {
        let bad = |m: &str| Err(GenerateError::Invalid(m.to_owned()));
        if self.width < 16 || self.height < 16 || self.width > 4096 || self.height > 4096 {
            return bad("resolution must be between 16x16 and 4096x4096");
        }
        if self.width & 1 != 0 || self.height & 1 != 0 {
            return bad("width and height must be even");
        }
        if !(1..=120).contains(&self.fps) {
            return bad("fps must be 1..=120");
        }
        if self.bitrate_kbps == 0 {
            return bad("bitrate must be positive");
        }
        Ok(())
    }

    fn encoder(&self) -> Result<VpxEncoder, GenerateError> {
        self.validate()?;
        Ok(VpxEncoder::new(VpxEncoderConfig {
            codec: self.codec,
            width: self.width,
            height: self.height,
            fps: self.fps,
            bitrate_kbps: self.bitrate_kbps,
            // Keyframes are forced on schedule; libvpx's own placement only as a backstop.
            keyframe_interval: self.keyframe_every().saturating_mul(4),
        })?)
    }
}

/// A moving test pattern in I420: a horizontal luma gradient scrolling right, a bright
/// vertical bar sweeping across, chroma that drifts over time, and a frame-counter block
/// (16 binary cells, top left) so every frame differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestPattern {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
}

impl TestPattern {
    /// Bytes of one I420 frame.
    pub fn frame_len(&self) -> usize {
        let (w, h) = (self.width as usize, self.height as usize);
        w * h + 2 * (w / 2) * (h / 2)
    }

    /// Size of one counter cell in pixels.
    fn cell(&self) -> usize {
        (self.width.min(self.height) as usize / 24).max(2)
    }

    /// Renders frame `index` into `buf` (resized to [`frame_len`](Self::frame_len)).
    pub fn render(&self, index: u64, buf: &mut Vec<u8>) {
        let (w, h) = (self.width as usize, self.height as usize);
        buf.resize(self.frame_len(), 0);
        let (y_plane, chroma) = buf.split_at_mut(w * h);
        let shift = (index * 4) as usize;
        let bar_w = (w / 16).max(2);
        let bar_x = (index as usize * 8) % w;
        for (row, line) in y_plane.chunks_exact_mut(w).enumerate() {
            for (x, px) in line.iter_mut().enumerate() {
                let g = ((x + shift) * 255 / w.max(1)) % 256;
                let v = (g as u16 + (row * 64 / h.max(1)) as u16) as u8;
                *px = if x.wrapping_sub(bar_x) < bar_w {
                    235
                } else {
                    v
                };
            }
        }
        // The counter block: 16 cells, bit i of the frame index, white for 1.
        let cell = self.cell();
        for bit in 0..16usize {
            let on = (index >> bit) & 1 == 1;
            let (cx, cy) = ((bit % 8) * cell, (bit / 8) * cell);
            for row in cy..(cy + cell).min(h) {
                for x in cx..(cx + cell).min(w) {
                    y_plane[row * w + x] = if on { 235 } else { 16 };
                }
            }
        }
        let (cw, ch) = (w / 2, h / 2);
        let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
        let drift = (index % 256) as u8;
        for (i, (u, v)) in u_plane.iter_mut().zip(v_plane.iter_mut()).enumerate() {
            let (x, y) = (i % cw.max(1), i / cw.max(1));
            *u = (x * 255 / cw.max(1)) as u8 ^ drift;
            *v = (y * 255 / ch.max(1)) as u8 ^ drift.rotate_left(3);
        }
    }

    /// Reads the frame counter back from a rendered frame (the centre of each cell).
    pub fn read_counter(&self, i420: &[u8]) -> Option<u16> {
        let w = self.width as usize;
        let cell = self.cell();
        let mut n = 0u16;
        for bit in 0..16usize {
            let (x, y) = ((bit % 8) * cell + cell / 2, (bit / 8) * cell + cell / 2);
            if *i420.get(y * w + x)? > 128 {
                n |= 1 << bit;
            }
        }
        Some(n)
    }
}

/// Encodes a live stream of the test pattern: [`next_frame`](Self::next_frame) produces the following
/// frame, a keyframe every [`GeneratedVideo::keyframe_every`] frames or when asked.
#[derive(Debug)]
pub struct LiveVideo {
    settings: GeneratedVideo,
    pattern: TestPattern,
    encoder: VpxEncoder,
    buf: Vec<u8>,
    index: u64,
    since_keyframe: u32,
}

impl LiveVideo {
    /// Creates the encoder.
    pub fn new(settings: GeneratedVideo) -> Result<Self, GenerateError> {
        let encoder = settings.encoder()?;
        Ok(Self {
            settings,
            pattern: TestPattern {
                width: settings.width,
                height: settings.height,
            },
            encoder,
            buf: Vec::new(),
            index: 0,
            since_keyframe: 0,
        })
    }

    /// Renders and encodes the next frame; `Ok(None)` when libvpx dropped it.
    pub fn next_frame(
        &mut self,
        force_keyframe: bool,
    ) -> Result<Option<(Bytes, bool)>, GenerateError> {
        self.pattern.render(self.index, &mut self.buf);
        self.index += 1;
        let force = force_keyframe
            || self.index == 1
            || self.since_keyframe + 1 >= self.settings.keyframe_every();
        let frames = self.encoder.encode(&self.buf, force)?;
        let Some(frame) = frames.into_iter().last() else {
            self.since_keyframe += 1;
            return Ok(None);
        };
        if frame.keyframe {
            self.since_keyframe = 0;
        } else {
            self.since_keyframe += 1;
        }
        Ok(Some((Bytes::from(frame.data), frame.keyframe)))
    }
}

/// Encodes `duration` of the test pattern once (cheap mode), rounded up to whole keyframe
/// intervals so the loop wraps onto a keyframe. Frame `i` carries IVF timestamp `i` in a
/// `1/fps` timebase.
pub fn encode_video_loop(
    settings: GeneratedVideo,
    duration: Duration,
) -> Result<IvfClip, GenerateError> {
    settings.validate()?;
    let every = settings.keyframe_every();
    let wanted = (duration.as_secs_f64() * f64::from(settings.fps)).ceil() as u32;
    let count = wanted.div_ceil(every).max(1) * every;
    let mut live = LiveVideo::new(settings)?;
    let mut frames = Vec::with_capacity(count as usize);
    for i in 0..count {
        if let Some((data, _)) = live.next_frame(i % every == 0)? {
            frames.push(IvfFrame {
                timestamp: u64::from(i),
                data,
            });
        }
    }
    if frames.is_empty() {
        return Err(GenerateError::Invalid(
            "the encoder produced no frames".into(),
        ));
    }
    Ok(IvfClip {
        header: IvfHeader {
            fourcc: match settings.codec {
                VpxCodec::Vp8 => *b"VP80",
                VpxCodec::Vp9 => *b"VP90",
            },
            width: settings.width as u16,
            height: settings.height as u16,
            timebase_denominator: settings.fps,
            timebase_numerator: 1,
            frame_count: frames.len() as u32,
        },
        frames,
    })
}

/// A small deterministic PRNG (xorshift64*), so each bot's talk pattern follows its seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi.saturating_sub(lo).max(1))) as u32
    }
    /// Uniform in `[-1, 1)`.
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A talk/silence signal: bursts of a tone with harmonics and a little noise (1-4 s, ramped in
/// and out), separated by silence (0.5-3 s), lengths and pitch drawn from the seed.
#[derive(Debug, Clone)]
pub struct TalkSignal {
    rng: Rng,
    /// Samples left in the current period.
    left: u32,
    talking: bool,
    /// Length of the current period, for the envelope.
    period: u32,
    freq: f32,
    phase: f32,
}

impl TalkSignal {
    /// A signal whose talk and silence periods follow `seed`. It starts talking after a short
    /// random silence (0-1 s).
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let left = rng.range(0, OPUS_SAMPLE_RATE);
        Self {
            rng,
            left,
            talking: false,
            period: left,
            freq: 220.0,
            phase: 0.0,
        }
    }

    /// Whether the most recent sample was part of a talk burst.
    pub fn talking(&self) -> bool {
        self.talking
    }

    /// Fills `out` with 48 kHz mono samples.
    pub fn fill(&mut self, out: &mut [i16]) {
        for s in out.iter_mut() {
            while self.left == 0 {
                self.talking = !self.talking;
                let (lo, hi) = if self.talking {
                    (OPUS_SAMPLE_RATE, 4 * OPUS_SAMPLE_RATE)
                } else {
                    (OPUS_SAMPLE_RATE / 2, 3 * OPUS_SAMPLE_RATE)
                };
                self.left = self.rng.range(lo, hi);
                self.period = self.left;
                self.freq = self.rng.range(140, 400) as f32;
            }
            self.left -= 1;
            if !self.talking {
                *s = 0;
                continue;
            }
            // 30 ms ramps at both ends of a burst.
            let pos = self.period - self.left;
            let ramp = 1440.0;
            let env = (pos as f32 / ramp).min(self.left as f32 / ramp).min(1.0);
            self.phase = (self.phase + self.freq / OPUS_SAMPLE_RATE as f32).fract();
            let t = self.phase * std::f32::consts::TAU;
            let tone = t.sin() * 0.6 + (2.0 * t).sin() * 0.25 + (3.0 * t).sin() * 0.1;
            let v = (tone + self.rng.unit() * 0.05) * env * 0.5;
            *s = (v * f32::from(i16::MAX)) as i16;
        }
    }
}

/// The RFC 6464 audio level of a frame: its RMS in −dBov, 0 (loudest) to 127 (silence).
pub fn audio_level(samples: &[i16]) -> u8 {
    if samples.is_empty() {
        return 127;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / samples.len() as f64).sqrt() / 32768.0;
    if rms <= 0.0 {
        return 127;
    }
    (-20.0 * rms.log10()).round().clamp(0.0, 127.0) as u8
}

/// Encodes the talk signal live, 20 ms per [`next_frame`](Self::next_frame).
pub struct LiveAudio {
    signal: TalkSignal,
    encoder: opus::Encoder,
    pcm: Vec<i16>,
    out: Vec<u8>,
}

impl std::fmt::Debug for LiveAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveAudio")
            .field("signal", &self.signal)
            .finish_non_exhaustive()
    }
}

impl LiveAudio {
    /// Creates a mono 48 kHz VoIP encoder (32 kbit/s, DTX off) for the signal of `seed`.
    pub fn new(seed: u64) -> Result<Self, GenerateError> {
        let mut encoder = opus::Encoder::new(
            OPUS_SAMPLE_RATE,
            opus::Channels::Mono,
            opus::Application::Voip,
        )?;
        encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
        encoder.set_inband_fec(true)?;
        Ok(Self {
            signal: TalkSignal::new(seed),
            encoder,
            pcm: vec![0; OPUS_FRAME_SAMPLES],
            out: vec![0; 1500],
        })
    }

    /// The next 20 ms Opus frame.
    pub fn next_frame(&mut self) -> Result<AudioFrame, GenerateError> {
        self.signal.fill(&mut self.pcm);
        let n = self.encoder.encode(&self.pcm, &mut self.out)?;
        Ok(AudioFrame {
            data: Bytes::copy_from_slice(&self.out[..n]),
            duration: OPUS_FRAME_DURATION,
            level: Some(audio_level(&self.pcm)),
        })
    }
}

/// Encodes `duration` of the talk signal of `seed` once (cheap mode).
pub fn encode_audio_loop(seed: u64, duration: Duration) -> Result<AudioClip, GenerateError> {
    let mut live = LiveAudio::new(seed)?;
    let n = (duration.as_millis() / OPUS_FRAME_DURATION.as_millis()).max(1);
    let frames = (0..n)
        .map(|_| live.next_frame())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AudioClip { frames })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_moves_and_counts() {
        let p = TestPattern {
            width: 64,
            height: 48,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        p.render(0, &mut a);
        p.render(1, &mut b);
        assert_eq!(a.len(), 64 * 48 * 3 / 2);
        assert_ne!(a, b, "consecutive frames differ");
        assert_eq!(p.read_counter(&a), Some(0));
        assert_eq!(p.read_counter(&b), Some(1));
        p.render(0xBEEF, &mut a);
        assert_eq!(p.read_counter(&a), Some(0xBEEF));
        // The bar sweeps: its column is bright in frame 40 (x = 320 mod 64 = 0 .. 3) below
        // the counter block.
        p.render(40, &mut a);
        assert_eq!(a[30 * 64], 235);
    }

    #[test]
    fn the_video_loop_wraps_on_a_keyframe_and_decodes() {
        let settings = GeneratedVideo {
            codec: Default::default(),
            width: 96,
            height: 64,
            fps: 10,
            bitrate_kbps: 100,
            keyframe_interval: Duration::from_millis(500),
        };
        let clip = encode_video_loop(settings, Duration::from_millis(1200)).expect("encodes");
        assert_eq!(
            clip.frames.len(),
            15,
            "rounded up to whole keyframe intervals"
        );
        assert_eq!(clip.keyframe_indices(), vec![0, 5, 10]);
        assert_eq!(clip.frame_duration(), Duration::from_millis(100));
        let mut dec = crate::vpx::Vp8Decoder::new().expect("decoder");
        for f in &clip.frames {
            let pic = dec.decode(&f.data).expect("decodes").expect("picture");
            assert_eq!((pic.width, pic.height), (96, 64));
        }
    }

    #[test]
    fn live_video_honours_keyframe_requests() {
        let settings = GeneratedVideo {
            codec: Default::default(),
            width: 32,
            height: 32,
            fps: 30,
            bitrate_kbps: 100,
            keyframe_interval: Duration::from_secs(10),
        };
        let mut live = LiveVideo::new(settings).expect("encoder");
        let keys: Vec<bool> = (0..6)
            .map(|i| live.next_frame(i == 4).expect("encode").expect("frame").1)
            .collect();
        assert_eq!(keys, [true, false, false, false, true, false]);
        assert!(LiveVideo::new(GeneratedVideo {
            codec: Default::default(),
            width: 33,
            ..settings
        })
        .is_err());
    }

    #[test]
    fn talk_alternates_with_silence() {
        let mut s = TalkSignal::new(7);
        let mut frame = vec![0i16; OPUS_FRAME_SAMPLES];
        let (mut loud, mut quiet) = (0, 0);
        for _ in 0..(20 * 50) {
            s.fill(&mut frame);
            match audio_level(&frame) {
                127 => quiet += 1,
                l if l < 40 => loud += 1,
                _ => {}
            }
        }
        assert!(loud > 100 && quiet > 100, "loud {loud} quiet {quiet}");
        // Different seeds, different patterns.
        let mut other = TalkSignal::new(8);
        let (mut a, mut b) = (vec![0i16; 48_000], vec![0i16; 48_000]);
        TalkSignal::new(7).fill(&mut a);
        other.fill(&mut b);
        assert_ne!(a, b);
        assert_eq!(audio_level(&[0; 10]), 127);
        assert_eq!(audio_level(&[i16::MAX; 10]), 0);
    }

    #[test]
    fn the_audio_loop_has_levels_and_decodes() {
        let clip = encode_audio_loop(3, Duration::from_secs(6)).expect("encodes");
        assert_eq!(clip.frames.len(), 300);
        let levels: Vec<u8> = clip.frames.iter().filter_map(|f| f.level).collect();
        assert!(levels.contains(&127) && levels.iter().any(|&l| l < 40));
        let mut dec = opus::Decoder::new(OPUS_SAMPLE_RATE, opus::Channels::Mono).expect("dec");
        let mut pcm = vec![0i16; OPUS_FRAME_SAMPLES];
        for f in &clip.frames {
            assert_eq!(dec.decode(&f.data, &mut pcm, false).expect("decodes"), 960);
        }
    }
}
