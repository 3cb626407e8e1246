// Each store behind the DumpStore interface (lib/stores/), with fakes: the
// same life of a dump in each (sealed into the spool by renames, kept by the
// archiver, found, fetched, dropped), and what each must survive (an archiver
// killed half-way and run again).
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { checkDump } from '../../lib/dump-check.js';
import { isWaiting } from '../../lib/manifest.js';
import { scanSpool, spoolDir } from '../../lib/spool.js';
import { DatasetStore } from '../../lib/stores/dataset.js';
import { DirStore } from '../../lib/stores/dir.js';
import { releaseFetched, ResticDumpStore } from '../../lib/stores/restic.js';
import { storeFor, type DumpStore } from '../../lib/stores/index.js';
import { committedEntry, fakeConfig, FakeRestic } from './fakes.js';

let root: string;
beforeEach(() => {
  root = mkdtempSync(path.join(tmpdir(), 'virtsnap-stores-'));
});
afterEach(() => {
  releaseFetched();
  rmSync(root, { recursive: true, force: true });
});

const config = () => fakeConfig(root);

/** The stores that take dumps through the spool, each with what shows it holds a dump's bytes. */
const spooling: { name: string; make: () => { store: DumpStore; backups: () => number } }[] = [
  {
    name: 'dir',
    make: () => ({ store: new DirStore(config(), 'host1'), backups: () => 0 }),
  },
  {
    name: 'restic',
    make: () => {
      const restic = new FakeRestic();
      return { store: new ResticDumpStore(config(), restic, 'host1'), backups: () => restic.calls.filter((c) => c.startsWith('backup')).length };
    },
  },
];

describe('storeFor: VIRTSNAP_STORE names the store, chosen once', () => {
  it('dir, restic and dataset', () => {
    assert.equal(storeFor(config()).kind, 'dir');
    assert.equal(storeFor({ ...config(), store: { kind: 'dataset' } }).kind, 'dataset');
    const restic = storeFor({ ...config(), store: { kind: 'restic', repo: '/backup/repo', passwordFile: '/etc/pw', env: {} } });
    assert.deepEqual([restic.kind, restic.where], ['restic', 'restic:/backup/repo']);
  });
});

for (const { name, make } of spooling) {
  describe(`${name} store`, () => {
    it('seal: the memory file and meta dir renamed into the spool (same inode), the manifest last, nothing hashed', () => {
      const { store } = make();
      const entry = committedEntry(config(), 'web');
      const inode = statSync(entry.memoryFile).ino;
      const sealed = store.seal(entry, entry.tied!);
      assert.equal(store.spooled, true);
      assert.ok(isWaiting(sealed.manifest));
      assert.equal(path.dirname(sealed.manifestFile), spoolDir(config()));
      assert.equal(statSync(sealed.manifest.memoryFile).ino, inode, 'a rename, never a copy');
      assert.equal(sealed.manifest.sha256, '');
      assert.equal(existsSync(entry.memoryFile), false);
      assert.equal(existsSync(path.join(sealed.manifest.metaDir!, 'domain.xml')), true);
      assert.deepEqual(scanSpool(config()).dumps.map((d) => d.manifest.id), [entry.tag]);
    });

    it('keep: stored, the stored copy whole, the spool empty; scan, newest and fetch find it; drop removes it', async () => {
      const { store, backups } = make();
      const entry = committedEntry(config(), 'web');
      const raw = readFileSync(entry.memoryFile);
      const kept = await store.keep(store.seal(entry, entry.tied!));
      assert.equal(isWaiting(kept.manifest), false);
      assert.deepEqual(scanSpool(config()), { dumps: [], broken: [], unsealed: [], foreign: [] });
      assert.equal(store.scan().dumps.length, 1);
      assert.deepEqual(store.newest().map((m) => m.id), [entry.tag]);
      assert.equal(backups(), name === 'restic' ? 1 : 0);
      const local = await store.fetch(kept.manifest);
      assert.equal(await checkDump(local.manifest), null);
      if (local.manifest.compression === null) assert.deepEqual(readFileSync(local.manifest.memoryFile), raw);
      local.release();
      await store.drop(kept);
      assert.equal(store.scan().dumps.length, 0);
    });

    it('an archiver killed after storing, before the spool let go: the next one stores nothing twice and empties the spool', async () => {
      const { store, backups } = make();
      const entry = committedEntry(config(), 'web');
      const waiting = store.seal(entry, entry.tied!);
      // Keep copies of the spool's files, as a kill before dropWaiting leaves them.
      const copies = [waiting.manifestFile, waiting.manifest.memoryFile].map((f) => [f, readFileSync(f)] as const);
      const first = await store.keep(waiting);
      for (const [f, data] of copies) writeFileSync(f, data);
      const again = await store.keep(scanSpool(config()).dumps[0]!);
      assert.equal(again.manifest.id, first.manifest.id);
      assert.equal(store.scan().dumps.length, 1, 'one dump, once');
      assert.equal(backups(), name === 'restic' ? 1 : 0, 'not backed up twice');
      assert.deepEqual(scanSpool(config()).dumps, []);
    });
  });
}

describe('dir store', () => {
  it('an archiver killed mid-copy left `<id>.save.part`: the next one writes it again from the spool and checks it', async () => {
    const store = new DirStore(config(), 'host1');
    const entry = committedEntry(config(), 'db');
    const waiting = store.seal(entry, entry.tied!);
    const dir = path.join(config().archiveDir, 'db');
    const kept = await store.keep(waiting);
    rmSync(kept.manifest.memoryFile);
    // As if killed after the manifest, before the memory file took its place: the spool still has its copy.
    const fresh = committedEntry(config(), 'db');
    const again = store.seal(fresh, fresh.tied!);
    writeFileSync(path.join(dir, `${fresh.tag}.save.part`), 'half');
    const second = await store.keep(again);
    assert.equal(await checkDump(second.manifest), null);
    assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith('.part')), []);
  });

  it('a dump in a restic repository is never dropped or fetched through the dir store: one line names the setting', async () => {
    const store = new DirStore(config(), 'host1');
    const entry = committedEntry(config(), 'web');
    const m = { ...store.seal(entry, entry.tied!).manifest, store: { kind: 'restic' as const, repo: '/r', snapshot: 'abcdef12', save: '/x.save', meta: '/x.meta' } };
    await assert.rejects(store.fetch(m), /is in restic repository \/r: set VIRTSNAP_STORE=restic:\/r/);
    await assert.rejects(store.drop({ manifest: m, manifestFile: '/nonexistent.json' }), /set VIRTSNAP_STORE to it to drop it/);
  });
});

describe('dataset store', () => {
  it('seal records the dump where the snapshots hold it: nothing waits in the spool, nothing for an archiver', async () => {
    const store = new DatasetStore(config(), 'host1');
    assert.equal(store.spooled, false);
    const entry = committedEntry(config(), 'web');
    const mp = path.join(root, 'tank-vm');
    const inside = { ...entry, ramInDataset: { dataset: 'tank/vm', mountpoint: mp, dir: path.join(mp, '.virtsnap', 'web'), bytes: 66560 } };
    const sealed = store.seal(inside, entry.tied!);
    assert.match(sealed.manifest.memoryFile, /^tank\/vm@snap:\/\.virtsnap\/web\//);
    assert.deepEqual(scanSpool(config()).dumps, []);
    assert.deepEqual(store.newest().map((m) => m.id), [entry.tag]);
    await assert.rejects(store.keep(sealed), /VIRTSNAP_STORE=dataset keeps RAM inside the snapshots/);
  });

  it('a dump the freeze saved in the overlay dir (the store changed since) is not sealed: the thaw discards it with the reason', () => {
    const store = new DatasetStore(config(), 'host1');
    const entry = committedEntry(config(), 'web');
    assert.throws(() => store.seal(entry, entry.tied!), (err: Error) => err.name === 'NothingToSealError' && /VIRTSNAP_STORE changed to dataset/.test(err.message));
  });
});
