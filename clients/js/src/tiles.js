// Web Mercator tile maths: which z/x/y tiles cover a lon/lat box, plus a margin ring.
//
// tilepipe speaks WebMercatorQuad (XYZ, y counted from the north), which is what MapLibre,
// OpenLayers and Leaflet address by default. Longitudes outside [-180, 180] (a map panned
// across the antimeridian) wrap to the tiles that are actually requested.

export const MAX_LATITUDE = 85.0511287798066;

/** "z/x/y", the key the gateway and this package use for a tile. */
export function tileKey(z, x, y) {
  return `${z}/${x}/${y}`;
}

/** [z, x, y] from "z/x/y"; throws for anything else. */
export function parseTileKey(key) {
  const m = /^(\d+)\/(\d+)\/(\d+)$/.exec(key);
  if (!m) throw new TypeError(`${JSON.stringify(key)} is not a z/x/y tile key`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

/** The tile column of a longitude at zoom z (not wrapped: may be < 0 or >= 2^z). */
export function lonToX(lon, z) {
  return Math.floor(((lon + 180) / 360) * 2 ** z);
}

/** The tile row of a latitude at zoom z, clamped to the grid. */
export function latToY(lat, z) {
  const n = 2 ** z;
  const clamped = Math.max(-MAX_LATITUDE, Math.min(MAX_LATITUDE, lat));
  const r = (clamped * Math.PI) / 180;
  const y = Math.floor(((1 - Math.asinh(Math.tan(r)) / Math.PI) / 2) * n);
  return Math.max(0, Math.min(n - 1, y));
}

/**
 * The keys of the tiles of zoom `z` that cover the box, grown by `margin` tiles on each side.
 * Columns wrap around the antimeridian; a box wider than the world gives every column once.
 * Stops at `limit` tiles, nearest the centre first, so a wide view never asks for more tiles
 * than the gateway lets one session track.
 * @param {[number, number, number, number]} bbox west, south, east, north in degrees
 * @param {number} z
 * @param {{margin?: number, limit?: number}} [options]
 * @returns {string[]}
 */
export function tilesForBounds(bbox, z, { margin = 0, limit = Infinity } = {}) {
  const [west, south, east, north] = bbox;
  const n = 2 ** z;
  let x0 = lonToX(west, z) - margin;
  let x1 = lonToX(east, z) + margin;
  if (x1 - x0 + 1 >= n) {
    x0 = 0;
    x1 = n - 1;
  }
  const y0 = Math.max(0, latToY(north, z) - margin);
  const y1 = Math.min(n - 1, latToY(south, z) + margin);
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const out = [];
  for (let x = x0; x <= x1; x++) {
    for (let y = y0; y <= y1; y++) out.push([x, y, (x - cx) ** 2 + (y - cy) ** 2]);
  }
  if (out.length > limit) out.sort((a, b) => a[2] - b[2]);
  const seen = new Set();
  const keys = [];
  for (const [x, y] of out) {
    const key = tileKey(z, ((x % n) + n) % n, y);
    if (seen.has(key)) continue;
    seen.add(key);
    keys.push(key);
    if (keys.length >= limit) break;
  }
  return keys;
}

/** [west, south, east, north] degrees of EPSG:3857 metres (OpenLayers' default view). */
export function mercatorToLonLatBounds([minx, miny, maxx, maxy]) {
  const R = 6378137;
  const lon = (m) => (m / R) * (180 / Math.PI);
  const lat = (m) => (Math.atan(Math.sinh(m / R)) * 180) / Math.PI;
  return [lon(minx), lat(miny), lon(maxx), lat(maxy)];
}
