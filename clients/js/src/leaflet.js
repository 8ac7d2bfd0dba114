// Leaflet 1.9: the best it allows. Its only public reload is redraw(), which removes every
// tile and blinks (an in-place reload, Leaflet PR #9100, is not merged).
//
//   const live = createTileLive({ url: 'http://127.0.0.1:8090' });
//   syncLeaflet(map, tileLayer, live);
//
// What it does: getTileUrl adds `v=<version>&h=<hash>` to each tile whose version is known.
// A changed tile that the layer holds (in view or in its keep-buffer) is refetched alone:
// the new image is preloaded off-screen and then swapped into the tile's <img> (the same
// URL, so the swap is served from the HTTP cache), so nothing blinks. One reload per tile at
// a time; later updates are folded into one follow-up. A changed tile the layer no longer
// holds needs nothing: Leaflet creates it anew, with its newest versioned URL, when it is
// shown. What it cannot do without private API: it reads the layer's `_tiles` and
// `_wrapCoords` (stable through 1.9.x, but not public), and it handles img tile layers only
// (L.TileLayer, not canvas GridLayers).

import { tilesForBounds, tileKey } from './tiles.js';
import { releaseToken, remember, versionedUrl } from './urls.js';

/**
 * @param {import('leaflet').Map} map
 * @param {import('leaflet').TileLayer} layer
 * @param {import('./live.js').TileLive} live
 * @param {import('./leaflet.js').SyncLeafletOptions} [options]
 */
export function syncLeaflet(map, layer, live, options = {}) {
  const { margin = 1, maxTiles = 512, versionParam = 'v', hashParam = 'h' } = options;
  const requested = new Map();
  const loading = new Map(); // key -> a follow-up is wanted when this load ends
  const stats = { swaps: 0, requests: 0 };
  const original = layer.getTileUrl;

  function keyOf(coords) {
    return tileKey(layer._getZoomForUrl(), coords.x, coords.y);
  }

  layer.getTileUrl = function getTileUrl(coords) {
    const url = original.call(this, coords);
    const key = keyOf(coords);
    const have = live.get(key);
    remember(requested, key, releaseToken(have));
    stats.requests++;
    return versionedUrl(url, have, { versionParam, hashParam });
  };

  // Tiles the layer made before it was synced were fetched with their bare URLs.
  for (const tile of Object.values(layer._tiles ?? {})) {
    remember(requested, keyOf(layer._wrapCoords(tile.coords)), '');
  }

  function held(key) {
    for (const tile of Object.values(layer._tiles ?? {})) {
      const coords = layer._wrapCoords(tile.coords);
      if (keyOf(coords) === key) return { tile, coords };
    }
    return null;
  }

  function reload(key) {
    const found = held(key);
    if (!found) return; // not held: it is created with its newest URL when shown
    if (loading.has(key)) {
      loading.set(key, true);
      return;
    }
    const url = layer.getTileUrl(found.coords);
    loading.set(key, false);
    const img = new Image();
    if (layer.options.crossOrigin || layer.options.crossOrigin === '') {
      img.crossOrigin = layer.options.crossOrigin === true ? '' : layer.options.crossOrigin;
    }
    const done = (ok) => {
      if (ok && found.tile.el) {
        found.tile.el.src = url;
        stats.swaps++;
      }
      const again = loading.get(key);
      loading.delete(key);
      if (again && requested.get(key) !== releaseToken(live.get(key))) reload(key);
    };
    img.onload = () => done(true);
    img.onerror = () => done(false);
    img.src = url;
  }

  function follow() {
    const z = layer._getZoomForUrl();
    // A view reset (setView without animation) fires moveend while the layer's tile zoom is
    // cleared, before its own viewreset; the viewreset listener below tracks the view then.
    if (!Number.isFinite(z)) return;
    const b = map.getBounds();
    const bounds = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()];
    live.setTiles(tilesForBounds(bounds, z, { margin, limit: maxTiles }));
  }

  const offUpdate = live.on('update', (u) => {
    if (requested.get(u.key) === releaseToken(u)) return;
    reload(u.key); // only if the layer holds the tile
  });
  map.on('moveend viewreset', follow);
  follow();

  return {
    stats,
    stop() {
      offUpdate();
      map.off('moveend viewreset', follow);
      layer.getTileUrl = original;
    },
  };
}
