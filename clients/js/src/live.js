// The gateway client: one connection to `tilepipe gateway`, the set of tiles a map shows, and
// the newest version of each.
//
// Protocol (README, "Map clients"): over WebSocket `/v1/live` the client sends
// `{"type":"track","tiles":{"z/x/y":{"version":V,"hash":H}|null}}`, `untrack` and `ping`; the
// server sends `hello`, each `tile_updated` exactly as it is on Redis (several as one
// `{"type":"batch","messages":[...]}`), `live` once a track's stored state has been sent,
// `resync`, `error`, `pong` and `bye`. Over SSE `/v1/sse` the same messages arrive as events
// named by their type, and the tracked set changes with `POST /v1/sessions/{id}/track`.
//
// Resume is by state: after any reconnect the client tracks its tiles again *with the
// versions it has*, and the gateway sends only what is newer, so nothing that changed while
// away is missed and nothing is sent twice. The client still keeps max(version) per tile
// itself (versions.supersedes), so a message can never take a tile backwards.
//
// Reconnects back off with full jitter (a random delay between 0 and min(max, initial*2^n)),
// so a gateway restart does not bring every browser back in the same millisecond.

import { supersedes, versionKey } from './versions.js';
import { parseTileKey } from './tiles.js';

const STATUSES = ['connecting', 'resyncing', 'live', 'offline'];

/**
 * The wait before reconnect attempt `attempt` (0 = the first after a loss): full jitter, a
 * uniformly random delay in [0, min(max, initial * 2^attempt)) ms. Full rather than "equal"
 * jitter spreads a reconnect storm the most (AWS Architecture Blog, "Exponential Backoff
 * and Jitter"), which is what a gateway restart with thousands of maps open is.
 */
export function backoffDelay(attempt, { initial = 500, max = 30000 } = {}, random = Math.random) {
  return random() * Math.min(max, initial * 2 ** attempt);
}

/**
 * @param {import('./index.js').TileLiveOptions} options
 * @returns {TileLive}
 */
export function createTileLive(options) {
  return new TileLive(options);
}

export class TileLive {
  constructor({
    url,
    transport = 'auto',
    token = null,
    layers = null,
    backoff = {},
    maxTiles = 512,
    remember = 4096,
    heartbeat = 20000,
    order = 'version',
    WebSocket: WS = globalThis.WebSocket,
    EventSource: ES = globalThis.EventSource,
    fetch: fetchFn = globalThis.fetch?.bind(globalThis),
    random = Math.random,
  } = {}) {
    if (!url) throw new TypeError('createTileLive needs url: the gateway, e.g. "http://127.0.0.1:8090"');
    if (!['auto', 'websocket', 'sse'].includes(transport)) {
      throw new TypeError(`transport ${JSON.stringify(transport)}: use "auto", "websocket" or "sse"`);
    }
    const base = new URL(url, globalThis.location?.href);
    const http = base.protocol.replace(/^ws/, 'http');
    const root = `${base.host}${base.pathname.replace(/\/(v1\/(live|sse))?\/?$/, '')}`;
    this.wsUrl = `${http === 'https:' ? 'wss:' : 'ws:'}//${root}/v1/live`;
    this.httpUrl = `${http}//${root}`;
    this.transport = transport;
    this.token = token;
    this.layers = layers;
    this.backoff = { initial: backoff.initial ?? 500, max: backoff.max ?? 30000 };
    this.maxTiles = maxTiles;
    this.remember = remember;
    if (!['version', 'arrival'].includes(order)) {
      throw new TypeError(`order ${JSON.stringify(order)}: use "version" or "arrival"`);
    }
    this.heartbeat = heartbeat;
    this.order = order;
    this.WS = WS;
    this.ES = ES;
    this.fetch = fetchFn;
    this.random = random;

    /** @type {Map<string, {version: number|string, hash: string}>} newest known, LRU order */
    this.known = new Map();
    /** @type {Set<string>} what the map wants tracked */
    this.wanted = new Set();
    /** @type {Set<string>} what the current connection tracks */
    this.tracked = new Set();
    this.status = 'connecting';
    this.session = null;
    this.epoch = null;
    this.attempt = 0;
    this.wsFailures = 0;
    this.useSse = transport === 'sse' || (transport === 'auto' && !WS);
    this.listeners = new Map();
    this.syncWaiters = new Set();
    this.closed = false;
    this.conn = null;
    this.timer = null;
    this.stats = { updates: 0, connects: 0, reconnects: 0 };
    queueMicrotask(() => this.connect());
  }

  // -- public API ----------------------------------------------------------------------------

  /** Listen for "update", "status" or "error"; returns a function that stops listening. */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  /** The newest version known of a tile, `{version, hash}`, or undefined. */
  get(key) {
    return this.known.get(key);
  }

  /** Track exactly these tiles ("z/x/y" keys) from now on; the connection follows. */
  setTiles(keys) {
    const next = new Set();
    for (const key of keys) {
      parseTileKey(key);
      next.add(key);
      if (next.size >= this.maxTiles) break;
    }
    this.wanted = next;
    if (this.conn?.ready) this.sync();
  }

  /**
   * Resolves once the client is live (its tracked tiles' stored versions have arrived), or
   * after `timeout` ms, whichever is first; resolves to whether it is live.
   */
  whenLive(timeout = Infinity) {
    if (this.status === 'live') return Promise.resolve(true);
    return new Promise((resolve) => {
      let timer = null;
      const off = this.on('status', (s) => {
        if (s !== 'live') return;
        off();
        clearTimeout(timer);
        resolve(true);
      });
      if (Number.isFinite(timeout)) {
        timer = setTimeout(() => {
          off();
          resolve(false);
        }, timeout);
      }
    });
  }

  /**
   * Resolves once every tile asked for so far has had its stored state sent (the gateway
   * answers each track and untrack with a `live` frame), or after `timeout` ms; resolves to
   * whether it got there. Unlike whenLive, it waits for tiles tracked after going live.
   */
  whenSynced(timeout = Infinity) {
    if (this.synced()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter = { resolve, timer: null };
      if (Number.isFinite(timeout)) {
        waiter.timer = setTimeout(() => {
          this.syncWaiters.delete(waiter);
          resolve(false);
        }, timeout);
      }
      this.syncWaiters.add(waiter);
    });
  }

  synced() {
    const c = this.conn;
    return Boolean(c?.ready && c.caughtUp && c.awaiting === 0 && this.tracked.size === this.wanted.size &&
      [...this.wanted].every((k) => this.tracked.has(k)));
  }

  settle() {
    if (!this.synced()) return;
    for (const w of this.syncWaiters) {
      clearTimeout(w.timer);
      w.resolve(true);
    }
    this.syncWaiters.clear();
  }

  /** Stop: close the connection and cancel any reconnect. */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.conn?.close();
    this.conn = null;
    this.setStatus('offline');
  }

  // -- versions ------------------------------------------------------------------------------

  remember_(key, value) {
    this.known.delete(key);
    this.known.set(key, value);
    if (this.known.size > this.remember) {
      for (const old of this.known.keys()) {
        if (this.known.size <= this.remember) break;
        if (!this.wanted.has(old)) this.known.delete(old);
      }
    }
  }

  /** What the client has of each key, as the track frame carries it. */
  haves(keys) {
    const out = {};
    for (const key of keys) {
      const have = this.known.get(key);
      out[key] = have ? { version: have.version, hash: have.hash } : null;
    }
    return out;
  }

  receive(msg) {
    if (msg === null || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'tile_updated':
        return this.update(msg);
      case 'batch':
        for (const m of msg.messages ?? []) this.update(m);
        return;
      case 'hello':
        return this.hello(msg);
      case 'live':
        if (this.conn) {
          this.conn.caughtUp = true;
          this.conn.awaiting = Math.max(0, this.conn.awaiting - 1);
        }
        this.attempt = 0;
        this.setStatus('live');
        return this.settle();
      case 'resync':
        this.setStatus('resyncing');
        if (msg.reason === 'session_lost' && this.conn?.ready) this.retrackAll();
        return;
      case 'error':
        return this.emit('error', Object.assign(new Error(msg.message ?? msg.code), { code: msg.code, frame: msg }));
      case 'bye':
        if (this.conn) this.conn.bye = msg;
        return;
      default:
        return; // pong, authed, and frames a newer gateway may add
    }
  }

  update(msg) {
    const { z, x, y } = msg;
    if (!Number.isInteger(z) || !Number.isInteger(x) || !Number.isInteger(y)) return;
    const key = `${z}/${x}/${y}`;
    let newer;
    try {
      const have = this.known.get(key);
      versionKey(msg.version); // a malformed version is an error either way
      // "version": a lower version never replaces a higher one, whatever the gateway sends.
      // "arrival": the gateway's order decides, so any other release is newer (a tile fed by
      // the dataflow directly carries its newest object's version, which can fall).
      newer = this.order === 'arrival' ? !have || have.hash !== (msg.hash ?? '') : supersedes(msg, have);
    } catch (e) {
      return this.emit('error', e);
    }
    if (!newer) return;
    this.remember_(key, { version: msg.version, hash: msg.hash ?? '' });
    this.stats.updates++;
    this.emit('update', { key, z, x, y, version: msg.version, hash: msg.hash ?? '', message: msg });
  }

  hello(msg) {
    const conn = this.conn;
    if (!conn) return;
    const resumed = conn.kind === 'sse' && this.session !== null && msg.session === this.session;
    this.session = msg.session;
    this.epoch = msg.epoch ?? null;
    if (msg.limits?.max_tiles) this.maxTiles = Math.min(this.maxTiles, msg.limits.max_tiles);
    conn.ready = true;
    this.stats.connects++;
    if (resumed) {
      // EventSource came back to its own lingering session: its tiles are still tracked.
      conn.caughtUp = true;
      this.attempt = 0;
      this.setStatus('live');
      this.sync();
      this.settle();
      return;
    }
    this.retrackAll();
  }

  retrackAll() {
    this.tracked = new Set();
    this.setStatus('resyncing');
    if (this.wanted.size === 0) {
      this.conn.caughtUp = true;
      this.attempt = 0;
      this.setStatus('live');
      this.settle();
      return;
    }
    this.sync();
  }

  /** Send the difference between what the map wants and what the connection tracks. */
  sync() {
    const add = [...this.wanted].filter((k) => !this.tracked.has(k));
    const drop = [...this.tracked].filter((k) => !this.wanted.has(k));
    if (add.length === 0 && drop.length === 0) return;
    const frames = [];
    if (drop.length) frames.push({ type: 'untrack', tiles: drop });
    if (add.length) {
      const frame = { type: 'track', tiles: this.haves(add) };
      if (this.layers) frame.layers = this.layers;
      frames.push(frame);
    }
    this.tracked = new Set(this.wanted);
    this.conn.awaiting += frames.length; // each is answered by a `live` frame
    this.conn.send(frames);
  }

  // -- connections ---------------------------------------------------------------------------

  connect() {
    if (this.closed) return;
    // The status stays "connecting" before the first hello and "offline" between retries.
    const conn = this.useSse ? this.openSse() : this.openWs();
    this.conn = conn;
  }

  lost(conn, { opened }) {
    if (this.conn !== conn || this.closed) return;
    this.conn = null;
    this.setStatus('offline');
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt = Math.min(this.attempt + 1, 30);
    this.lastDelay = delay;
    this.stats.reconnects++;
    clearTimeout(this.timer);
    const retry = () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.connect(), delay);
    };
    if (conn.kind === 'websocket' && !opened && this.transport === 'auto' && this.ES) {
      // A WebSocket that never opens is either a gateway that is down (stay, and retry) or
      // a proxy that refuses upgrades while plain HTTP gets through (then SSE). Ask plain
      // HTTP: an opaque answer (no-cors) means the gateway is there.
      this.probe().then((answers) => {
        if (answers && ++this.wsFailures >= 2) this.useSse = true;
        if (!this.closed && this.conn === null) retry();
      });
      return;
    }
    retry();
  }

  async probe() {
    if (!this.fetch) return false;
    try {
      await this.fetch(`${this.httpUrl}/healthz`, { mode: 'no-cors', cache: 'no-store' });
      return true;
    } catch {
      return false;
    }
  }

  openWs() {
    const conn = { kind: 'websocket', ready: false, caughtUp: false, awaiting: 0, bye: null };
    let ws;
    try {
      ws = new this.WS(this.wsUrl);
    } catch (e) {
      this.emit('error', e);
      queueMicrotask(() => this.lost(conn, { opened: false }));
      conn.send = () => {};
      conn.close = () => {};
      return conn;
    }
    let opened = false;
    let lastHeard = Date.now();
    let beat = null;
    const raw = (frame) => {
      if (ws.readyState === 1) ws.send(JSON.stringify(frame));
    };
    conn.send = (frames) => frames.forEach(raw);
    conn.close = () => {
      clearInterval(beat);
      ws.close(1000, 'client closed');
    };
    ws.onopen = async () => {
      opened = true;
      this.wsFailures = 0;
      if (this.token) {
        try {
          const token = typeof this.token === 'function' ? await this.token() : this.token;
          raw({ type: 'auth', token });
        } catch (e) {
          this.emit('error', e);
          ws.close(4000, 'no token');
        }
      }
      if (this.heartbeat > 0) {
        // A half-open TCP connection (a laptop waking, a NAT dropping the flow) shows no
        // close event for minutes; a ping the server must answer finds it.
        beat = setInterval(() => {
          if (Date.now() - lastHeard > this.heartbeat * 2.5) ws.close(4000, 'no answer to ping');
          else raw({ type: 'ping', id: Date.now() });
        }, this.heartbeat);
      }
    };
    ws.onmessage = (event) => {
      lastHeard = Date.now();
      let msg;
      try {
        msg = JSON.parse(typeof event.data === 'string' ? event.data : String(event.data));
      } catch {
        return;
      }
      this.receive(msg);
    };
    ws.onerror = () => {};
    ws.onclose = (event) => {
      clearInterval(beat);
      if (event.code === 4001 || event.code === 4003) {
        this.emit('error', Object.assign(new Error(`gateway closed the connection: ${event.reason || event.code}`), { code: event.code }));
      }
      this.lost(conn, { opened });
    };
    return conn;
  }

  openSse() {
    const conn = { kind: 'sse', ready: false, caughtUp: false, awaiting: 0, bye: null };
    const params = new URLSearchParams();
    if (this.layers) params.set('layers', this.layers.join(','));
    const qs = params.toString();
    const es = new this.ES(`${this.httpUrl}/v1/sse${qs ? `?${qs}` : ''}`, { withCredentials: true });
    let opened = false;
    let chain = Promise.resolve();
    conn.send = (frames) => {
      const sid = this.session;
      // POSTs go one after another, so an untrack never overtakes the track before it.
      chain = chain.then(async () => {
        try {
          const headers = { 'content-type': 'application/json' };
          if (this.token) {
            headers.authorization = `Bearer ${typeof this.token === 'function' ? await this.token() : this.token}`;
          }
          const res = await this.fetch(`${this.httpUrl}/v1/sessions/${sid}/track`, {
            method: 'POST',
            headers,
            body: JSON.stringify(frames),
            credentials: 'include',
          });
          if (res.status === 404) {
            // The gateway restarted under a live stream: the stream reconnects with a new
            // session, whose hello tracks everything again.
            return;
          }
          if (!res.ok) this.emit('error', new Error(`POST /v1/sessions/${sid}/track answered ${res.status}`));
        } catch (e) {
          this.emit('error', e);
        }
      });
    };
    conn.close = () => es.close();
    const data = (fn) => (event) => {
      opened = true;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      fn(msg);
    };
    for (const type of ['hello', 'live', 'resync', 'error', 'bye', 'tile_updated']) {
      es.addEventListener(type, data((msg) => this.receive(type === 'tile_updated' ? { ...msg, type } : msg)));
    }
    es.onerror = () => {
      if (es.readyState === 2) {
        this.lost(conn, { opened });
      } else {
        // EventSource retries by itself (the gateway sets a jittered retry:) and comes back
        // to its own session with Last-Event-ID; until hello it is offline.
        conn.ready = false;
        this.setStatus('offline');
      }
    };
    return conn;
  }

  // -- events --------------------------------------------------------------------------------

  setStatus(status) {
    if (!STATUSES.includes(status) || status === this.status) return;
    this.status = status;
    this.emit('status', status);
  }

  emit(type, value) {
    for (const fn of this.listeners.get(type) ?? []) {
      try {
        fn(value);
      } catch (e) {
        if (type !== 'error') this.emit('error', e);
      }
    }
  }
}
