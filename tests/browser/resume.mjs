#!/usr/bin/env node
// A call page that loses its WebSocket resumes: two Chromiums in a call, one page's signaling
// socket is dropped from the test (no `leave`, as a network loss would); the page reconnects,
// resumes the same participant (`resumed`), restarts ICE on both connections, and video still
// decodes on both sides; the server never had three participants. Then a resume that fails
// (a spoiled resume token) makes the page join afresh, and the call goes on.
//
//   node tests/browser/resume.mjs http://127.0.0.1:7880
//
// Exit 0: passed (the last stdout line is a JSON summary). Exit 1: failed (diagnostics on
// stderr). Exit 2: could not run (no Chromium, bad arguments).

import {
  baseUrlFromArgs, requireChromium, launch, inboundStats, mediaFlowing, poll, progress,
  randomName, run, stalled,
} from './lib.mjs';

const base = baseUrlFromArgs('tests/browser/resume.mjs');
requireChromium();

const MEDIA_TIMEOUT_MS = 30000;
const UI_TIMEOUT_MS = 10000;
const SUSTAIN_MS = 2000;

const diagnose = () => (window.chorus ? {
  state: window.chorus.state(),
  log: window.chorus.log.slice(-80),
  error: document.querySelector('#error')?.textContent,
} : { note: 'window.chorus is not defined' });

const subscriberPc = () => window.chorus.pcs.subscriber;

/** The server's participant count, from /metrics (dev mode serves it on the HTTP port). */
async function serverParticipants() {
  const res = await fetch(`${base}/metrics`);
  if (!res.ok) throw new Error(`GET /metrics: ${res.status}`);
  const m = /^chorus_participants (\d+)/m.exec(await res.text());
  if (!m) throw new Error('no chorus_participants in /metrics');
  return Number(m[1]);
}

/**
 * Waits (up to MEDIA_TIMEOUT_MS) for a SUSTAIN_MS window in which `br` receives audio and
 * decodes video at the full rate again (an ICE restart or a rejoin costs a keyframe wait).
 */
async function sustained(br, when) {
  let problem;
  await poll(async () => {
    const first = await inboundStats(br.page, subscriberPc);
    await new Promise((r) => setTimeout(r, SUSTAIN_MS));
    problem = stalled(first, await inboundStats(br.page, subscriberPc), SUSTAIN_MS);
    return !problem;
  }, { timeoutMs: MEDIA_TIMEOUT_MS, everyMs: 0, what: `${br.name}'s media to flow ${when}` })
    .catch((e) => { e.message += ` (${problem})`; throw e; });
}

/** The ICE ufrag of a connection's current local and remote descriptions. */
const ufrags = (target) => {
  const pc = window.chorus.pcs[target];
  const u = (d) => (d && /a=ice-ufrag:(\S+)/.exec(d.sdp) || [])[1] || null;
  return { local: u(pc.localDescription), remote: u(pc.remoteDescription) };
};

run('resume', async (browsers) => {
  const started = Date.now();
  const room = randomName('resume');
  const [a, b] = await Promise.all(['alice', 'bob'].map((n) => launch(n)));
  browsers.push(a, b);
  a.diagnose = diagnose;
  b.diagnose = diagnose;
  progress('resume', `two Chromiums against ${base}, room ${room}`);
  await Promise.all([a, b].map(async (br) => {
    await br.page.goto(`${base}/`, { waitUntil: 'load' });
    await br.page.evaluate(([r, n]) => window.chorus.join(r, n), [room, br.name]);
  }));
  const me = {};
  for (const br of [a, b]) {
    await poll(async () => {
      const st = await br.page.evaluate(() => window.chorus.state());
      if (st.phase === 'failed') throw new Error(`${br.name} failed to join: ${st.errors.join('; ')}`);
      me[br.name] = st.me;
      return st.phase === 'joined';
    }, { timeoutMs: UI_TIMEOUT_MS, what: `${br.name} to join` });
  }
  for (const br of [a, b]) {
    await poll(async () => mediaFlowing(await inboundStats(br.page, subscriberPc)),
      { timeoutMs: MEDIA_TIMEOUT_MS, what: `${br.name} to decode video and receive audio` });
  }
  progress('resume', 'media flows both ways; dropping alice\'s WebSocket');
  const before = {
    publisher: await a.page.evaluate(ufrags, 'publisher'),
    subscriber: await a.page.evaluate(ufrags, 'subscriber'),
  };

  await a.page.evaluate(() => window.chorus.dropSignaling());
  // The page says it is reconnecting, then resumes.
  await poll(async () => {
    const st = await a.page.evaluate(() => window.chorus.state());
    return st.phase === 'reconnecting' || st.resumes > 0;
  }, { timeoutMs: UI_TIMEOUT_MS, everyMs: 20, what: 'alice to notice the lost socket' });
  const st = await poll(async () => {
    const s = await a.page.evaluate(() => window.chorus.state());
    if (s.phase === 'failed') throw new Error(`alice failed: ${s.errors.join('; ')}`);
    return s.resumes === 1 && s.phase === 'joined' ? s : null;
  }, { timeoutMs: UI_TIMEOUT_MS, everyMs: 100, what: 'alice to resume' });
  if (st.me.id !== me.alice.id) throw new Error(`alice resumed as ${st.me.id}, not ${me.alice.id}`);
  if (st.rejoins !== 0) throw new Error(`alice rejoined instead of resuming: ${JSON.stringify(st)}`);
  if (!/resumed/.test(st.status)) throw new Error(`the status line does not say so: ${st.status}`);
  progress('resume', `alice resumed as ${st.me.id}: ${st.status}`);

  // ICE restarted on both of alice's connections: new local and remote credentials.
  const after = await poll(async () => {
    const now = {
      publisher: await a.page.evaluate(ufrags, 'publisher'),
      subscriber: await a.page.evaluate(ufrags, 'subscriber'),
    };
    const changed = (k) => now[k].local !== before[k].local && now[k].remote !== before[k].remote;
    return changed('publisher') && changed('subscriber') ? now : null;
  }, { timeoutMs: UI_TIMEOUT_MS, everyMs: 200, what: 'ICE restarts on both of alice\'s connections' });
  progress('resume', `ICE restarted: ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);

  // Still connected, and video keeps decoding on both sides after the restarts.
  for (const br of [a, b]) {
    await poll(async () => {
      const s = await br.page.evaluate(() => window.chorus.state());
      return s.connection.publisher === 'connected' && s.connection.subscriber === 'connected';
    }, { timeoutMs: MEDIA_TIMEOUT_MS, what: `${br.name}'s connections to be connected` });
    await sustained(br, 'after the resume');
  }
  const bob = await b.page.evaluate(() => window.chorus.state());
  if (bob.participants.length !== 1 || bob.participants[0].id !== me.alice.id) {
    throw new Error(`bob sees ${JSON.stringify(bob.participants.map((p) => p.id))}, want only alice ${me.alice.id}`);
  }
  const participants = await serverParticipants();
  if (participants !== 2) throw new Error(`the server has ${participants} participants, want 2`);

  // A resume that fails (the page lost its resume token, as after the grace period) makes
  // the page join afresh: a new participant id, the same identity (which replaces the old
  // participant at once), media again both ways.
  progress('resume', 'dropping alice\'s WebSocket with a spoiled resume token');
  await a.page.evaluate(() => window.chorus.dropSignaling({ forgetResumeToken: true }));
  const rejoined = await poll(async () => {
    const s = await a.page.evaluate(() => window.chorus.state());
    if (s.phase === 'failed') throw new Error(`alice failed: ${s.errors.join('; ')}`);
    return s.rejoins === 1 && s.phase === 'joined' ? s : null;
  }, { timeoutMs: UI_TIMEOUT_MS, everyMs: 100, what: 'alice to rejoin' });
  if (rejoined.me.id === me.alice.id || rejoined.me.identity !== me.alice.identity) {
    throw new Error(`alice rejoined as ${JSON.stringify(rejoined.me)}; was ${JSON.stringify(me.alice)}`);
  }
  if (!/rejoined/.test(rejoined.status)) throw new Error(`the status line does not say so: ${rejoined.status}`);
  progress('resume', `alice rejoined as ${rejoined.me.id}: ${rejoined.status}`);
  await poll(async () => {
    const s = await b.page.evaluate(() => window.chorus.state());
    return s.participants.length === 1 && s.participants[0].id === rejoined.me.id;
  }, { timeoutMs: UI_TIMEOUT_MS, what: 'bob to see only the rejoined alice' });
  await poll(async () => mediaFlowing(await inboundStats(a.page, subscriberPc)),
    { timeoutMs: MEDIA_TIMEOUT_MS, what: 'the rejoined alice to decode video and receive audio' });
  for (const br of [a, b]) await sustained(br, 'after the rejoin');
  const afterRejoin = await serverParticipants();
  if (afterRejoin !== 2) throw new Error(`after the rejoin the server has ${afterRejoin} participants, want 2`);

  await Promise.all([a, b].map((br) => br.page.evaluate(() => window.chorus.leave())));
  console.log(JSON.stringify({
    ok: true, test: 'resume', participant: me.alice.id, rejoined_as: rejoined.me.id,
    participants, before, after, ms: Date.now() - started,
  }));
});
