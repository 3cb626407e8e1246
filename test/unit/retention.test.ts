import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { archiveDump, listDumps } from '../../lib/archive.js';
import { snapshotNames } from '../../lib/manifest.js';
import { loadConfig, type Config } from '../../lib/config.js';
import { collectGarbage, fateByNames, fateOf, pruneSnapshot } from '../../lib/retention.js';
import { legacyRef, type SnapshotRef } from '../../lib/snapshot-id.js';
import { poolOf, ZfsClient, type GuidCensus } from '../../lib/zfs.js';
import { Journal } from '../../lib/journal.js';
import { storeFor } from '../../lib/stores/index.js';
import { committedEntry, FakeLibvirt, frozenEntry } from './fakes.js';
import { withWaitingDump } from '../../lib/archiver.js';
import { dropWaiting, scanSpool } from '../../lib/spool.js';

/** A ZFS with some pools imported and these snapshots (name -> guid); the real client's parsing on top. */
function fakeZfs(pools: string[], snapshots: Record<string, string>): ZfsClient {
  return Object.assign(Object.create(ZfsClient.prototype) as ZfsClient, {
    exists: async (ds: string) => pools.includes(poolOf(ds)),
    importedPools: async () => pools,
    guidsOf: async (names: string[]) => new Map(names.filter((n) => snapshots[n] !== undefined).map((n) => [n, snapshots[n]!])),
    zfs: async (args: string[]) => {
      const pool = args[args.length - 1]!;
      const lines = [`${pool}\tguid\t1`, ...Object.entries(snapshots).filter(([n]) => poolOf(n) === pool).flatMap(([n, g]) => [`${n}\tguid\t${g}`, `${n}\tcreatetxg\t1`])];
      return lines.join('\n') + '\n';
    },
  });
}

function ref(name: string, guid: string): SnapshotRef {
  return { name, frozenAs: name, guid, createtxg: '1', creation: 1, mountpoint: '/x' };
}

function census(byName: Record<string, string>, extra: Partial<GuidCensus> = {}): GuidCensus {
  return {
    byGuid: new Map(Object.entries(byName).map(([n, g]) => [g, [{ name: n, createtxg: '1' }]])),
    names: new Set(Object.keys(byName)),
    datasets: new Set(Object.keys(byName).map((n) => n.split('@')[0]!)),
    unknownPools: new Set(),
    ...extra,
  };
}

describe('fateOf: when a dump may be deleted', () => {
  it('keep while every snapshot is where it was', () => {
    assert.deepEqual(fateOf({ snapshots: [ref('tank/vm@a', 'g1')] }, census({ 'tank/vm@a': 'g1' })), { kind: 'keep' });
  });
  it('a renamed or promoted snapshot is found by guid and the dump follows its new name', () => {
    const fate = fateOf({ snapshots: [ref('tank/vm@a', 'g1')] }, census({ 'tank/clone@a': 'g1' }));
    assert.equal(fate.kind, 'update');
    assert.deepEqual(fate.kind === 'update' && fate.snapshots.map((r) => r.name), ['tank/clone@a']);
  });
  it('a snapshot re-created under the same name is another snapshot: the dump goes', () => {
    assert.deepEqual(fateOf({ snapshots: [ref('tank/vm@a', 'g1')] }, census({ 'tank/vm@a': 'g2' })), { kind: 'delete', gone: ['tank/vm@a'] });
  });
  it('fewer snapshots: update; none: delete', () => {
    const two = { snapshots: [ref('tank/vm@h', 'g1'), ref('tank/vm@d', 'g2')] };
    const fate = fateOf(two, census({ 'tank/vm@d': 'g2' }));
    assert.deepEqual(fate.kind === 'update' && [fate.snapshots.map((r) => r.name), fate.gone], [['tank/vm@d'], ['tank/vm@h']]);
    assert.equal(fateOf(two, census({})).kind, 'delete');
  });
  it('a pool that is not imported keeps its snapshots', () => {
    assert.deepEqual(fateOf({ snapshots: [ref('other/vm@a', 'g1')] }, census({}, { unknownPools: new Set(['other']) })), { kind: 'keep' });
  });
  it('an old manifest without guids: by name, and kept while its dataset is unknown', () => {
    assert.deepEqual(fateOf({ snapshots: [legacyRef('tank/vm@a')] }, census({ 'tank/vm@a': 'g9' })), { kind: 'keep' });
    assert.deepEqual(fateOf({ snapshots: [legacyRef('tank/gone@a')] }, census({ 'tank/vm@b': 'g9' })), { kind: 'keep' });
    assert.equal(fateOf({ snapshots: [legacyRef('tank/vm@a')] }, census({ 'tank/vm@b': 'g9' })).kind, 'delete');
  });
});

describe('fateByNames: a prune judged on one `zfs get guid` of the recorded names', () => {
  const two = { snapshots: [ref('tank/vm@h', 'g1'), ref('tank/vm@d', 'g2')] };
  it('the others stand as recorded: the pruned name goes, nothing else is looked up', () => {
    assert.deepEqual(fateByNames(two, 'tank/vm@h', new Map([['tank/vm@d', 'g2']])), { kind: 'update', snapshots: [ref('tank/vm@d', 'g2')], gone: ['tank/vm@h'] });
  });
  it('ZFS still has the pruned one under its guid: kept as it is', () => {
    assert.deepEqual(fateByNames(two, 'tank/vm@h', new Map([['tank/vm@h', 'g1'], ['tank/vm@d', 'g2']])), { kind: 'keep' });
  });
  it('another name lost its guid (renamed, promoted, re-created), or the pruned one was the last: the census decides', () => {
    assert.equal(fateByNames(two, 'tank/vm@h', new Map([['tank/vm@d', 'g9']])), null);
    assert.equal(fateByNames(two, 'tank/vm@h', new Map()), null);
    assert.equal(fateByNames({ snapshots: [ref('tank/vm@h', 'g1')] }, 'tank/vm@h', new Map()), null);
  });
});

describe('retention against ZFS', () => {
  let root: string;
  let config: Config;

  before(() => {
    root = mkdtempSync(path.join(tmpdir(), 'virtsnap-retention-'));
    const env = path.join(root, 'empty.env');
    writeFileSync(env, '');
    config = loadConfig({
      VIRTSNAP_CONFIG: env,
      VIRTSNAP_ARCHIVE_DIR: path.join(root, 'archive'),
      VIRTSNAP_STATE_DIR: path.join(root, 'state'),
      VIRTSNAP_OVERLAY_DIR: path.join(root, 'overlay'),
    });
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  async function dump(id: string, snapshots: SnapshotRef[], domain = 'vm') {
    const mem = path.join(root, `${id}.mem`);
    writeFileSync(mem, Buffer.concat([Buffer.from('LibvirtQemudSave'), Buffer.alloc(100)]));
    return archiveDump(config.archiveDir, {
      id,
      domain: { name: domain, uuid: '11111111-1111-1111-1111-111111111111' },
      snapshots,
      types: [],
      memoryFile: mem,
      metaDir: null,
      disks: [],
      startedAt: new Date().toISOString(),
      frozenAt: null,
      job: null,
      libvirtUri: 'qemu:///system',
      hostname: 'h',
    });
  }

  it('prune keeps a dump for its other snapshots where they stand as recorded (no census), deletes it with the last', async () => {
    const d = await dump('a', [ref('tank/vm@h1', 'g1'), ref('tank/vm@d1', 'g2')]);
    const zfs = fakeZfs(['tank'], { 'tank/vm@d1': 'g2' });
    let census = 0;
    const count = zfs.censusFor.bind(zfs);
    zfs.censusFor = async (refs) => (census++, count(refs));
    let r = await pruneSnapshot({ script: 'prune', dataset: 'tank/vm', snapname: 'h1' }, config, zfs, storeFor(config));
    assert.deepEqual([r.updated, r.deleted, census], [['a'], [], 0], 'tank/vm@d1 still holds its guid: no census');
    assert.deepEqual(snapshotNames(listDumps(config.archiveDir).find((x) => x.manifest.id === 'a')!.manifest), ['tank/vm@d1']);
    r = await pruneSnapshot({ script: 'prune', dataset: 'tank/vm', snapname: 'd1' }, config, fakeZfs(['tank'], {}), storeFor(config));
    assert.deepEqual(r.deleted, ['a']);
    assert.equal(existsSync(d.manifest.memoryFile), false);
  });

  it('a dump waiting in the spool: prune deletes it once none of its snapshots stands, keeps one still tied, and leaves one the archiver holds', async () => {
    const spooled = (name: string, stamp: string, snapname: string, guid: string) => {
      const entry = committedEntry(config, name, stamp);
      return storeFor(config).seal(entry, [ref(`tank/vm@${snapname}`, guid)]);
    };
    const gone = spooled('w1', '20240101T000000.000Z', 's1', 'gs1');
    const tied = spooled('w2', '20240101T000001.000Z', 's1', 'gs2');
    const held = spooled('w3', '20240101T000002.000Z', 's1', 'gs3');
    const zfs = fakeZfs(['tank'], { 'tank/vm@s1': 'gs2' }); // s1 re-created: only w2's guid stands
    let r!: Awaited<ReturnType<typeof pruneSnapshot>>;
    await withWaitingDump(config, held.manifest.id, async () => {
      r = await pruneSnapshot({ script: 'prune', dataset: 'tank/vm', snapname: 's1' }, config, zfs, storeFor(config));
    });
    assert.deepEqual(r.deleted, [gone.manifest.id]);
    assert.equal(existsSync(gone.manifest.memoryFile), false);
    assert.deepEqual(scanSpool(config).dumps.map((d) => d.manifest.id).sort(), [tied.manifest.id, held.manifest.id].sort(), 'the tied one and the held one wait on');
    const gc = await collectGarbage(config, zfs, storeFor(config), { dryRun: false });
    assert.deepEqual(gc.deleted, [held.manifest.id], 'gc takes the one the archiver held, once let go');
    assert.deepEqual(scanSpool(config).dumps.map((d) => d.manifest.id), [tied.manifest.id]);
    dropWaiting(tied);
  });

  it('a copy received into another pool of this host keeps the dump through prune and gc, under the copy\'s name', async () => {
    const d = await dump('rep', [ref('tank/vm@r', 'gr1')]);
    // tank/vm@r was sent to backup/vm and then pruned on tank: the guid lives on in the other pool.
    const zfs = fakeZfs(['tank', 'backup'], { 'backup/vm@r': 'gr1' });
    const r = await pruneSnapshot({ script: 'prune', dataset: 'tank/vm', snapname: 'r' }, config, zfs, storeFor(config));
    assert.deepEqual(r.deleted, []);
    assert.deepEqual(r.updated, ['rep']);
    assert.deepEqual(snapshotNames(listDumps(config.archiveDir).find((x) => x.manifest.id === 'rep')!.manifest), ['backup/vm@r']);
    assert.deepEqual((await collectGarbage(config, zfs, storeFor(config), { dryRun: false })).deleted, []);
    assert.ok(existsSync(d.manifest.memoryFile));
    // Once the copy goes too, the dump goes.
    assert.deepEqual((await collectGarbage(config, fakeZfs(['tank', 'backup'], {}), storeFor(config), { dryRun: false })).deleted, ['rep']);
  });

  it('a promoted snapshot keeps its dump through prune and gc, under its new name', async () => {
    const d = await dump('p', [ref('tank/vm@h', 'gp1'), ref('tank/vm@d', 'gp2')]);
    // tank/vm@d was pruned; tank/vm@h was promoted into tank/clone meanwhile.
    const zfs = fakeZfs(['tank'], { 'tank/clone@h': 'gp1' });
    const r = await pruneSnapshot({ script: 'prune', dataset: 'tank/vm', snapname: 'd' }, config, zfs, storeFor(config));
    assert.deepEqual(r.deleted, []);
    const gc = await collectGarbage(config, zfs, storeFor(config), { dryRun: false });
    assert.deepEqual(gc.deleted, []);
    assert.ok(existsSync(d.manifest.memoryFile));
    assert.deepEqual(snapshotNames(listDumps(config.archiveDir).find((x) => x.manifest.id === 'p')!.manifest), ['tank/clone@h']);
    rmSync(d.manifest.memoryFile);
    rmSync(d.manifestFile);
  });

  it('a snapshot of a pool ZFS does not know (not imported) is never taken as gone', async () => {
    const d = await dump('b', [ref('tank/vm@h2', 'gb1'), ref('other/vm@h2', 'gb2')]);
    const r = await pruneSnapshot({ script: 'prune', dataset: 'tank/vm', snapname: 'h2' }, config, fakeZfs(['tank'], {}), storeFor(config));
    assert.deepEqual(r.deleted, []);
    assert.deepEqual(snapshotNames(listDumps(config.archiveDir).find((x) => x.manifest.id === 'b')!.manifest), ['other/vm@h2']);
    const gc = await collectGarbage(config, fakeZfs(['tank'], {}), storeFor(config), { dryRun: false });
    assert.deepEqual(gc.deleted, []);
    assert.ok(gc.kept.some((k) => k.includes('pool other')));
    assert.ok(existsSync(d.manifest.memoryFile));
    // Once the pool is back and the snapshot really is gone, gc deletes it.
    const gc2 = await collectGarbage(config, fakeZfs(['tank', 'other'], {}), storeFor(config), { dryRun: false });
    assert.deepEqual(gc2.deleted, ['b']);
  });

  it('gc deletes only what virtsnap wrote: foreign files, symlinks and a tampered manifest are reported, never followed', async () => {
    const outside = path.join(root, 'outside');
    mkdirSync(outside, { recursive: true });
    const precious = path.join(outside, 'precious.save');
    writeFileSync(precious, 'not virtsnap');
    const d = await dump('20240101T000000.000Z-11111111', [ref('tank/vm@gone', 'gt1')], 'web');
    // The manifest now names a file outside the archive as its memory file and meta dir.
    const m = JSON.parse(readFileSync(d.manifestFile, 'utf8')) as Record<string, unknown>;
    writeFileSync(d.manifestFile, JSON.stringify({ ...m, memoryFile: precious, metaDir: outside }));
    const domainDir = path.dirname(d.manifestFile);
    const foreignFile = path.join(domainDir, 'notes.txt');
    writeFileSync(foreignFile, 'mine');
    const foreignDir = path.join(config.archiveDir, 'backup-of-someone');
    writeFileSync(path.join(config.archiveDir, 'README'), 'shared mount');
    symlinkSync(outside, foreignDir);
    const ourPart = path.join(domainDir, '20240101T000000.000Z-22222222.save.part');
    writeFileSync(ourPart, 'half');
    const ourMeta = path.join(domainDir, '20240101T000000.000Z-33333333.meta');
    mkdirSync(ourMeta);
    mkdirSync(config.overlayDir, { recursive: true });
    const usersSave = path.join(config.overlayDir, 'myvm.save');
    writeFileSync(usersSave, 'a virsh save of the user');
    const ourInFlight = path.join(config.overlayDir, 'web.20240101T000000.000Z-44444444.save');
    writeFileSync(ourInFlight, 'x');

    const dry = await collectGarbage(config, fakeZfs(['tank'], {}), storeFor(config), { dryRun: true });
    assert.ok(existsSync(d.manifest.memoryFile), 'a dry run deletes nothing');
    const gc = await collectGarbage(config, fakeZfs(['tank'], {}), storeFor(config), { dryRun: false });
    assert.deepEqual(gc.deleted, dry.deleted);
    assert.deepEqual(gc.deleted, ['20240101T000000.000Z-11111111']);
    assert.ok(existsSync(precious), 'the path the manifest named is not followed');
    assert.equal(existsSync(d.manifest.memoryFile), false, 'the dump file beside the manifest is deleted');
    assert.deepEqual(gc.removed.sort(), [ourInFlight, ourMeta, ourPart].sort());
    for (const p of [foreignFile, foreignDir, path.join(config.archiveDir, 'README'), usersSave, outside]) assert.ok(existsSync(p), `${p} is not ours and stays`);
    const reported = gc.foreign.map((f) => f.path);
    for (const p of [foreignFile, foreignDir, path.join(config.archiveDir, "README"), usersSave]) assert.ok(reported.includes(p), `${p} is reported`);
  });

  it("gc leaves alone a .part that a thaw is staging (its id is a journal entry's tag), and removes it once the entry is gone", async () => {
    const id = '20240101T000000.000Z-55555555';
    const dir = path.join(config.archiveDir, 'busy');
    mkdirSync(dir, { recursive: true });
    const part = path.join(dir, `${id}.save.part`);
    writeFileSync(part, 'being compressed');
    const journal = new Journal(config.stateDir);
    const d = new FakeLibvirt().add('busy', '55555555-0000-4000-8000-000000000000', { vda: '/tank/vm/busy.qcow2' });
    const entry = frozenEntry(d, { vda: '/ov/busy.qcow2' }, { tag: id, step: 'committed' });
    journal.write(entry);
    const gc = await collectGarbage(config, fakeZfs(['tank'], {}), storeFor(config), { dryRun: false });
    assert.ok(existsSync(part), 'in flight: kept');
    assert.ok(!gc.removed.includes(part));
    journal.remove(entry.domain.uuid);
    const later = await collectGarbage(config, fakeZfs(['tank'], {}), storeFor(config), { dryRun: false });
    assert.ok(later.removed.includes(part), 'no run names it any more: a stray');
  });
});
