// MapLibre GL JS (5.6 - 6.x): refresh exactly the tiles tilepipe says changed, and nothing else.
//
//   const live = createTileLive({ url: 'http://127.0.0.1:8090' });
//   syncMapLibre(map, live, { source: 'tiles' });
//
// What it does, and why (the pitfalls are measured in the README, "Map clients"):
// - Versioned URLs. The map's request transform (setTransformRequest, chained after the one
//   the map already has) adds `v=<version>&h=<hash>` to every tile URL of the source whose
//   version is known, so a refetch can never be answered by the browser's HTTP cache with the
//   old bytes, and an unchanged tile's URL stays the same (the cache keeps serving it).
// - map.refreshTiles(source, [{x, y, z}]) for the changed tiles in view, batched once per
//   animation frame, at most `maxRefreshPerFrame` a frame; above `fullReloadAbove` changed
//   tiles in one frame, one whole-source refresh instead (cheap here: unchanged tiles keep
//   their URLs and come from the HTTP cache). The old tile stays drawn until the new one is
//   in, so nothing flickers.
// - One reload per tile at a time. Three refreshes of one tile in one tick are three parallel
//   requests that can land out of order and leave an old version on screen (7 of 8 trials in
//   headless Chromium); an update that arrives while its tile is loading is folded into one
//   follow-up once the load ends.
// - Off-screen updates. refreshTiles ignores tiles outside the view, and a tile panned back
//   into view comes out of MapLibre's tile cache with its old image and no request. Updated
//   tiles that were not in view stay marked and are refreshed when they are in view again.
// - The tracked set follows the view: the source's tiles in view plus `margin` tiles around.
// - MapLibre 6 awaits an async request transform, so the first tiles wait (at most
//   `waitForLive` ms) for the gateway's stored versions and are requested once, versioned.
//   On 5.x the first tiles go out bare and are refetched once if their version then arrives.
//   The tracked set is first sent when the source exists (its tile size and zooms decide
//   which tiles are in view), at the latest with the first tile request.

import { tilesForBounds, tileKey } from './tiles.js';
import { releaseToken, remember, tileUrlMatcher, versionedUrl } from './urls.js';

const MAP_TILE_SIZE = 512; // MapLibre's zoom is defined for 512-px tiles

/**
 * @param {import('maplibre-gl').Map} map
 * @param {import('./live.js').TileLive} live
 * @param {import('./maplibre.js').SyncMapLibreOptions} options
 */
export function syncMapLibre(map, live, options) {
  const {
    source,
    margin = 1,
    maxRefreshPerFrame = 32,
    fullReloadAbove = 64,
    maxTiles = 512,
    waitForLive = 1000,
    loadTimeout = 5000,
    versionParam = 'v',
    hashParam = 'h',
  } = options ?? {};
  if (!source) throw new TypeError('syncMapLibre needs options.source: the id of the tile source to keep fresh');
  const raf = globalThis.requestAnimationFrame?.bind(globalThis) ?? ((fn) => setTimeout(fn, 16));
  const previous = options.transformRequest ?? (typeof map.getTransformRequest === 'function' ? map.getTransformRequest() : null);
  const major = Number(String(map.version ?? '').split('.')[0]);
  const canWait = major >= 6 && waitForLive > 0;

  /** key -> release token the map last asked the server for ("" = the bare URL) */
  const requested = new Map();
  /** key -> {since, sent}: a reload in progress (sent: its request went out) */
  const inflight = new Map();
  /** keys whose newest release the map has not asked for */
  const dirty = new Set();
  /** dirty keys whose refresh found no tile in view; retried after the next move */
  const parked = new Set();
  const stats = { refreshCalls: 0, tilesRefreshed: 0, fullRefreshes: 0, requests: 0, deferred: 0 };
  let firstLive = canWait ? undefined : null; // a promise once the first tile is asked for
  let followed = false;
  let frame = null;
  let stopped = false;

  let matchers = null;
  let matchersFor = null;
  function tileOf(url) {
    const src = map.getSource(source);
    const templates = src?.tiles;
    if (!templates) return null;
    if (templates !== matchersFor) {
      matchersFor = templates;
      matchers = templates.map((t) => tileUrlMatcher(t, { scheme: src.scheme }));
    }
    for (const m of matchers) {
      const id = m(url);
      if (id) return id;
    }
    return null;
  }

  function stamp(params, key) {
    const have = live.get(key);
    const token = releaseToken(have);
    remember(requested, key, token);
    const entry = inflight.get(key);
    if (entry) entry.sent = true;
    else inflight.set(key, { since: Date.now(), sent: true });
    dirty.delete(key);
    parked.delete(key);
    stats.requests++;
    return { ...params, url: versionedUrl(params.url, have, { versionParam, hashParam }) };
  }

  function transform(url, type) {
    const base = previous ? previous(url, type) : undefined;
    if (type !== 'Tile') return base;
    const id = tileOf(url);
    if (!id) return base;
    const key = tileKey(...id);
    if (!followed) follow(); // the source exists now: track the view before the first tile
    const finish = (b) => stamp(b ?? { url }, key);
    if (base && typeof base.then === 'function') return base.then(finish);
    if (firstLive === undefined) {
      firstLive = live.whenSynced(waitForLive);
      firstLive.then(() => (firstLive = null));
    }
    if (firstLive) {
      // MapLibre 6: hold the first tiles until the stored versions are in (or the wait ends).
      stats.deferred++;
      return firstLive.then(() => finish(base));
    }
    return finish(base);
  }
  map.setTransformRequest(transform);

  function sourceZoom() {
    const src = map.getSource(source);
    const tileSize = src?.tileSize ?? 512;
    const round = src?.roundZoom ?? src?.type === 'raster';
    let z = map.getZoom() + Math.log2(MAP_TILE_SIZE / tileSize);
    z = round ? Math.round(z) : Math.floor(z);
    return Math.max(src?.minzoom ?? 0, Math.min(src?.maxzoom ?? 22, z));
  }

  function bounds() {
    const b = map.getBounds();
    return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()];
  }

  function follow() {
    if (!map.getSource(source)) return; // its tile size and zooms are not known yet
    followed = true;
    live.setTiles(tilesForBounds(bounds(), sourceZoom(), { margin, limit: maxTiles }));
  }

  function schedule() {
    if (frame === null && !stopped) frame = raf(flush);
  }

  function later(ms) {
    setTimeout(schedule, ms);
  }

  function flush() {
    frame = null;
    if (stopped || dirty.size === 0) return;
    const now = Date.now();
    const quiet = isLoaded();
    for (const [key, entry] of inflight) {
      if (entry.sent && quiet) {
        inflight.delete(key); // ended without an event: MapLibre fires none for a 404
      } else if (!entry.sent && now - entry.since >= 100) {
        // The refresh sent no request: MapLibre has no such tile in view (an edge tile, or
        // another zoom on a pitched map). Try again after the next move, not every frame.
        inflight.delete(key);
        parked.add(key);
      } else if (now - entry.since > loadTimeout) {
        inflight.delete(key);
      }
    }
    const visible = new Set(tilesForBounds(bounds(), sourceZoom()));
    const due = [];
    let waiting = false;
    for (const key of dirty) {
      if (!visible.has(key) || parked.has(key)) continue; // refreshed when in view again
      if (inflight.has(key)) {
        waiting = true; // folded into one follow-up when this load ends
        continue;
      }
      due.push(key);
    }
    if (waiting) later(loadTimeout + 10);
    if (due.length === 0) return;
    if (due.length > fullReloadAbove) {
      for (const key of due) inflight.set(key, { since: now, sent: false });
      map.refreshTiles(source);
      stats.fullRefreshes++;
      later(110);
      return;
    }
    const batch = due.slice(0, maxRefreshPerFrame);
    for (const key of batch) inflight.set(key, { since: now, sent: false });
    map.refreshTiles(
      source,
      batch.map((key) => {
        const [z, x, y] = key.split('/').map(Number);
        return { z, x, y };
      }),
    );
    stats.refreshCalls++;
    stats.tilesRefreshed += batch.length;
    later(110);
    if (due.length > batch.length) schedule();
  }

  function isLoaded() {
    try {
      return map.isSourceLoaded(source);
    } catch {
      return false;
    }
  }

  function settled(tile) {
    const c = tile?.tileID?.canonical;
    if (!c) return;
    const key = tileKey(c.z, c.x, c.y);
    inflight.delete(key);
    if (dirty.has(key)) schedule();
  }

  const offUpdate = live.on('update', (u) => {
    if (requested.get(u.key) === releaseToken(u)) return;
    // A tile this adapter never saw requested: its first request will be versioned, unless
    // the map loaded it before it was synced; so refresh it only if it is in view (a
    // refresh of a tile the map does not hold requests nothing).
    if (!requested.has(u.key) && !tilesForBounds(bounds(), sourceZoom()).includes(u.key)) return;
    dirty.add(u.key);
    // Bounded like `requested`: the oldest marks go first (their tiles, if ever shown
    // again from MapLibre's cache, were long evicted from it).
    if (dirty.size > 8192) dirty.delete(dirty.values().next().value);
    schedule();
  });
  const onData = (e) => {
    if (e.sourceId !== source) return;
    if (e.tile) settled(e.tile);
    else if (!followed) follow();
  };
  const onMoveEnd = () => {
    parked.clear();
    follow();
    schedule(); // tiles back in view with an old image get their refresh
  };
  map.on('data', onData);
  map.on('error', onData);
  const onIdle = () => {
    if (dirty.size) schedule(); // a load that ended with a 404 fires no event of its own
  };
  map.on('moveend', onMoveEnd);
  map.on('idle', onIdle);
  follow();

  return {
    stats,
    /** Keys of updated tiles the map has not refetched yet (off-screen or loading). */
    stale: () => [...dirty],
    stop() {
      stopped = true;
      offUpdate();
      map.off('data', onData);
      map.off('error', onData);
      map.off('moveend', onMoveEnd);
      map.off('idle', onIdle);
      map.setTransformRequest(previous ?? ((url) => ({ url })));
    },
  };
}
