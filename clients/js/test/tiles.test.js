import { test } from 'node:test';
import assert from 'node:assert/strict';
import { latToY, lonToX, mercatorToLonLatBounds, tilesForBounds, tileUrlMatcher, versionedUrl } from '../src/index.js';

test('a lon/lat maps to the tile tilepipe reports', () => {
  // README's example update: z14 8805/5376, bbox [13.469, 52.469, 13.491, 52.483]
  assert.equal(lonToX(13.48, 14), 8805);
  assert.equal(latToY(52.475, 14), 5376);
  assert.equal(latToY(89, 3), 0);
  assert.equal(latToY(-89, 3), 7);
});

test('the tiles of a box, with a margin ring, nearest the centre first under a limit', () => {
  const inView = tilesForBounds([13.47, 52.47, 13.49, 52.48], 14);
  assert.deepEqual(inView, ['14/8805/5376']);
  const ring = tilesForBounds([13.47, 52.47, 13.49, 52.48], 14, { margin: 1 });
  assert.equal(ring.length, 9);
  assert.ok(ring.includes('14/8804/5375') && ring.includes('14/8806/5377'));
  const limited = tilesForBounds([13.47, 52.47, 13.49, 52.48], 14, { margin: 1, limit: 1 });
  assert.deepEqual(limited, ['14/8805/5376']);
});

test('columns wrap across the antimeridian, and a view wider than the world has each tile once', () => {
  const across = tilesForBounds([170, -10, 190, 10], 2);
  assert.deepEqual(new Set(across.map((k) => k.split('/')[1])), new Set(['3', '0']));
  const world = tilesForBounds([-540, -85, 540, 85], 1);
  assert.equal(world.length, 4);
  assert.equal(new Set(world).size, 4);
});

test('EPSG:3857 extents convert to degrees', () => {
  const [w, s, e, n] = mercatorToLonLatBounds([-20037508.342789244, -20037508.342789244, 20037508.342789244, 20037508.342789244]);
  assert.ok(Math.abs(w + 180) < 1e-9 && Math.abs(e - 180) < 1e-9);
  assert.ok(Math.abs(n - 85.0511287798) < 1e-6 && Math.abs(s + 85.0511287798) < 1e-6);
});

test('a tile URL is recognised from its template: xyz, tms, quadkey, other placeholders', () => {
  const xyz = tileUrlMatcher('http://127.0.0.1:8091/{z}/{x}/{y}.png');
  assert.deepEqual(xyz('http://127.0.0.1:8091/14/8805/5376.png'), [14, 8805, 5376]);
  assert.deepEqual(xyz('http://127.0.0.1:8091/14/8805/5376.png?v=3&h=ab'), [14, 8805, 5376]);
  assert.equal(xyz('http://127.0.0.1:8091/14/8805/5376.pbf'), null);
  assert.equal(xyz('http://other/14/8805/5376.png'), null);
  const tms = tileUrlMatcher('http://t/{z}/{x}/{y}{ratio}.png?key=k', { scheme: 'tms' });
  assert.deepEqual(tms('http://t/3/4/5@2x.png?key=k'), [3, 4, 2]);
  const qk = tileUrlMatcher('http://t/q/{quadkey}.png');
  assert.deepEqual(qk('http://t/q/120.png'), [3, 4, 2]); // quadkey 120 = z3 x4 y2
});

test('a versioned URL carries the version and the hash, and keeps query and fragment', () => {
  assert.equal(versionedUrl('http://t/1/2/3.png', { version: '1.10', hash: 'ab' }), 'http://t/1/2/3.png?v=1.10&h=ab');
  assert.equal(versionedUrl('http://t/1/2/3.png?key=k#f', { version: 4, hash: '' }), 'http://t/1/2/3.png?key=k&v=4#f');
  assert.equal(versionedUrl('http://t/1/2/3.png', undefined), 'http://t/1/2/3.png');
});

test('remember keeps the most recently set entries, at most the limit', async () => {
  const { remember } = await import('../src/index.js');
  const m = new Map();
  for (const k of ['a', 'b', 'c', 'a', 'd']) remember(m, k, k.toUpperCase(), 3);
  assert.deepEqual([...m.keys()], ['c', 'a', 'd']);
});
