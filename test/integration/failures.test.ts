// Bad input and failure: one clear line, a non-zero exit, and nothing lost.
// After every refusal the VM runs on its own disks, unpaused, and nothing of
// ours is left in the overlay dir.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { snapshotNames } from '../../lib/manifest.js';
import { after, before, describe, it } from 'node:test';
import { Journal, type JournalEntry } from '../../lib/journal.js';
import { ownerOf } from '../../lib/owner.js';
import { assertWhole, bed, destroyDataset, Guest, mountpointOf, removeDomains, restoreOnClone, sh, snapshotsOf, type Bed } from '../helpers/bed.js';
import { cli, hooks, leftovers, runProgram, sanoidEnv, Setup, type Ran } from '../helpers/virtsnap.js';

function hook(which: 'pre' | 'post', env: Record<string, string>): Promise<Ran> {
  return runProgram(hooks[which], [], env);
}

/** The error line virtsnap printed (the last ERROR line). */
function errorLine(stderr: string): string {
  return stderr.split('\n').filter((l) => l.includes('ERROR')).pop() ?? '';
}

describe('bad input and failures', () => {
  let b: Bed;
  let setup: Setup;
  let a: Guest;
  let c: Guest;
  const dataset = () => `${b.vmDataset}/fail`;

  async function assertUntouched(g: Guest, originals: Record<string, string>): Promise<void> {
    assert.deepEqual(await g.sources(), originals, `${g.name} must be on its own disks`);
    assert.equal(await g.state(), 'running', `${g.name} must be running, not paused`);
    assert.deepEqual(leftovers(setup.overlayDir, g.name), [], `nothing of ${g.name} may remain in the overlay dir`);
  }

  before(async () => {
    b = await bed();
    await removeDomains('vsbed-fail-a', 'vsbed-fail-c');
    await destroyDataset(dataset());
    setup = await Setup.create('fail');
    a = await Guest.create({ name: 'vsbed-fail-a', dataset: dataset() });
    c = await Guest.create({ name: 'vsbed-fail-c', dataset: dataset() });
    await a.start();
    await c.start();
  });
  after(async () => {
    await a?.remove();
    await c?.remove();
    await destroyDataset(dataset());
  });

  it('without sanoid variables: exit 2 and one line naming SANOID_SCRIPT', async () => {
    const out = await hook('pre', setup.env());
    assert.equal(out.code, 2);
    assert.equal(out.stderr.trim().split('\n').length, 1, out.stderr);
    assert.match(out.stderr, /SANOID_SCRIPT is not set/);
  });

  it('the pre hook run as post: exit 2, says which setting to fix', async () => {
    const out = await hook('pre', setup.env(sanoidEnv(dataset(), 'x', 'post')));
    assert.equal(out.code, 2);
    assert.match(out.stderr, /pre_snapshot_script/);
  });

  it('an unknown dataset: non-zero, names it', async () => {
    const out = await hook('pre', setup.env(sanoidEnv(`${b.pool}/no/such`, 'x', 'pre')));
    assert.notEqual(out.code, 0);
    assert.match(errorLine(out.stderr), /dataset vsbed\/no\/such does not exist/);
  });

  it('libvirt unreachable: non-zero, says so, nothing touched', async () => {
    const originals = await a.sources();
    const out = await hook('pre', setup.env({ ...sanoidEnv(dataset(), 'x', 'pre'), VIRTSNAP_LIBVIRT_URI: 'qemu+unix:///system?socket=/nonexistent/sock' }));
    assert.notEqual(out.code, 0);
    assert.match(errorLine(out.stderr), /cannot reach libvirt/);
    await assertUntouched(a, originals);
  });

  it('the overlay dir inside the snapshotted dataset is refused before anything happens', async () => {
    const originals = await a.sources();
    const inside = path.join(await mountpointOf(dataset()), 'overlays');
    const out = await hook('pre', setup.env({ ...sanoidEnv(dataset(), 'x', 'pre'), VIRTSNAP_OVERLAY_DIR: inside }));
    assert.notEqual(out.code, 0);
    assert.match(errorLine(out.stderr), /VIRTSNAP_OVERLAY_DIR .* is inside dataset vsbed\/vm\/fail/);
    await assertUntouched(a, originals);
    await assertUntouched(c, await c.sources());
  });

  it('an overlay dir too small for the RAM: the VMs are not frozen, each named in one line; they run on unharmed', async () => {
    const small = path.join(b.dir, 'tests', 'full-overlay');
    mkdirSync(small, { recursive: true });
    await sh('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0711', 'tmpfs', small]);
    try {
      const originals = [await a.sources(), await c.sources()];
      const out = await hook('pre', setup.env({ ...sanoidEnv(dataset(), 'full', 'pre'), VIRTSNAP_OVERLAY_DIR: small }));
      // The snapshot still happens (crash-consistent), even with no_inconsistent_snapshot.
      assert.equal(out.code, 0, out.stderr);
      for (const g of [a, c]) assert.match(out.stderr, new RegExp(`ERROR: domain="${g.name}" .*gets no RAM this run: its dump may take \\d+ MiB and ${small} has \\d+ MiB left for it`));
      await assertUntouched(a, originals[0]!);
      await assertUntouched(c, originals[1]!);
      assert.deepEqual(setup.journalFiles(), []);
    } finally {
      await sh('umount', [small]);
    }
  });

  it('a VM held by another live run: nothing is frozen, sanoid still snapshots, post finds nothing to do', async () => {
    const originals = [await a.sources(), await c.sources()];
    // Another run holds vsbed-fail-c; a is frozen first (names sort), then c's wait times out.
    const journal = new Journal(setup.stateDir);
    const blocker: JournalEntry = {
      format: 'virtsnap-journal/1',
      runId: 'other-run',
      targets: [dataset()],
      snapnames: ['other'],
      types: [],
      domain: { name: c.name, uuid: c.uuid },
      step: 'frozen',
      tag: 'other',
      memoryFile: '/nonexistent',
      metaDir: '/nonexistent',
      overlays: [],
      snapshots: [],
      owner: ownerOf(process.pid), // alive: a run in progress, not one to recover
      startedAt: new Date().toISOString(),
      updatedAt: new Date().toISOString(),
    };
    journal.write(blocker);
    try {
      setup.writeEnv({ VIRTSNAP_LOCK_TIMEOUT: '2' });
      const conf = setup.section(dataset());
      const before = await snapshotsOf(dataset());
      const out = await setup.sanoid('2.1.0', conf, ['--take-snapshots', '--verbose']);
      assert.equal(out.code, 0, out.stderr);
      assert.match(out.stderr, /WARN: pre_snapshot_script failed/);
      assert.match(out.stderr, /"vsbed-fail-c" \(run other-run\) still frozen by another run/);
      const created = (await snapshotsOf(dataset())).filter((s) => !before.includes(s));
      assert.ok(created.length > 0, 'sanoid takes the snapshot anyway (no_inconsistent_snapshot is off)');
      await assertUntouched(a, originals[0]!);
      assert.deepEqual(await c.sources(), originals[1]!);
      assert.equal((await setup.dumps()).length, 0, 'no RAM dump for an inconsistent run');
      assert.deepEqual(setup.journalFiles(), [`${c.uuid}.json`], "only the other run's claim remains");
    } finally {
      journal.remove(c.uuid);
      setup.writeEnv();
    }
  });

  it('two runs on the same VM wait for each other and never interleave', async () => {
    const originals = await a.sources();
    const first = hook('pre', setup.env(sanoidEnv(dataset(), 'one', 'pre')));
    assert.equal((await first).code, 0);
    assert.notDeepEqual(await a.sources(), originals, 'run one has frozen the VM');
    const started = Date.now();
    const second = hook('pre', setup.env(sanoidEnv(dataset(), 'two', 'pre')));
    await new Promise((r) => setTimeout(r, 2000));
    await sh('zfs', ['snapshot', `${dataset()}@one_hourly`]);
    const postOne = await hook('post', setup.env(sanoidEnv(dataset(), 'one', 'post')));
    const postOneDone = Date.now();
    assert.equal(postOne.code, 0, postOne.stderr);
    const pre2 = await second;
    assert.equal(pre2.code, 0, pre2.stderr);
    assert.ok(Date.now() - started >= 2000 && Date.now() >= postOneDone, 'run two waited for run one');
    await sh('zfs', ['snapshot', `${dataset()}@two_hourly`]);
    const postTwo = await hook('post', setup.env(sanoidEnv(dataset(), 'two', 'post')));
    assert.equal(postTwo.code, 0, postTwo.stderr);
    await assertUntouched(a, originals);
    const snaps = (await setup.dumps()).filter((d) => d.manifest.domain.name === a.name).map((d) => snapshotNames(d.manifest));
    assert.deepEqual(snaps, [[`${dataset()}@one_hourly`], [`${dataset()}@two_hourly`]]);
  });

  it('post and `recover --force` at once take turns: both VMs back, one dump each, no block job aborted', async () => {
    const originals = [await a.sources(), await c.sources()];
    assert.equal((await hook('pre', setup.env(sanoidEnv(dataset(), 'race', 'pre')))).code, 0);
    await sh('zfs', ['snapshot', `${dataset()}@race_hourly`]);
    const [post, recover] = await Promise.all([
      hook('post', setup.env(sanoidEnv(dataset(), 'race', 'post'))),
      runProgram(cli, ['recover', '--force'], setup.env()),
    ]);
    assert.equal(post.code, 0, post.stderr);
    assert.equal(recover.code, 0, recover.stderr);
    for (const out of [post.stderr, recover.stderr]) assert.doesNotMatch(out, /ERROR|abort/i, out);
    await assertUntouched(a, originals[0]!);
    await assertUntouched(c, originals[1]!);
    assert.deepEqual(setup.journalFiles(), []);
    for (const g of [a, c]) {
      const race = (await setup.dumps()).filter((d) => d.manifest.domain.name === g.name && snapshotNames(d.manifest).includes(`${dataset()}@race_hourly`));
      assert.equal(race.length, 1, `${g.name}: exactly one dump for the race snapshot`);
    }
  });
});

describe('names with spaces, quotes and shell metacharacters', () => {
  let b: Bed;
  let setup: Setup;
  let g: Guest;
  // No slash in the markers: a mountpoint's slashes are directories, and libvirt refuses / in names.
  const name = `vsbed-odd 'q' "dq" $(touch vsbed-pwned) ;x`;
  const markers = () => ['/vsbed-pwned', path.join(process.cwd(), 'vsbed-pwned'), '/tmp/vsbed-pwned'];
  const dataset = () => `${b.vmDataset}/odd`;

  before(async () => {
    b = await bed();
    for (const m of markers()) rmSync(m, { force: true });
    await removeDomains(name);
    await destroyDataset(dataset());
    await sh('zfs', ['create', '-o', `mountpoint=/${b.pool}/odd dir $(touch vsbed-pwned) 'q'`, dataset()]);
    setup = await Setup.create('odd');
    g = await Guest.create({ name, dataset: dataset() });
    await g.start();
  });
  after(async () => {
    await g?.remove();
    await destroyDataset(dataset());
  });

  it('freeze, thaw, archive and restore work and inject nothing', async () => {
    const originals = await g.sources();
    assert.match(Object.values(originals)[0]!, /odd dir/);
    const out = await setup.sanoid('2.2.0', setup.section(dataset()), ['--take-snapshots', '--verbose']);
    assert.equal(out.code, 0, out.stderr);
    assert.doesNotMatch(out.stderr, /failed/, out.stderr);
    assert.deepEqual(await g.sources(), originals);
    const dumps = (await setup.dumps());
    assert.equal(dumps.length, 1);
    assert.equal(dumps[0]!.manifest.domain.name, name);
    const xml = path.join(await mountpointOf(dataset()), '.virtsnap', name, 'domain.xml');
    assert.ok(readFileSync(xml, 'utf8').includes('vsbed-odd'));
    assertWhole(await restoreOnClone(g, dumps[0]!.manifest.memoryFile, snapshotNames(dumps[0]!.manifest)[0]!), name);
    assert.deepEqual(markers().filter((m) => existsSync(m)), [], 'no name may reach a shell');
  });
});
