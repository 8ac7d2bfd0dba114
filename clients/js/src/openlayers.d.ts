import type OlMap from 'ol/Map.js';
import type { TileLive } from './index.js';

export interface SyncOpenLayersOptions {
  /** The tile URL template, {z}/{x}/{y} (or {-y}); default: the XYZ source's first URL. */
  url?: string;
  margin?: number;
  maxTiles?: number;
  /** At most one source refresh per this many ms; default 1000. */
  minInterval?: number;
  versionParam?: string;
  hashParam?: string;
}

export interface OpenLayersSync {
  readonly stats: { refreshes: number; requests: number };
  stop(): void;
}

/** `source`: an ol/source/ImageTile or ol/source/XYZ in an EPSG:3857 view. */
export declare function syncOpenLayers(map: OlMap, source: unknown, live: TileLive, options?: SyncOpenLayersOptions): OpenLayersSync;
