#!/usr/bin/env node
// End-to-end check of the call page: two separate Chromiums join one room through the UI,
// each must decode the other's video and receive its audio; then a camera mute shows on the
// other side; chat messages go both ways over the data channels (and a third page whose token
// lacks the data grant cannot get its messages relayed); and leaving removes the tile.
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
  chat: [...document.querySelectorAll('#chat-log .msg')].map((m) => ({
    from: m.dataset.from, name: m.querySelector('.from')?.textContent, text: m.querySelector('.text')?.textContent,
  })),
  log: window.chorus.log.slice(-80),
  error: document.querySelector('#error')?.textContent,
  tiles: [...document.querySelectorAll('.tile')].map((t) => ({
    participant: t.dataset.participantId, className: t.className,
    label: t.querySelector('.name')?.textContent,
  })),
} : { note: 'window.chorus is not defined', html: document.documentElement.outerHTML.slice(0, 300) });

const subscriberPc = () => window.chorus.pcs.subscriber;

/** The `chorus_data_messages_total` and data-related `chorus_packets_dropped_total` counters. */
async function dataMetrics() {
  const res = await fetch(`${base}/metrics`);
  if (!res.ok) throw new Error(`GET /metrics: ${res.status}`);
  const text = await res.text();
  const out = {};
  for (const line of text.split('\n')) {
    const m = /^(chorus_data_messages_total|chorus_packets_dropped_total)\{(\w+)="(\w+)"\} (\d+)/.exec(line);
    if (m && (m[1] === 'chorus_data_messages_total' || m[3].startsWith('data_'))) out[`${m[1]}{${m[2]}="${m[3]}"}`] = Number(m[4]);
  }
  return out;
}

/**
 * Types `text` into `from`'s chat box and clicks Send; `to` must then show it in its chat list
 * (DOM) and in `state().messages`, with the sender's participant id and display name.
 */
async function chat(from, to, fromMe, fromName, text) {
  await from.page.waitForSelector('#chat-send:not([disabled])', { timeout: UI_TIMEOUT_MS });
  await from.page.fill('#chat-input', text);
  await from.page.click('#chat-send');
  // The sender sees its own message and the input is cleared.
  await from.page.waitForFunction((t) => [...document.querySelectorAll('#chat-log .msg.local .text')]
    .some((e) => e.textContent === t) && document.querySelector('#chat-input').value === '', text, { timeout: UI_TIMEOUT_MS });
  const started = Date.now();
  await to.page.waitForFunction(({ id, t }) => [...document.querySelectorAll(`#chat-log .msg[data-from="${id}"] .text`)]
    .some((e) => e.textContent === t), { id: fromMe.id, t: text }, { timeout: UI_TIMEOUT_MS })
    .catch(async (e) => {
      e.message = `${to.name} never showed ${from.name}'s chat message ${JSON.stringify(text)}: ${e.message}`;
      e.diagnostics = { metrics: await dataMetrics().catch((m) => m.message) };
      throw e;
    });
  const label = await to.page.textContent(`#chat-log .msg[data-from="${fromMe.id}"]:last-child .from`);
  if (!label.includes(fromName)) throw new Error(`${to.name}: ${from.name}'s message is labelled ${JSON.stringify(label)}`);
  const { messages } = await to.page.evaluate(() => window.chorus.state());
  const got = messages.filter((m) => m.text === text);
  if (got.length !== 1 || got[0].from !== fromMe.id || got[0].name !== fromName) {
    throw new Error(`${to.name}'s state().messages has ${JSON.stringify(got)} for ${JSON.stringify(text)} (want one from ${fromMe.id}, ${fromName})`);
  }
  return Date.now() - started;
}

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

  // Chat over the data channels: Alice -> Bob, then Bob -> Alice, typed and sent through the UI.
  const before = await dataMetrics();
  const chatMs = {};
  chatMs.alice_to_bob = await chat(a, b, me.alice, 'Alice', `hello Bob ${Date.now()} ✓`);
  chatMs.bob_to_alice = await chat(b, a, me.bob, 'Bob', 'hi Alice, "quotes" & <tags>');
  for (const [br, n] of [[a, 1], [b, 1]]) {
    const st = await br.page.evaluate(() => window.chorus.state());
    if (st.messages.length !== n) throw new Error(`${br.name} got ${st.messages.length} messages, want ${n}: ${JSON.stringify(st.messages)}`);
  }
  const afterChat = await dataMetrics();
  // Server-wide counters (other rooms may add to them): at least our two messages in and out.
  for (const dir of ['in', 'out']) {
    const k = `chorus_data_messages_total{direction="${dir}"}`;
    if ((afterChat[k] || 0) - (before[k] || 0) < 2) {
      throw new Error(`${k} went from ${before[k] || 0} to ${afterChat[k] || 0} over two relayed messages`);
    }
  }
  progress('call', `chat both ways (${JSON.stringify(chatMs)} ms); metrics ${JSON.stringify(afterChat)}`);

  // A third page whose token lacks the data grant (`?data=0` → /dev/token?data=0): it receives
  // the others' messages but its own are dropped by the server, not relayed.
  const c = await launch('charlie');
  browsers.push(c);
  c.diagnose = diagnose;
  await c.page.goto(`${base}/?data=0`, { waitUntil: 'load' });
  await c.page.fill('#room', room);
  await c.page.fill('#name', 'Charlie');
  await c.page.click('#join-btn');
  await poll(async () => {
    const st = await c.page.evaluate(() => window.chorus.state());
    if (st.phase === 'failed') throw new Error(`charlie failed to join: ${st.errors.join('; ')}`);
    if (st.phase === 'joined') me.charlie = st.me;
    return st.phase === 'joined' && st.dataChannels.subscriber === 'open' && st.dataChannels.publisher === 'open';
  }, { timeoutMs: MEDIA_TIMEOUT_MS, what: 'charlie to join with both data channels open' });
  // Positive control: Charlie's subscriber channel works (Alice -> Charlie)...
  chatMs.alice_to_charlie = await chat(a, c, me.alice, 'Alice', 'welcome Charlie');
  // ... but Charlie's own message goes nowhere.
  const dropsBefore = (await dataMetrics())['chorus_packets_dropped_total{reason="data_not_permitted"}'] || 0;
  const forbidden = `charlie has no data grant ${Date.now()}`;
  await c.page.fill('#chat-input', forbidden);
  await c.page.click('#chat-send');
  await c.page.waitForFunction((t) => [...document.querySelectorAll('#chat-log .msg.local .text')]
    .some((e) => e.textContent === t), forbidden, { timeout: UI_TIMEOUT_MS });
  const dropped = await poll(async () => {
    const n = (await dataMetrics())['chorus_packets_dropped_total{reason="data_not_permitted"}'] || 0;
    return n > dropsBefore ? n : 0;
  }, { timeoutMs: UI_TIMEOUT_MS, what: 'the server to count Charlie\'s message as data_not_permitted' });
  // Bob -> Alice once more, after Charlie's message: had it been relayed it would be there too.
  await chat(b, a, me.bob, 'Bob', 'still here');
  for (const br of [a, b]) {
    const leaked = (await br.page.evaluate(() => window.chorus.state())).messages.filter((m) => m.from === me.charlie.id);
    if (leaked.length) throw new Error(`${br.name} received a message from Charlie, who has no data grant: ${JSON.stringify(leaked)}`);
  }
  progress('call', `no-data-grant page: its message was dropped (data_not_permitted=${dropped}), not relayed`);
  await c.page.click('#leave-btn');
  await b.page.waitForSelector(`.tile[data-participant-id="${me.charlie.id}"]`, { state: 'detached', timeout: UI_TIMEOUT_MS });
  await c.close();
  const dataMetricsEnd = await dataMetrics();

  // Alice leaves; her page is back at the form and her tile disappears from Bob's page.
  await a.page.click('#leave-btn');
  await a.page.waitForSelector('#join-form', { state: 'visible', timeout: UI_TIMEOUT_MS });
  await b.page.waitForSelector(aliceTileOnBob, { state: 'detached', timeout: UI_TIMEOUT_MS });
  progress('call', 'leave seen by the other participant');

  const bobErrors = (await b.page.evaluate(() => window.chorus.state())).errors;
  if (bobErrors.length) throw new Error(`Bob's page showed errors: ${bobErrors.join('; ')}`);
  // Bob leaves too (a page closed without `leave` would be kept for a resume, §13).
  await b.page.click('#leave-btn');

  console.log(JSON.stringify({
    test: 'call', ok: true, room, media_ms: mediaMs, total_ms: Date.now() - started,
    chat_ms: chatMs, data_metrics: dataMetricsEnd,
    alice: { id: me.alice.id, received: later.alice },
    bob: { id: me.bob.id, received: later.bob },
  }));
});
