// RAM inside the snapshot (lib/ram-in-dataset.ts): the plan's refusals, the
// thaw removing the live RAM before the first commit, and the restore's
// check that a RAM file belongs to the disks beside it.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { HEADER_BYTES } from '../../lib/libvirt/save-image.js';
import { diskIdentity, inDatasetDumps, inDatasetProblem, ramInDatasetProblem, removeLiveRam, type InDatasetManifest } from '../../lib/ram-in-dataset.js';
import { legacyRef, refsAt } from '../../lib/snapshot-id.js';
import { thawDomain } from '../../lib/thaw.js';
import { storeFor } from '../../lib/stores/index.js';
import { fakeDeps, frozenEntry, onOverlays } from './fakes.js';

const ID = '20261123T190000.000Z-0123abcd';

function saveImage(file: string, uuid: string): void {
  const xml = Buffer.from(`<domain type='qemu'><name>web</name><uuid>${uuid}</uuid><devices/></domain>\0`);
  const header = Buffer.alloc(HEADER_BYTES);
  header.write('LibvirtQemudSave', 0, 16, 'latin1');
  header.writeUInt32LE(2, 16);
  header.writeUInt32LE(xml.length, 20);
  writeFileSync(file, Buffer.concat([header, xml, Buffer.alloc(4096, 7)]), { mode: 0o600 });
}

/** A dataset mountpoint with one dump in `.virtsnap/web/` and one disk image. */
function dataset() {
  const mp = mkdtempSync(path.join(tmpdir(), 'vs-rid-'));
  const dir = path.join(mp, '.virtsnap', 'web');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const disk = path.join(mp, 'web.img');
  writeFileSync(disk, Buffer.alloc(8192));
  utimesSync(disk, 1_700_000_000, 1_700_000_000);
  const save = path.join(dir, `${ID}.save`);
  saveImage(save, 'u-web');
  const manifest: InDatasetManifest = {
    format: 'virtsnap-dump/2',
    id: ID,
    domain: { name: 'web', uuid: 'u-web' },
    store: { kind: 'dataset', dataset: 'tank/vm', mountpoint: '/tank/vm' },
    snapshotNames: ['tank/vm@snap'],
    types: ['hourly'],
    bytes: HEADER_BYTES + 0,
    compression: null,
    disks: [{ target: 'vda', source: '/tank/vm/web.img', dataset: 'tank/vm', format: 'raw', bytes: 8192, identity: diskIdentity(disk) }],
    times: { startedAt: '', frozenAt: null, archivedAt: '', pauseMs: null, saveMs: null },
    libvirtUri: 'qemu:///system',
    hostname: 'a',
  };
  manifest.bytes = diskIdentity(save)!.bytes;
  writeFileSync(path.join(dir, `${ID}.json`), JSON.stringify(manifest));
  const diskNow = (source: string) => (source.startsWith('/tank/vm/') ? path.join(mp, source.slice('/tank/vm/'.length)) : null);
  return { mp, dir, disk, save, manifest, diskNow };
}

describe('RAM inside the dataset', () => {
  it('the plan refuses a VM spread over two datasets, or on an unmounted one, naming it and the way out', () => {
    assert.match(ramInDatasetProblem('web', ['tank/a', 'tank/b'], '/tank/a')!, /"web" has disks in tank\/a and tank\/b.*VIRTSNAP_STORE=dir/);
    assert.match(ramInDatasetProblem('web', ['tank/a'], undefined)!, /tank\/a of domain "web" is not mounted/);
    assert.equal(ramInDatasetProblem('web', ['tank/a'], '/tank/a'), null);
  });

  it('a dump found in a snapshot is sound while its disks are as they were at the save', () => {
    const t = dataset();
    const [found] = inDatasetDumps(t.mp);
    assert.equal(found?.id, ID);
    assert.equal(inDatasetProblem(found!.manifest!, t.save, t.diskNow), null);
  });

  it('a disk written after the save (the RAM caught by a later snapshot) is refused, as is a cut RAM file', () => {
    const t = dataset();
    utimesSync(t.disk, 1_700_000_005, 1_700_000_005);
    assert.match(inDatasetProblem(t.manifest, t.save, t.diskNow)!, /disk vda changed after the RAM was saved/);
    utimesSync(t.disk, 1_700_000_000, 1_700_000_000);
    writeFileSync(t.save, Buffer.alloc(10));
    assert.match(inDatasetProblem(t.manifest, t.save, t.diskNow)!, /not a libvirt save image|missing/);
  });

  it('removing the live RAM takes the manifest and the file, never what a symlink points to', () => {
    const t = dataset();
    removeLiveRam(t.dir, ID);
    assert.deepEqual(inDatasetDumps(t.mp), []);
    removeLiveRam(t.dir, ID); // twice: nothing there, no error
    const target = path.join(t.mp, 'precious');
    writeFileSync(target, 'keep');
    symlinkSync(target, path.join(t.dir, `${ID}.save`));
    removeLiveRam(t.dir, ID);
    assert.equal(readFileSync(target, 'utf8'), 'keep');
    assert.equal(existsSync(path.join(t.dir, `${ID}.save`)), false);
  });

  it('the thaw removes the RAM from the live dataset before the first commit, whatever step it starts from', async () => {
    for (const step of ['frozen', 'committing'] as const) {
      const t = dataset();
      const deps = fakeDeps();
      deps.config.store = { kind: 'dataset' };
      deps.store = storeFor(deps.config);
      const d = deps.virsh.add('web', 'u-web', { vda: '/tank/vm/web.img' });
      onOverlays(d, { vda: '/ov/web.qcow2' });
      const entry = frozenEntry(d, { vda: '/ov/web.qcow2' }, { step, tag: ID, memoryFile: t.save, ramInDataset: { dataset: 'tank/vm', mountpoint: t.mp, dir: t.dir }, tied: [legacyRef('tank/vm@snap')] });
      deps.journal.write(entry);
      let liveAtCommit: number | null = null;
      const commit = deps.virsh.activeCommit.bind(deps.virsh);
      deps.virsh.activeCommit = async (uuid: string, target: string) => {
        liveAtCommit ??= inDatasetDumps(t.mp).length;
        return commit(uuid, target);
      };
      const outcome = await thawDomain(entry, deps, { keepDump: true });
      assert.equal(liveAtCommit, 0, `step ${step}: no RAM in the live dataset when the disks move`);
      assert.equal(outcome.dump.kind === 'sealed' && outcome.dump.dump.manifest.memoryFile.startsWith('tank/vm@snap:'), true, 'reported as a dump inside its snapshots');
      assert.deepEqual(deps.journal.list(), []);
    }
  });
});

describe('refsAt: a dump is found for the snapshot asked for by its guid', () => {
  const census = {
    byGuid: new Map([['g1', [{ name: 'tank/vm@s1', createtxg: '10' }, { name: 'backup/tank/vm@s1', createtxg: '99' }]]]),
    names: new Set(['tank/vm@s1', 'backup/tank/vm@s1']),
    datasets: new Set(['tank/vm', 'backup/tank/vm']),
    unknownPools: new Set<string>(),
  };
  const ref = { name: 'tank/vm@s1', frozenAs: 'tank/vm@s1', guid: 'g1', createtxg: '10', creation: 1, mountpoint: '/tank/vm' };
  it('the received copy, under its own name, even where the original is imported too', () => {
    assert.deepEqual(refsAt([ref], census, 'backup/tank/vm', 's1').map((r) => [r.name, r.frozenAs]), [['backup/tank/vm@s1', 'tank/vm@s1']]);
    assert.deepEqual(refsAt([ref], census, 'tank/vm', 's1').map((r) => r.name), ['tank/vm@s1']);
  });
  it('another snapshot of the same name with another guid is not it; a ref without guid goes by name', () => {
    assert.deepEqual(refsAt([{ ...ref, guid: 'g2' }], census, 'backup/tank/vm', 's1'), []);
    assert.deepEqual(refsAt([legacyRef('tank/vm@s1')], census, 'tank/vm', 's1').map((r) => r.name), ['tank/vm@s1']);
    assert.deepEqual(refsAt([legacyRef('tank/vm@s1')], census, 'backup/tank/vm', 's1'), []);
  });
});
