import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { backoffDelay, createTileLive } from '../src/index.js';
import { startGateway, until, update } from './support/gateway.js';
import { NodeEventSource } from './support/eventsource.js';

function client(gw, extra = {}) {
  const live = createTileLive({ url: gw.url, WebSocket, EventSource: NodeEventSource, heartbeat: 0, random: () => 0, ...extra });
  const seen = { statuses: [], updates: [], errors: [] };
  live.on('status', (s) => seen.statuses.push(s));
  live.on('update', (u) => seen.updates.push(`${u.key}@${u.version}:${u.hash}`));
  live.on('error', (e) => seen.errors.push(e));
  return { live, seen };
}

test('tracks its tiles, takes the stored state, then goes live', async (t) => {
  const gw = await startGateway();
  const { live, seen } = client(gw);
  t.after(() => (live.close(), gw.close()));
  assert.equal(live.status, 'connecting');
  live.setTiles(['3/4/2', '3/4/3']);
  const track = await gw.next('track');
  assert.equal(track.transport, 'websocket');
  assert.deepEqual(track.frame.tiles, { '3/4/2': null, '3/4/3': null });
  gw.send({ type: 'batch', messages: [update(3, 4, 2, 5, 'a'), update(3, 4, 3, '1.9', 'b')] });
  gw.send({ type: 'live', tiles: 2, area_cells: 0 });
  await until(() => live.status === 'live', 'live');
  assert.deepEqual(seen.statuses, ['resyncing', 'live']);
  assert.deepEqual(seen.updates, ['3/4/2@5:a', '3/4/3@1.9:b']);
  assert.deepEqual(live.get('3/4/2'), { version: 5, hash: 'a' });
});

test('never goes backwards: older versions and repeats are dropped, dotted versions compare numerically', async (t) => {
  const gw = await startGateway();
  const { live, seen } = client(gw);
  t.after(() => (live.close(), gw.close()));
  live.setTiles(['3/4/2', '3/4/3']);
  await gw.next('track');
  for (const m of [
    update(3, 4, 2, 5, 'a'),
    update(3, 4, 2, 4, 'old'), // older: dropped
    update(3, 4, 2, '5.0', 'a'), // the same release again: dropped
    update(3, 4, 3, '1.9', 'b'),
    update(3, 4, 3, '1.10', 'c'), // newer than 1.9
    update(3, 4, 3, '1.10.0', 'd'), // same version, another release (a re-render)
  ]) {
    gw.send(m);
  }
  gw.send({ type: 'live' });
  await until(() => live.status === 'live', 'live');
  assert.deepEqual(seen.updates, ['3/4/2@5:a', '3/4/3@1.9:b', '3/4/3@1.10:c', '3/4/3@1.10.0:d']);
});

test('a new view sends only the difference: untrack what left, track what came with what it has', async (t) => {
  const gw = await startGateway();
  const { live } = client(gw);
  t.after(() => (live.close(), gw.close()));
  live.setTiles(['3/4/2', '3/4/3']);
  await gw.next('track');
  gw.send(update(3, 4, 3, 7, 'h7'));
  gw.send({ type: 'live' });
  await until(() => live.status === 'live', 'live');
  live.setTiles(['3/4/3', '3/5/3']);
  const untrack = await gw.next('untrack');
  const track = await gw.next('track');
  assert.deepEqual(untrack.frame.tiles, ['3/4/2']);
  assert.deepEqual(track.frame.tiles, { '3/5/3': null });
  // A tile that leaves the view and comes back is tracked with the version the client kept.
  live.setTiles(['3/5/3']);
  assert.deepEqual((await gw.next('untrack')).frame.tiles, ['3/4/3']);
  live.setTiles(['3/5/3', '3/4/3']);
  assert.deepEqual((await gw.next('track')).frame.tiles, { '3/4/3': { version: 7, hash: 'h7' } });
});

test('after the connection drops it reconnects and resumes with the versions it has', async (t) => {
  const gw = await startGateway();
  const { live, seen } = client(gw);
  t.after(() => (live.close(), gw.close()));
  live.setTiles(['3/4/2', '3/4/3']);
  await gw.next('track');
  gw.send(update(3, 4, 2, 5, 'a'));
  gw.send({ type: 'live' });
  await until(() => live.status === 'live', 'live');
  gw.sockets[0].close(1012, 'restart');
  await until(() => gw.sockets.length === 2, 'a second connection');
  const resume = await gw.next('track');
  assert.equal(resume.session, 'ws2');
  assert.deepEqual(resume.frame.tiles, { '3/4/2': { version: 5, hash: 'a' }, '3/4/3': null });
  // What changed while away arrives as stored state; the client takes it once.
  gw.send({ type: 'batch', messages: [update(3, 4, 2, 6, 'b'), update(3, 4, 3, 2, 'c')] });
  gw.send({ type: 'live' });
  await until(() => live.status === 'live', 'live again');
  assert.deepEqual(seen.statuses, ['resyncing', 'live', 'offline', 'resyncing', 'live']);
  assert.deepEqual(seen.updates, ['3/4/2@5:a', '3/4/2@6:b', '3/4/3@2:c']);
  assert.equal(live.stats.reconnects, 1);
});

test('reconnects back off exponentially with full jitter, and start over once live', async (t) => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, { initial: 100, max: 1000 }, () => 0.5)), [50, 100, 200, 400, 500, 500, 500]);
  for (let n = 0; n < 8; n++) {
    const d = backoffDelay(n, { initial: 100, max: 1000 }, Math.random);
    assert.ok(d >= 0 && d < Math.min(1000, 100 * 2 ** n), `attempt ${n}: ${d}`);
  }
  // A client whose gateway is down counts its attempts up; a live connection resets them.
  const gw = await startGateway();
  gw.refuseWebSocket = true;
  const { live } = client(gw, { transport: 'websocket', backoff: { initial: 1, max: 5 } });
  t.after(() => (live.close(), gw.close()));
  await until(() => live.attempt >= 3, 'three failed attempts');
  gw.refuseWebSocket = false;
  await until(() => live.status === 'live', 'live'); // no tiles: live on hello
  assert.equal(live.attempt, 0);
});

test('falls back to SSE when WebSocket cannot open, and changes its tiles by POST', async (t) => {
  const gw = await startGateway();
  gw.refuseWebSocket = true;
  const { live, seen } = client(gw);
  t.after(() => (live.close(), gw.close()));
  live.setTiles(['5/1/2']);
  const track = await gw.next('track');
  assert.equal(track.transport, 'sse');
  assert.deepEqual(track.frame.tiles, { '5/1/2': null });
  gw.sse(track.session, update(5, 1, 2, '2.1', 'x'));
  gw.sse(track.session, { type: 'live', tiles: 1, area_cells: 0 });
  await until(() => live.status === 'live', 'live');
  assert.deepEqual(seen.updates, ['5/1/2@2.1:x']);
  live.setTiles(['5/1/3']);
  const untrack = await gw.next('untrack');
  assert.deepEqual(untrack.frame.tiles, ['5/1/2']);
  assert.deepEqual((await gw.next('track')).frame.tiles, { '5/1/3': null });
  // The stream is cut (a gateway restart): EventSource comes back to a new session, and the
  // client tracks everything again with what it has.
  live.setTiles(['5/1/2', '5/1/3']);
  await gw.next('track');
  gw.streams.get(track.session).destroy();
  const again = await gw.next('track');
  assert.notEqual(again.session, track.session);
  assert.deepEqual(again.frame.tiles, { '5/1/2': { version: '2.1', hash: 'x' }, '5/1/3': null });
});

test('error frames are reported, not thrown', async (t) => {
  const gw = await startGateway();
  const { live, seen } = client(gw);
  t.after(() => (live.close(), gw.close()));
  await until(() => live.status === 'live', 'live');
  gw.send({ type: 'error', code: 'too_many_tiles', message: 'a session tracks at most 512 tiles' });
  await until(() => seen.errors.length === 1, 'an error event');
  assert.equal(seen.errors[0].code, 'too_many_tiles');
});

test('a gateway that is down is retried over WebSocket, not mistaken for a proxy that blocks it', async (t) => {
  const gw = await startGateway();
  const url = gw.url;
  await gw.close(); // nothing listens there now
  const live = createTileLive({ url, WebSocket, EventSource: NodeEventSource, heartbeat: 0, random: () => 0, backoff: { initial: 1, max: 5 } });
  t.after(() => live.close());
  await until(() => live.stats.reconnects >= 4, 'four failed attempts');
  assert.equal(live.useSse, false);
  assert.equal(live.status, 'offline');
});

test('whenSynced waits for the stored state of tiles tracked after going live', async (t) => {
  const gw = await startGateway();
  const { live } = client(gw);
  t.after(() => (live.close(), gw.close()));
  await until(() => live.status === 'live', 'live');
  live.setTiles(['4/8/5']);
  let synced = false;
  live.whenSynced().then(() => (synced = true));
  await gw.next('track');
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(synced, false, 'not before the state of 4/8/5 is in');
  gw.send({ type: 'live' });
  await until(() => synced, 'synced');
  assert.equal(await live.whenSynced(10), true);
});

test('order "arrival" takes the gateway\'s order: a feature tile\'s version may fall', async (t) => {
  const gw = await startGateway();
  const { live, seen } = client(gw, { order: 'arrival' });
  t.after(() => (live.close(), gw.close()));
  live.setTiles(['3/4/2']);
  await gw.next('track');
  gw.send(update(3, 4, 2, 5, 'featureA'));
  gw.send(update(3, 4, 2, 1, 'featureB')); // another feature's first version: a newer release
  gw.send(update(3, 4, 2, 1, 'featureB')); // the same release again: dropped
  gw.send({ type: 'live' });
  await until(() => live.status === 'live', 'live');
  assert.deepEqual(seen.updates, ['3/4/2@5:featureA', '3/4/2@1:featureB']);
  assert.throws(() => createTileLive({ url: gw.url, order: 'newest' }), TypeError);
});
