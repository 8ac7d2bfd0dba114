// Drive the client from another process (the Python suite's test against the real gateway):
//   node test/support/drive.js URL TRANSPORT z/x/y,z/x/y
// prints one JSON line per status change, update and error; reads {"tiles": [...]} lines.
import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import { createTileLive } from '../../src/index.js';
import { NodeEventSource } from './eventsource.js';

const [url, transport, tiles] = process.argv.slice(2);
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const live = createTileLive({
  url, transport, WebSocket, EventSource: NodeEventSource, heartbeat: 0, backoff: { initial: 200, max: 1000 },
});
live.on('status', (status) => out({ status, transport: live.conn?.kind ?? null }));
live.on('update', (u) => out({ update: u.key, version: u.version, hash: u.hash }));
live.on('error', (e) => out({ error: String(e.message), code: e.code ?? null }));
live.setTiles(tiles ? tiles.split(',') : []);
createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.tiles) live.setTiles(cmd.tiles);
  if (cmd.close) {
    live.close();
    process.exit(0);
  }
});
