// The qemu-img client: its arguments, and that it never overwrites a file
// nor leaves one behind that it made for a failed overlay.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { QemuImgClient, QemuImgMissingError, overlayArgs } from '../../lib/libvirt/qemu-img.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'virtsnap-qemu-img-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('overlayArgs', () => {
  it('qcow2 over the backing image by absolute path, its format named, size read from it (no -u, no -o)', () => {
    assert.deepEqual(overlayArgs({ overlay: '/ov/w.vda.qcow2', backing: '/tank/vm/a,b.raw', backingFormat: 'raw' }), [
      'create', '-q', '-f', 'qcow2', '-b', '/tank/vm/a,b.raw', '-F', 'raw', '/ov/w.vda.qcow2',
    ]);
  });

  it('refuses relative paths (a name like nbd:x or json:{...} would be read as a protocol) and odd formats', () => {
    assert.throws(() => overlayArgs({ overlay: '/ov/x.qcow2', backing: 'nbd:host:1', backingFormat: 'raw' }), /absolute/);
    assert.throws(() => overlayArgs({ overlay: 'x.qcow2', backing: '/a', backingFormat: 'raw' }), /absolute/);
    assert.throws(() => overlayArgs({ overlay: '/ov/x.qcow2', backing: '/a', backingFormat: 'raw,file.x=1' }), /not an image format/);
  });
});

describe('QemuImgClient.createOverlay', () => {
  it('makes the file 0600 and exclusively before qemu-img writes into it', async () => {
    const overlay = path.join(tmp, 'ok.qcow2');
    await new QemuImgClient('true').createOverlay({ overlay, backing: '/tank/vm/a.qcow2', backingFormat: 'qcow2' });
    assert.equal(statSync(overlay).mode & 0o777, 0o600);
  });

  it('an existing file is refused and left as it was', async () => {
    const overlay = path.join(tmp, 'theirs.qcow2');
    writeFileSync(overlay, 'not ours');
    await assert.rejects(new QemuImgClient('true').createOverlay({ overlay, backing: '/tank/vm/a.qcow2', backingFormat: 'qcow2' }), /exists already/);
    assert.equal(readFileSync(overlay, 'utf8'), 'not ours');
  });

  it('no qemu-img at all: a QemuImgMissingError, the file it made is gone', async () => {
    const overlay = path.join(tmp, 'missing.qcow2');
    await assert.rejects(new QemuImgClient('/nonexistent/qemu-img').createOverlay({ overlay, backing: '/tank/vm/a.qcow2', backingFormat: 'qcow2' }), QemuImgMissingError);
    assert.throws(() => statSync(overlay), /ENOENT/);
  });

  it('a failed qemu-img: one-line error, and the file it made is gone', async () => {
    const overlay = path.join(tmp, 'failed.qcow2');
    await assert.rejects(new QemuImgClient('false').createOverlay({ overlay, backing: '/tank/vm/a.qcow2', backingFormat: 'qcow2' }), (err: Error) => {
      assert.match(err.message, /^cannot create overlay .*failed\.qcow2 on \/tank\/vm\/a\.qcow2: qemu-img: exit 1$/);
      return true;
    });
    assert.throws(() => statSync(overlay), /ENOENT/);
  });
});
