import assert from 'node:assert/strict';
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { readSavedFile, saveDomainFiles } from '../../lib/domain-files.js';
import { assertOwnDir, ensureDir, writeFileAtomic } from '../../lib/fsutil.js';
import type { LibvirtClient } from '../../lib/libvirt/virsh.js';
import { SafeDir, UnsafePathError } from '../../lib/safe-dir.js';
import { ConfigError } from '../../lib/errors.js';

let root: string;
beforeEach(() => {
  root = mkdtempSync(path.join(tmpdir(), 'virtsnap-safe-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

const virsh = { dumpxml: async (_u: string, inactive?: boolean) => (inactive ? '<domain>inactive</domain>' : '<domain>live</domain>') } as unknown as LibvirtClient;

describe('SafeDir: writing into a dataset others can write to', () => {
  it('makes .virtsnap/<domain> 0700 and writes the copies 0600', async () => {
    const mp = path.join(root, 'mnt');
    mkdirSync(mp, { mode: 0o777 });
    chmodSync(mp, 0o777);
    const nvram = path.join(root, 'VARS.fd');
    writeFileSync(nvram, 'uefi');
    await saveDomainFiles({ uuid: 'u', nvram, tpmEmulator: false }, virsh, [{ dir: path.join(mp, '.virtsnap', 'web'), ours: 2 }]);
    const dir = path.join(mp, '.virtsnap', 'web');
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.equal(statSync(path.join(mp, '.virtsnap')).mode & 0o777, 0o700);
    assert.equal(readFileSync(path.join(dir, 'domain.xml'), 'utf8'), '<domain>live</domain>');
    assert.equal(statSync(path.join(dir, 'nvram.fd')).mode & 0o777, 0o600);
    assert.equal(readSavedFile(dir, 'nvram.fd')?.toString(), 'uefi');
  });

  for (const where of ['.virtsnap', '.virtsnap/web'] as const) {
    it(`a symlink planted at ${where} pointing at /etc-like dirs: refused, naming it, nothing written through it`, async () => {
      const mp = path.join(root, 'mnt');
      const target = path.join(root, 'etc');
      mkdirSync(target);
      mkdirSync(path.join(mp, '.virtsnap'), { recursive: true, mode: 0o700 });
      if (where === '.virtsnap') rmSync(path.join(mp, '.virtsnap'), { recursive: true });
      symlinkSync(target, path.join(mp, where));
      await assert.rejects(
        saveDomainFiles({ uuid: 'u', nvram: null, tpmEmulator: false }, virsh, [{ dir: path.join(mp, '.virtsnap', 'web'), ours: 2 }]),
        (err: unknown) => err instanceof UnsafePathError && err.message.includes(path.join(mp, where)) && /symlink/.test(err.message),
      );
      assert.deepEqual(existsSync(path.join(target, 'domain.xml')) || existsSync(path.join(target, 'web')), false);
    });
  }

  it('a symlink planted at a file name is replaced, not written through', async () => {
    const dir = path.join(root, 'mnt', '.virtsnap', 'web');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(path.join(root, 'mnt', '.virtsnap'), 0o700);
    const victim = path.join(root, 'passwd');
    writeFileSync(victim, 'root:x:0:0');
    symlinkSync(victim, path.join(dir, 'domain.xml'));
    symlinkSync(victim, path.join(dir, `.domain-inactive.xml.${process.pid}.tmp`));
    await saveDomainFiles({ uuid: 'u', nvram: null, tpmEmulator: false }, virsh, [{ dir, ours: 2 }]);
    assert.equal(readFileSync(victim, 'utf8'), 'root:x:0:0');
    assert.equal(lstatSync(path.join(dir, 'domain.xml')).isSymbolicLink(), false);
  });

  it('a dir of ours that others can write to, or someone else owns, is refused', () => {
    const dir = path.join(root, 'mnt', '.virtsnap');
    mkdirSync(dir, { recursive: true });
    chmodSync(dir, 0o777);
    assert.throws(() => SafeDir.open(path.join(dir, 'web'), { ours: 2, create: true }), (e: unknown) => e instanceof UnsafePathError && /writable by others/.test((e as Error).message));
  });

  it('reading a saved copy never follows a symlink (a clone holding a link to /etc/shadow)', () => {
    const dir = path.join(root, 'clone', '.virtsnap', 'web');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(path.join(root, 'clone', '.virtsnap'), 0o700);
    writeFileSync(path.join(root, 'shadow'), 'secret');
    symlinkSync(path.join(root, 'shadow'), path.join(dir, 'nvram.fd'));
    assert.throws(() => readSavedFile(dir, 'nvram.fd'), UnsafePathError);
    assert.equal(readSavedFile(dir, 'domain.xml'), null, 'missing is null');
  });
});

describe('private directories', () => {
  it('ensureDir creates with the mode (parents it makes only searchable, for QEMU on the way to the overlays), and leaves the mode of an existing dir as the user chose it', () => {
    const made = path.join(root, 'a', 'b');
    ensureDir(made);
    assert.equal(statSync(made).mode & 0o777, 0o700);
    assert.equal(statSync(path.join(root, 'a')).mode & 0o777, 0o711);
    const existing = path.join(root, 'mine');
    mkdirSync(existing);
    chmodSync(existing, 0o750);
    ensureDir(existing);
    assert.equal(statSync(existing).mode & 0o777, 0o750);
  });

  it('a world-writable archive or state dir is refused with a one-line ConfigError naming it', () => {
    const open = path.join(root, 'open');
    mkdirSync(open);
    chmodSync(open, 0o1777);
    assert.throws(() => assertOwnDir(open, 'VIRTSNAP_ARCHIVE_DIR'), (e: unknown) => e instanceof ConfigError && e.message.includes('VIRTSNAP_ARCHIVE_DIR') && e.message.includes(open) && !e.message.includes('\n'));
  });

  it('writeFileAtomic never writes through a symlink at its temp name', () => {
    const victim = path.join(root, 'victim');
    writeFileSync(victim, 'keep');
    const file = path.join(root, 'm.json');
    symlinkSync(victim, path.join(root, `.m.json.${process.pid}.tmp`));
    writeFileAtomic(file, 'new');
    assert.equal(readFileSync(victim, 'utf8'), 'keep');
    assert.equal(readFileSync(file, 'utf8'), 'new');
  });
});
