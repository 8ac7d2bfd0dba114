// The MapLibre adapter's bookkeeping against a stand-in for the map's public API (maplibre-gl
// needs WebGL and cannot load in Node; tests/browser drives the real one in Chromium). The
// stand-in does what MapLibre does with the calls the adapter makes: refreshTiles reloads
// the matching tiles in view through the request transform, and a load ends with a `data`
// event carrying the tile.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { createTileLive, syncMapLibre } from '../src/index.js';
import { startGateway, until, update } from './support/gateway.js';

// The four z14 tiles 8804..8805 x 5375..5376 fill the view.
const VIEW = { west: 13.40, south: 52.475, east: 13.49, north: 52.51 };

class StandInMap {
  constructor(version = '6.20.0') {
    this.version = version;
    this.listeners = new Map();
    this.source = { type: 'raster', tiles: ['http://t/{z}/{x}/{y}.png'], tileSize: 256, roundZoom: true, minzoom: 14, maxzoom: 14 };
    this.bounds = { ...VIEW };
    this.requests = []; // URLs, in the order the transform produced them
    this.refreshes = []; // the ids of each refreshTiles call (undefined: the whole source)
    this.loading = new Set();
  }
  getSource(id) { return id === 'tiles' ? this.source : undefined; }
  getTransformRequest() { return null; }
  setTransformRequest(fn) { this.transform = fn; }
  getZoom() { return 13; }
  getBounds() {
    const b = this.bounds;
    return { getWest: () => b.west, getSouth: () => b.south, getEast: () => b.east, getNorth: () => b.north };
  }
  isSourceLoaded() { return this.loading.size === 0; }
  on(type, fn) { (this.listeners.get(type) ?? this.listeners.set(type, []).get(type)).push(fn); }
  off() {}
  fire(type, e = {}) { for (const fn of this.listeners.get(type) ?? []) fn(e); }
  inView() {
    const out = [];
    for (const x of [8804, 8805]) for (const y of [5375, 5376]) out.push({ z: 14, x, y });
    return this.bounds.west === VIEW.west ? out : [{ z: 14, x: 8700, y: 5300 }];
  }
  async load({ z, x, y }) {
    const p = await this.transform(`http://t/${z}/${x}/${y}.png`, 'Tile');
    this.requests.push(p.url);
    this.loading.add(`${z}/${x}/${y}`);
  }
  refreshTiles(id, ids) {
    this.refreshes.push(ids);
    const want = ids ?? this.inView();
    for (const t of this.inView()) if (want.some((w) => w.x === t.x && w.y === t.y)) this.load(t);
  }
  done(key) {
    this.loading.delete(key);
    const [z, x, y] = key.split('/').map(Number);
    this.fire('data', { sourceId: 'tiles', tile: { tileID: { canonical: { z, x, y } } } });
  }
  doneAll() { for (const k of [...this.loading]) this.done(k); }
}

async function setUp(t, options = {}) {
  const gw = await startGateway();
  const live = createTileLive({ url: gw.url, WebSocket, heartbeat: 0, random: () => 0 });
  const map = new StandInMap(options.version);
  const sync = syncMapLibre(map, live, { source: 'tiles', ...options });
  t.after(() => (sync.stop(), live.close(), gw.close()));
  const track = await gw.next('track');
  gw.send({ type: 'batch', messages: [update(14, 8805, 5376, 1, 'a1'), update(14, 8804, 5376, 1, 'b1')] });
  gw.send({ type: 'live' });
  for (const t of map.inView()) await map.load(t); // the first view, loaded as MapLibre would
  map.doneAll();
  return { gw, live, map, sync, track };
}

const settle = (ms = 60) => new Promise((r) => setTimeout(r, ms));

test('MapLibre 6: the first tiles wait for the stored versions and go out versioned', async (t) => {
  const { map, track } = await setUp(t);
  assert.ok('14/8805/5376' in track.frame.tiles, 'the view is tracked at the source zoom (z14)');
  assert.ok(map.requests.includes('http://t/14/8805/5376.png?v=1&h=a1'), map.requests.join());
  assert.ok(map.requests.includes('http://t/14/8805/5375.png'), 'no version known: the bare URL');
});

test('one reload per tile at a time; updates during it fold into one follow-up at the newest', async (t) => {
  const { gw, map } = await setUp(t);
  map.requests.length = 0;
  gw.send(update(14, 8805, 5376, 2, 'a2'));
  await until(() => map.requests.length === 1, 'the refresh');
  assert.deepEqual(map.refreshes.at(-1), [{ z: 14, x: 8805, y: 5376 }]);
  gw.send(update(14, 8805, 5376, 3, 'a3'));
  gw.send(update(14, 8805, 5376, 4, 'a4'));
  await settle(150);
  assert.deepEqual(map.requests, ['http://t/14/8805/5376.png?v=2&h=a2'], 'nothing while v2 loads');
  map.done('14/8805/5376');
  await until(() => map.requests.length === 2, 'the follow-up');
  assert.equal(map.requests[1], 'http://t/14/8805/5376.png?v=4&h=a4');
  map.done('14/8805/5376');
  await settle(150);
  assert.equal(map.requests.length, 2);
});

test('updates in one frame are one refreshTiles call; above the threshold, the whole source', async (t) => {
  const { gw, map, sync } = await setUp(t, { fullReloadAbove: 2 });
  map.refreshes.length = 0;
  gw.send({ type: 'batch', messages: [update(14, 8805, 5376, 2, 'a2'), update(14, 8804, 5376, 2, 'b2')] });
  await until(() => map.refreshes.length === 1, 'one call');
  assert.equal(map.refreshes[0].length, 2);
  map.doneAll();
  gw.send({ type: 'batch', messages: [update(14, 8805, 5376, 3, 'a3'), update(14, 8804, 5376, 3, 'b3'), update(14, 8805, 5375, 1, 'c1')] });
  await until(() => map.refreshes.length === 2, 'the whole-source call');
  assert.equal(map.refreshes[1], undefined);
  assert.equal(sync.stats.fullRefreshes, 1);
});

test('an update out of view waits; the move that brings the tile back refreshes it', async (t) => {
  const { gw, map, sync } = await setUp(t);
  map.bounds = { west: 11.0, south: 52.8, east: 11.05, north: 52.81 }; // elsewhere
  map.fire('moveend');
  map.refreshes.length = 0;
  gw.send(update(14, 8805, 5376, 2, 'a2'));
  await until(() => sync.stale().includes('14/8805/5376'), 'marked stale');
  await settle(100);
  assert.deepEqual(map.refreshes, []);
  map.bounds = { ...VIEW }; // back: MapLibre would show its cached, old image
  map.fire('moveend');
  await until(() => map.refreshes.length === 1, 'the refresh once in view');
  assert.deepEqual(map.refreshes[0], [{ z: 14, x: 8805, y: 5376 }]);
  assert.deepEqual(sync.stale(), []);
});

test('MapLibre 5: the first tiles go out bare and are refetched once their version arrives', async (t) => {
  const gw = await startGateway();
  const live = createTileLive({ url: gw.url, WebSocket, heartbeat: 0, random: () => 0 });
  const map = new StandInMap('5.6.0');
  const sync = syncMapLibre(map, live, { source: 'tiles' });
  t.after(() => (sync.stop(), live.close(), gw.close()));
  await map.load({ z: 14, x: 8805, y: 5376 });
  assert.deepEqual(map.requests, ['http://t/14/8805/5376.png']);
  map.doneAll();
  await gw.next('track');
  gw.send(update(14, 8805, 5376, 1, 'a1'));
  await until(() => map.requests.length === 2, 'the refetch');
  assert.equal(map.requests[1], 'http://t/14/8805/5376.png?v=1&h=a1');
});
