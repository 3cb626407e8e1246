// The prune hook's index of which manifests name which snapshots: it may
// spare reading a manifest, never decide anything.
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, beforeEach, describe, it } from 'node:test';
import { archiveDump, scanArchive, setSnapshots } from '../../lib/archive.js';
import { snapshotNames, type ArchivedDump } from '../../lib/manifest.js';
import { dumpsNaming, indexFile } from '../../lib/archive-index.js';
import type { SnapshotRef } from '../../lib/snapshot-id.js';

function ref(name: string, guid: string): SnapshotRef {
  return { name, frozenAs: name, guid, createtxg: '1', creation: 1, mountpoint: '/x' };
}

describe('dumpsNaming: the dumps that name a snapshot', () => {
  const root = mkdtempSync(path.join(tmpdir(), 'virtsnap-index-'));
  const archiveDir = path.join(root, 'archive');
  const stateDir = path.join(root, 'state');
  // Every file counts as settled: remembered by the index.
  const later = { now: Date.now() + 60_000 };
  after(() => rmSync(root, { recursive: true, force: true }));
  beforeEach(() => {
    rmSync(archiveDir, { recursive: true, force: true });
    rmSync(stateDir, { recursive: true, force: true });
    mkdirSync(stateDir, { mode: 0o700 });
  });

  let n = 0;
  async function dump(names: string[], domain = 'vm'): Promise<ArchivedDump> {
    const id = `20260101T000000.${String(n++).padStart(3, '0')}Z-0000000${n % 10}`;
    const mem = path.join(root, `${id}.mem`);
    writeFileSync(mem, Buffer.concat([Buffer.from('LibvirtQemudSave'), Buffer.alloc(100)]));
    return archiveDump(archiveDir, {
      id,
      domain: { name: domain, uuid: '11111111-1111-1111-1111-111111111111' },
      snapshots: names.map((s, i) => ref(s, `g${n}-${i}`)),
      types: [],
      memoryFile: mem,
      metaDir: null,
      disks: [],
      startedAt: new Date(Date.UTC(2026, 0, 1, 0, 0, n)).toISOString(),
      frozenAt: null,
      job: null,
      libvirtUri: 'qemu:///system',
      hostname: 'h',
    });
  }

  const ids = (r: { dumps: ArchivedDump[] }) => r.dumps.map((d) => d.manifest.id);
  /** What prune read before the index: every manifest, filtered. */
  const scanned = (snapshot: string) => scanArchive(archiveDir).dumps.filter((d) => snapshotNames(d.manifest).includes(snapshot)).map((d) => d.manifest.id);

  it('finds what a scan of every manifest finds, with the index and without it', async () => {
    const a = await dump(['tank/vm@h1', 'tank/vm@d1']);
    await dump(['tank/vm@h2'], 'web');
    const c = await dump(['tank/vm@h3', 'tank/vm@d1'], 'web');
    for (let i = 0; i < 2; i++) {
      assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@d1', later)), [a.manifest.id, c.manifest.id]);
      assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@d1', later)), scanned('tank/vm@d1'));
      assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@nope', later)), []);
    }
    const index = JSON.parse(readFileSync(indexFile(stateDir), 'utf8'));
    assert.deepEqual(Object.values(index.dirs).map((d: any) => Object.keys(d.files).length), [1, 2]);
  });

  it('a manifest written or changed after the index was made is read again', async () => {
    const a = await dump(['tank/vm@h1']);
    assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@x', later)), []);
    const b = await dump(['tank/vm@x']);
    setSnapshots(a, [ref('tank/vm@x', 'gx')]);
    assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@x', later)), [a.manifest.id, b.manifest.id]);
  });

  it('a damaged or missing index costs a full read, nothing else', async () => {
    const a = await dump(['tank/vm@h1']);
    writeFileSync(indexFile(stateDir), '{"format":"virtsnap-archive-index/1","archiveDir":');
    assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@h1', later)), [a.manifest.id]);
    rmSync(indexFile(stateDir));
    assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@h1', later)), [a.manifest.id]);
  });

  it('the index only spares reads: a manifest it points to is read, and decides', async () => {
    const a = await dump(['tank/vm@h1']);
    dumpsNaming(archiveDir, stateDir, 'tank/vm@h1', later);
    // An index that lies: it says the manifest names tank/vm@other.
    const file = indexFile(stateDir);
    const index = JSON.parse(readFileSync(file, 'utf8'));
    index.dirs.vm.files[path.basename(a.manifestFile)].names = ['tank/vm@other'];
    writeFileSync(file, JSON.stringify(index));
    assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@other', later)), []);
  });

  it('a file that changed within the last 2 s is not remembered (a change in the same timestamp tick would go unseen)', async () => {
    await dump(['tank/vm@h1']);
    dumpsNaming(archiveDir, stateDir, 'tank/vm@h1');
    const index = JSON.parse(readFileSync(indexFile(stateDir), 'utf8'));
    assert.deepEqual(index.dirs.vm, { sig: '', files: {} }, 'nothing remembered, the dir is listed again');
  });

  it('an unchanged domain dir is taken from the index; any rename in it (every write of virtsnap) makes it listed again', async () => {
    const a = await dump(['tank/vm@h1']);
    dumpsNaming(archiveDir, stateDir, 'tank/vm@h1', later);
    assert.notEqual(JSON.parse(readFileSync(indexFile(stateDir), 'utf8')).dirs.vm.sig, '');
    assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@h1', later)), [a.manifest.id]);
    const updated = setSnapshots(a, [ref('tank/vm@h9', 'g9')]);
    assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@h9', later)), [updated.manifest.id]);
    assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@h1', later)), []);
  });

  it('broken manifests are reported on every call; a domain dir others may write is not read', async () => {
    const a = await dump(['tank/vm@h1']);
    const broken = path.join(path.dirname(a.manifestFile), '20260101T000000.999Z-deadbeef.json');
    writeFileSync(broken, '{ not json');
    for (let i = 0; i < 2; i++) {
      const r = dumpsNaming(archiveDir, stateDir, 'tank/vm@h1', later);
      assert.deepEqual(ids(r), [a.manifest.id]);
      assert.deepEqual(r.broken.map((b) => b.file), [broken]);
    }
    chmodSync(path.dirname(a.manifestFile), 0o777);
    try {
      assert.deepEqual(ids(dumpsNaming(archiveDir, stateDir, 'tank/vm@h1', later)), []);
      assert.deepEqual(scanned('tank/vm@h1'), []);
    } finally {
      chmodSync(path.dirname(a.manifestFile), 0o700);
    }
  });

  it('no archive dir: no dumps', () => {
    assert.deepEqual(dumpsNaming(path.join(root, 'none'), stateDir, 'tank/vm@h1'), { dumps: [], broken: [] });
  });
});
