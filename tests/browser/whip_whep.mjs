#!/usr/bin/env node
// End-to-end check of WHIP ingest and WHEP playback (RFC 9725 and the WHEP draft) in real
// browsers: Chromium A publishes its fake camera and microphone with WHIP, Chromium B plays the
// room with WHEP and must decode video and receive audio; both sessions are then DELETEd.
// Also checks CORS: a preflight from another origin, and a whole WHIP session (POST, DELETE)
// made by a page on another origin.
//
//   node tests/browser/whip_whep.mjs http://127.0.0.1:7880
//
// Exit 0: passed (the last stdout line is a JSON summary). Exit 1: failed (diagnostics on
// stderr). Exit 2: could not run (no Chromium, bad arguments).

import http from 'node:http';
import {
  baseUrlFromArgs, requireChromium, launch, inboundStats, mediaFlowing, poll, progress,
  randomName, run, stalled, outboundPackets,
} from './lib.mjs';

const base = baseUrlFromArgs('tests/browser/whip_whep.mjs');
requireChromium();

const MEDIA_TIMEOUT_MS = 30000;
const SUSTAIN_MS = 3000;

// ---- code run inside the pages ------------------------------------------------------------
// Each function is self-contained: page.evaluate serializes it into the page.

/** Fetches a dev token for `query` (relative to `origin`). */
async function pageToken({ origin, query }) {
  const res = await fetch(`${origin}/dev/token?${query}`);
  if (!res.ok) throw new Error(`GET /dev/token?${query}: ${res.status} ${await res.text()}`);
  return (await res.json()).token;
}

/**
 * Runs one WHIP or WHEP session in the page: builds the offer (sendonly fake camera+mic for
 * WHIP, recvonly audio+video for WHEP), waits for ICE gathering (non-trickle), POSTs it and
 * applies the answer. Leaves `window.session[key] = { pc, location, token }`.
 */
async function pageStartSession({ key, kind, url, token }) {
  const pc = new RTCPeerConnection();
  window.sessions = window.sessions || {};
  const session = { pc, location: null, token, events: [] };
  window.sessions[key] = session;
  pc.onconnectionstatechange = () => session.events.push(`connection ${pc.connectionState}`);
  if (kind === 'whip') {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: true, video: { width: { ideal: 640 }, height: { ideal: 480 } },
    });
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
  } else {
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true;
    document.body.append(video);
    pc.ontrack = (ev) => {
      session.events.push(`track ${ev.track.kind}`);
      video.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      video.play().catch(() => {});
    };
  }
  await pc.setLocalDescription(await pc.createOffer());
  // Non-trickle: wait (briefly) for gathering to finish so the offer carries our candidates.
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    const done = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, 3000);
  });
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
    body: pc.localDescription.sdp,
  });
  const body = await res.text();
  const headers = {
    location: res.headers.get('location'),
    contentType: res.headers.get('content-type'),
    link: res.headers.get('link'),
    etag: res.headers.get('etag'),
  };
  if (res.status !== 201) throw new Error(`POST ${url}: expected 201, got ${res.status}: ${body}`);
  if (!headers.location) {
    throw new Error(`POST ${url}: 201 without a readable Location header (cross-origin pages need Access-Control-Expose-Headers: Location)`);
  }
  if (!/^application\/sdp/i.test(headers.contentType || '')) {
    throw new Error(`POST ${url}: answer Content-Type is ${headers.contentType}, expected application/sdp`);
  }
  if (!/^v=0/.test(body) || !/a=candidate:/.test(body)) {
    throw new Error(`POST ${url}: answer is not an SDP carrying the server's candidates:\n${body}`);
  }
  session.location = new URL(headers.location, res.url).href;
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  return { status: res.status, headers, location: session.location };
}

/** DELETEs the session's resource; returns the status. */
async function pageEndSession({ key }) {
  const session = window.sessions[key];
  const res = await fetch(session.location, {
    method: 'DELETE',
    headers: { Authorization: `Bearer ${session.token}` },
  });
  session.pc.close();
  return res.status;
}

const diagnose = () => ({
  sessions: Object.fromEntries(Object.entries(window.sessions || {}).map(([k, s]) => [k, {
    location: s.location, events: s.events,
    connectionState: s.pc.connectionState, iceConnectionState: s.pc.iceConnectionState,
    signalingState: s.pc.signalingState,
    localSdp: s.pc.localDescription?.sdp, remoteSdp: s.pc.remoteDescription?.sdp,
  }])),
});

// ---- node-side helpers ----------------------------------------------------------------------

/** A blank page on another origin, for the cross-origin checks. */
async function otherOrigin() {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end('<!doctype html><title>other origin</title>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

async function nodeToken(query) {
  const res = await fetch(`${base}/dev/token?${query}`);
  if (!res.ok) throw new Error(`GET /dev/token?${query}: ${res.status} ${await res.text()}`);
  return (await res.json()).token;
}

async function preflight(url, origin, method) {
  const res = await fetch(url, {
    method: 'OPTIONS',
    headers: {
      Origin: origin,
      'Access-Control-Request-Method': method,
      'Access-Control-Request-Headers': 'authorization, content-type',
    },
  });
  const h = (n) => res.headers.get(n);
  const allowOrigin = h('access-control-allow-origin');
  const allowMethods = (h('access-control-allow-methods') || '').toUpperCase();
  const allowHeaders = (h('access-control-allow-headers') || '').toLowerCase();
  const problems = [];
  if (res.status < 200 || res.status > 299) problems.push(`status ${res.status}`);
  if (allowOrigin !== '*' && allowOrigin !== origin) problems.push(`Access-Control-Allow-Origin: ${allowOrigin}`);
  if (allowMethods !== '*' && !allowMethods.includes(method)) problems.push(`Access-Control-Allow-Methods: ${allowMethods}`);
  for (const want of ['authorization', 'content-type']) {
    if (allowHeaders !== '*' && !allowHeaders.includes(want)) problems.push(`Access-Control-Allow-Headers lacks ${want}: ${allowHeaders}`);
  }
  if (problems.length) throw new Error(`CORS preflight OPTIONS ${url} (${method} from ${origin}) refused: ${problems.join('; ')}`);
  return { status: res.status, allowOrigin, allowMethods, allowHeaders };
}

run('whip_whep', async (browsers) => {
  const started = Date.now();
  const room = randomName('whip');
  const summary = { test: 'whip_whep', ok: false, room };

  progress('whip_whep', `launching two Chromiums against ${base}, room ${room}`);
  const [a, b] = await Promise.all([launch('whip-publisher'), launch('whep-player')]);
  browsers.push(a, b);
  a.diagnose = diagnose;
  b.diagnose = diagnose;
  await Promise.all([a.page.goto(`${base}/`), b.page.goto(`${base}/`)]);

  // A publishes with WHIP.
  const pubToken = await a.page.evaluate(pageToken, {
    origin: base, query: `room=${encodeURIComponent(room)}&identity=pub&publish=1`,
  });
  summary.whip = await a.page.evaluate(pageStartSession, {
    key: 'whip', kind: 'whip', url: `${base}/whip/${encodeURIComponent(room)}`, token: pubToken,
  });
  progress('whip_whep', `WHIP session at ${summary.whip.location}`);

  // B plays it with WHEP.
  const viewToken = await b.page.evaluate(pageToken, {
    origin: base, query: `room=${encodeURIComponent(room)}&identity=viewer`,
  });
  summary.whep = await b.page.evaluate(pageStartSession, {
    key: 'whep', kind: 'whep', url: `${base}/whep/${encodeURIComponent(room)}`, token: viewToken,
  });
  progress('whip_whep', `WHEP session at ${summary.whep.location}`);

  let stats;
  await poll(async () => {
    stats = await inboundStats(b.page, () => window.sessions.whep.pc);
    return mediaFlowing(stats);
  }, { timeoutMs: MEDIA_TIMEOUT_MS, what: 'WHEP player to decode video and receive audio' })
    .catch((e) => { e.diagnostics = { stats }; throw e; });
  summary.media_ms = Date.now() - started;
  progress('whip_whep', `media flowing after ${summary.media_ms} ms:`, JSON.stringify(stats));
  await new Promise((r) => setTimeout(r, SUSTAIN_MS));
  const later = await inboundStats(b.page, () => window.sessions.whep.pc);
  const problem = stalled(stats, later, SUSTAIN_MS);
  if (problem) {
    const e = new Error(`WHEP player's media stalled: ${problem}`);
    e.diagnostics = {
      first: stats,
      later,
      sent_by_publisher: await outboundPackets(a.page, () => window.sessions.whip.pc),
    };
    throw e;
  }
  summary.received = later;
  progress('whip_whep', `media still flowing ${SUSTAIN_MS} ms later:`, JSON.stringify(later));

  // End both sessions.
  summary.delete_status = {
    whep: await b.page.evaluate(pageEndSession, { key: 'whep' }),
    whip: await a.page.evaluate(pageEndSession, { key: 'whip' }),
  };
  for (const [k, st] of Object.entries(summary.delete_status)) {
    if (st !== 200 && st !== 204) throw new Error(`DELETE of the ${k} session answered ${st}, expected 200 or 204`);
  }
  progress('whip_whep', `DELETE statuses ${JSON.stringify(summary.delete_status)}`);

  // CORS: a preflight from elsewhere, then a whole WHIP session from a page on another origin.
  const other = await otherOrigin();
  try {
    summary.cors = {
      preflight_post: await preflight(`${base}/whip/${encodeURIComponent(room)}`, other.origin, 'POST'),
      preflight_delete: await preflight(summary.whip.location, other.origin, 'DELETE'),
    };
    await a.page.goto(`${other.origin}/`);
    // The token comes from node: /dev/token is a same-origin dev helper, not a CORS API.
    const crossToken = await nodeToken(`room=${encodeURIComponent(room)}&identity=pub2&publish=1`);
    const cross = await a.page.evaluate(pageStartSession, {
      key: 'cross', kind: 'whip', url: `${base}/whip/${encodeURIComponent(room)}`, token: crossToken,
    });
    const crossDelete = await a.page.evaluate(pageEndSession, { key: 'cross' });
    if (crossDelete !== 200 && crossDelete !== 204) throw new Error(`cross-origin DELETE answered ${crossDelete}`);
    summary.cors.cross_origin_session = { location: cross.location, delete_status: crossDelete };
    progress('whip_whep', `cross-origin WHIP from ${other.origin} ok`);
  } finally {
    other.close();
  }

  summary.ok = true;
  summary.total_ms = Date.now() - started;
  console.log(JSON.stringify(summary));
});
