// Thaw, recover, discard and the watchdog's rule against in-memory libvirt
// and ZFS that fail on command: each fault step of the integration suite, fast.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { listDumps } from '../../lib/archive.js';
import { HEADER_BYTES } from '../../lib/libvirt/save-image.js';
import { legacyRef } from '../../lib/snapshot-id.js';
import { discardEntry, recover } from '../../lib/recovery.js';
import { abandoned } from '../../lib/stuck.js';
import { StuckError, thawDomain, thawRun } from '../../lib/thaw.js';
import { drainSpool } from '../../lib/archiver.js';
import { scanSpool } from '../../lib/spool.js';
import { overdue, verdict } from '../../lib/watchdog.js';
import { ownerOf } from '../../lib/owner.js';
import { fakeDeps, frozenEntry, onOverlays } from './fakes.js';

const OV = '/ov/web.tag.vda.qcow2';
const OV2 = '/ov/web.tag.vdb.qcow2';

function setup(disks: Record<string, string> = { vda: '/tank/vm/web-vda.qcow2' }, overlays: Record<string, string> = { vda: OV }) {
  const deps = fakeDeps();
  const d = deps.virsh.add('web', 'u-web', disks);
  onOverlays(d, overlays);
  const entry = frozenEntry(d, overlays);
  deps.journal.write(entry);
  return { deps, d, entry };
}

describe('thaw', () => {
  it('commits every disk back, removes the journal entry, keeps no dump when told not to', async () => {
    const { deps, d, entry } = setup({ vda: '/tank/vm/a.qcow2', vdb: '/tank/vm/b.qcow2' }, { vda: OV, vdb: OV2 });
    assert.deepEqual(await thawDomain(entry, deps, { keepDump: false }), { back: { kind: 'committed' }, dump: { kind: 'discarded', reason: 'its freeze was undone' } });
    assert.equal(d.disks.get('vda')!.source, '/tank/vm/a.qcow2');
    assert.equal(d.disks.get('vdb')!.source, '/tank/vm/b.qcow2');
    assert.deepEqual(deps.journal.list(), []);
  });

  it('a commit whose virsh timed out while libvirt went on is pivoted once ready, never aborted', async () => {
    const { deps, d, entry } = setup();
    deps.virsh.commitSteps = 3;
    await thawDomain(entry, deps, { keepDump: false });
    assert.equal(d.disks.get('vda')!.source, '/tank/vm/web-vda.qcow2');
    assert.ok(deps.virsh.calls.includes('pivot vda'));
    assert.ok(!deps.virsh.calls.includes('abortBlockJob vda'), deps.virsh.calls.join(', '));
  });

  it('a commit job left by an interrupted thaw is pivoted, not started again', async () => {
    const { deps, d, entry } = setup();
    d.blockJobs.set('vda', { readyIn: 2 });
    await thawDomain({ ...entry, step: 'committing' }, deps, { keepDump: false });
    assert.equal(d.disks.get('vda')!.source, '/tank/vm/web-vda.qcow2');
    assert.ok(!deps.virsh.calls.includes('activeCommit vda'));
    assert.ok(!deps.virsh.calls.includes('abortBlockJob vda'));
  });

  it("libvirt's snapshot job still running (pre killed during the save): aborted and waited for before the domain is judged", async () => {
    const deps = fakeDeps();
    const d = deps.virsh.add('web', 'u-web', { vda: '/tank/vm/web-vda.qcow2' });
    d.job = { endsIn: Infinity, aborted: false };
    const entry = frozenEntry(d, { vda: OV }, { step: 'snapshotting' });
    entry.overlays[0]!.original = '/tank/vm/web-vda.qcow2';
    deps.journal.write(entry);
    // The job would switch the disks when it ends; aborted, it does not.
    await thawDomain(entry, deps, { keepDump: true });
    assert.ok(deps.virsh.calls.indexOf('abortJob') < deps.virsh.calls.indexOf('domain'), deps.virsh.calls.join(', '));
    assert.equal(d.disks.get('vda')!.source, '/tank/vm/web-vda.qcow2');
    assert.deepEqual(deps.journal.list(), []);
  });

  it('a run that died with the downtime limit lowered: the thaw sets the old one back', async () => {
    const { deps, d, entry } = setup();
    d.downtimeLimit = 20;
    const died = { ...entry, downtimeLimitBefore: 500 };
    deps.journal.write(died);
    await thawDomain(died, deps, { keepDump: false });
    assert.equal(d.downtimeLimit, 500);
    assert.equal(d.disks.get('vda')!.source, '/tank/vm/web-vda.qcow2');
  });

  it('a full state dir does not stop the thaw: the VM is committed back, and the unrecordable tie discards the dump', async () => {
    const { deps, d, entry } = setup();
    deps.zfs.take('tank/vm@snap');
    deps.journal.failAfter = 0;
    const dump = await thawDomain(entry, deps, { keepDump: true });
    assert.deepEqual(dump, { back: { kind: 'committed' }, dump: { kind: 'discarded', reason: 'the journal cannot record which snapshots hold the RAM dump' } });
    assert.equal(d.disks.get('vda')!.source, '/tank/vm/web-vda.qcow2');
  });

  it('the dataset renamed between pre and post: the VM is committed back, no dump is tied to a name that moved', async () => {
    const { deps, d, entry } = setup();
    deps.zfs.take('tank/vm@snap');
    deps.zfs.gone.add('tank/vm');
    assert.deepEqual(await thawDomain(entry, deps, { keepDump: true }), { back: { kind: 'committed' }, dump: { kind: 'discarded', reason: 'no snapshot of this run holds the disks as they were when the RAM was saved' } });
    assert.equal(d.disks.get('vda')!.source, '/tank/vm/web-vda.qcow2');
    assert.deepEqual(deps.journal.list(), []);
  });

  it('a domain QEMU paused on an I/O error is resumed after the commit; a pause by a user is left alone', async () => {
    const io = setup();
    io.d.state = 'paused';
    io.d.reason = 'I/O error';
    await thawDomain(io.entry, io.deps, { keepDump: false });
    assert.equal(io.d.state, 'running');
    const user = setup();
    user.d.state = 'paused';
    user.d.reason = 'user';
    await thawDomain(user.entry, user.deps, { keepDump: false });
    assert.equal(user.d.state, 'paused');
  });

  it('an undefined domain is stuck, and its entry stays for `recover --discard`', async () => {
    const { deps, entry } = setup();
    deps.virsh.domainsByUuid.clear();
    await assert.rejects(thawDomain(entry, deps, { keepDump: true }), (err: Error) => err instanceof StuckError && /undefined while frozen.*recover --discard web/.test(err.message));
    assert.equal(deps.journal.list().length, 1);
  });

  it('a domain shut down on its overlays is stuck', async () => {
    const { deps, d, entry } = setup();
    d.state = 'shut off';
    await assert.rejects(thawDomain(entry, deps, { keepDump: true }), StuckError);
  });

  it('a commit that fails for good leaves the entry and names the overlay', async () => {
    const { deps, entry } = setup();
    deps.virsh.failNext('activeCommit', 3, 'No space left on device');
    await assert.rejects(thawDomain(entry, deps, { keepDump: false }), /block commit of vda failed, the domain stays on overlay \/ov\/web.tag.vda.qcow2 \(No space left on device\)/);
    assert.equal(deps.journal.list()[0]!.step, 'committing');
  });

  it('a commit that failed once (libvirtd restarted under it) is looked at again and started again', async () => {
    const { deps, d, entry } = setup();
    deps.virsh.failNext('activeCommit', 1, 'Disconnected from qemu:///system due to end of file');
    await thawDomain(entry, deps, { keepDump: false });
    assert.equal(d.disks.get('vda')!.source, '/tank/vm/web-vda.qcow2');
    assert.equal(deps.virsh.calls.filter((c) => c === 'activeCommit vda').length, 2);
  });

  it('thawRun goes on with the next domain after one fails', async () => {
    const deps = fakeDeps();
    const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
    const b = deps.virsh.add('b', 'u-b', { vda: '/tank/vm/b.qcow2' });
    onOverlays(a, { vda: '/ov/a.qcow2' });
    onOverlays(b, { vda: '/ov/b.qcow2' });
    deps.journal.write(frozenEntry(a, { vda: '/ov/a.qcow2' }));
    deps.journal.write(frozenEntry(b, { vda: '/ov/b.qcow2' }));
    deps.virsh.failNext('activeCommit', 3, 'boom');
    deps.config.parallel = 1; // a's three failed attempts come first
    const result = await thawRun('tank/vm@snap', deps, { keepDump: false });
    assert.equal(result.failures.length, 1);
    assert.equal(b.disks.get('vda')!.source, '/tank/vm/b.qcow2');
  });

  it('thawRun seals each dump into the spool with renames only; the archiver hashes, compresses and stores them after the run', async () => {
    const deps = fakeDeps();
    mkdirSync(deps.config.overlayDir, { recursive: true });
    const saveImage = (name: string): string => {
      const header = Buffer.alloc(HEADER_BYTES);
      header.write('LibvirtQemudSave', 0, 16, 'latin1');
      header.writeUInt32LE(2, 16);
      header.writeUInt32LE(1024, 20);
      const file = path.join(deps.config.overlayDir, `${name}.save`);
      writeFileSync(file, Buffer.concat([header, Buffer.alloc(1024), Buffer.alloc(65536, name)]));
      return file;
    };
    const tied = [legacyRef('tank/vm@snap')];
    const domains = ['a', 'b'].map((name) => {
      const d = deps.virsh.add(name, `u-${name}`, { vda: `/tank/vm/${name}.qcow2` });
      onOverlays(d, { vda: `/ov/${name}.qcow2` });
      deps.journal.write(frozenEntry(d, { vda: `/ov/${name}.qcow2` }, { step: 'committing', tied, memoryFile: saveImage(name), tag: `20240102T030405.000Z-0000000${name}` }));
      return d;
    });
    const inodes = ['a', 'b'].map((n) => statSync(path.join(deps.config.overlayDir, `${n}.save`)).ino);
    const result = await thawRun('tank/vm@snap', deps);
    assert.deepEqual(result.failures, []);
    assert.deepEqual(domains.map((d) => d.disks.get('vda')!.source), ['/tank/vm/a.qcow2', '/tank/vm/b.qcow2']);
    assert.deepEqual(result.sealed.map((d) => [d.manifest.domain.name, d.manifest.store?.kind, d.manifest.compression, d.manifest.sha256]).sort(), [['a', 'spool', null, ''], ['b', 'spool', null, '']]);
    assert.deepEqual(result.sealed.map((d) => statSync(d.manifest.memoryFile).ino).sort(), [...inodes].sort(), 'renamed into the spool, never copied');
    assert.equal(existsSync(deps.config.archiveDir), false, 'nothing archived within the run');
    assert.deepEqual(deps.journal.list(), []);
    const drained = await drainSpool({ config: deps.config, store: deps.store }, { backoffMs: 10, maxBackoffMs: 10, patienceMs: 0 });
    assert.equal(drained.kind, 'drained');
    assert.deepEqual(listDumps(deps.config.archiveDir).map((d) => [d.manifest.domain.name, d.manifest.compression, d.manifest.store]).sort(), [['a', 'gzip', undefined], ['b', 'gzip', undefined]]);
    assert.deepEqual(scanSpool(deps.config).dumps, []);
  });
});

describe('recover and discard', () => {
  it('an entry is taken over only when both the run owner and the freezing process are gone', () => {
    const dead = { pid: 999_999_999, bootId: 'x', startTime: '1' };
    const me = ownerOf(process.pid);
    assert.equal(abandoned({ owner: dead, worker: dead }), true);
    assert.equal(abandoned({ owner: dead, worker: me }), false, 'sanoid died, the orphaned pre hook still freezes');
    assert.equal(abandoned({ owner: me, worker: dead }), false, 'sanoid lives: post will come');
    assert.equal(abandoned({ owner: dead }), true);
  });

  it('recover names a stuck domain apart from a failure worth retrying', async () => {
    const { deps } = setup();
    deps.virsh.domainsByUuid.clear();
    const r = await recover(deps, { force: false });
    assert.deepEqual(r.stuck, ['web']);
  });

  it('--discard ends the entry of an undefined domain, deletes nothing but the RAM dump, names the overlays', async () => {
    const { deps } = setup();
    deps.virsh.domainsByUuid.clear();
    const r = await discardEntry(deps, 'web');
    assert.equal(r.domain, 'web');
    assert.deepEqual(deps.journal.list(), []);
  });

  it('--discard refuses a domain that runs on our overlays: recover is the way', async () => {
    const { deps } = setup();
    deps.config.overlayDir = '/ov';
    await assert.rejects(discardEntry(deps, 'web'), /runs on overlays \(\/ov\/web.tag.vda.qcow2\): run `virtsnap recover`/);
    assert.equal(deps.journal.list().length, 1);
  });
});

describe('discard leaves what a snapshot needs', () => {
  it('refuses an entry at step committed: the VM is back, its dump waits for the archive', async () => {
    const { deps, d, entry } = setup();
    d.disks.set('vda', { source: '/tank/vm/web-vda.qcow2', backing: null });
    deps.journal.write({ ...entry, step: 'committed' });
    await assert.rejects(discardEntry(deps, 'web'), /only keeps the RAM dump .* until it is sealed into the spool/);
    assert.equal(deps.journal.list().length, 1);
  });
});

describe('the watchdog rule', () => {
  const e = (abandonedNow: boolean, tag = 't') => ({ abandoned: abandonedNow, tag });
  it('waits while the run or its freezing process lives, thaws what is abandoned, ends when nothing is left', () => {
    assert.equal(verdict([], true, new Set()), 'wait', 'the pre hook has not claimed anything yet');
    assert.equal(verdict([], false, new Set()), 'done');
    assert.equal(verdict([e(false)], false, new Set()), 'wait', 'sanoid is between pre and post');
    assert.equal(verdict([e(true)], false, new Set()), 'thaw');
    assert.equal(verdict([e(true, 'a')], false, new Set(['a'])), 'give-up');
    assert.equal(verdict([e(true, 'a'), e(true, 'b')], false, new Set(['a'])), 'thaw');
  });
});

describe('the watchdog and pause mode', () => {
  it('a guest paused longer than VIRTSNAP_PAUSE_MAX after the run froze its last VM is overdue; not while the pre hook still freezes', () => {
    const now = Date.parse('2026-01-01T00:01:00Z');
    const e = { tag: 'p', mode: 'pause' as const, step: 'frozen' as const, frozenAt: '2026-01-01T00:00:00Z', stateBefore: 'running' };
    const done = () => false;
    assert.deepEqual(overdue([e], 59_000, now, done), ['p']);
    assert.deepEqual(overdue([e], 61_000, now, done), []);
    assert.deepEqual(overdue([e], 1, now, () => true), [], 'the pre hook still runs: the clock has not started');
    assert.deepEqual(overdue([e, { ...e, tag: 'r', mode: 'ram' as const, frozenAt: '2026-01-01T00:00:50Z' }], 30_000, now, done), [], 'counted from the last VM frozen');
    assert.deepEqual(overdue([e, { ...e, tag: 's', step: 'snapshotting' as const }], 1, now, done), [], 'a VM still being saved');
    assert.deepEqual(overdue([{ ...e, mode: 'ram' as const }], 1, now, done), []);
    assert.deepEqual(overdue([{ ...e, stateBefore: 'paused' }], 1, now, done), [], 'a guest paused before the run stays paused');
    assert.deepEqual(overdue([{ ...e, step: 'committed' as const }], 1, now, done), []);
  });
});
