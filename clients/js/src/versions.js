// Tile versions as tilepipe's wire format carries them, compared numerically.
//
// A version is a non-negative integer or a dotted numeric string ("4.2.0"). Versions compare
// component by component as integers, so "1.10.0" is newer than "1.9.0", and trailing zero
// components do not count ("2" equals "2.0"): the rule of tilepipe/versions.py. Components
// are compared as digit strings (length first, then text) rather than as JS numbers, so
// versions past 2^53 (epoch-nanosecond versions are common) still compare exactly.

const DOTTED = /^[0-9]+(\.[0-9]+)*$/;

/**
 * The comparable form of a version: its components without leading zeros, trailing zero
 * components dropped. Throws a TypeError for anything that is not a version.
 * @param {number|string} version
 * @returns {string[]}
 */
export function versionKey(version) {
  let text;
  if (typeof version === 'number') {
    if (!Number.isSafeInteger(version) || version < 0) {
      throw new TypeError(`version ${version} is not a non-negative integer`);
    }
    text = String(version);
  } else if (typeof version === 'bigint') {
    if (version < 0n) throw new TypeError(`version ${version} is negative`);
    text = version.toString();
  } else if (typeof version === 'string' && DOTTED.test(version)) {
    text = version;
  } else {
    throw new TypeError(`version ${JSON.stringify(version)} is not a non-negative integer or dotted numeric string`);
  }
  const parts = text.split('.').map((p) => p.replace(/^0+(?=.)/, ''));
  while (parts.length > 1 && parts[parts.length - 1] === '0') parts.pop();
  return parts;
}

/**
 * -1, 0 or 1 as version `a` is older than, equal to or newer than `b`.
 * @param {number|string} a
 * @param {number|string} b
 * @returns {-1|0|1}
 */
export function compareVersions(a, b) {
  const ka = versionKey(a);
  const kb = versionKey(b);
  const n = Math.min(ka.length, kb.length);
  for (let i = 0; i < n; i++) {
    const c = compareDigits(ka[i], kb[i]);
    if (c !== 0) return c;
  }
  return ka.length === kb.length ? 0 : ka.length < kb.length ? -1 : 1;
}

function compareDigits(a, b) {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a === b ? 0 : a < b ? -1 : 1;
}

/**
 * Whether an update (`version`, `hash`) supersedes what a client has (`have`).
 *
 * A higher version always does. An equal version with another hash does too: one version
 * number can name several releases of a tile (two features that each reach version 1 on it,
 * or a region re-render, which keeps the version and brings a new hash), and the gateway
 * never sends an older release after a newer one. A lower version never does, so a late or
 * replayed message cannot take a tile backwards.
 * @param {{version: number|string, hash?: string}} update
 * @param {{version: number|string, hash?: string} | undefined | null} have
 */
export function supersedes(update, have) {
  if (!have) return true;
  const c = compareVersions(update.version, have.version);
  if (c !== 0) return c > 0;
  return (update.hash ?? '') !== (have.hash ?? '');
}
