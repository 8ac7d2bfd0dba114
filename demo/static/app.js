// The demo page: a MapLibre map over the generator's tile block, kept fresh by @tilepipe/live.
// Everything is served by `tilepipe tiles` from the installed npm packages: no CDN.
import { createTileLive, syncMapLibre } from '/live/index.js';

const params = new URLSearchParams(location.search);
// MapLibre 6 (ESM) by default; `?maplibre=5.6` loads the oldest release the adapter supports
// (a UMD script), which the browser tests check too.
const maplibregl = params.get('maplibre') === '5.6'
  ? await script('/node_modules/maplibre-gl-5.6/dist/maplibre-gl.js').then(() => window.maplibregl)
  : await import('/node_modules/maplibre-gl/dist/maplibre-gl.mjs');

function script(src) {
  return new Promise((resolve, reject) => {
    const el = Object.assign(document.createElement('script'), { src, onload: resolve, onerror: reject });
    document.head.append(el);
  });
}
const zoom = Number(params.get('zoom') ?? 14);
const center = [Number(params.get('lon') ?? 13.405), Number(params.get('lat') ?? 52.52)];

const map = new maplibregl.Map({
  container: 'map',
  style: {
    version: 8,
    sources: {
      tiles: { type: 'raster', tiles: [`${location.origin}/{z}/{x}/{y}.png`], tileSize: 256, minzoom: zoom, maxzoom: zoom },
    },
    layers: [
      { id: 'background', type: 'background', paint: { 'background-color': '#e8e4da' } },
      { id: 'tiles', type: 'raster', source: 'tiles', paint: { 'raster-fade-duration': 0 } },
    ],
  },
  center,
  zoom: Number(params.get('mapzoom') ?? zoom - 1),
  minZoom: zoom - 1.45,
  attributionControl: false,
  // ?probe=1 (the browser tests) keeps each frame readable, to check no frame goes blank.
  ...(params.has('probe') ? { canvasContextAttributes: { preserveDrawingBuffer: true } } : {}),
});

// The colour at one map point in every frame drawn, while window.tilepipeDemo.probe is set.
function probe() {
  const p = window.tilepipeDemo?.probe;
  if (!p) return;
  const gl = map.painter?.context?.gl ?? map.getCanvas().getContext('webgl2');
  const { x, y } = map.project(p.at);
  const px = new Uint8Array(4);
  const ratio = map.getPixelRatio?.() ?? devicePixelRatio;
  gl.readPixels(Math.round(x * ratio), Math.round(gl.drawingBufferHeight - y * ratio), 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
  p.frames.push([...px.slice(0, 3)]);
}
if (params.has('probe')) map.on('render', probe);

// The two lines a MapLibre app adds (`full` sets the whole-source threshold, for the tests):
const live = createTileLive({ url: params.get('gateway') ?? `http://${location.hostname}:8090` });
const sync = syncMapLibre(map, live, { source: 'tiles', ...(params.has('full') ? { fullReloadAbove: Number(params.get('full')) } : {}) });

const $ = (id) => document.getElementById(id);
const times = [];
const last = [];
let count = 0;
live.on('status', (s) => {
  $('status').textContent = s;
  $('status').className = s;
  document.body.dataset.status = s;
});
live.on('update', (u) => {
  count++;
  times.push(performance.now());
  last.unshift({ text: `${u.key}  v${u.version}`, at: new Date().toISOString().slice(11, 23) });
  last.length = Math.min(last.length, 8);
  render();
});
function render() {
  const now = performance.now();
  while (times.length && now - times[0] > 5000) times.shift();
  $('rate').textContent = (times.length / 5).toFixed(1);
  $('count').textContent = String(count);
  $('refreshed').textContent = String(sync.stats.tilesRefreshed + sync.stats.fullRefreshes);
  $('last').innerHTML = last.map((l, i) => `<li class="${i === 0 ? 'fresh' : ''}">${l.at}  ${l.text}</li>`).join('');
}
setInterval(render, 500);

const errors = [];
map.on('error', (e) => errors.push(String(e.error?.message ?? e.error ?? e)));
map.on('load', () => (document.body.dataset.loaded = 'true'));
// For the browser tests and the curious: window.tilepipeDemo in the console.
window.tilepipeDemo = { map, live, sync, errors, version: maplibregl.getVersion() };
