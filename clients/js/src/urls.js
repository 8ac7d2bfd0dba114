// Tile URLs: recognising one tile's URL from a source's template, and adding its version.

const PLACEHOLDER = /\{(z|x|y|quadkey|[^}]+)\}/g;

/**
 * A function from a URL to its [z, x, y] (XYZ rows), or null when the URL is not one of the
 * template's. Understands {z} {x} {y} {quadkey}; any other placeholder ({ratio}, {s},
 * {prefix}, {bbox-epsg-3857}, ...) matches anything. `scheme: "tms"` flips y.
 * @param {string} template
 * @param {{scheme?: string}} [options]
 */
export function tileUrlMatcher(template, { scheme = 'xyz' } = {}) {
  const names = [];
  let pattern = '';
  let last = 0;
  for (const m of template.matchAll(PLACEHOLDER)) {
    pattern += escape(template.slice(last, m.index));
    const name = m[1];
    if (name === 'z' || name === 'x' || name === 'y') {
      pattern += '(\\d+)';
      names.push(name);
    } else if (name === 'quadkey') {
      pattern += '([0-3]*)';
      names.push('quadkey');
    } else {
      pattern += '[^?#]*?';
    }
    last = m.index + m[0].length;
  }
  pattern += escape(template.slice(last).replace(/[?#].*$/, ''));
  const re = new RegExp(`^${pattern}(?:[?#]|$)`);
  return (url) => {
    const m = re.exec(url);
    if (!m) return null;
    let z;
    let x;
    let y;
    names.forEach((name, i) => {
      const v = m[i + 1];
      if (name === 'quadkey') [z, x, y] = fromQuadkey(v);
      else if (name === 'z') z = Number(v);
      else if (name === 'x') x = Number(v);
      else y = Number(v);
    });
    if (z === undefined || x === undefined || y === undefined) return null;
    if (scheme === 'tms') y = 2 ** z - 1 - y;
    return [z, x, y];
  };
}

function escape(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function fromQuadkey(qk) {
  let x = 0;
  let y = 0;
  for (const c of qk) {
    const d = Number(c);
    x = x * 2 + (d & 1);
    y = y * 2 + (d >> 1);
  }
  return [qk.length, x, y];
}

/**
 * The URL of one tile release: `v=<version>&h=<hash>` added to its query. The pair names one
 * release exactly (one version number can name several releases of a tile: two features that
 * each reach version 1 on it, a region re-render), so the tile server can mark it immutable.
 * @param {string} url
 * @param {{version: number|string, hash?: string} | undefined} have
 * @param {{versionParam?: string, hashParam?: string}} [names]
 */
export function versionedUrl(url, have, { versionParam = 'v', hashParam = 'h' } = {}) {
  if (!have) return url;
  const hashAt = url.indexOf('#');
  const fragment = hashAt >= 0 ? url.slice(hashAt) : '';
  const head = hashAt >= 0 ? url.slice(0, hashAt) : url;
  let query = `${versionParam}=${encodeURIComponent(String(have.version))}`;
  if (have.hash) query += `&${hashParam}=${encodeURIComponent(have.hash)}`;
  return `${head}${head.includes('?') ? '&' : '?'}${query}${fragment}`;
}

/** "version:hash", the identity of a release; "" for none. */
export function releaseToken(have) {
  return have ? `${have.version}:${have.hash ?? ''}` : '';
}

/**
 * `map.set(key, value)`, keeping at most `limit` entries: the least recently set go first.
 * The adapters remember what they asked for per tile; a long session that pans across the
 * world must not make that grow without end.
 */
export function remember(map, key, value, limit = 8192) {
  map.delete(key);
  map.set(key, value);
  while (map.size > limit) map.delete(map.keys().next().value);
}
