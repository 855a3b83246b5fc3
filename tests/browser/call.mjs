#!/usr/bin/env node
// End-to-end check of the call page: two separate Chromiums join one room through the UI,
// each must decode the other's video and receive its audio; then a camera mute shows on the
// other side, and leaving removes the tile.
//
//   node tests/browser/call.mjs http://127.0.0.1:7880
//
// Exit 0: passed (the last stdout line is a JSON summary). Exit 1: failed (diagnostics on
// stderr). Exit 2: could not run (no Chromium, bad arguments).

import {
  baseUrlFromArgs, requireChromium, launch, inboundStats, mediaFlowing, poll, progress,
  randomName, run, stalled, outboundPackets,
} from './lib.mjs';

const base = baseUrlFromArgs('tests/browser/call.mjs');
requireChromium();

const MEDIA_TIMEOUT_MS = 30000;
const UI_TIMEOUT_MS = 10000;
const SUSTAIN_MS = 3000;

const diagnose = () => (window.chorus ? {
  state: window.chorus.state(),
  log: window.chorus.log.slice(-80),
  error: document.querySelector('#error')?.textContent,
  tiles: [...document.querySelectorAll('.tile')].map((t) => ({
    participant: t.dataset.participantId, className: t.className,
    label: t.querySelector('.name')?.textContent,
  })),
} : { note: 'window.chorus is not defined', html: document.documentElement.outerHTML.slice(0, 300) });

const subscriberPc = () => window.chorus.pcs.subscriber;

run('call', async (browsers) => {
  const started = Date.now();
  const room = randomName('call');
  const names = ['Alice', 'Bob'];

  progress('call', `launching two Chromiums against ${base}, room ${room}`);
  const [a, b] = await Promise.all(names.map((n) => launch(n.toLowerCase())));
  browsers.push(a, b);
  a.diagnose = diagnose;
  b.diagnose = diagnose;

  // Join through the UI: fill the form and click Join.
  await Promise.all([a, b].map(async (br, i) => {
    await br.page.goto(`${base}/`, { waitUntil: 'load' });
    await br.page.fill('#room', room);
    await br.page.fill('#name', names[i]);
    await br.page.click('#join-btn');
  }));
  const me = {};
  for (const br of [a, b]) {
    await poll(async () => {
      const st = await br.page.evaluate(() => window.chorus.state());
      if (st.phase === 'failed') throw new Error(`${br.name} failed to join: ${st.errors.join('; ')}`);
      if (st.phase === 'joined') me[br.name] = st.me;
      return st.phase === 'joined';
    }, { timeoutMs: UI_TIMEOUT_MS, what: `${br.name} to join` });
  }
  progress('call', `joined: alice=${me.alice.id} bob=${me.bob.id}`);

  // Media both ways.
  const stats = {};
  await poll(async () => {
    for (const br of [a, b]) stats[br.name] = await inboundStats(br.page, subscriberPc);
    return mediaFlowing(stats.alice) && mediaFlowing(stats.bob);
  }, { timeoutMs: MEDIA_TIMEOUT_MS, what: 'video frames decoded and audio packets received on both pages' })
    .catch((e) => { e.diagnostics = { stats }; throw e; });
  const mediaMs = Date.now() - started;
  progress('call', `media flowing after ${mediaMs} ms:`, JSON.stringify(stats));

  // ... and keeps flowing.
  await new Promise((r) => setTimeout(r, SUSTAIN_MS));
  const later = {};
  for (const br of [a, b]) {
    later[br.name] = await inboundStats(br.page, subscriberPc);
    const problem = stalled(stats[br.name], later[br.name], SUSTAIN_MS);
    if (problem) {
      const e = new Error(`${br.name}'s media stalled: ${problem}`);
      e.diagnostics = {
        first: stats,
        later,
        sent_by_publishers: {
          alice: await outboundPackets(a.page, () => window.chorus.pcs.publisher),
          bob: await outboundPackets(b.page, () => window.chorus.pcs.publisher),
        },
      };
      throw e;
    }
  }
  progress('call', `media still flowing ${SUSTAIN_MS} ms later:`, JSON.stringify(later));

  // Each page shows a tile for the other, with its name.
  for (const [br, other, otherName] of [[a, me.bob, 'Bob'], [b, me.alice, 'Alice']]) {
    const label = await br.page.textContent(`.tile[data-participant-id="${other.id}"] .name`, { timeout: UI_TIMEOUT_MS });
    if (!label.includes(otherName)) throw new Error(`${br.name}: tile of ${other.id} is labelled ${JSON.stringify(label)}`);
  }

  // Alice stops her camera; Bob sees the indicator, then it goes away when she restarts it.
  const aliceTileOnBob = `.tile[data-participant-id="${me.alice.id}"]`;
  await a.page.click('#mute-cam');
  await b.page.waitForSelector(`${aliceTileOnBob}.video-muted .badge.cam-off`, { state: 'visible', timeout: UI_TIMEOUT_MS });
  progress('call', 'camera mute seen by the other participant');
  await a.page.click('#mute-cam');
  await b.page.waitForSelector(`${aliceTileOnBob}:not(.video-muted)`, { timeout: UI_TIMEOUT_MS });
  progress('call', 'camera unmute seen by the other participant');

  // The mute went out with the server's id for Alice's camera track (else: unknown_track).
  const alice = await a.page.evaluate(() => window.chorus.state());
  if (alice.errors.length) throw new Error(`Alice's page showed errors: ${alice.errors.join('; ')}`);
  if (!alice.ownTrackIds.video || !alice.ownTrackIds.audio) {
    throw new Error(`Alice never learnt her server track ids: ${JSON.stringify(alice.ownTrackIds)}`);
  }

  // Alice leaves; her page is back at the form and her tile disappears from Bob's page.
  await a.page.click('#leave-btn');
  await a.page.waitForSelector('#join-form', { state: 'visible', timeout: UI_TIMEOUT_MS });
  await b.page.waitForSelector(aliceTileOnBob, { state: 'detached', timeout: UI_TIMEOUT_MS });
  progress('call', 'leave seen by the other participant');

  const bobErrors = (await b.page.evaluate(() => window.chorus.state())).errors;
  if (bobErrors.length) throw new Error(`Bob's page showed errors: ${bobErrors.join('; ')}`);

  console.log(JSON.stringify({
    test: 'call', ok: true, room, media_ms: mediaMs, total_ms: Date.now() - started,
    alice: { id: me.alice.id, received: later.alice },
    bob: { id: me.bob.id, received: later.bob },
  }));
});
