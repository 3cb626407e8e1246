// Never pair or delete wrongly, on the real bed: a dump is tied to snapshots
// by guid and only to those taken while the disks stood still; promote and
// rename never orphan it; gc touches only what virtsnap wrote; nothing is
// written through a symlink in a dataset; restore checks every disk before
// it stops or rolls back anything.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { snapshotNames } from '../../lib/manifest.js';
import { assertWhole, bed, consoleMark, datasetExists, Guest, mountpointOf, removeDomains, sh, snapshotsOf, watchDomain, zfsRetry, type Bed } from '../helpers/bed.js';
import { hooks, leftovers, runProgram, sanoidEnv, Setup, virtsnap, type Ran } from '../helpers/virtsnap.js';

/** Every refusal is one line, names the thing, and never shows a stack trace. */
function assertOneLineError(out: Ran, pattern: RegExp): void {
  assert.notEqual(out.code, 0, out.stderr);
  assert.match(out.stderr, pattern);
  assert.doesNotMatch(out.stderr, /\n\s+at .*\.js:\d+/, 'no stack trace');
  assert.doesNotMatch(out.stderr, /internal error/);
}

/** Destroys datasets that may depend on each other through clones and promotes, whatever the order. */
async function destroyAll(names: string[]): Promise<void> {
  for (let round = 0; round < 3; round++) {
    for (const name of names) {
      if (!(await datasetExists(name))) continue;
      await zfsRetry(['destroy', '-r', name]).catch(() => undefined);
    }
  }
  for (const name of names) if (await datasetExists(name)) throw new Error(`could not clean up ${name}`);
}

describe('data identity and safe deletion', () => {
  let b: Bed;
  let setup: Setup;
  let guest: Guest;
  const ds = () => `${b.vmDataset}/id`;
  const child = () => `${ds()}/child`;
  const other = () => `${b.vmDataset}/id-other`;
  const archiveDs = () => `${b.pool}/id-archive`;
  const clone = () => `${b.pool}/id-clone`;
  const clone2 = () => `${b.pool}/id-clone2`;
  const ren = () => `${b.vmDataset}/id-ren`;
  const renamed = () => `${b.vmDataset}/id-ren2`;
  const all = () => [clone2(), ds(), clone(), ren(), renamed(), other(), archiveDs()];
  const domains = ['vsbed-id', 'vsbed-id-out', 'vsbed-id-nv', 'vsbed-id-ren', 'vsbed-id-c', 'vsbed-id-c2'];
  let archiveMode = 0;

  async function assertBackOnOwnDisks(g: Guest, originals: Record<string, string>): Promise<void> {
    assert.deepEqual(await g.sources(), originals, `${g.name} must be on its own disks`);
    assert.equal(await g.state(), 'running', `${g.name} must be running`);
    assert.deepEqual(leftovers(setup.overlayDir, g.name), [], `nothing of ${g.name} may remain in the overlay dir`);
    assert.deepEqual(setup.journalFiles(), [], 'no journal entry may remain');
  }

  before(async () => {
    b = await bed();
    await removeDomains(...domains);
    await destroyAll(all());
    // The archive on a dataset of its own, as on a backup mount: other people's files live there too.
    const archiveDir = path.join(b.dir, 'tests', 'identity-archive');
    rmSync(archiveDir, { recursive: true, force: true });
    await sh('zfs', ['create', '-o', `mountpoint=${archiveDir}`, archiveDs()]);
    chmodSync(archiveDir, 0o750);
    archiveMode = statSync(archiveDir).mode & 0o777;
    writeFileSync(path.join(archiveDir, 'someone-elses-backup.tar'), 'not virtsnap');
    mkdirSync(path.join(archiveDir, 'other-tool'));
    writeFileSync(path.join(archiveDir, 'other-tool', 'state.json'), '{}');
    setup = await Setup.create('identity', { VIRTSNAP_ARCHIVE_DIR: archiveDir, VIRTSNAP_OVERLAY_DIR: path.join(b.dir, 'overlay-identity') });
    guest = await Guest.create({ name: 'vsbed-id', dataset: ds() });
    await sh('zfs', ['create', child()]);
    await guest.start();
  });
  after(async () => {
    await removeDomains(...domains);
    await destroyAll(all());
  });

  it('virtsnap snapshot refuses a name that exists already, also on a child with -r, before freezing anything', async () => {
    const originals = await guest.sources();
    await sh('zfs', ['snapshot', `${ds()}@taken`]);
    assertOneLineError(await virtsnap(setup, ['snapshot', ds(), '--name', 'taken']), new RegExp(`snapshot ${ds()}@taken already exists: choose another --name`));
    await sh('zfs', ['snapshot', `${child()}@ctaken`]);
    assertOneLineError(await virtsnap(setup, ['snapshot', ds(), '-r', '--name', 'ctaken']), new RegExp(`snapshot ${child()}@ctaken already exists`));
    assert.deepEqual((await setup.dumps()), [], 'no dump, so none tied to the old snapshots');
    await assertBackOnOwnDisks(guest, originals);
  });

  it("hooks: a snapshot name that existed before the freeze (sanoid's DST fall-back) is never tied; post says so and exits 1", async () => {
    const originals = await guest.sources();
    const old = `${ds()}@dst_hourly`;
    await sh('zfs', ['snapshot', old]);
    const pre = await runProgram(hooks.pre, [], setup.env(sanoidEnv(ds(), 'dst', 'pre')));
    assert.equal(pre.code, 0, pre.stderr);
    assert.notDeepEqual(await guest.sources(), originals, 'frozen: on overlays');
    // sanoid's own `zfs snapshot` fails: the name is taken.
    await assert.rejects(sh('zfs', ['snapshot', old]), /already exists/);
    const post = await runProgram(hooks.post, [], setup.env(sanoidEnv(ds(), 'dst', 'post')));
    assertOneLineError(post, /no RAM dump kept for "vsbed-id"/);
    assert.match(post.stderr, new RegExp(`RAM dump not tied to ${old}: it existed before the freeze \\(guid \\d+\\)`));
    assert.deepEqual((await setup.dumps()), []);
    await assertBackOnOwnDisks(guest, originals);
  });

  it('a thaw that starts before the snapshot is taken ties nothing, and a snapshot taken after it gets no dump', async () => {
    const originals = await guest.sources();
    assert.equal((await runProgram(hooks.pre, [], setup.env(sanoidEnv(ds(), 'early', 'pre')))).code, 0);
    const post = await runProgram(hooks.post, [], setup.env(sanoidEnv(ds(), 'early', 'post')));
    assertOneLineError(post, /no RAM dump kept/);
    assert.match(post.stderr, /not tied to .*@early_hourly: it does not exist/);
    await sh('zfs', ['snapshot', `${ds()}@early_hourly`]);
    assert.deepEqual((await setup.dumps()), []);
    await assertBackOnOwnDisks(guest, originals);
  });

  it('a .virtsnap/<domain> symlink planted in the dataset: refused, naming it, nothing written through it', async () => {
    const originals = await guest.sources();
    const decoy = path.join(setup.root, 'etc-decoy');
    mkdirSync(decoy, { recursive: true });
    const planted = path.join(await mountpointOf(ds()), '.virtsnap', 'vsbed-id');
    rmSync(planted, { recursive: true, force: true });
    symlinkSync(decoy, planted);
    const out = await virtsnap(setup, ['snapshot', ds(), '--name', 'sym']);
    assertOneLineError(out, new RegExp(`${planted.replace(/[.]/g, '\\.')} is a symlink: virtsnap does not write or read through symlinks there; remove it`));
    assert.deepEqual(readdirSync(decoy), [], 'nothing written through the link');
    assert.ok(!(await snapshotsOf(ds())).includes(`${ds()}@sym`), 'no snapshot taken');
    await assertBackOnOwnDisks(guest, originals);
    rmSync(planted);
  });

  it('restore --rollback checks every disk before it stops or rolls back anything; --yes alone does not destroy newer snapshots', async () => {
    const out = await Guest.create({
      name: 'vsbed-id-out',
      dataset: ds(),
      disks: [
        { target: 'vda', format: 'qcow2' },
        { target: 'vdb', format: 'qcow2', dataset: other() },
      ],
    });
    await out.start();
    try {
      const snap = await virtsnap(setup, ['snapshot', ds(), '--name', 'out']);
      assert.equal(snap.code, 0, snap.stderr);
      assert.equal((await setup.dumps()).length, 2, 'both guests dumped');
      await sh('zfs', ['snapshot', `${ds()}@later`]);
      const before = await snapshotsOf(ds());

      const dry = await virtsnap(setup, ['restore', `${ds()}@out`, '--rollback', '--dry-run']);
      assert.equal(dry.code, 1, 'the dry run shows the refusal');
      const plan = JSON.parse(dry.stdout) as { stop: string[]; problems: string[] };
      assert.deepEqual(plan.stop.sort(), ['vsbed-id', 'vsbed-id-out'], 'the plan lists the VMs it would stop');

      const refused = await virtsnap(setup, ['restore', `${ds()}@out`, '--rollback', '--yes', '--destroy-newer']);
      assertOneLineError(refused, /disk vdb of "vsbed-id-out" \(.*id-other.*\) was not in the snapshot with the RAM \(outside vsbed\/vm\/id when it was saved\): .*nothing was changed/);
      assert.equal(await out.state(), 'running', 'not stopped');
      assert.equal(await guest.state(), 'running', 'not stopped');

      const newer = await virtsnap(setup, ['restore', `${ds()}@out`, '--rollback', '--yes', '--domain', 'vsbed-id']);
      assertOneLineError(newer, new RegExp(`zfs rollback would destroy 1 newer snapshot\\(s\\): ${ds()}@later; add --destroy-newer`));
      const forced = await virtsnap(setup, ['restore', `${ds()}@out`, '--rollback', '--force', '--domain', 'vsbed-id']);
      assertOneLineError(forced, /add --destroy-newer/);
      assert.deepEqual(await snapshotsOf(ds()), before, 'no snapshot destroyed');
      assert.equal(await guest.state(), 'running');
    } finally {
      await out.remove();
    }
  });

  it("a clone restore never overwrites the original's NVRAM file", async () => {
    const nv = await Guest.create({ name: 'vsbed-id-nv', dataset: ds(), nvram: true });
    try {
      const snap = await virtsnap(setup, ['snapshot', ds(), '--name', 'nv']);
      assert.equal(snap.code, 0, snap.stderr);
      const atSnapshot = readFileSync(nv.nvramPath());
      // The original's UEFI variables change after the snapshot.
      const now = Buffer.alloc(atSnapshot.length, 7);
      writeFileSync(nv.nvramPath(), now);
      const out = await virtsnap(setup, ['restore', `${ds()}@nv`, '--domain', 'vsbed-id-nv', '--clone', clone2()]);
      assert.equal(out.code, 0, out.stderr);
      assert.ok(readFileSync(nv.nvramPath()).equals(now), "the original's NVRAM is untouched");
      const xml = await sh('virsh', ['-c', b.uri, 'dumpxml', '--inactive', 'vsbed-id-nv']);
      const used = /<nvram[^>]*>([^<]+)<\/nvram>/.exec(xml)?.[1];
      assert.ok(used && used !== nv.nvramPath(), `the clone has its own NVRAM file (${used})`);
      assert.ok(readFileSync(used).equals(atSnapshot), 'holding the variables of the snapshot');
      rmSync(used);
    } finally {
      await nv.remove();
      await destroyAll([clone2()]);
    }
  });

  it('promote and rename of a snapshot never orphan a dump: gc and prune keep it, list follows it, restore finds it under its new name', async () => {
    const one = await virtsnap(setup, ['snapshot', ds(), '--name', 'one']);
    assert.equal(one.code, 0, one.stderr);
    const two = await virtsnap(setup, ['snapshot', ds(), '--name', 'two']);
    assert.equal(two.code, 0, two.stderr);
    const dumpOne = (await setup.dumps()).find((d) => snapshotNames(d.manifest).includes(`${ds()}@one`) && d.manifest.domain.name === 'vsbed-id')!;
    const dumpTwo = (await setup.dumps()).find((d) => snapshotNames(d.manifest).includes(`${ds()}@two`) && d.manifest.domain.name === 'vsbed-id')!;
    assert.ok(dumpOne && dumpTwo);
    assert.match(dumpOne.manifest.snapshots[0]!.guid ?? '', /^\d+$/, 'the manifest records the guid');

    // A clone restore, then the natural next step: promote the clone.
    const restored = await virtsnap(setup, ['restore', `${ds()}@one`, '--clone', clone(), '--as', 'vsbed-id-c']);
    assert.equal(restored.code, 0, restored.stderr);
    await removeDomains('vsbed-id-c');
    await zfsRetry(['promote', clone()]);
    assert.ok((await snapshotsOf(clone())).includes(`${clone()}@one`), 'promote moved @one to the clone');
    assert.ok(!(await snapshotsOf(ds())).includes(`${ds()}@one`));

    // sanoid destroys @two and calls the prune hook; then the weekly gc.
    await zfsRetry(['destroy', `${ds()}@two`]);
    const prune = await runProgram(hooks.prune, [], setup.env({ SANOID_SCRIPT: 'prune', SANOID_TARGET: ds(), SANOID_SNAPNAME: 'two' }));
    assert.equal(prune.code, 0, prune.stderr);
    assert.equal(existsSync(dumpTwo.manifest.memoryFile), false, 'the dump of @two went with it');
    const gc = await virtsnap(setup, ['gc', '--json']);
    assert.equal(gc.code, 0, gc.stderr);
    assert.ok(existsSync(dumpOne.manifest.memoryFile), 'the dump of @one stays: its snapshot exists under another name');
    const listed = JSON.parse((await virtsnap(setup, ['list', '--json'])).stdout) as { id: string; snapshots: string[] }[];
    assert.deepEqual(listed.find((l) => l.id === dumpOne.manifest.id)?.snapshots, [`${clone()}@one`]);

    // restore of the snapshot under its new name finds the dump and runs silently.
    const mark = await consoleMark('vsbed-id-c2');
    const again = await virtsnap(setup, ['restore', `${clone()}@one`, '--domain', 'vsbed-id', '--clone', clone2(), '--as', 'vsbed-id-c2']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /vsbed-id-c2: running/);
    assertWhole(await watchDomain('vsbed-id-c2', mark), 'the snapshot under its new name');
    await removeDomains('vsbed-id-c2');
    await destroyAll([clone2()]);

    // A snapshot renamed after the promote (zfs-fuse mishandles renaming a
    // snapshot that is a clone's origin, so @nv, which moved with @one).
    const dumpNv = (await setup.dumps()).find((d) => d.manifest.domain.name === 'vsbed-id' && snapshotNames(d.manifest).includes(`${clone()}@nv`))!;
    assert.ok(dumpNv, 'the promote moved @nv too, and gc followed it');
    await zfsRetry(['rename', `${clone()}@nv`, `${clone()}@nv-renamed`]);
    const gc2 = await virtsnap(setup, ['gc']);
    assert.equal(gc2.code, 0, gc2.stderr);
    assert.ok(existsSync(dumpNv.manifest.memoryFile));
    const listed2 = JSON.parse((await virtsnap(setup, ['list', '--json'])).stdout) as { id: string; snapshots: string[] }[];
    assert.deepEqual(listed2.find((l) => l.id === dumpNv.manifest.id)?.snapshots, [`${clone()}@nv-renamed`]);
    const dry = await virtsnap(setup, ['restore', `${clone()}@nv-renamed`, '--domain', 'vsbed-id', '--clone', clone2(), '--as', 'vsbed-id-c2', '--dry-run']);
    assert.equal(dry.code, 0, dry.stdout + dry.stderr);
    const plan = JSON.parse(dry.stdout) as { domains: { dump: { id: string } | null }[] };
    assert.equal(plan.domains[0]?.dump?.id, dumpNv.manifest.id);
  });

  it('a renamed dataset keeps its dumps, and restore rewrites the disk paths from where the dump saw them', async () => {
    const g = await Guest.create({ name: 'vsbed-id-ren', dataset: ren() });
    await g.start();
    const snap = await virtsnap(setup, ['snapshot', ren(), '--name', 'r']);
    assert.equal(snap.code, 0, snap.stderr);
    const dump = (await setup.dumps()).find((d) => d.manifest.domain.name === 'vsbed-id-ren')!;
    await g.remove();
    await zfsRetry(['rename', ren(), renamed()], 80); // zfs-fuse stays busy a while after the guest is gone
    const gc = await virtsnap(setup, ['gc']);
    assert.equal(gc.code, 0, gc.stderr);
    assert.ok(existsSync(dump.manifest.memoryFile), 'kept: its snapshot lives on under the new dataset name');
    const listed = JSON.parse((await virtsnap(setup, ['list', '--json'])).stdout) as { id: string; snapshots: string[] }[];
    assert.deepEqual(listed.find((l) => l.id === dump.manifest.id)?.snapshots, [`${renamed()}@r`]);
    const mark = await consoleMark('vsbed-id-c2');
    const out = await virtsnap(setup, ['restore', `${renamed()}@r`, '--clone', clone2(), '--as', 'vsbed-id-c2']);
    assert.equal(out.code, 0, out.stderr);
    const disks = await sh('virsh', ['-c', b.uri, 'domblklist', 'vsbed-id-c2']);
    assert.ok(disks.includes(await mountpointOf(clone2())), disks);
    assertWhole(await watchDomain('vsbed-id-c2', mark), 'the renamed dataset\'s snapshot');
    await removeDomains('vsbed-id-c2');
    await destroyAll([clone2()]);
  });

  it('gc touches nothing it did not write: foreign files in the archive mount and the overlay dir, a tampered manifest', async () => {
    const archive = setup.archiveDir;
    const victim = path.join(setup.root, 'victim.save');
    writeFileSync(victim, 'someone else');
    const dump = (await setup.dumps()).find((d) => d.manifest.domain.name === 'vsbed-id-out');
    assert.ok(dump, 'the dump of vsbed-id-out, alone on its snapshot');
    // Tampered: its paths point outside the archive.
    const m = JSON.parse(readFileSync(dump.manifestFile, 'utf8')) as Record<string, unknown>;
    writeFileSync(dump.manifestFile, JSON.stringify({ ...m, memoryFile: victim, metaDir: setup.root }));
    const domainDir = path.dirname(dump.manifestFile);
    writeFileSync(path.join(domainDir, 'notes.txt'), 'mine');
    symlinkSync('/etc', path.join(archive, 'etc-link'));
    mkdirSync(setup.overlayDir, { recursive: true });
    writeFileSync(path.join(setup.overlayDir, 'myvm.save'), 'a virsh save of the user');
    mkdirSync(path.join(setup.overlayDir, 'myvm.meta'), { recursive: true });
    // Its snapshot is destroyed (and so the other dump of that run): the dumps themselves are virtsnap's to delete.
    const sameRun = (await setup.dumps()).filter((d) => snapshotNames(d.manifest).some((n) => snapshotNames(dump.manifest).includes(n))).map((d) => d.manifest.id);
    for (const name of snapshotNames(dump.manifest)) await zfsRetry(['destroy', name]);

    const gc = await virtsnap(setup, ['gc', '--json']);
    assert.equal(gc.code, 0, gc.stderr);
    const report = JSON.parse(gc.stdout) as { deleted: string[]; removed: string[]; foreign: { path: string; reason: string }[] };
    assert.deepEqual(report.deleted.sort(), sameRun.sort());
    assert.ok(report.deleted.includes(dump.manifest.id));
    assert.deepEqual(report.removed, []);
    assert.equal(readFileSync(victim, 'utf8'), 'someone else', 'the path a manifest names is never followed');
    assert.ok(existsSync(setup.root), 'the meta dir a manifest names is never followed');
    const foreign = report.foreign.map((f) => f.path).sort();
    const expected = [
      path.join(archive, 'etc-link'),
      path.join(archive, 'other-tool', 'state.json'),
      path.join(archive, 'someone-elses-backup.tar'),
      path.join(domainDir, 'notes.txt'),
      path.join(setup.overlayDir, 'myvm.meta'),
      path.join(setup.overlayDir, 'myvm.save'),
    ].sort();
    assert.deepEqual(foreign, expected);
    for (const p of expected) assert.ok(lstatSync(p), `${p} stays`);
    assert.equal(readFileSync(path.join(archive, 'other-tool', 'state.json'), 'utf8'), '{}');
    assert.equal(statSync(archive).mode & 0o777, archiveMode, "the archive dir's mode is the user's");
    const text = await virtsnap(setup, ['gc']);
    assert.match(text.stdout, /not ours, left alone: .*someone-elses-backup\.tar/);
  });

  it('a world-writable archive dir is refused with one line naming it', async () => {
    chmodSync(setup.archiveDir, 0o777);
    try {
      assertOneLineError(await virtsnap(setup, ['gc']), /VIRTSNAP_ARCHIVE_DIR \(.*identity-archive\) is writable by others .*chmod go-w/);
      assertOneLineError(await virtsnap(setup, ['snapshot', ds(), '--name', 'ww']), /VIRTSNAP_ARCHIVE_DIR .*writable by others/);
      assert.equal(await guest.state(), 'running');
      assert.deepEqual(setup.journalFiles(), []);
    } finally {
      chmodSync(setup.archiveDir, archiveMode);
    }
  });
});
