#!/usr/bin/env node
// The call page outside dev mode: a server with [auth] keys has no /dev/token, so an operator's
// app hands the page a token in its address (`/?token=<jwt>`). Two Chromiums open the page that
// way, the page takes room and name from the token, removes the token from the address bar,
// joins, and each decodes the other's video and receives its audio. The page runs under the
// server's Content-Security-Policy without a single violation. Alice floods the room with data
// messages: the server relays her burst and drops the rest. A third page without a token says
// it needs one instead of asking /dev/token.
//
//   node tests/browser/token_page.mjs <base_url> <token for alice> <token for bob>
//
// Exit 0: passed (the last stdout line is a JSON summary). Exit 1: failed (diagnostics on
// stderr). Exit 2: could not run (no Chromium, bad arguments).

import {
  baseUrlFromArgs, requireChromium, launch, inboundStats, mediaFlowing, poll, progress, run,
} from './lib.mjs';

const base = baseUrlFromArgs('tests/browser/token_page.mjs');
const tokens = process.argv.slice(3, 5);
if (tokens.length !== 2) {
  console.error('usage: node tests/browser/token_page.mjs <base_url> <token A> <token B>');
  process.exit(2);
}
requireChromium();

const MEDIA_TIMEOUT_MS = 30000;
const UI_TIMEOUT_MS = 10000;

const diagnose = () => (window.chorus ? {
  state: window.chorus.state(),
  log: window.chorus.log.slice(-80),
  error: document.querySelector('#error')?.textContent,
  status: document.querySelector('#status')?.textContent,
  href: location.href,
} : { note: 'window.chorus is not defined', html: document.documentElement.outerHTML.slice(0, 300) });

run('token_page', async (browsers) => {
  const started = Date.now();
  const [a, b] = await Promise.all(['alice', 'bob'].map((n) => launch(n)));
  browsers.push(a, b);
  a.diagnose = diagnose;
  b.diagnose = diagnose;

  const me = {};
  await Promise.all([a, b].map(async (br, i) => {
    const response = await br.page.goto(`${base}/?token=${encodeURIComponent(tokens[i])}`, { waitUntil: 'load' });
    const csp = response.headers()['content-security-policy'] || '';
    if (!csp.includes("frame-ancestors 'none'") || !csp.includes("script-src 'nonce-")) {
      throw new Error(`${br.name}: page served without the expected CSP: ${JSON.stringify(csp)}`);
    }
    // The token is out of the address bar, and decided room and name.
    const href = await br.page.evaluate(() => location.href);
    if (href.includes('token=')) throw new Error(`${br.name}: token still in the address: ${href}`);
    const form = await br.page.evaluate(() => ({
      room: document.querySelector('#room').value,
      name: document.querySelector('#name').value,
      readOnly: document.querySelector('#room').readOnly,
    }));
    if (!form.room || !form.name || !form.readOnly) {
      throw new Error(`${br.name}: the form was not filled from the token: ${JSON.stringify(form)}`);
    }
    await br.page.click('#join-btn');
  }));
  for (const br of [a, b]) {
    await poll(async () => {
      const st = await br.page.evaluate(() => window.chorus.state());
      if (st.phase === 'failed') throw new Error(`${br.name} failed to join: ${st.errors.join('; ')}`);
      if (st.phase === 'joined') me[br.name] = st.me;
      return st.phase === 'joined';
    }, { timeoutMs: UI_TIMEOUT_MS, what: `${br.name} to join` });
  }
  progress('token_page', `joined: alice=${me.alice.identity} bob=${me.bob.identity}`);

  const stats = {};
  await poll(async () => {
    for (const br of [a, b]) stats[br.name] = await inboundStats(br.page, () => window.chorus.pcs.subscriber);
    return mediaFlowing(stats.alice) && mediaFlowing(stats.bob);
  }, { timeoutMs: MEDIA_TIMEOUT_MS, what: 'video frames decoded and audio packets received on both pages' })
    .catch((e) => { e.diagnostics = { stats }; throw e; });
  const mediaMs = Date.now() - started;
  progress('token_page', `media flowing after ${mediaMs} ms:`, JSON.stringify(stats));

  // A data-message flood: the server is configured with 5 messages/s and a burst of 10 per
  // sender; Alice sends 40 at once, Bob gets about the burst, the rest are dropped
  // (data_rate_limited, checked by the Rust side in /metrics). Then one more gets through.
  await poll(async () => {
    const [sa, sb] = await Promise.all([a, b].map((br) => br.page.evaluate(() => window.chorus.state())));
    return sa.dataChannels.publisher === 'open' && sb.dataChannels.subscriber === 'open';
  }, { timeoutMs: MEDIA_TIMEOUT_MS, what: 'the data channels to open' });
  const FLOOD = 40;
  await a.page.evaluate(async (n) => {
    for (let i = 0; i < n; i += 1) await window.chorus.sendData(`flood ${i}`);
  }, FLOOD);
  await new Promise((r) => setTimeout(r, 2500));
  const flooded = (await b.page.evaluate(() => window.chorus.state())).messages
    .filter((m) => m.text.startsWith('flood ')).length;
  if (flooded < 10 || flooded > 20) {
    throw new Error(`Bob received ${flooded} of ${FLOOD} flooded messages (want the burst of 10, give or take the refill)`);
  }
  await a.page.evaluate(() => window.chorus.sendData('after the flood'));
  await poll(async () => (await b.page.evaluate(() => window.chorus.state())).messages
    .some((m) => m.text === 'after the flood'), { timeoutMs: UI_TIMEOUT_MS, what: 'a message after the flood' });
  progress('token_page', `data flood: ${flooded} of ${FLOOD} relayed, later messages flow again`);

  // Nothing was refused by the page's Content-Security-Policy.
  for (const br of [a, b]) {
    const violations = br.logs.filter((l) => /Content Security Policy|Refused to/.test(l));
    if (violations.length) throw new Error(`${br.name}: CSP violations: ${violations.join(' | ')}`);
  }

  // Without a token (and without a token endpoint) the page says what it needs.
  const c = await launch('carol');
  browsers.push(c);
  c.diagnose = diagnose;
  await c.page.goto(`${base}/`, { waitUntil: 'load' });
  const status = await c.page.textContent('#status');
  if (!status.includes('needs an access token')) throw new Error(`tokenless page status: ${JSON.stringify(status)}`);
  await c.page.fill('#room', 'anything');
  await c.page.fill('#name', 'Carol');
  await c.page.click('#join-btn');
  await poll(async () => (await c.page.evaluate(() => window.chorus.state())).phase === 'failed',
    { timeoutMs: UI_TIMEOUT_MS, what: 'the tokenless join to fail' });
  const devTokenCalls = c.logs.filter((l) => l.includes('/dev/token'));
  if (devTokenCalls.length) throw new Error(`the page asked /dev/token: ${devTokenCalls.join(' | ')}`);

  for (const br of [a, b]) await br.page.evaluate(() => window.chorus.leave());
  console.log(JSON.stringify({ ok: true, media_ms: mediaMs, flooded_relayed: flooded, alice: stats.alice, bob: stats.bob }));
});
