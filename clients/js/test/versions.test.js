import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareVersions, supersedes, versionKey } from '../src/index.js';

test('versions compare numerically, component by component, like tilepipe/versions.py', () => {
  assert.equal(compareVersions('1.10.0', '1.9.0'), 1);
  assert.equal(compareVersions('1.9.0', '1.10.0'), -1);
  assert.equal(compareVersions('2', '2.0'), 0);
  assert.equal(compareVersions(2, '2.0.0'), 0);
  assert.equal(compareVersions('1', '1.5'), -1);
  assert.equal(compareVersions('010', 9), 1);
  assert.equal(compareVersions(10, 9), 1); // not text order
  assert.deepEqual(versionKey('4.2.0'), ['4', '2']);
  assert.deepEqual(versionKey('007'), ['7']);
  assert.deepEqual(versionKey(0), ['0']);
});

test('versions past 2^53 compare exactly', () => {
  assert.equal(compareVersions('1733011200000000001', '1733011200000000000'), 1);
  assert.equal(compareVersions('9007199254740993', '9007199254740992'), 1);
});

test('what is not a version is refused', () => {
  for (const bad of [-1, 1.5, '1.', '.1', 'v1', '', '1..2', null, true, {}]) {
    assert.throws(() => versionKey(bad), TypeError, String(bad));
  }
});

test('an update supersedes: newer version, or the same version with another hash; never older', () => {
  assert.equal(supersedes({ version: 3, hash: 'a' }, undefined), true);
  assert.equal(supersedes({ version: 3, hash: 'a' }, { version: 2, hash: 'z' }), true);
  assert.equal(supersedes({ version: '1.10', hash: 'a' }, { version: '1.9', hash: 'a' }), true);
  assert.equal(supersedes({ version: 3, hash: 'a' }, { version: 3, hash: 'a' }), false);
  assert.equal(supersedes({ version: '3.0', hash: 'b' }, { version: 3, hash: 'a' }), true);
  assert.equal(supersedes({ version: 2, hash: 'b' }, { version: 3, hash: 'a' }), false);
});
