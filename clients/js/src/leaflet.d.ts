import type { Map as LeafletMap, TileLayer } from 'leaflet';
import type { TileLive } from './index.js';

export interface SyncLeafletOptions {
  margin?: number;
  maxTiles?: number;
  versionParam?: string;
  hashParam?: string;
}

export interface LeafletSync {
  readonly stats: { swaps: number; requests: number };
  stop(): void;
}

export declare function syncLeaflet(map: LeafletMap, layer: TileLayer, live: TileLive, options?: SyncLeafletOptions): LeafletSync;
