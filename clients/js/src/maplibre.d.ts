import type { Map as MapLibreMap, RequestTransformFunction } from 'maplibre-gl';
import type { TileLive } from './index.js';

export interface SyncMapLibreOptions {
  /** The id of the raster or vector tile source to keep fresh. */
  source: string;
  /** Tiles tracked around the view, in tiles; default 1. */
  margin?: number;
  /** Tile ids passed to one refreshTiles call per animation frame; default 32. */
  maxRefreshPerFrame?: number;
  /** Above this many changed tiles in view in one frame, refresh the whole source; default 64. */
  fullReloadAbove?: number;
  /** Tiles tracked at most; default 512. */
  maxTiles?: number;
  /** MapLibre 6: how long the first tiles wait for the stored versions, ms; default 1000. */
  waitForLive?: number;
  /** How long a tile reload may take before another may start, ms; default 5000. */
  loadTimeout?: number;
  /** A request transform to run first (default: the one the map has, on 6.x). */
  transformRequest?: RequestTransformFunction;
  versionParam?: string;
  hashParam?: string;
}

export interface MapLibreSync {
  readonly stats: { refreshCalls: number; tilesRefreshed: number; fullRefreshes: number; requests: number; deferred: number };
  /** Updated tiles not refetched yet (off-screen, or loading). */
  stale(): string[];
  stop(): void;
}

export declare function syncMapLibre(map: MapLibreMap, live: TileLive, options: SyncMapLibreOptions): MapLibreSync;
