// What virsh prints, as read by the libvirt client (outputs seen on libvirt 9.0).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { blockJobInRaw, parseStateReason } from '../../lib/libvirt/virsh.js';

describe('virsh output', () => {
  it('blockjob --raw under -q: a job prints type=, none prints nothing (--info would print an empty line for both)', () => {
    assert.equal(blockJobInRaw(' type=Active Block Commit\n bandwidth=0\n cur=1572864\n end=1572864\n'), true);
    assert.equal(blockJobInRaw(''), false);
    assert.equal(blockJobInRaw('\n'), false);
  });

  it('domstate --reason', () => {
    assert.deepEqual(parseStateReason('paused (I/O error)\n'), { state: 'paused', reason: 'I/O error' });
    assert.deepEqual(parseStateReason('running (unpaused)'), { state: 'running', reason: 'unpaused' });
    assert.deepEqual(parseStateReason('shut off (destroyed)'), { state: 'shut off', reason: 'destroyed' });
    assert.deepEqual(parseStateReason('running'), { state: 'running', reason: '' });
  });
});
