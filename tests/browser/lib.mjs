// Shared helpers for the browser end-to-end scripts: launching Debian's Chromium through
// playwright-core (never a downloaded browser), collecting page logs, reading WebRTC stats.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHORUS_CHROMIUM || '/usr/bin/chromium';

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-gpu',
  '--no-first-run',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];

/** The base URL from argv, without a trailing slash; exits 2 with usage when missing. */
export function baseUrlFromArgs(script) {
  const arg = process.argv[2];
  if (!arg || !/^https?:\/\//.test(arg)) {
    console.error(`usage: node ${script} <base_url>   (e.g. http://127.0.0.1:7880)`);
    process.exit(2);
  }
  return arg.replace(/\/+$/, '');
}

/** Exits 2, loudly, when the system Chromium is missing: a missing browser is never a pass. */
export function requireChromium() {
  if (!fs.existsSync(CHROMIUM)) {
    const bar = '!'.repeat(72);
    console.error(`${bar}\nERROR: Chromium not found at ${CHROMIUM}.\n` +
      'Install Debian\'s package (apt-get install chromium) or set CHORUS_CHROMIUM.\n' +
      `The browser tests did NOT run.\n${bar}`);
    process.exit(2);
  }
}

/** A label for progress lines; the final summary is the only JSON line on stdout. */
export function progress(tag, ...args) {
  console.log(`# [${tag}] ${args.join(' ')}`);
}

/**
 * Launches one Chromium with its own fresh profile and opens a page. Returns
 * `{ name, context, page, logs, close }`; `logs` collects console messages and page errors.
 * `options.args` adds Chromium flags to the standard ones.
 */
export async function launch(name, options = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), `chorus-browser-${name}-`));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...(options.args || [])],
    permissions: ['camera', 'microphone'],
    viewport: { width: 1024, height: 720 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const logs = [];
  const stamp = () => new Date().toISOString().slice(11, 23);
  page.on('console', (m) => logs.push(`${stamp()} ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`${stamp()} PAGE ERROR: ${e.stack || e.message}`));
  page.on('requestfailed', (r) => logs.push(`${stamp()} request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) logs.push(`${stamp()} HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return { name, context, page, logs, close };
}

/**
 * Sums the inbound-rtp stats of the RTCPeerConnection that `getPc` (run in the page) returns:
 * `{ video: { framesDecoded, packetsReceived, ... }, audio: { packetsReceived, ... }, ... }`.
 */
export async function inboundStats(page, getPc) {
  const handle = await page.evaluateHandle(getPc);
  try {
    return await handle.evaluate(async (pc) => {
      const out = {
        video: { framesDecoded: 0, packetsReceived: 0, bytesReceived: 0, frameWidth: 0 },
        audio: { packetsReceived: 0, bytesReceived: 0 },
        connectionState: pc ? pc.connectionState : 'no peer connection',
        iceConnectionState: pc ? pc.iceConnectionState : null,
      };
      if (!pc) return out;
      const report = await pc.getStats();
      for (const s of report.values()) {
        if (s.type !== 'inbound-rtp') continue;
        const k = s.kind === 'video' ? out.video : out.audio;
        k.packetsReceived += s.packetsReceived || 0;
        k.bytesReceived += s.bytesReceived || 0;
        if (s.kind === 'video') {
          k.framesDecoded += s.framesDecoded || 0;
          k.frameWidth = Math.max(k.frameWidth, s.frameWidth || 0);
        }
      }
      return out;
    });
  } finally {
    await handle.dispose();
  }
}

/** Packets sent per kind by the RTCPeerConnection that `getPc` returns: `{ audio, video }`. */
export async function outboundPackets(page, getPc) {
  const handle = await page.evaluateHandle(getPc);
  try {
    return await handle.evaluate(async (pc) => {
      const out = { audio: 0, video: 0 };
      if (!pc) return out;
      for (const s of (await pc.getStats()).values()) {
        if (s.type === 'outbound-rtp') out[s.kind] += s.packetsSent || 0;
      }
      return out;
    });
  } finally {
    await handle.dispose();
  }
}

/**
 * The ICE candidate pair the RTCPeerConnection that `getPc` returns is using, from getStats
 * (the transport's selectedCandidatePairId): `{ state, local, remote }`, each candidate as
 * `{ candidateType, protocol, relayProtocol, address, port, tcpType }` (`candidateType`:
 * host, srflx, prflx or relay; `protocol`: udp or tcp, for a relay candidate the relay's side
 * towards the peer; `relayProtocol`: how the browser reaches its TURN server). null when no
 * pair is selected. `arg` is passed to `getPc`.
 */
export async function selectedCandidatePair(page, getPc, arg) {
  const handle = await page.evaluateHandle(getPc, arg);
  try {
    return await handle.evaluate(async (pc) => {
      if (!pc) return null;
      const report = await pc.getStats();
      const byId = new Map([...report.values()].map((s) => [s.id, s]));
      let pair = null;
      for (const s of report.values()) {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
      }
      if (!pair) return null;
      const candidate = (id) => {
        const c = byId.get(id) || {};
        return {
          candidateType: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol || null,
          address: c.address, port: c.port, tcpType: c.tcpType || null,
        };
      };
      return { state: pair.state, local: candidate(pair.localCandidateId), remote: candidate(pair.remoteCandidateId) };
    });
  } finally {
    await handle.dispose();
  }
}

/** True when stats show decoded video frames and received audio packets. */
export function mediaFlowing(st) {
  return st.video.framesDecoded > 0 && st.audio.packetsReceived > 0;
}

/**
 * Checks that media keeps flowing: between two stats samples `ms` apart, audio packets and
 * decoded video frames must both have grown at half the sending rate or more (Chrome sends 50
 * Opus packets/s and its fake camera 20 frames/s), so a stream that stops or stutters fails.
 * Returns a description of the problem, or null.
 */
export function stalled(before, after, ms) {
  const audio = after.audio.packetsReceived - before.audio.packetsReceived;
  const frames = after.video.framesDecoded - before.video.framesDecoded;
  const minAudio = Math.floor((ms / 1000) * 25);
  const minFrames = Math.floor((ms / 1000) * 5);
  const problems = [];
  if (audio < minAudio) problems.push(`audio packets grew by ${audio} in ${ms} ms (want >= ${minAudio})`);
  if (frames < minFrames) problems.push(`decoded video frames grew by ${frames} in ${ms} ms (want >= ${minFrames})`);
  return problems.length ? problems.join('; ') : null;
}

/** Polls `fn` every `everyMs` until it returns a truthy value or `timeoutMs` passes. */
export async function poll(fn, { timeoutMs, everyMs = 500, what = 'condition' }) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export function randomName(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 7)}`;
}

/** Prints everything useful about the browsers after a failure. */
export async function dumpDiagnostics(browsers, extra) {
  console.error('==================== DIAGNOSTICS ====================');
  if (extra) console.error(JSON.stringify(extra, null, 2));
  for (const b of browsers) {
    if (!b) continue;
    console.error(`---------- browser ${b.name} ----------`);
    try {
      const info = await b.page.evaluate(b.diagnose || (() => null));
      if (info) console.error(JSON.stringify(info, null, 2));
    } catch (e) {
      console.error(`(could not evaluate diagnostics: ${e.message})`);
    }
    console.error(`---------- console of ${b.name} (last 200 lines) ----------`);
    for (const l of b.logs.slice(-200)) console.error(l);
  }
  console.error('=====================================================');
}

/** Runs `main` with a global timeout; exit 0 on success, 1 on failure (with diagnostics). */
export async function run(tag, main, { timeoutMs = 120000 } = {}) {
  const browsers = [];
  let timer;
  let code = 0;
  try {
    await Promise.race([
      main(browsers),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`whole test exceeded ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (e) {
    code = 1;
    console.error(`FAIL [${tag}]: ${e.stack || e.message}`);
    await dumpDiagnostics(browsers, e.diagnostics).catch((d) => console.error('diagnostics failed:', d));
  } finally {
    clearTimeout(timer);
    await Promise.all(browsers.map((b) => b && b.close()));
  }
  process.exit(code);
}
