import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { notGuestState, stateDisks, unplaceable } from '../../lib/disks.js';
import type { Disk } from '../../lib/libvirt/domain-xml.js';

const disk = (extra: Partial<Disk>): Disk => ({ target: 'vda', device: 'disk', type: 'file', source: '/tank/vm/a.qcow2', format: 'qcow2', readonly: false, shareable: false, backing: null, ...extra });

describe('which disks hold guest state (one rule for freeze and restore)', () => {
  it('file and block disks that the guest writes do', () => {
    assert.equal(notGuestState(disk({})), null);
    assert.equal(notGuestState(disk({ type: 'block', source: '/dev/zvol/tank/vm/d' })), null);
  });
  it('media, read-only, shared, passthrough and sourceless drives do not, each with its reason', () => {
    assert.equal(notGuestState(disk({ device: 'cdrom' })), 'cdrom');
    assert.equal(notGuestState(disk({ device: 'floppy' })), 'floppy');
    assert.match(notGuestState(disk({ device: 'lun' }))!, /lun/);
    assert.equal(notGuestState(disk({ readonly: true })), 'read-only');
    assert.equal(notGuestState(disk({ shareable: true })), 'shareable');
    assert.equal(notGuestState(disk({ type: 'network', source: null })), 'network disk');
    assert.equal(notGuestState(disk({ source: null })), 'empty');
  });
  it('a writable storage volume holds state but cannot be placed; a read-only one is simply ignored', () => {
    assert.equal(unplaceable(disk({ type: 'volume', source: null })), true);
    assert.equal(unplaceable(disk({ type: 'volume', source: null, readonly: true })), false);
    assert.deepEqual(stateDisks([disk({}), disk({ target: 'vdb', type: 'volume', source: null }), disk({ target: 'hdc', device: 'cdrom' })]).map((d) => d.target), ['vda']);
  });
});
