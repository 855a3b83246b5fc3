#!/usr/bin/env node
// End-to-end check that the SFU forwards each non-VP8 video codec it negotiates (VP9, AV1,
// H.264) between real browsers. For each codec, twice:
//   - whip_whep: Chromium A publishes with WHIP, that codec first in its video transceiver's
//     codec preferences; Chromium B plays the room with WHEP;
//   - call: A joins through the call page opened as `/?codec=<codec>` (the page puts that codec
//     first on its publisher's video transceiver); B joins the same room with the plain page.
// B must decode A's video (inbound-rtp `framesDecoded` > 0 and still growing 2 s later) and the
// inbound codec (getStats `codec` entry) must be the expected MIME type; A's outbound codec is
// checked too, so a codec the server refused shows as such and not as a forwarding bug.
// A codec this Chromium cannot encode (A) or decode (B) is skipped, and said so, in the progress
// lines and in the summary; VP9 is never skipped (no VP9 encoder is a failure).
//
//   node tests/browser/codecs.mjs http://127.0.0.1:7880
//
// Exit 0: passed (the last stdout line is a JSON summary). Exit 1: failed (diagnostics on
// stderr, the summary with `ok: false` still on stdout). Exit 2: could not run.

import {
  baseUrlFromArgs, requireChromium, launch, poll, progress, randomName, run,
} from './lib.mjs';

const base = baseUrlFromArgs('tests/browser/codecs.mjs');
requireChromium();

const CODECS = [
  { key: 'vp9', mime: 'video/VP9', required: true },
  { key: 'av1', mime: 'video/AV1', required: false },
  { key: 'h264', mime: 'video/H264', required: false },
];
const MEDIA_TIMEOUT_MS = 30000;
const UI_TIMEOUT_MS = 10000;
const SUSTAIN_MS = 2000;
// Chrome's fake camera runs at 20 fps (less when a software AV1 encoder is busy on a small
// machine); requiring 2 frames/s still fails a stream that stops or only trickles keyframes.
const MIN_FPS = 2;

// ---- code run inside the pages ------------------------------------------------------------
// Each function is self-contained: page.evaluate serializes it into the page.

/** What this browser can encode and decode: `{ send: [mime…], recv: [mime…] }`. */
function pageCapabilities() {
  const mimes = (caps) => [...new Set(((caps && caps.codecs) || []).map((c) => c.mimeType))];
  return {
    send: mimes(RTCRtpSender.getCapabilities('video')),
    recv: mimes(RTCRtpReceiver.getCapabilities('video')),
    sendFmtp: (RTCRtpSender.getCapabilities('video')?.codecs || [])
      .map((c) => `${c.mimeType} ${c.sdpFmtpLine || ''}`.trim()),
  };
}

async function pageToken({ query }) {
  const res = await fetch(`/dev/token?${query}`);
  if (!res.ok) throw new Error(`GET /dev/token?${query}: ${res.status} ${await res.text()}`);
  return (await res.json()).token;
}

/**
 * One WHIP (sendonly fake camera+mic, `mime` first in the video codec preferences) or WHEP
 * (recvonly audio+video) session, non-trickle. Leaves `window.sessions[key]`.
 */
async function pageStartSession({ key, kind, url, token, mime }) {
  const pc = new RTCPeerConnection();
  window.sessions = window.sessions || {};
  const session = { pc, location: null, token, events: [] };
  window.sessions[key] = session;
  pc.onconnectionstatechange = () => session.events.push(`connection ${pc.connectionState}`);
  if (kind === 'whip') {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: true, video: { width: { ideal: 640 }, height: { ideal: 480 } },
    });
    session.stream = stream;
    for (const track of stream.getTracks()) {
      const t = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      if (track.kind === 'video') {
        const all = RTCRtpSender.getCapabilities('video').codecs;
        const want = (c) => c.mimeType.toLowerCase() === mime.toLowerCase();
        t.setCodecPreferences([...all.filter(want), ...all.filter((c) => !want(c))]);
      }
    }
  } else {
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true;
    document.body.append(video);
    session.video = video;
    pc.ontrack = (ev) => {
      session.events.push(`track ${ev.track.kind}`);
      video.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      video.play().catch(() => {});
    };
  }
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
    setTimeout(resolve, 3000);
  });
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
    body: pc.localDescription.sdp,
  });
  const body = await res.text();
  if (res.status !== 201) throw new Error(`POST ${url}: expected 201, got ${res.status}: ${body}`);
  session.location = new URL(res.headers.get('location'), res.url).href;
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  return session.location;
}

/** DELETEs every session in the page and closes its peer connection; returns the statuses. */
async function pageEndSessions() {
  const out = {};
  for (const [key, s] of Object.entries(window.sessions || {})) {
    if (s.location) {
      const res = await fetch(s.location, { method: 'DELETE', headers: { Authorization: `Bearer ${s.token}` } })
        .catch((e) => ({ status: `${e}` }));
      out[key] = res.status;
    }
    s.pc.close();
    if (s.stream) for (const t of s.stream.getTracks()) t.stop();
    if (s.video) s.video.remove();
  }
  window.sessions = {};
  return out;
}

/**
 * Video RTP stats of one peer connection: the inbound (or outbound) video streams with the
 * MIME type and fmtp of their `codec` stats entry.
 */
async function pageVideoStats({ pc, direction }) {
  const out = { connectionState: pc ? pc.connectionState : 'no peer connection', streams: [] };
  if (!pc) return out;
  const report = await pc.getStats();
  for (const s of report.values()) {
    if (s.type !== direction || s.kind !== 'video') continue;
    const codec = s.codecId ? report.get(s.codecId) : null;
    out.streams.push({
      ssrc: s.ssrc,
      mimeType: codec ? codec.mimeType : null,
      payloadType: codec ? codec.payloadType : null,
      sdpFmtpLine: codec ? codec.sdpFmtpLine : null,
      packets: direction === 'inbound-rtp' ? s.packetsReceived : s.packetsSent,
      frames: direction === 'inbound-rtp' ? s.framesDecoded : s.framesEncoded,
      frameWidth: s.frameWidth,
      keyFrames: direction === 'inbound-rtp' ? s.keyFramesDecoded : s.keyFramesEncoded,
      pliCount: s.pliCount, nackCount: s.nackCount,
      implementation: direction === 'inbound-rtp' ? s.decoderImplementation : s.encoderImplementation,
    });
  }
  return out;
}

const diagnose = () => ({
  sessions: Object.fromEntries(Object.entries(window.sessions || {}).map(([k, s]) => [k, {
    location: s.location, events: s.events,
    connectionState: s.pc.connectionState, signalingState: s.pc.signalingState,
    localSdp: s.pc.localDescription?.sdp, remoteSdp: s.pc.remoteDescription?.sdp,
  }])),
  call: window.chorus ? {
    state: window.chorus.state(),
    log: window.chorus.log.slice(-60),
    publisherLocalSdp: window.chorus.pcs.publisher?.localDescription?.sdp,
    publisherRemoteSdp: window.chorus.pcs.publisher?.remoteDescription?.sdp,
    subscriberRemoteSdp: window.chorus.pcs.subscriber?.remoteDescription?.sdp,
    subscriberLocalSdp: window.chorus.pcs.subscriber?.localDescription?.sdp,
  } : null,
});

// ---- node-side helpers ----------------------------------------------------------------------

async function videoStats(br, getPc, direction) {
  const handle = await br.page.evaluateHandle(getPc);
  try {
    return await br.page.evaluate(pageVideoStats, { pc: handle, direction });
  } finally {
    await handle.dispose();
  }
}

/** `chorus_packets_dropped_total` by reason and the video `chorus_rtp_packets_total`. */
async function serverCounters() {
  const res = await fetch(`${base}/metrics`);
  if (!res.ok) throw new Error(`GET /metrics: ${res.status}`);
  const out = {};
  for (const line of (await res.text()).split('\n')) {
    const m = /^(chorus_packets_dropped_total|chorus_rtp_packets_total)\{([^}]*)\} (\d+)/.exec(line);
    if (m && (m[1] === 'chorus_packets_dropped_total' || m[2].includes('video'))) out[`${m[1]}{${m[2]}}`] = Number(m[3]);
  }
  return out;
}

function diffCounters(before, after) {
  const out = {};
  for (const [k, v] of Object.entries(after)) if (v - (before[k] || 0)) out[k] = v - (before[k] || 0);
  return out;
}

const sameMime = (a, b) => (a || '').toLowerCase() === (b || '').toLowerCase();

/**
 * Waits until `sub` decodes one video stream whose codec is `mime` and checks that its decoded
 * frames keep growing for SUSTAIN_MS. Throws with stats and server counters attached.
 */
async function expectDecoded({ label, mime, pub, sub, pubPc, subPc, countersBefore, started }) {
  let inbound;
  let outbound;
  const fail = async (message) => {
    const e = new Error(`${label}: ${message}`);
    e.diagnostics = {
      label,
      inbound,
      outbound: await videoStats(pub, pubPc, 'outbound-rtp').catch((x) => x.message),
      server_counters_delta: diffCounters(countersBefore, await serverCounters().catch(() => ({}))),
    };
    return e;
  };
  try {
    await poll(async () => {
      inbound = await videoStats(sub, subPc, 'inbound-rtp');
      return inbound.streams.some((s) => s.frames > 0);
    }, { timeoutMs: MEDIA_TIMEOUT_MS, what: `decoded video frames (${mime})` });
  } catch (e) {
    outbound = await videoStats(pub, pubPc, 'outbound-rtp').catch(() => null);
    const sent = outbound?.streams?.[0];
    const hint = sent && !sameMime(sent.mimeType, mime)
      ? ` (the publisher is sending ${sent.mimeType}, not ${mime}: the codec was not negotiated)`
      : '';
    throw await fail(`${e.message}${hint}`);
  }
  const firstMs = Date.now() - started;
  const first = inbound.streams.find((s) => s.frames > 0);
  await new Promise((r) => setTimeout(r, SUSTAIN_MS));
  inbound = await videoStats(sub, subPc, 'inbound-rtp');
  outbound = await videoStats(pub, pubPc, 'outbound-rtp');
  const later = inbound.streams.find((s) => s.ssrc === first.ssrc) || inbound.streams[0];
  const grew = (later?.frames || 0) - first.frames;
  const minFrames = Math.floor((SUSTAIN_MS / 1000) * MIN_FPS);
  const sent = outbound.streams[0];
  if (!sameMime(sent?.mimeType, mime)) {
    throw await fail(`the publisher sends ${sent?.mimeType} (fmtp ${sent?.sdpFmtpLine}), not ${mime}`);
  }
  if (!sameMime(later?.mimeType, mime)) {
    throw await fail(`the receiver decodes ${later?.mimeType} (fmtp ${later?.sdpFmtpLine}), expected ${mime}`);
  }
  if (grew < minFrames) {
    throw await fail(`decoded frames grew by ${grew} in ${SUSTAIN_MS} ms (want >= ${minFrames})`);
  }
  return {
    ok: true,
    first_frame_ms: firstMs,
    fps: Math.round((grew / SUSTAIN_MS) * 10000) / 10,
    frames_decoded: later.frames,
    frame_width: later.frameWidth,
    received: { mime: later.mimeType, pt: later.payloadType, fmtp: later.sdpFmtpLine, decoder: later.implementation },
    sent: { mime: sent.mimeType, pt: sent.payloadType, fmtp: sent.sdpFmtpLine, encoder: sent.implementation },
  };
}

/** WHIP publish with `mime` preferred, WHEP play, then DELETE both. */
async function viaWhipWhep(codec, pub, sub) {
  const room = randomName(`codec-${codec.key}-whip`);
  const countersBefore = await serverCounters();
  const started = Date.now();
  await pub.page.evaluate(pageEndSessions);
  await sub.page.evaluate(pageEndSessions);
  const pubToken = await pub.page.evaluate(pageToken, { query: `room=${room}&identity=pub&publish=1` });
  await pub.page.evaluate(pageStartSession, {
    key: 'whip', kind: 'whip', url: `${base}/whip/${room}`, token: pubToken, mime: codec.mime,
  });
  const subToken = await sub.page.evaluate(pageToken, { query: `room=${room}&identity=viewer` });
  await sub.page.evaluate(pageStartSession, { key: 'whep', kind: 'whep', url: `${base}/whep/${room}`, token: subToken });
  const result = await expectDecoded({
    label: `${codec.key} via WHIP/WHEP (room ${room})`, mime: codec.mime, pub, sub,
    pubPc: () => window.sessions.whip.pc, subPc: () => window.sessions.whep.pc, countersBefore, started,
  });
  result.server_drops = diffCounters(countersBefore, await serverCounters());
  const deleted = { whep: await sub.page.evaluate(pageEndSessions), whip: await pub.page.evaluate(pageEndSessions) };
  for (const [k, st] of Object.entries(deleted)) {
    for (const status of Object.values(st)) {
      if (status !== 200 && status !== 204) throw new Error(`${codec.key}: DELETE of the ${k} session answered ${status}`);
    }
  }
  return result;
}

/** Both join one room with the call page, A opened as `/?codec=<key>`. */
async function viaCallPage(codec, pub, sub) {
  const room = randomName(`codec-${codec.key}-call`);
  const countersBefore = await serverCounters();
  const started = Date.now();
  await pub.page.goto(`${base}/?codec=${codec.key}`, { waitUntil: 'load' });
  await sub.page.goto(`${base}/`, { waitUntil: 'load' });
  await pub.page.evaluate((r) => window.chorus.join(r, 'Publisher'), room);
  await sub.page.evaluate((r) => window.chorus.join(r, 'Viewer'), room);
  for (const br of [pub, sub]) {
    await poll(async () => {
      const st = await br.page.evaluate(() => window.chorus.state());
      if (st.phase === 'failed') throw new Error(`${br.name} failed to join: ${st.errors.join('; ')}`);
      return st.phase === 'joined';
    }, { timeoutMs: UI_TIMEOUT_MS, what: `${br.name} to join room ${room}` });
  }
  const { codec: pageCodec, errors } = await pub.page.evaluate(() => window.chorus.state());
  if (pageCodec !== codec.key) throw new Error(`the call page opened with ?codec=${codec.key} reports state().codec = ${pageCodec}`);
  if (errors.length) throw new Error(`the call page (?codec=${codec.key}) shows errors: ${errors.join('; ')}`);
  const result = await expectDecoded({
    label: `${codec.key} via the call page (room ${room})`, mime: codec.mime, pub, sub,
    pubPc: () => window.chorus.pcs.publisher, subPc: () => window.chorus.pcs.subscriber, countersBefore, started,
  });
  result.server_drops = diffCounters(countersBefore, await serverCounters());
  await sub.page.evaluate(() => window.chorus.leave());
  await pub.page.evaluate(() => window.chorus.leave());
  return result;
}

run('codecs', async (browsers) => {
  const started = Date.now();
  const summary = { test: 'codecs', ok: false, codecs: {} };
  let printed = false;
  const failures = [];
  try {
    progress('codecs', `launching two Chromiums against ${base}`);
    const [pub, sub] = await Promise.all([launch('codec-publisher'), launch('codec-viewer')]);
    browsers.push(pub, sub);
    pub.diagnose = diagnose;
    sub.diagnose = diagnose;
    await Promise.all([pub.page.goto(`${base}/`), sub.page.goto(`${base}/`)]);

    const caps = { publisher: await pub.page.evaluate(pageCapabilities), viewer: await sub.page.evaluate(pageCapabilities) };
    summary.chromium = await pub.page.evaluate(() => navigator.userAgent);
    summary.encoders = caps.publisher.send;
    summary.decoders = caps.viewer.recv;
    progress('codecs', `this Chromium encodes ${caps.publisher.sendFmtp.join(', ')}`);
    progress('codecs', `and decodes ${caps.viewer.recv.join(', ')}`);

    for (const codec of CODECS) {
      const canEncode = caps.publisher.send.some((m) => sameMime(m, codec.mime));
      const canDecode = caps.viewer.recv.some((m) => sameMime(m, codec.mime));
      if (!canEncode || !canDecode) {
        const why = `skipped: no ${canEncode ? 'decoder' : 'encoder'} in this chromium`;
        if (codec.required) {
          failures.push(`${codec.key}: this Chromium has no ${canEncode ? 'decoder' : 'encoder'} for ${codec.mime}, and ${codec.key} must be tested`);
          summary.codecs[codec.key] = `failed: no ${canEncode ? 'decoder' : 'encoder'} in this chromium`;
        } else {
          summary.codecs[codec.key] = why;
        }
        progress('codecs', `${codec.key.toUpperCase()} ${(codec.required ? summary.codecs[codec.key] : why).toUpperCase()} (${codec.mime} not in RTCRtp${canEncode ? 'Receiver' : 'Sender'}.getCapabilities('video'))`);
        continue;
      }
      const result = {};
      for (const [path, fn] of [['whip_whep', viaWhipWhep], ['call', viaCallPage]]) {
        try {
          result[path] = await fn(codec, pub, sub);
          const r = result[path];
          progress('codecs', `${codec.key} via ${path}: PASS, ${r.received.mime} decoded (${r.fps} fps, ${r.frame_width}px wide, first frame ${r.first_frame_ms} ms after starting, encoder ${r.sent.encoder}${r.received.decoder ? `, decoder ${r.received.decoder}` : ''}, pt ${r.sent.pt} -> ${r.received.pt}, fmtp "${r.sent.fmtp || ''}")`);
        } catch (e) {
          result[path] = { ok: false, error: e.message, diagnostics: e.diagnostics };
          failures.push(e.message);
          progress('codecs', `${codec.key} via ${path}: FAIL: ${e.message}`);
          console.error(`---- ${codec.key} via ${path} failed ----\n${e.stack || e.message}`);
          if (e.diagnostics) console.error(JSON.stringify(e.diagnostics, null, 2));
          // The SDPs of the failed attempt, before the next attempt replaces them.
          for (const br of [pub, sub]) {
            console.error(`---- ${br.name} after ${codec.key} via ${path} ----`);
            console.error(JSON.stringify(await br.page.evaluate(diagnose).catch((x) => x.message), null, 2));
          }
          // Leave things clean for the next attempt.
          await pub.page.goto(`${base}/`).catch(() => {});
          await sub.page.goto(`${base}/`).catch(() => {});
        }
      }
      summary.codecs[codec.key] = result;
    }
    summary.total_ms = Date.now() - started;
    if (failures.length) {
      summary.failures = failures;
      console.log(JSON.stringify(summary));
      printed = true;
      const e = new Error(`${failures.length} codec check(s) failed:\n  ${failures.join('\n  ')}`);
      throw e;
    }
    summary.ok = true;
    console.log(JSON.stringify(summary));
    printed = true;
  } finally {
    if (!printed) console.log(JSON.stringify(summary));
  }
}, { timeoutMs: 240000 });
