//! A small safe wrapper over libvpx (system library, via `env-libvpx-sys`'s pre-generated
//! bindings): a VP8 or VP9 realtime [`VpxEncoder`] for I420 frames and a VP8
//! [`Vp8Decoder`].
//!
//! This is the only module of the crate that uses `unsafe`; every FFI call is local to one
//! method and checks the library's status code.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_long, c_uint, c_ulong};
use std::ptr;
use vpx_sys::*;

/// A libvpx failure.
#[derive(Debug, thiserror::Error)]
#[error("libvpx: {what} failed ({code:?})")]
pub struct VpxError {
    /// The call that failed.
    pub what: &'static str,
    /// libvpx's status code.
    pub code: vpx_codec_err_t,
}

fn check(what: &'static str, code: vpx_codec_err_t) -> Result<(), VpxError> {
    if code == vpx_codec_err_t::VPX_CODEC_OK {
        Ok(())
    } else {
        Err(VpxError { what, code })
    }
}

/// The codecs libvpx encodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VpxCodec {
    /// VP8.
    #[default]
    Vp8,
    /// VP9, profile 0.
    Vp9,
}

/// Encoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VpxEncoderConfig {
    /// The codec.
    pub codec: VpxCodec,
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Frames per second (the timebase is 1/fps).
    pub fps: u32,
    /// Target bitrate in kbit/s (CBR).
    pub bitrate_kbps: u32,
    /// Maximum distance between keyframes, in frames.
    pub keyframe_interval: u32,
}

/// One encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The frame's bitstream.
    pub data: Vec<u8>,
    /// Whether it is a keyframe.
    pub keyframe: bool,
}

/// A VP8 or VP9 encoder in realtime mode (one pass, CBR, no lag, fastest speed).
pub struct VpxEncoder {
    ctx: Box<vpx_codec_ctx_t>,
    config: VpxEncoderConfig,
    pts: i64,
}

// The codec context has no thread affinity; it is only ever used through `&mut self`.
unsafe impl Send for VpxEncoder {}

impl std::fmt::Debug for VpxEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VpxEncoder")
            .field("config", &self.config)
            .field("pts", &self.pts)
            .finish()
    }
}

impl VpxEncoder {
    /// Creates an encoder.
    pub fn new(config: VpxEncoderConfig) -> Result<Self, VpxError> {
        let invalid = VpxError {
            what: "encoder configuration",
            code: vpx_codec_err_t::VPX_CODEC_INVALID_PARAM,
        };
        if config.width == 0
            || config.height == 0
            || config.width & 1 != 0
            || config.height & 1 != 0
            || config.fps == 0
            || config.bitrate_kbps == 0
        {
            return Err(invalid);
        }
        // SAFETY: the interface pointer is static; `cfg` is a plain C struct that
        // `vpx_codec_enc_config_default` fills in; `ctx` is zeroed and boxed so its address
        // stays fixed for libvpx's lifetime of the context.
        unsafe {
            let iface = match config.codec {
                VpxCodec::Vp8 => vpx_codec_vp8_cx(),
                VpxCodec::Vp9 => vpx_codec_vp9_cx(),
            };
            let mut cfg = MaybeUninit::<vpx_codec_enc_cfg_t>::zeroed().assume_init();
            check(
                "vpx_codec_enc_config_default",
                vpx_codec_enc_config_default(iface, &mut cfg, 0),
            )?;
            cfg.g_w = config.width;
            cfg.g_h = config.height;
            cfg.g_timebase.num = 1;
            cfg.g_timebase.den = config.fps as c_int;
            cfg.rc_target_bitrate = config.bitrate_kbps;
            cfg.rc_end_usage = vpx_rc_mode::VPX_CBR;
            cfg.g_threads = 1;
            cfg.g_lag_in_frames = 0;
            cfg.g_error_resilient = 1;
            cfg.rc_dropframe_thresh = 0;
            cfg.kf_mode = vpx_kf_mode::VPX_KF_AUTO;
            cfg.kf_min_dist = 0;
            cfg.kf_max_dist = config.keyframe_interval.max(1);
            let mut ctx = Box::new(MaybeUninit::<vpx_codec_ctx_t>::zeroed().assume_init());
            check(
                "vpx_codec_enc_init_ver",
                vpx_codec_enc_init_ver(&mut *ctx, iface, &cfg, 0, VPX_ENCODER_ABI_VERSION as c_int),
            )?;
            let mut enc = Self {
                ctx,
                config,
                pts: 0,
            };
            // Fastest realtime speed: a load generator wants cheap frames (VP8 goes to 16,
            // VP9 to 9).
            let speed = match config.codec {
                VpxCodec::Vp8 => 12,
                VpxCodec::Vp9 => 9,
            };
            check(
                "VP8E_SET_CPUUSED",
                vpx_codec_control_(
                    &mut *enc.ctx,
                    vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int,
                    speed as c_int,
                ),
            )?;
            Ok(enc)
        }
    }

    /// The configuration.
    pub fn config(&self) -> &VpxEncoderConfig {
        &self.config
    }

    /// Encodes one I420 frame (`width * height * 3 / 2` bytes); `force_keyframe` makes it a
    /// keyframe. Returns the frames libvpx produced (one, or none when it dropped the frame).
    pub fn encode(
        &mut self,
        i420: &[u8],
        force_keyframe: bool,
    ) -> Result<Vec<EncodedFrame>, VpxError> {
        let (w, h) = (self.config.width, self.config.height);
        if i420.len() < (w as usize) * (h as usize) * 3 / 2 {
            return Err(VpxError {
                what: "vpx_codec_encode (short frame buffer)",
                code: vpx_codec_err_t::VPX_CODEC_INVALID_PARAM,
            });
        }
        let flags: c_long = if force_keyframe {
            VPX_EFLAG_FORCE_KF as c_long
        } else {
            0
        };
        let mut out = Vec::new();
        // SAFETY: `image` wraps `i420` (checked long enough) without copying and lives for
        // the encode call only; libvpx only reads it. Packets returned by
        // `vpx_codec_get_cx_data` stay valid until the next encode call and are copied out
        // before that.
        unsafe {
            let mut image = MaybeUninit::<vpx_image_t>::zeroed().assume_init();
            let wrapped = vpx_img_wrap(
                &mut image,
                vpx_img_fmt::VPX_IMG_FMT_I420,
                w as c_uint,
                h as c_uint,
                1,
                i420.as_ptr() as *mut u8,
            );
            if wrapped.is_null() {
                return Err(VpxError {
                    what: "vpx_img_wrap",
                    code: vpx_codec_err_t::VPX_CODEC_ERROR,
                });
            }
            check(
                "vpx_codec_encode",
                vpx_codec_encode(
                    &mut *self.ctx,
                    &image,
                    self.pts,
                    1,
                    flags,
                    VPX_DL_REALTIME as c_ulong,
                ),
            )?;
            self.pts += 1;
            let mut iter: vpx_codec_iter_t = ptr::null();
            loop {
                let pkt = vpx_codec_get_cx_data(&mut *self.ctx, &mut iter);
                if pkt.is_null() {
                    break;
                }
                if (*pkt).kind != vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    continue;
                }
                let frame = (*pkt).data.frame;
                let data = std::slice::from_raw_parts(frame.buf as *const u8, frame.sz as usize);
                out.push(EncodedFrame {
                    data: data.to_vec(),
                    keyframe: frame.flags & VPX_FRAME_IS_KEY != 0,
                });
            }
        }
        Ok(out)
    }
}

impl Drop for VpxEncoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialised in `new` and is destroyed once.
        unsafe {
            vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

/// A decoded picture's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedFrame {
    /// Displayed width.
    pub width: u32,
    /// Displayed height.
    pub height: u32,
}

/// A VP8 decoder (single-threaded).
pub struct Vp8Decoder {
    ctx: Box<vpx_codec_ctx_t>,
}

// See `VpxEncoder`.
unsafe impl Send for Vp8Decoder {}

impl std::fmt::Debug for Vp8Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Decoder").finish_non_exhaustive()
    }
}

impl Vp8Decoder {
    /// Creates a decoder.
    pub fn new() -> Result<Self, VpxError> {
        // SAFETY: as in `VpxEncoder::new`; `cfg` is read during init only.
        unsafe {
            let mut ctx = Box::new(MaybeUninit::<vpx_codec_ctx_t>::zeroed().assume_init());
            let cfg = vpx_codec_dec_cfg_t {
                threads: 1,
                w: 0,
                h: 0,
            };
            check(
                "vpx_codec_dec_init_ver",
                vpx_codec_dec_init_ver(
                    &mut *ctx,
                    vpx_codec_vp8_dx(),
                    &cfg,
                    0,
                    VPX_DECODER_ABI_VERSION as c_int,
                ),
            )?;
            Ok(Self { ctx })
        }
    }

    /// Decodes one complete VP8 frame. `Ok(None)` when the decoder produced no picture.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Option<DecodedFrame>, VpxError> {
        if frame.is_empty() {
            return Err(VpxError {
                what: "vpx_codec_decode (empty frame)",
                code: vpx_codec_err_t::VPX_CODEC_CORRUPT_FRAME,
            });
        }
        let len = c_uint::try_from(frame.len()).map_err(|_| VpxError {
            what: "vpx_codec_decode (frame too large)",
            code: vpx_codec_err_t::VPX_CODEC_INVALID_PARAM,
        })?;
        // SAFETY: libvpx reads `frame` during the call only; the returned image belongs to the
        // decoder and is only inspected before the next call.
        unsafe {
            check(
                "vpx_codec_decode",
                vpx_codec_decode(&mut *self.ctx, frame.as_ptr(), len, ptr::null_mut(), 0),
            )?;
            let mut iter: vpx_codec_iter_t = ptr::null();
            let mut last = None;
            loop {
                let img = vpx_codec_get_frame(&mut *self.ctx, &mut iter);
                if img.is_null() {
                    break;
                }
                last = Some(DecodedFrame {
                    width: (*img).d_w,
                    height: (*img).d_h,
                });
            }
            Ok(last)
        }
    }
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe {
            vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_a_keyframe_then_deltas() {
        let cfg = VpxEncoderConfig {
            codec: VpxCodec::Vp8,
            width: 64,
            height: 48,
            fps: 30,
            bitrate_kbps: 200,
            keyframe_interval: 30,
        };
        let mut enc = VpxEncoder::new(cfg).expect("encoder");
        let mut dec = Vp8Decoder::new().expect("decoder");
        let mut frame = vec![0u8; 64 * 48 * 3 / 2];
        for i in 0..5u8 {
            frame.iter_mut().take(64 * 48).for_each(|p| *p = i * 40);
            let out = enc.encode(&frame, false).expect("encode");
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].keyframe, i == 0);
            assert_eq!(crate::ivf::is_vp8_keyframe(&out[0].data), i == 0);
            let pic = dec.decode(&out[0].data).expect("decode").expect("picture");
            assert_eq!((pic.width, pic.height), (64, 48));
        }
        let forced = enc.encode(&frame, true).expect("encode");
        assert!(forced[0].keyframe);
        assert!(dec.decode(&[0x00, 0x01, 0x02]).is_err());
        assert!(VpxEncoder::new(VpxEncoderConfig { width: 63, ..cfg }).is_err());
    }

    #[test]
    fn encodes_vp9_keyframes_on_request() {
        let mut enc = VpxEncoder::new(VpxEncoderConfig {
            codec: VpxCodec::Vp9,
            width: 64,
            height: 48,
            fps: 30,
            bitrate_kbps: 200,
            keyframe_interval: 300,
        })
        .expect("encoder");
        let frame = vec![0x80u8; 64 * 48 * 3 / 2];
        for i in 0..4 {
            let out = enc.encode(&frame, i == 2).expect("encode");
            assert_eq!(out.len(), 1);
            let key = i == 0 || i == 2;
            assert_eq!(out[0].keyframe, key, "frame {i}");
            assert_eq!(crate::ivf::is_vp9_keyframe(&out[0].data), key, "frame {i}");
        }
    }
}
