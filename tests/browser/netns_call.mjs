#!/usr/bin/env node
// Two people on the call page over a real network path chosen by the test around it (run
// inside a network namespace, e.g. with UDP dropped, or with a TURN server as the only way):
// both join with tokens handed in the page address, each decodes the other's video and
// receives its audio, media keeps flowing, and the summary reports the ICE candidate pair
// each of the four peer connections selected (getStats), for the caller to check.
//
//   node tests/browser/netns_call.mjs <base_url> <token A> <token B> [--query=relay=1]
//        [--chromium-arg=<flag>]...
//
// --query adds to the page address (e.g. relay=1: iceTransportPolicy "relay"); --chromium-arg
// adds a Chromium flag (e.g. --ignore-certificate-errors for a TURN server with a test
// certificate).
// The base URL is not loopback, so Chromium is told to treat it as a secure origin (camera and
// microphone need one). Exit 0: passed (the last stdout line is a JSON summary with `pairs`).
// Exit 1: failed (diagnostics on stderr). Exit 2: could not run (no Chromium, bad arguments).

import {
  baseUrlFromArgs, requireChromium, launch, inboundStats, mediaFlowing, stalled, poll, progress, run,
  selectedCandidatePair,
} from './lib.mjs';

const base = baseUrlFromArgs('tests/browser/netns_call.mjs');
const tokens = process.argv.slice(3, 5);
const options = process.argv.slice(5);
const query = options.filter((o) => o.startsWith('--query=')).map((o) => o.slice('--query='.length)).join('&');
const extraArgs = options.filter((o) => o.startsWith('--chromium-arg=')).map((o) => o.slice('--chromium-arg='.length));
if (tokens.length !== 2 || options.some((o) => !/^--(query|chromium-arg)=/.test(o))) {
  console.error('usage: node tests/browser/netns_call.mjs <base_url> <token A> <token B> [--query=q] [--chromium-arg=flag]...');
  process.exit(2);
}
requireChromium();

const MEDIA_TIMEOUT_MS = 30000;
const UI_TIMEOUT_MS = 15000;
const STALL_WINDOW_MS = 2000;

const diagnose = async () => {
  if (!window.chorus) return { note: 'window.chorus is not defined' };
  const candidates = {};
  for (const [target, pc] of Object.entries(window.chorus.pcs)) {
    if (!pc) continue;
    const report = await pc.getStats();
    candidates[target] = [...report.values()]
      .filter((x) => x.type === 'local-candidate' || x.type === 'remote-candidate' || x.type === 'candidate-pair')
      .map((x) => (x.type === 'candidate-pair'
        ? `${x.type} ${x.state} nominated=${x.nominated} ${x.localCandidateId} -> ${x.remoteCandidateId}`
        : `${x.type} ${x.id} ${x.candidateType} ${x.protocol} ${x.relayProtocol || ''} ${x.address}:${x.port}`));
  }
  return {
    state: window.chorus.state(), log: window.chorus.log.slice(-60), candidates,
    error: document.querySelector('#error')?.textContent,
  };
};

run('netns_call', async (browsers) => {
  const started = Date.now();
  const args = [`--unsafely-treat-insecure-origin-as-secure=${base}`, ...extraArgs];
  const [a, b] = await Promise.all(['alice', 'bob'].map((n) => launch(n, { args })));
  browsers.push(a, b);
  a.diagnose = diagnose;
  b.diagnose = diagnose;

  await Promise.all([a, b].map(async (br, i) => {
    const extra = query ? `&${query}` : '';
    await br.page.goto(`${base}/?token=${encodeURIComponent(tokens[i])}${extra}`, { waitUntil: 'load' });
    await br.page.click('#join-btn');
  }));
  for (const br of [a, b]) {
    await poll(async () => {
      const st = await br.page.evaluate(() => window.chorus.state());
      if (st.phase === 'failed') throw new Error(`${br.name} failed to join: ${st.errors.join('; ')}`);
      return st.phase === 'joined';
    }, { timeoutMs: UI_TIMEOUT_MS, what: `${br.name} to join` });
  }
  progress('netns_call', `both joined after ${Date.now() - started} ms`);

  const stats = {};
  await poll(async () => {
    for (const br of [a, b]) stats[br.name] = await inboundStats(br.page, () => window.chorus.pcs.subscriber);
    return mediaFlowing(stats.alice) && mediaFlowing(stats.bob);
  }, { timeoutMs: MEDIA_TIMEOUT_MS, what: 'video frames decoded and audio packets received on both pages' })
    .catch((e) => { e.diagnostics = { stats }; throw e; });
  const mediaMs = Date.now() - started;
  progress('netns_call', `media flowing after ${mediaMs} ms:`, JSON.stringify(stats));

  // It keeps flowing (a path that carries the first packets and then chokes fails here).
  const before = { ...stats };
  await new Promise((r) => setTimeout(r, STALL_WINDOW_MS));
  for (const br of [a, b]) {
    const after = await inboundStats(br.page, () => window.chorus.pcs.subscriber);
    const problem = stalled(before[br.name], after, STALL_WINDOW_MS);
    if (problem) throw Object.assign(new Error(`${br.name}: ${problem}`), { diagnostics: { before, after } });
    stats[br.name] = after;
  }

  const pairs = {};
  for (const br of [a, b]) {
    pairs[br.name] = {};
    for (const target of ['publisher', 'subscriber']) {
      pairs[br.name][target] = await selectedCandidatePair(br.page, (t) => window.chorus.pcs[t], target);
    }
  }
  progress('netns_call', 'selected pairs:', JSON.stringify(pairs));

  for (const br of [a, b]) await br.page.evaluate(() => window.chorus.leave());
  console.log(JSON.stringify({ ok: true, media_ms: mediaMs, pairs, alice: stats.alice, bob: stats.bob }));
});
