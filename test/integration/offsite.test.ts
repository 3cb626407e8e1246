// Off the host (issue 12), on the bed: RAM inside the snapshot
// (VIRTSNAP_STORE=dataset) with real sanoid runs, and restore on
// "host B": a config that sees only what came over by syncoid.
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chmodSync } from 'node:fs';
import { assertWhole, backup, bed, datasetExists, destroyDataset, Guest, lastTick, mountpointOf, removeDomains, runSyncoid, sh, snapshotsOf, watchDomain, zfsRetry, type Bed } from '../helpers/bed.js';
import { cli, hooks, leftovers, runProgram, sanoidEnv, Setup, virtsnap } from '../helpers/virtsnap.js';

/** The dump files (`<id>.save`, `<id>.json`) in a dataset's `.virtsnap/<domain>/`. */
function liveDumpFiles(mountpoint: string, domain: string): string[] {
  const dir = path.join(mountpoint, '.virtsnap', domain);
  return existsSync(dir) ? readdirSync(dir).filter((f) => /^\d{8}T.*\.(save|json)$/.test(f)) : [];
}

/** The serial console of a clone is appended to (append='on'): an earlier run's lines must not count. */
async function restoreAs(setup: Setup, snapshot: string, cloneDataset: string, as: string): Promise<{ code: number; stdout: string; stderr: string }> {
  rmSync(path.join((await bed()).consoleDir, `${as}.log`), { force: true });
  return virtsnap(setup, ['restore', snapshot, '--clone', cloneDataset, '--as', as]);
}

/** A restored clone (its log removed by restoreAs) runs from RAM (no boot), makes progress, and every oracle is silent. */
async function assertResumedSilently(name: string, counterAtSnapshot: number): Promise<void> {
  const w = await watchDomain(name, 0, { timeoutMs: 120_000 });
  assertWhole(w, name);
  assert.ok(Number(/TICK (\d+)/.exec(w.text)![1]) >= counterAtSnapshot);
}

describe('RAM inside the snapshot (VIRTSNAP_STORE=dataset), real sanoid 2.1.0', () => {
  let b: Bed;
  let setup: Setup;
  let guest: Guest;
  const name = 'vsbed-o-ds';
  const dataset = () => `${b.vmDataset}/o-ds`;
  const clone = (n: number) => `${b.vmDataset}/o-ds-r${n}`;
  const counters: number[] = [];

  before(async () => {
    b = await bed();
    await removeDomains(name, `${name}-r1`, `${name}-r2`, `${name}-r3`, `${name}-b`);
    for (const n of [1, 2, 3]) await destroyDataset(clone(n), 180);
    await destroyDataset(dataset(), 180);
    setup = await Setup.create('o-dataset', { VIRTSNAP_STORE: 'dataset' });
    guest = await Guest.create({ name, dataset: dataset() });
    await guest.start();
  });
  after(async () => {
    await removeDomains(`${name}-r1`, `${name}-r2`, `${name}-r3`, `${name}-b`);
    const k = await backup();
    await destroyDataset(`${k.pool}/o-ds-b`, 180);
    await destroyDataset(`${k.pool}/o-ds`, 180);
    await guest?.remove();
    for (const n of [1, 2, 3]) await destroyDataset(clone(n), 180);
    await destroyDataset(dataset(), 180);
  });

  const conf = (options: Record<string, string> = {}) => setup.section(dataset(), { hourly: '2', daily: '1', ...options });

  it('two sanoid runs: each snapshot holds the RAM, the live dataset and the archive hold none after post', async () => {
    for (const hoursAhead of [0, 1]) {
      counters.push(lastTick(guest.consoleSince(0)));
      const run = await setup.sanoid('2.1.0', conf(), ['--take-snapshots'], hoursAhead);
      assert.equal(run.code, 0, run.stderr);
      assert.equal(await guest.state(), 'running');
      assert.deepEqual(liveDumpFiles(await mountpointOf(dataset()), name), [], 'post removed the RAM from the live dataset');
      assert.deepEqual((await setup.dumps()), [], 'nothing in the archive');
      assert.deepEqual(setup.journalFiles(), []);
    }
    const snaps = await snapshotsOf(dataset());
    assert.equal(snaps.filter((s) => /autosnap_.*_hourly$/.test(s)).length, 2, snaps.join(' '));
    // status and check know the RAM inside the snapshots (the archive has none to tell them).
    const status = await virtsnap(setup, ['status', dataset(), '--json']);
    assert.equal(status.code, 0, status.stderr);
    const row = (JSON.parse(status.stdout) as { name: string; latestDump: { snapshots: string[] } | null }[]).find((r) => r.name === name);
    assert.ok(row?.latestDump?.snapshots.some((s) => s.startsWith(`${dataset()}@autosnap_`)), status.stdout);
    const check = await virtsnap(setup, ['check', dataset()]);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    assert.match(check.stdout, /^VIRTSNAP OK/);
  });

  it('both runs restore as clones under new names, running from their RAM, oracle silent; the original runs on', async () => {
    const hourly = (await snapshotsOf(dataset())).filter((s) => /_hourly$/.test(s));
    for (const [i, snap] of hourly.entries()) {
      const n = i + 1;
      const out = await restoreAs(setup, snap, clone(n), `${name}-r${n}`);
      assert.equal(out.code, 0, out.stderr + out.stdout);
      assert.match(out.stdout, /network links down|running/);
      await assertResumedSilently(`${name}-r${n}`, counters[i]!);
      assert.deepEqual(liveDumpFiles(await mountpointOf(clone(n)), name), [], 'the restore removed the RAM from the live clone');
      await removeDomains(`${name}-r${n}`);
      await destroyDataset(clone(n), 180);
    }
    assert.equal(await guest.state(), 'running', 'the original is untouched');
  });

  it('manual `virtsnap snapshot --mode pause`: the RAM is inside that snapshot too, and restores silently', async () => {
    const counter = lastTick(guest.consoleSince(0));
    const out = await virtsnap(setup, ['snapshot', dataset(), '--name', 'manual-pause', '--mode', 'pause', '--json']);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(await guest.state(), 'running');
    assert.deepEqual(liveDumpFiles(await mountpointOf(dataset()), name), []);
    const restored = await restoreAs(setup, `${dataset()}@manual-pause`, clone(3), `${name}-r3`);
    assert.equal(restored.code, 0, restored.stderr + restored.stdout);
    await assertResumedSilently(`${name}-r3`, counter);
    await removeDomains(`${name}-r3`);
    await destroyDataset(clone(3), 180);
    await zfsRetry(['destroy', `${dataset()}@manual-pause`]);
  });

  it('post never comes (sanoid died after its snapshot): `virtsnap recover` takes the RAM out of the live dataset before the commit; the VM runs on its own disks, nothing left, and the snapshot restores silently', async () => {
    const counter = lastTick(guest.consoleSince(0));
    const pre = await runProgram(hooks.pre, [], setup.env(sanoidEnv(dataset(), 'nopost', 'pre')));
    assert.equal(pre.code, 0, pre.stderr);
    assert.equal(liveDumpFiles(await mountpointOf(dataset()), name).length, 2, 'the RAM and its manifest are in the live dataset while frozen');
    await zfsRetry(['snapshot', `${dataset()}@nopost_hourly`]);
    const rec = await runProgram(cli, ['recover', '--force'], setup.env());
    assert.equal(rec.code, 0, rec.stdout + rec.stderr);
    assert.equal(await guest.state(), 'running');
    assert.deepEqual(Object.values(await guest.sources()).filter((s) => s.startsWith(setup.overlayDir)), [], 'on its own disks');
    assert.deepEqual(leftovers(setup.overlayDir, name), []);
    assert.deepEqual(setup.journalFiles(), []);
    assert.deepEqual(liveDumpFiles(await mountpointOf(dataset()), name), []);
    const restored = await restoreAs(setup, `${dataset()}@nopost_hourly`, clone(3), `${name}-r3`);
    assert.equal(restored.code, 0, restored.stderr + restored.stdout);
    await assertResumedSilently(`${name}-r3`, counter);
    await removeDomains(`${name}-r3`);
    await destroyDataset(clone(3), 180);
    await zfsRetry(['destroy', `${dataset()}@nopost_hourly`]);
  });

  it('host B: syncoid sends the snapshots to the backup pool; a config that sees only that restores the newest, running, oracle silent', async () => {
    const k = await backup();
    const copy = `${k.pool}/o-ds`;
    await destroyDataset(copy, 180);
    const sent = await runSyncoid(dataset(), copy, ['--no-sync-snap', '--quiet']);
    assert.equal(sent.code, 0, sent.stdout + sent.stderr);
    const newest = (await snapshotsOf(copy)).filter((s) => /_hourly$/.test(s)).pop()!;
    assert.ok(newest !== undefined, 'the hourlies arrived');
    // Host B: its own (empty) archive and state, no journal of host A, the default RAM store.
    const hostB = await Setup.create('o-hostb-ds');
    const out = await restoreAs(hostB, newest, `${k.pool}/o-ds-b`, `${name}-b`);
    assert.equal(out.code, 0, out.stderr + out.stdout);
    await assertResumedSilently(`${name}-b`, counters[1]!);
    assert.equal(await guest.state(), 'running', 'the original on pool A runs on');
    await removeDomains(`${name}-b`);
    await destroyDataset(`${k.pool}/o-ds-b`, 180);
    await destroyDataset(copy, 180);
  });

  it('a RAM dump left in the live dataset (its removal failed) and caught by a later snapshot is refused at restore: its disks moved on', async () => {
    const newest = (await snapshotsOf(dataset())).filter((s) => /_hourly$/.test(s)).pop()!;
    const look = `${b.vmDataset}/o-ds-look`;
    await zfsRetry(['clone', newest, look]);
    const from = path.join(await mountpointOf(look), '.virtsnap', name);
    const live = path.join(await mountpointOf(dataset()), '.virtsnap', name);
    const files = readdirSync(from).filter((f) => /^\d{8}T.*\.(save|json)$/.test(f));
    assert.equal(files.length, 2, files.join(' '));
    for (const f of files) copyFileSync(path.join(from, f), path.join(live, f));
    await destroyDataset(look, 180);
    await new Promise((r) => setTimeout(r, 2500)); // zfs-fuse keeps whole seconds of mtime; the guest writes every 0.2 s
    await zfsRetry(['snapshot', `${dataset()}@stale`]);
    for (const f of files) rmSync(path.join(live, f));
    const out = await restoreAs(setup, `${dataset()}@stale`, clone(1), `${name}-r1`);
    assert.notEqual(out.code, 0, out.stdout);
    assert.match(out.stderr, /changed after the RAM was saved/);
    assert.doesNotMatch(out.stderr, /\n.*\n.*at .*\.js/, 'one line, no stack trace');
    assert.equal(await datasetExists(clone(1)), false, 'nothing left behind: the clone made to read the snapshot is gone');
    await zfsRetry(['destroy', `${dataset()}@stale`]);
  });

  it('sanoid prunes a snapshot and its RAM is gone with it', async () => {
    const before = await snapshotsOf(dataset());
    const run = await setup.sanoid('2.1.0', conf({ autoprune: 'yes', hourly: '1', daily: '0' }), ['--prune-snapshots'], 1);
    assert.equal(run.code, 0, run.stderr);
    const now = await snapshotsOf(dataset());
    const gone = before.filter((s) => !now.includes(s));
    assert.ok(gone.length >= 1, `sanoid pruned: before ${before.join(' ')}, now ${now.join(' ')}`);
    // No copy anywhere else: the snapshot was the only holder of that RAM.
    assert.deepEqual((await setup.dumps()), []);
    assert.deepEqual(liveDumpFiles(await mountpointOf(dataset()), name), []);
  });

  it('--rollback to the remaining snapshot: the VM is stopped, rolled back and resumed from the RAM inside it, oracle silent, no RAM left live', async () => {
    const snap = (await snapshotsOf(dataset())).filter((s) => /_hourly$/.test(s)).pop()!;
    const offset = guest.consoleSize();
    const out = await virtsnap(setup, ['restore', snap, '--rollback', '--yes', '--destroy-newer']);
    assert.equal(out.code, 0, out.stderr + out.stdout);
    assert.equal(await guest.state(), 'running');
    assertWhole(await guest.watch(offset, { timeoutMs: 120_000 }), 'the rollback from the RAM inside the snapshot');
    assert.deepEqual(liveDumpFiles(await mountpointOf(dataset()), name), [], 'the RAM that came back with the rollback is gone from the live dataset');
    const datasets = (await sh('zfs', ['list', '-H', '-o', 'name', '-r', b.vmDataset])).split('\n');
    assert.deepEqual(datasets.filter((d) => d.includes('virtsnap-probe')), [], 'the clone made to read the snapshot is gone');
  });
});

describe('archive dir on a replicated dataset: restore on host B from the received archive, matched by guid', () => {
  let b: Bed;
  let setup: Setup;
  let guest: Guest;
  const name = 'vsbed-o-ar';
  const dataset = () => `${b.vmDataset}/o-ar`;
  const archive = () => `${b.vmDataset}/o-arch`;
  let pool = '';
  let counter = -1;

  before(async () => {
    b = await bed();
    pool = (await backup()).pool;
    await removeDomains(name, `${name}-b`);
    for (const ds of [`${pool}/o-ar-b`, `${pool}/o-ar`, `${pool}/o-arch`, dataset(), archive()]) await destroyDataset(ds, 180);
    await zfsRetry(['create', archive()]);
    // doc/offsite.md: the archive's mountpoint is root's alone (0700), and that travels with it.
    chmodSync(await mountpointOf(archive()), 0o700);
    setup = await Setup.create('o-archive', { VIRTSNAP_ARCHIVE_DIR: await mountpointOf(archive()) });
    guest = await Guest.create({ name, dataset: dataset() });
    await guest.start();
  });
  after(async () => {
    await removeDomains(`${name}-b`);
    await guest?.remove();
    for (const ds of [`${pool}/o-ar-b`, `${pool}/o-ar`, `${pool}/o-arch`, dataset(), archive()]) await destroyDataset(ds, 180);
  });

  it('sanoid with the hooks, the archive in its own section; syncoid for both; host B restores running, oracle silent', async () => {
    counter = lastTick(guest.consoleSince(0));
    // As in doc/offsite.md: the VMs' section with the hooks, the archive's without.
    const conf = `${setup.section(dataset(), { hourly: '2', daily: '1' })}
[${archive()}]
  autosnap = yes
  autoprune = yes
  hourly = 48
  daily = 30
  monthly = 0
  yearly = 0
`;
    const run = await setup.sanoid('2.1.0', conf, ['--take-snapshots']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal((await setup.dumps()).length, 1, 'one dump archived');
    // The VMs first, then the archive: syncoid's own sync snapshot of the archive holds the dumps post just wrote.
    const vm = await runSyncoid(dataset(), `${pool}/o-ar`, ['--no-sync-snap', '--quiet']);
    assert.equal(vm.code, 0, vm.stdout + vm.stderr);
    const arch = await runSyncoid(archive(), `${pool}/o-arch`, ['--quiet']);
    assert.equal(arch.code, 0, arch.stdout + arch.stderr);

    const hourly = (await snapshotsOf(`${pool}/o-ar`)).filter((s) => /_hourly$/.test(s)).pop()!;
    const hostB = await Setup.create('o-hostb-ar', { VIRTSNAP_ARCHIVE_DIR: await mountpointOf(`${pool}/o-arch`) });
    const dry = await virtsnap(hostB, ['restore', hourly, '--clone', `${pool}/o-ar-b`, '--as', `${name}-b`, '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr + dry.stdout);
    const plan = JSON.parse(dry.stdout) as { domains: { dump: { id: string } | null }[] };
    assert.equal(plan.domains[0]?.dump?.id, (await setup.dumps())[0]!.manifest.id, 'the received snapshot found its dump by guid');
    const out = await restoreAs(hostB, hourly, `${pool}/o-ar-b`, `${name}-b`);
    assert.equal(out.code, 0, out.stderr + out.stdout);
    await assertResumedSilently(`${name}-b`, counter);
    assert.equal(await guest.state(), 'running', 'the original on pool A runs on');
  });
});
