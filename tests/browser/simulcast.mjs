#!/usr/bin/env node
// End-to-end simulcast with real browsers: Chromium A publishes its fake camera at 1280x720 as
// three layers (the call page's `simulcast` option: rid q/h/f at 1/4, 1/2 and full size).
// Chromium "low" joins asking for the low layer, Chromium "high" with the default (high).
// Each must decode about the size it asked for (inbound-rtp `frameWidth`: 320 and 1280, or
// at least the largest layer the publisher's own bandwidth estimate lets it send); then the two
// swap their requests with `track_settings` and the decoded sizes must swap too, while frames
// keep being decoded, without loss and without either decoder asking for a keyframe.
//
//   node tests/browser/simulcast.mjs http://127.0.0.1:7880
//
// Exit 0: passed (the last stdout line is a JSON summary). Exit 1: failed (diagnostics on
// stderr). Exit 2: could not run.

import {
  baseUrlFromArgs, requireChromium, launch, poll, progress, randomName, run,
} from './lib.mjs';

const base = baseUrlFromArgs('tests/browser/simulcast.mjs');
requireChromium();

const UI_TIMEOUT_MS = 10000;
const MEDIA_TIMEOUT_MS = 40000;

const diagnose = () => (window.chorus ? {
  state: window.chorus.state(),
  log: window.chorus.log.slice(-60),
} : { note: 'window.chorus is not defined' });

/** The subscriber's inbound-rtp of one remote track (by its msid track id, the server's id). */
async function trackStats(page, trackId) {
  return page.evaluate(async (id) => {
    const pc = window.chorus.pcs.subscriber;
    if (!pc) return null;
    for (const s of (await pc.getStats()).values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video' && s.trackIdentifier === id) {
        return { frameWidth: s.frameWidth || 0, framesDecoded: s.framesDecoded || 0,
          keyFramesDecoded: s.keyFramesDecoded || 0, packetsLost: s.packetsLost || 0,
          nackCount: s.nackCount || 0, pliCount: s.pliCount || 0 };
      }
    }
    return null;
  }, trackId);
}

/** The publisher's outbound video per rid: `{ q: { frameWidth, framesEncoded, active }, … }`. */
async function layersSent(page) {
  return page.evaluate(async () => {
    const out = {};
    const pc = window.chorus.pcs.publisher;
    if (!pc) return out;
    for (const s of (await pc.getStats()).values()) {
      if (s.type === 'outbound-rtp' && s.kind === 'video') {
        out[s.rid || '-'] = {
          frameWidth: s.frameWidth || 0,
          framesEncoded: s.framesEncoded || 0,
          active: s.active,
          limitation: s.qualityLimitationReason,
        };
      }
    }
    return out;
  });
}

async function joinPage(br, room, options) {
  await br.page.goto(`${base}/`, { waitUntil: 'load' });
  await br.page.evaluate(({ room, name, options }) => window.chorus.join(room, name, options),
    { room, name: br.name, options });
  let me;
  await poll(async () => {
    const st = await br.page.evaluate(() => window.chorus.state());
    if (st.phase === 'failed') throw new Error(`${br.name} failed to join: ${st.errors.join('; ')}`);
    me = st.me;
    return st.phase === 'joined';
  }, { timeoutMs: UI_TIMEOUT_MS, what: `${br.name} to join` });
  return me;
}

/** Waits until `br` decodes track `trackId` `width` pixels wide (and is still decoding). */
async function waitWidth(br, trackId, width, what) {
  let st;
  let before = null;
  await poll(async () => {
    st = await trackStats(br.page, trackId);
    if (!st) return false;
    const ok = st.frameWidth === width;
    const growing = before !== null && st.framesDecoded > before;
    before = st.framesDecoded;
    return ok && growing;
  }, { timeoutMs: MEDIA_TIMEOUT_MS, what }).catch((e) => { e.diagnostics = { stats: st }; throw e; });
  return st;
}

run('simulcast', async (browsers) => {
  const started = Date.now();
  const room = randomName('sim');
  progress('simulcast', `launching three Chromiums against ${base}, room ${room}`);
  const [pub, low, high] = await Promise.all(['publisher', 'low', 'high'].map((n) => launch(n)));
  browsers.push(pub, low, high);
  for (const b of browsers) b.diagnose = diagnose;

  const pubMe = await joinPage(pub, room, { simulcast: true });
  await joinPage(low, room, { quality: 'low' });
  await joinPage(high, room, {});

  // The room announces the video track with its three layers, lowest first.
  let video;
  await poll(async () => {
    const st = await low.page.evaluate(() => window.chorus.state());
    video = st.participants.filter((p) => p.id === pubMe.id)
      .flatMap((p) => p.tracks).find((t) => t.kind === 'video');
    return video && video.layers;
  }, { timeoutMs: UI_TIMEOUT_MS, what: 'the video track with its layers' });
  if (JSON.stringify(video.layers) !== JSON.stringify(['q', 'h', 'f'])) {
    throw new Error(`video track layers are ${JSON.stringify(video.layers)}, want ["q","h","f"]`);
  }

  // The publisher ramps its bandwidth estimate before sending the full layer: wait for it, so
  // the sizes below are what the server chose and not what the publisher could send.
  let sent;
  await poll(async () => {
    sent = await layersSent(pub.page);
    return ['q', 'h', 'f'].every((r) => sent[r] && sent[r].framesEncoded > 0)
      && sent.f.frameWidth === 1280 && sent.q.frameWidth === 320;
  }, { timeoutMs: MEDIA_TIMEOUT_MS, what: 'the publisher to send q=320 and f=1280 wide' })
    .catch((e) => { e.diagnostics = { sent }; throw e; });
  progress('simulcast', `publisher sends ${JSON.stringify(sent)}`);

  const lowFirst = await waitWidth(low, video.id, 320, 'the low viewer to decode 320 wide');
  const highFirst = await waitWidth(high, video.id, 1280, 'the high viewer to decode 1280 wide');
  progress('simulcast', `low decodes ${lowFirst.frameWidth}, high ${highFirst.frameWidth}`);

  // Swap: the server switches each on the wanted layer's next keyframe (it asks for one).
  const swapAt = Date.now();
  await low.page.evaluate((id) => window.chorus.setQuality([id], 'high'), video.id);
  await high.page.evaluate((id) => window.chorus.setQuality([id], 'low'), video.id);
  const lowAfter = await waitWidth(low, video.id, 1280, 'the low viewer to switch up to 1280 wide');
  const highAfter = await waitWidth(high, video.id, 320, 'the high viewer to switch down to 320 wide');
  const swapMs = Date.now() - swapAt;
  progress('simulcast', `swapped in ${swapMs} ms`);

  // And the middle layer.
  await low.page.evaluate((id) => window.chorus.setQuality([id], 'medium'), video.id);
  const lowMid = await waitWidth(low, video.id, 640, 'the low viewer to switch to the middle layer (640 wide)');

  // Each switch lands on a keyframe with picture ids that follow on: neither decoder had to
  // ask for a keyframe (without the server's VP8 picture id rewriting, Chromium sent a PLI
  // after each switch up), and nothing was lost.
  for (const [name, st] of [['low', lowMid], ['high', highAfter]]) {
    if (st.pliCount !== 0 || st.packetsLost !== 0) {
      throw new Error(`${name} viewer: ${st.pliCount} PLIs, ${st.packetsLost} packets lost (want 0, 0)`);
    }
  }

  const metrics = await (await fetch(`${base}/metrics`)).text();
  const switches = Number((/^chorus_layer_switches_total (\d+)/m.exec(metrics) || [])[1] || 0);
  if (switches < 3) throw new Error(`chorus_layer_switches_total is ${switches}, want >= 3`);

  // Everyone leaves (a page closed without `leave` would be kept for a resume, §13).
  for (const br of [pub, low, high]) await br.page.evaluate(() => window.chorus.leave());
  console.log(JSON.stringify({
    ok: true,
    test: 'simulcast',
    sent,
    decoded: {
      low: [lowFirst.frameWidth, lowAfter.frameWidth, lowMid.frameWidth],
      high: [highFirst.frameWidth, highAfter.frameWidth],
    },
    swap_ms: swapMs,
    // Decoder restarts cost keyframes; the server must not have caused loss.
    low_viewer: lowMid,
    high_viewer: highAfter,
    layer_switches: switches,
    elapsed_ms: Date.now() - started,
  }));
});
