// @tilepipe/live: keep web maps' tiles in step with tilepipe, exactly the tiles that changed.
export { backoffDelay, createTileLive, TileLive } from './live.js';
export { compareVersions, supersedes, versionKey } from './versions.js';
export { latToY, lonToX, mercatorToLonLatBounds, parseTileKey, tileKey, tilesForBounds } from './tiles.js';
export { releaseToken, remember, tileUrlMatcher, versionedUrl } from './urls.js';
export { syncMapLibre } from './maplibre.js';
export { syncOpenLayers } from './openlayers.js';
export { syncLeaflet } from './leaflet.js';
