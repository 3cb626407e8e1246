// What this libvirt and QEMU can do (lib/libvirt/stack.ts): the one place that knows versions.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { atLeast, can, compressionFor, liveSaveTrust, parseVersion, parseVirshVersion, readsZstd, stackLines, UNKNOWN_STACK } from '../../lib/libvirt/stack.js';

// `virsh version --daemon` of Debian 12's and Debian 13's stacks, as printed.
const DEBIAN12 = `Compiled against library: libvirt 9.0.0
Using library: libvirt 9.0.0
Using API: QEMU 9.0.0
Running hypervisor: QEMU 7.2.22
Running against daemon: 9.0.0
`;
const DEBIAN13 = `Compiled against library: libvirt 9.0.0
Using library: libvirt 9.0.0
Using API: QEMU 9.0.0
Running hypervisor: QEMU 10.0.3
Running against daemon: 11.3.0
`;

describe('the stack', () => {
  it('reads the daemon\'s libvirt and the hypervisor\'s QEMU, not the client\'s', () => {
    const s = parseVirshVersion(DEBIAN13);
    assert.equal(s.libvirt?.text, '11.3.0');
    assert.equal(s.qemu?.text, '10.0.3');
    assert.deepEqual(parseVirshVersion('Compiled against library: libvirt 9.0.0\n'), UNKNOWN_STACK);
    assert.deepEqual(parseVersion('7.2'), { major: 7, minor: 2, micro: 0, text: '7.2' });
    assert.equal(parseVersion('x'), null);
  });

  it('VIRTSNAP_COMPRESS on a stack: auto is zstd where libvirt reads it and zstd is installed, gzip elsewhere; zstd asked for where it cannot be read is gzip, said', () => {
    const d12 = parseVirshVersion(DEBIAN12);
    const d13 = parseVirshVersion(DEBIAN13);
    assert.deepEqual(compressionFor('auto', d13, true), { compression: 'zstd', note: null });
    assert.deepEqual(compressionFor('auto', d12, true), { compression: 'gzip', note: null });
    assert.deepEqual(compressionFor('auto', d13, false), { compression: 'gzip', note: null });
    assert.deepEqual(compressionFor('gzip', d13, true), { compression: 'gzip', note: null });
    assert.deepEqual(compressionFor(null, d13, true), { compression: null, note: null });
    assert.match(compressionFor('zstd', d12, true).note!, /^VIRTSNAP_COMPRESS=zstd, but libvirt 9\.0\.0 cannot restore zstd save images \(10\.4 can\): storing gzip instead$/);
    assert.equal(readsZstd(d13, true), null);
    assert.match(readsZstd(d13, false)!, /zstd program, which libvirt runs to read them, is not installed/);
  });

  it('features by the libvirt that brought them', () => {
    const d12 = parseVirshVersion(DEBIAN12);
    const d13 = parseVirshVersion(DEBIAN13);
    assert.deepEqual(['manualSnapshot', 'externalRevert', 'zstdImage', 'sparseImage'].map((f) => can(d12, f as never)), [true, false, false, false]);
    assert.deepEqual(['manualSnapshot', 'externalRevert', 'zstdImage', 'sparseImage'].map((f) => can(d13, f as never)), [true, true, true, true]);
    assert.equal(can(UNKNOWN_STACK, 'manualSnapshot'), false);
    assert.equal(atLeast(parseVersion('9.0.0'), 9), true);
    assert.equal(atLeast(parseVersion('8.2.0'), 9), false);
    assert.deepEqual(stackLines(d12), ["libvirt 9.0.0, QEMU 7.2.22", "this libvirt has snapshot='manual' disks (pause mode, paused domains)"]);
  });

  it('a live save is trusted for KVM everywhere, and for TCG from QEMU 9.0 on', () => {
    const d12 = parseVirshVersion(DEBIAN12);
    assert.deepEqual(liveSaveTrust(d12, 'kvm'), { trusted: true });
    assert.equal(liveSaveTrust(d12, 'qemu').trusted, false);
    assert.deepEqual(liveSaveTrust(parseVirshVersion(DEBIAN13), 'qemu'), { trusted: true });
    assert.equal(liveSaveTrust({ libvirt: null, qemu: parseVersion('8.2.9') }, 'qemu').trusted, false);
    assert.deepEqual(liveSaveTrust({ libvirt: null, qemu: parseVersion('9.0.0') }, 'qemu'), { trusted: true });
    assert.equal(liveSaveTrust(UNKNOWN_STACK, 'qemu').trusted, false);
    assert.deepEqual(liveSaveTrust(UNKNOWN_STACK, 'kvm'), { trusted: true });
  });
});
