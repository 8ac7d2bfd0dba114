// The OpenLayers adapter against the real ol 10 sources and view (ol/Map itself needs a DOM;
// the browser test drives a whole map).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import XYZ from 'ol/source/XYZ.js';
import ImageTile from 'ol/source/ImageTile.js';
import View from 'ol/View.js';
import { fromLonLat } from 'ol/proj.js';
import { createTileLive, syncOpenLayers } from '../src/index.js';
import { startGateway, until, update } from './support/gateway.js';

function olMap(view) {
  const listeners = [];
  return {
    getView: () => view,
    getSize: () => [256, 256],
    on(type, fn) {
      listeners.push(fn);
      return { listener: fn };
    },
    un() {},
    moved: () => listeners.forEach((fn) => fn()),
  };
}

async function setUp(t) {
  const gw = await startGateway();
  const live = createTileLive({ url: gw.url, WebSocket, heartbeat: 0, random: () => 0 });
  t.after(() => (live.close(), gw.close()));
  const view = new View({ center: fromLonLat([13.4805, 52.4755]), zoom: 14 });
  return { gw, live, view, map: olMap(view) };
}

test('XYZ: versioned URLs, a new key when a tile in view changes, off-screen changes wait for the view', async (t) => {
  const { gw, live, view, map } = await setUp(t);
  const source = new XYZ({ url: 'http://tiles/{z}/{x}/{y}.png' });
  const sync = syncOpenLayers(map, source, live, { minInterval: 0 });
  const track = await gw.next('track');
  assert.ok('14/8805/5376' in track.frame.tiles, Object.keys(track.frame.tiles).join());
  const url = () => source.getTileUrlFunction()([14, 8805, 5376]);
  assert.equal(url(), 'http://tiles/14/8805/5376.png');
  source.getTileUrlFunction()([14, 8000, 5000]); // a tile drawn earlier, now far away
  const key0 = source.getKey();

  gw.send(update(14, 8805, 5376, 3, 'a'));
  await until(() => source.getKey() !== key0, 'a new source key');
  assert.equal(url(), 'http://tiles/14/8805/5376.png?v=3&h=a');
  const key1 = source.getKey();

  gw.send(update(14, 8000, 5000, 9, 'far'));
  await until(() => live.get('14/8000/5000'), 'the update');
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(source.getKey(), key1, 'an off-screen change does not reload the view');
  view.setCenter(fromLonLat([-4.20776, 57.22556])); // 14/8000/5000 in view
  map.moved();
  await until(() => source.getKey() !== key1, 'a new key once it is in view');
  assert.equal(source.getTileUrlFunction()([14, 8000, 5000]), 'http://tiles/14/8000/5000.png?v=9&h=far');
  assert.equal(sync.stats.refreshes, 2);
});

test('ImageTile: an update in view replaces the URL getter (a new key), one out of view does not', async (t) => {
  const { gw, live, map } = await setUp(t);
  const source = new ImageTile({ url: 'http://tiles/{z}/{x}/{y}.png' });
  syncOpenLayers(map, source, live, { url: 'http://tiles/{z}/{x}/{y}.png', minInterval: 0 });
  await gw.next('track');
  const key0 = source.getKey();
  assert.match(key0, /^url-function-key-/);
  gw.send(update(14, 9000, 9000, 3, 'a')); // out of view
  await until(() => live.get('14/9000/9000'), 'the first update');
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(source.getKey(), key0);
  gw.send(update(14, 8805, 5376, 3, 'b')); // in view (drawn before the adapter, perhaps)
  await until(() => source.getKey() !== key0, 'a new key');
});
