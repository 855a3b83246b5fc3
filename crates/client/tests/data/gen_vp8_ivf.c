/* Generates a small VP8 IVF test clip: 160x120, 30 fps, 90 frames, keyframe every 30 frames. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vpx/vpx_encoder.h>
#include <vpx/vp8cx.h>

static void put16(unsigned char *p, unsigned v) { p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; }
static void put32(unsigned char *p, unsigned v) { put16(p, v & 0xffff); put16(p + 2, v >> 16); }

int main(int argc, char **argv) {
    const int w = 160, h = 120, fps = 30, nframes = 90;
    FILE *out = fopen(argv[1], "wb");
    if (!out) return 1;
    vpx_codec_enc_cfg_t cfg;
    vpx_codec_ctx_t codec;
    if (vpx_codec_enc_config_default(vpx_codec_vp8_cx(), &cfg, 0)) return 2;
    cfg.g_w = w; cfg.g_h = h;
    cfg.g_timebase.num = 1; cfg.g_timebase.den = fps;
    cfg.rc_target_bitrate = 150;
    cfg.g_error_resilient = 1;
    cfg.kf_mode = VPX_KF_AUTO; cfg.kf_min_dist = fps; cfg.kf_max_dist = fps;
    cfg.g_lag_in_frames = 0;
    if (vpx_codec_enc_init(&codec, vpx_codec_vp8_cx(), &cfg, 0)) return 3;
    unsigned char hdr[32] = {0};
    memcpy(hdr, "DKIF", 4); put16(hdr + 4, 0); put16(hdr + 6, 32); memcpy(hdr + 8, "VP80", 4);
    put16(hdr + 12, w); put16(hdr + 14, h); put32(hdr + 16, fps); put32(hdr + 20, 1);
    put32(hdr + 24, nframes);
    fwrite(hdr, 1, 32, out);
    vpx_image_t img;
    vpx_img_alloc(&img, VPX_IMG_FMT_I420, w, h, 1);
    int written = 0;
    for (int f = 0; f <= nframes; f++) {
        vpx_image_t *in = NULL;
        if (f < nframes) {
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    img.planes[0][y * img.stride[0] + x] = (unsigned char)((x + 2 * f) ^ (y + f));
            for (int y = 0; y < h / 2; y++)
                for (int x = 0; x < w / 2; x++) {
                    img.planes[1][y * img.stride[1] + x] = (unsigned char)(128 + 40 * ((x / 10 + f / 10) % 2));
                    img.planes[2][y * img.stride[2] + x] = (unsigned char)(128 + 40 * ((y / 10 + f / 15) % 2));
                }
            in = &img;
        }
        int flags = (f % fps == 0) ? VPX_EFLAG_FORCE_KF : 0;
        if (vpx_codec_encode(&codec, in, f, 1, flags, VPX_DL_GOOD_QUALITY)) return 4;
        vpx_codec_iter_t iter = NULL;
        const vpx_codec_cx_pkt_t *pkt;
        while ((pkt = vpx_codec_get_cx_data(&codec, &iter))) {
            if (pkt->kind != VPX_CODEC_CX_FRAME_PKT) continue;
            unsigned char fh[12];
            put32(fh, (unsigned)pkt->data.frame.sz);
            put32(fh + 4, (unsigned)pkt->data.frame.pts); put32(fh + 8, 0);
            fwrite(fh, 1, 12, out);
            fwrite(pkt->data.frame.buf, 1, pkt->data.frame.sz, out);
            written++;
            fprintf(stderr, "frame %d pts %ld size %zu%s\n", written, (long)pkt->data.frame.pts,
                    pkt->data.frame.sz, (pkt->data.frame.flags & VPX_FRAME_IS_KEY) ? " KEY" : "");
        }
    }
    vpx_codec_destroy(&codec);
    fclose(out);
    return written == nframes ? 0 : 5;
}
