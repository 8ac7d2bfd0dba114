// A scripted stand-in for `tilepipe gateway` in Node, for the client's own protocol tests: it
// speaks the gateway's frames (README, "Map clients") and records what the client sends. The
// real gateway is exercised by the browser tests (tests/browser/ in the Python suite).
import { createServer } from 'node:http';
import { once } from 'node:events';
import { WebSocketServer } from 'ws';

export async function startGateway() {
  const server = createServer();
  const wss = new WebSocketServer({ noServer: true });
  const gw = {
    frames: [], // every frame any client sent, in order: {transport, session, frame}
    sockets: [],
    streams: new Map(), // session -> response
    refuseWebSocket: false,
    sessions: 0,
    waiters: [],
    url: '',
    hello(session) {
      return { type: 'hello', v: 1, session, epoch: 'e1', auth: 'off', limits: { max_tiles: 512, max_area_cells: 4096, area_level: 12 } };
    },
    /** Resolves with the next frame of `type` (already received ones first). */
    async next(type, from = 0) {
      for (;;) {
        const found = gw.frames.slice(from).find((f) => f.frame.type === type && !f.taken);
        if (found) {
          found.taken = true;
          return found;
        }
        await new Promise((resolve) => gw.waiters.push(resolve));
      }
    },
    push(entry) {
      gw.frames.push(entry);
      for (const w of gw.waiters.splice(0)) w();
    },
    send(msg, i = gw.sockets.length - 1) {
      gw.sockets[i].send(JSON.stringify(msg));
    },
    sse(session, msg) {
      const res = gw.streams.get(session);
      res.write(`event: ${msg.type}\ndata: ${JSON.stringify(msg)}\n\n`);
    },
    async close() {
      for (const ws of gw.sockets) ws.terminate();
      for (const res of gw.streams.values()) res.destroy();
      server.closeAllConnections?.();
      server.close();
    },
  };
  server.on('upgrade', (req, socket, head) => {
    if (gw.refuseWebSocket || req.url !== '/v1/live') {
      socket.end('HTTP/1.1 403 Forbidden\r\nconnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const session = `ws${++gw.sessions}`;
      gw.sockets.push(ws);
      ws.on('message', (data) => gw.push({ transport: 'websocket', session, frame: JSON.parse(String(data)) }));
      ws.send(JSON.stringify(gw.hello(session)));
    });
  });
  server.on('request', async (req, res) => {
    const url = new URL(req.url, 'http://x');
    if (req.method === 'GET' && url.pathname === '/v1/sse') {
      const session = `sse${++gw.sessions}`;
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
      gw.streams.set(session, res);
      res.write(`retry: 50\nevent: hello\ndata: ${JSON.stringify(gw.hello(session))}\n\n`);
      return;
    }
    const m = /^\/v1\/sessions\/([^/]+)\/track$/.exec(url.pathname);
    if (req.method === 'POST' && m) {
      let body = '';
      for await (const chunk of req) body += chunk;
      const doc = JSON.parse(body);
      for (const frame of Array.isArray(doc) ? doc : [doc]) gw.push({ transport: 'sse', session: m[1], frame });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ session: m[1], errors: [] }));
      return;
    }
    res.writeHead(404);
    res.end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  gw.url = `http://127.0.0.1:${server.address().port}`;
  return gw;
}

export function update(z, x, y, version, hash) {
  return { type: 'tile_updated', tms: 'WebMercatorQuad', z, x, y, version, hash, quadkey: '', events: 1, coverage: 'tile' };
}

export function until(predicate, what, timeout = 3000) {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const tick = () => {
      const value = predicate();
      if (value) return resolve(value);
      if (Date.now() - start > timeout) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 5);
    };
    tick();
  });
}
