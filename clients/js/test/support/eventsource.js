// The part of the browser's EventSource the client uses, for Node 20 (which has none):
// named events, `retry:`, reconnection with Last-Event-ID, readyState and close().
import http from 'node:http';

export class NodeEventSource {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.listeners = new Map();
    this.onerror = null;
    this.retry = 1000;
    this.lastId = '';
    this.connect();
  }

  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }

  close() {
    this.readyState = 2;
    this.req?.destroy();
    clearTimeout(this.timer);
  }

  connect() {
    const headers = this.lastId ? { 'last-event-id': this.lastId } : {};
    this.req = http.get(this.url, { headers }, (res) => {
      if (res.statusCode !== 200) {
        this.readyState = 2;
        res.resume();
        this.onerror?.({});
        return;
      }
      this.readyState = 1;
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        buf += chunk;
        let at;
        while ((at = buf.indexOf('\n\n')) >= 0) {
          this.dispatch(buf.slice(0, at));
          buf = buf.slice(at + 2);
        }
      });
      res.on('end', () => this.lost());
      res.on('error', () => this.lost());
    });
    this.req.on('error', () => this.lost());
  }

  lost() {
    if (this.readyState === 2) return;
    this.readyState = 0;
    this.onerror?.({});
    this.timer = setTimeout(() => this.connect(), this.retry);
  }

  dispatch(block) {
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const [field, ...rest] = line.split(':');
      const value = rest.join(':').replace(/^ /, '');
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') this.lastId = value;
      else if (field === 'retry') this.retry = Number(value);
    }
    if (!data.length) return;
    for (const fn of this.listeners.get(type) ?? []) fn({ data: data.join('\n') });
  }
}
