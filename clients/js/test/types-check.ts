// Compiled by `tsc` in types.test.js: the declarations as a front-end engineer would use them.
import type * as maplibregl from 'maplibre-gl';
import type OlMap from 'ol/Map.js';
import type * as L from 'leaflet';
import { createTileLive, compareVersions, syncMapLibre, syncOpenLayers, syncLeaflet, type Status, type TileUpdate } from '@tilepipe/live';

declare const map: maplibregl.Map;
declare const olMap: OlMap;
declare const lmap: L.Map;
declare const layer: L.TileLayer;

const live = createTileLive({ url: 'http://127.0.0.1:8090', transport: 'auto', token: async () => 'jwt' });
const sync = syncMapLibre(map, live, { source: 'tiles', fullReloadAbove: 64 });
const n: number = sync.stats.tilesRefreshed;
const offStatus = live.on('status', (s: Status) => s === 'live');
live.on('update', (u: TileUpdate) => u.key.length + u.z);
offStatus();
const c: -1 | 0 | 1 = compareVersions('1.10.0', '1.9');
syncOpenLayers(olMap, {}, live, { url: 'http://t/{z}/{x}/{y}.png' }).stop();
syncLeaflet(lmap, layer, live).stats.swaps;
void n;
void c;
