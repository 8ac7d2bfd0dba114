export type Version = number | string;
export type Status = 'connecting' | 'resyncing' | 'live' | 'offline';

/** What a client has of a tile: its newest release. */
export interface Have {
  version: Version;
  hash: string;
}

/** One accepted tile update (newer than anything the client had of that tile). */
export interface TileUpdate extends Have {
  /** "z/x/y" */
  key: string;
  z: number;
  x: number;
  y: number;
  /** the `tile_updated` message exactly as the gateway relayed it */
  message: Record<string, unknown>;
}

export interface TileLiveOptions {
  /** The gateway: http(s)://HOST:PORT (or ws(s)://HOST:PORT/v1/live). */
  url: string;
  /** "auto" (WebSocket, then SSE after two failed opens), "websocket" or "sse". */
  transport?: 'auto' | 'websocket' | 'sse';
  /** A JWT, or a function returning one (called on every connect) when gateway auth is on. */
  token?: string | (() => string | Promise<string>) | null;
  /** Only updates for these layers. */
  layers?: string[] | null;
  /** Reconnect delay: random between 0 and min(max, initial * 2^attempt) ms. */
  backoff?: { initial?: number; max?: number };
  /** Tiles tracked at most (the gateway's own limit applies too); default 512. */
  maxTiles?: number;
  /** Versions kept for tiles no longer tracked (sent back when they return); default 4096. */
  remember?: number;
  /** WebSocket ping interval in ms (0: none); default 20000. */
  heartbeat?: number;
  /**
   * Which of two releases of a tile is newer. "version" (default): the higher version, or
   * the same version with another hash; a lower version is dropped. Right for maps served
   * by `tilepipe tiles` (the render ledger never commits a lower version). "arrival": any
   * release other than the one held, in the gateway's order; for tiles fed by the dataflow
   * directly, whose version is the newest applied object's and can fall (feature B at
   * version 1 after feature A at version 5).
   */
  order?: 'version' | 'arrival';
  WebSocket?: typeof WebSocket;
  EventSource?: typeof EventSource;
  fetch?: typeof fetch;
  random?: () => number;
}

export declare class TileLive {
  readonly status: Status;
  readonly session: string | null;
  readonly stats: { updates: number; connects: number; reconnects: number };
  on(type: 'update', fn: (u: TileUpdate) => void): () => void;
  on(type: 'status', fn: (s: Status) => void): () => void;
  on(type: 'error', fn: (e: Error & { code?: string | number }) => void): () => void;
  /** The newest release known of a tile. */
  get(key: string): Have | undefined;
  /** Track exactly these "z/x/y" tiles from now on. */
  setTiles(keys: Iterable<string>): void;
  /** Resolves true once live, or false after `timeout` ms. */
  whenLive(timeout?: number): Promise<boolean>;
  close(): void;
}

/** Full-jitter reconnect delay in ms: random() * min(max, initial * 2^attempt). */
export declare function backoffDelay(attempt: number, backoff?: { initial?: number; max?: number }, random?: () => number): number;

export declare function createTileLive(options: TileLiveOptions): TileLive;

export declare function versionKey(version: Version): string[];
export declare function compareVersions(a: Version, b: Version): -1 | 0 | 1;
export declare function supersedes(update: { version: Version; hash?: string }, have?: { version: Version; hash?: string } | null): boolean;

export declare function tileKey(z: number, x: number, y: number): string;
export declare function parseTileKey(key: string): [number, number, number];
export declare function lonToX(lon: number, z: number): number;
export declare function latToY(lat: number, z: number): number;
export declare function tilesForBounds(bbox: [number, number, number, number], z: number, options?: { margin?: number; limit?: number }): string[];
export declare function mercatorToLonLatBounds(extent: [number, number, number, number] | number[]): [number, number, number, number];

export declare function tileUrlMatcher(template: string, options?: { scheme?: 'xyz' | 'tms' | string }): (url: string) => [number, number, number] | null;
export declare function versionedUrl(url: string, have: { version: Version; hash?: string } | undefined | null, names?: { versionParam?: string; hashParam?: string }): string;
export declare function remember<K, V>(map: Map<K, V>, key: K, value: V, limit?: number): void;
export declare function releaseToken(have: { version: Version; hash?: string } | undefined | null): string;

export { syncMapLibre } from './maplibre.js';
export type { SyncMapLibreOptions, MapLibreSync } from './maplibre.js';
export { syncOpenLayers } from './openlayers.js';
export type { SyncOpenLayersOptions, OpenLayersSync } from './openlayers.js';
export { syncLeaflet } from './leaflet.js';
export type { SyncLeafletOptions, LeafletSync } from './leaflet.js';
