// OpenLayers 10: the best it allows. It has no per-tile reload (openlayers#15605 is open).
//
//   const live = createTileLive({ url: 'http://127.0.0.1:8090' });
//   syncOpenLayers(map, layer.getSource(), live, { url: 'http://127.0.0.1:8091/{z}/{x}/{y}.png' });
//
// What it does: the source gets a URL function that adds `v=<version>&h=<hash>` to each tile
// whose version is known. When a tile in view changes, the source is given a *new* URL
// function (ol/source/ImageTile#setUrl, or UrlTile#setTileUrlFunction with a new key for
// XYZ). A new key makes OpenLayers reload every tile in view, but its renderer keeps drawing
// the old tiles until the new ones are in, so nothing flickers, and every unchanged tile
// asks for the same versioned URL as before, which the browser answers from its HTTP cache
// (immutable): only the changed tiles reach the network. At most one such refresh per
// `minInterval` ms. An update to a tile out of view waits until a move brings it back.
// What it cannot do: reload one tile alone, or avoid revalidating tiles whose version is
// not known yet (their bare URL is `no-cache`: a 304 each). The view must be EPSG:3857.

import { mercatorToLonLatBounds, tilesForBounds, tileKey } from './tiles.js';
import { releaseToken, remember, versionedUrl } from './urls.js';

/**
 * @param {import('ol/Map.js').default} map
 * @param {any} source an ol/source/ImageTile or ol/source/XYZ
 * @param {import('./live.js').TileLive} live
 * @param {import('./openlayers.js').SyncOpenLayersOptions} options
 */
export function syncOpenLayers(map, source, live, options) {
  const { margin = 1, maxTiles = 512, minInterval = 1000, versionParam = 'v', hashParam = 'h' } = options ?? {};
  const template = options?.url ?? source.getUrls?.()?.[0];
  if (!template) throw new TypeError('syncOpenLayers needs options.url: the tile URL template with {z}/{x}/{y}');
  const requested = new Map();
  const offscreen = new Set();
  const stats = { refreshes: 0, requests: 0 };
  let generation = 0;
  let lastRefresh = -Infinity;
  let timer = null;

  function urlFor(z, x, y) {
    const n = 2 ** z;
    const wx = ((x % n) + n) % n;
    const key = tileKey(z, wx, y);
    const have = live.get(key);
    remember(requested, key, releaseToken(have));
    stats.requests++;
    const url = template.replace('{z}', z).replace('{x}', wx).replace('{y}', y).replace('{-y}', n - 1 - y);
    return versionedUrl(url, have, { versionParam, hashParam });
  }

  function install() {
    generation++;
    if (typeof source.setTileUrlFunction === 'function') {
      // XYZ / TileImage: the key is what makes the renderer reload (and keep the old tiles).
      source.setTileUrlFunction((c) => (c ? urlFor(c[0], c[1], c[2]) : undefined), `tilepipe-live-${generation}`);
    } else {
      // ImageTile: each URL function gets a key of its own.
      source.setUrl((z, x, y) => urlFor(z, x, y));
    }
  }

  function view() {
    const v = map.getView();
    const size = map.getSize();
    if (!size) return null;
    const grid = source.getTileGrid?.() ?? source.getTileGridForProjection?.(v.getProjection());
    const z = grid ? grid.getZForResolution(v.getResolution(), source.zDirection ?? 0) : Math.round(v.getZoom());
    return { bounds: mercatorToLonLatBounds(v.calculateExtent(size)), z };
  }

  function refresh() {
    timer = null;
    const wait = lastRefresh + minInterval - Date.now();
    if (wait > 0) {
      timer = setTimeout(refresh, wait);
      return;
    }
    lastRefresh = Date.now();
    offscreen.clear(); // a new key: every tile, in view or cached, is reloaded when drawn
    stats.refreshes++;
    install();
  }

  function schedule() {
    if (timer === null) timer = setTimeout(refresh, 0);
  }

  function follow() {
    const v = view();
    if (!v) return;
    const inView = tilesForBounds(v.bounds, v.z);
    live.setTiles(tilesForBounds(v.bounds, v.z, { margin, limit: maxTiles }));
    if (inView.some((k) => offscreen.has(k))) schedule();
  }

  const offUpdate = live.on('update', (u) => {
    if (requested.get(u.key) === releaseToken(u)) return;
    const v = view();
    if (v && tilesForBounds(v.bounds, v.z).includes(u.key)) schedule();
    else offscreen.add(u.key);
  });
  const key = map.on('moveend', follow);
  install();
  follow();

  return {
    stats,
    stop() {
      offUpdate();
      clearTimeout(timer);
      map.un('moveend', key.listener);
    },
  };
}
