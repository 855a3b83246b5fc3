//! The decode check: decodes a sample of received VP8 frames with libvpx to prove they
//! arrive intact.
//!
//! Every `n`th group of pictures (a keyframe and the delta frames up to the next keyframe) is
//! decoded whole, since a delta frame only decodes on top of its predecessors. A frame that
//! never completed inside a sampled group (a sequence gap between consecutive complete frames)
//! abandons the group as skipped rather than feeding the decoder a broken reference chain.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use crate::stats::{AssembledFrame, DecodeStats, ReceivedTrackStats};
use crate::vpx::Vp8Decoder;

/// Frames queued per decode thread; a frame that finds the queue full is not decoded (its
/// group of pictures then counts as skipped).
const QUEUE: usize = 256;
/// The name of the decode threads.
pub const DECODE_THREAD: &str = "chorus-decode";

/// One frame for a track's decode check.
struct Job {
    check: Arc<Mutex<DecodeCheck>>,
    stats: Arc<Mutex<ReceivedTrackStats>>,
    frame: AssembledFrame,
}

/// The process's decode threads (started on first use): libvpx runs there, never on the
/// thread that receives (the shared engine, a runtime worker), so decoding delays no packet.
struct Pool {
    workers: Vec<SyncSender<Job>>,
    next: AtomicUsize,
}

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let workers: Vec<SyncSender<Job>> = (0..threads)
            .filter_map(|_| {
                let (tx, rx) = sync_channel(QUEUE);
                std::thread::Builder::new()
                    .name(DECODE_THREAD.into())
                    .spawn(move || decode_jobs(rx))
                    .map_err(|e| tracing::warn!(error = %e, "cannot start a decode thread"))
                    .ok()
                    .map(|_| tx)
            })
            .collect();
        (!workers.is_empty()).then(|| Pool {
            workers,
            next: AtomicUsize::new(0),
        })
    })
    .as_ref()
}

fn decode_jobs(jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let outcome = match job.check.lock() {
            Ok(mut check) => check.on_frame(&job.frame),
            Err(_) => continue,
        };
        if let Ok(mut stats) = job.stats.lock() {
            stats.decode.add(outcome);
        }
    }
}

/// A track's decode check on a decode thread: frames are handed over in order (one thread per
/// track) and the outcome lands in the track's [`ReceivedTrackStats::decode`].
pub(crate) struct TrackDecoder {
    check: Arc<Mutex<DecodeCheck>>,
    stats: Arc<Mutex<ReceivedTrackStats>>,
    worker: SyncSender<Job>,
}

impl TrackDecoder {
    /// Decodes every `every`th group of pictures of the track accounted in `stats`; `None`
    /// when no decode thread could be started.
    pub(crate) fn new(every: u32, stats: Arc<Mutex<ReceivedTrackStats>>) -> Option<Self> {
        let pool = pool()?;
        let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.workers.len();
        Some(Self {
            check: Arc::new(Mutex::new(DecodeCheck::new(every))),
            stats,
            worker: pool.workers[i].clone(),
        })
    }

    /// Queues a complete frame; a frame the decode thread has no room for is dropped (the
    /// check then skips its group of pictures).
    pub(crate) fn submit(&self, frame: AssembledFrame) {
        let job = Job {
            check: Arc::clone(&self.check),
            stats: Arc::clone(&self.stats),
            frame,
        };
        if let Err(TrySendError::Full(_)) = self.worker.try_send(job) {
            tracing::debug!("decode queue full; frame not decoded");
        }
    }
}

/// Per-track decode state.
#[derive(Debug)]
pub struct DecodeCheck {
    every: u32,
    keyframes: u64,
    decoder: Option<Vp8Decoder>,
    /// Inside a sampled group of pictures.
    decoding: bool,
    /// Last sequence number of the previous complete frame.
    last_seq: Option<u16>,
}

impl DecodeCheck {
    /// Decodes every `every`th group of pictures (1 = every frame); 0 is taken as 1.
    pub fn new(every: u32) -> Self {
        Self {
            every: every.max(1),
            keyframes: 0,
            decoder: None,
            decoding: false,
            last_seq: None,
        }
    }

    /// Takes the next complete frame; returns what happened to it.
    pub fn on_frame(&mut self, frame: &AssembledFrame) -> DecodeStats {
        let mut out = DecodeStats::default();
        let contiguous = self
            .last_seq
            .is_none_or(|last| frame.first_seq == last.wrapping_add(1));
        self.last_seq = Some(frame.last_seq);
        if frame.keyframe {
            self.decoding = self.keyframes.is_multiple_of(u64::from(self.every));
            self.keyframes += 1;
        } else if self.decoding && !contiguous {
            self.decoding = false;
            out.skipped += 1;
        }
        if !self.decoding {
            return out;
        }
        if self.decoder.is_none() {
            match Vp8Decoder::new() {
                Ok(d) => self.decoder = Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a VP8 decoder");
                    out.errors += 1;
                    self.decoding = false;
                    return out;
                }
            }
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return out;
        };
        out.attempted += 1;
        match decoder.decode(&frame.data) {
            Ok(Some(pic)) => {
                out.decoded += 1;
                out.width = pic.width;
                out.height = pic.height;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, keyframe = frame.keyframe, "VP8 decode failed");
                out.errors += 1;
                // Wait for the next sampled keyframe with a fresh decoder.
                self.decoder = None;
                self.decoding = false;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{encode_video_loop, GeneratedVideo};
    use std::time::Duration;

    fn frames() -> Vec<AssembledFrame> {
        let clip = encode_video_loop(
            GeneratedVideo {
                codec: Default::default(),
                width: 64,
                height: 48,
                fps: 10,
                bitrate_kbps: 100,
                keyframe_interval: Duration::from_millis(300),
            },
            Duration::from_millis(1200),
        )
        .expect("encodes");
        clip.frames
            .iter()
            .enumerate()
            .map(|(i, f)| AssembledFrame {
                keyframe: f.is_vp8_keyframe(),
                first_seq: (i * 2) as u16,
                last_seq: (i * 2 + 1) as u16,
                data: f.data.to_vec(),
            })
            .collect()
    }

    #[test]
    fn samples_every_other_group_of_pictures() {
        let frames = frames();
        assert_eq!(frames.len(), 12);
        let mut all = DecodeCheck::new(1);
        let mut half = DecodeCheck::new(2);
        let (mut a, mut h) = (DecodeStats::default(), DecodeStats::default());
        for f in &frames {
            a.add(all.on_frame(f));
            h.add(half.on_frame(f));
        }
        assert_eq!((a.attempted, a.decoded, a.errors), (12, 12, 0));
        assert_eq!((a.width, a.height), (64, 48));
        assert_eq!((h.attempted, h.decoded, h.errors), (6, 6, 0));
    }

    #[test]
    fn frames_decode_in_order_on_a_decode_thread() {
        let stats = Arc::new(Mutex::new(ReceivedTrackStats::new(
            "p".into(),
            "t".into(),
            chorus_signal::protocol::TrackKind::Video,
        )));
        let decoder = TrackDecoder::new(1, Arc::clone(&stats)).expect("a decode thread");
        for f in frames() {
            decoder.submit(f);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let decoded = loop {
            let d = stats.lock().expect("stats").decode;
            if d.attempted == 12 || std::time::Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // Any reordering would break the reference chain: skips or errors.
        assert_eq!(
            (
                decoded.attempted,
                decoded.decoded,
                decoded.errors,
                decoded.skipped
            ),
            (12, 12, 0, 0)
        );
    }

    #[test]
    fn counts_corrupt_frames_and_skips_broken_chains() {
        let mut frames = frames();
        // A corrupt keyframe: truncated to its header.
        frames[0].data.truncate(4);
        // A missing frame in the second group.
        frames.remove(4);
        let mut check = DecodeCheck::new(1);
        let mut s = DecodeStats::default();
        for f in &frames {
            s.add(check.on_frame(f));
        }
        assert_eq!(s.errors, 1, "{s:?}");
        assert_eq!(s.skipped, 1, "{s:?}");
        // The third and fourth groups (3 frames each) decode; the second's first frame too.
        assert_eq!(s.decoded, 7, "{s:?}");
    }
}
