// One home for the RAM dump (issue 21), on the bed with real sanoid: post
// seals each dump into the spool and ends; an archiver moves it into the
// store outside sanoid's run. A store that is away (a read-only archive dir,
// a restic repository under another process's exclusive lock) never holds up
// a run, and nothing waits on it; a spool too small for the next dump costs
// that VM its RAM this run, never a waiting dump.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { listDumps } from '../../lib/archive.js';
import { snapshotNames, type ArchivedDump } from '../../lib/manifest.js';
import { assertWhole, bed, consoleMark, destroyDataset, Guest, removeDomains, restoreOnClone, sh, sleep, snapshotsOf, watchDomain, type Bed } from '../helpers/bed.js';
import { cli, leftovers, runProgram, Setup } from '../helpers/virtsnap.js';

describe('the spool: an unavailable store never holds up a run', () => {
  let b: Bed;
  let setup: Setup;
  let guests: Guest[] = [];
  const root = () => `${b.vmDataset}/spool`;
  /** The overlay dir of the last test, a tmpfs too small for a third dump beside two waiting ones. */
  const small = () => path.join(b.overlayDir, 'spool-small');
  const originals = new Map<Guest, Record<string, string>>();
  let hours = 0;

  const mountTmpfs = async (dir: string, size: string, mode = '0700') => {
    mkdirSync(dir, { recursive: true });
    await sh('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=${mode}`, 'tmpfs', dir]);
  };

  /** One sanoid 2.1.0 run over both guests (`recursive = zfs`): its wall time and the snapshots it took. */
  async function sanoidRun(): Promise<{ ms: number; taken: string[]; stderr: string }> {
    const conf = setup.section(root(), { recursive: 'zfs' });
    const before = await snapshotsOf(root(), true);
    const started = Date.now();
    const out = await setup.sanoid('2.1.0', conf, ['--take-snapshots', '--verbose'], ++hours);
    const ms = Date.now() - started;
    assert.equal(out.code, 0, out.stderr);
    assert.doesNotMatch(out.stderr, /WARN: (pre|post)_snapshot_script failed/, out.stderr);
    const taken = (await snapshotsOf(root(), true)).filter((s) => !before.includes(s));
    assert.ok(taken.length >= 2, `a snapshot of each guest's dataset: ${taken.join(', ')}`);
    return { ms, taken, stderr: out.stderr };
  }

  async function assertBack(): Promise<void> {
    for (const g of guests) {
      assert.deepEqual(await g.sources(), originals.get(g), `${g.name} on its own disks`);
      assert.equal(await g.state(), 'running', `${g.name} runs`);
      assert.deepEqual(leftovers(setup.overlayDir, g.name), [], `no overlay of ${g.name} left`);
    }
    assert.deepEqual(setup.journalFiles(), [], 'no journal entry left: nothing waits on the store');
  }

  /** The dumps tied to one of `taken`, per guest. */
  const tiedTo = (dumps: ArchivedDump[], taken: string[]) => dumps.filter((d) => snapshotNames(d.manifest).some((s) => taken.includes(s)));

  before(async () => {
    b = await bed();
    await removeDomains('vsbed-spool-a', 'vsbed-spool-b', 'vsbed-spool-r');
    await destroyDataset(root());
    await sh('zfs', ['create', root()]);
    setup = await Setup.create('spool');
    // Mounted before the guests start: QEMU runs in a mount namespace of its own (libvirt's), which sees only what was mounted when it started.
    await mountTmpfs(small(), '400m', '0711');
    guests = [await Guest.create({ name: 'vsbed-spool-a', dataset: `${root()}/a` }), await Guest.create({ name: 'vsbed-spool-b', dataset: `${root()}/b` })];
    for (const g of guests) await g.start();
    for (const g of guests) originals.set(g, await g.sources());
  });
  after(async () => {
    if (process.env.VSBED_KEEP === '1') return; // look at what a failure left
    await removeDomains('vsbed-spool-r');
    for (const g of guests) await g?.remove();
    await sh('umount', [small()]).catch(() => sh('umount', ['-l', small()]));
    await destroyDataset(root());
  });

  it('the archive dir read-only for two sanoid runs, then writable: each run ends within 60 s with the VMs back, a waiting dump restores, and within a minute every snapshot of the three runs has its dump', async (t) => {
    const archive = path.join(setup.root, 'ro-archive');
    await mountTmpfs(archive, '768m');
    try {
      setup.writeEnv({ VIRTSNAP_ARCHIVE_DIR: archive });
      await sh('mount', ['-o', 'remount,ro', archive]);
      const runs: string[][] = [];
      for (const n of [1, 2]) {
        const run = await sanoidRun();
        t.diagnostic(`run ${n} with the archive read-only: ${run.ms} ms`);
        assert.ok(run.ms < 60_000, `run ${n} took ${run.ms} ms`);
        await assertBack();
        assert.equal(setup.waiting().length, 2 * n, `both dumps of run ${n} wait in the spool`);
        runs.push(run.taken);
      }
      // Every command knows them: status (count and age), list, check (not yet a warning).
      const status = await runProgram(cli, ['status'], setup.env());
      assert.match(status.stdout, /4 RAM dump\(s\) \(\d+ MiB\) wait in the spool for the archiver, the oldest for \d+s/);
      const list = JSON.parse((await runProgram(cli, ['list', '--json'], setup.env())).stdout) as { waiting: boolean }[];
      assert.deepEqual([list.length, list.every((d) => d.waiting)], [4, true]);
      const verify = await runProgram(cli, ['verify'], setup.env());
      assert.equal(verify.code, 0, `waiting dumps verify (structure): ${verify.stdout}`);

      // A restore takes a dump that waits: the newest of guest b, on a clone.
      const [first] = runs;
      const bSnap = runs[1]!.find((s) => s.startsWith(`${root()}/b@`))!;
      const mark = await consoleMark('vsbed-spool-r');
      const restored = await runProgram(cli, ['restore', bSnap, '--clone', `${root()}/b-r`, '--as', 'vsbed-spool-r'], setup.env());
      assert.equal(restored.code, 0, restored.stderr);
      assertWhole(await watchDomain('vsbed-spool-r', mark), 'a restore from a dump waiting in the spool');
      await removeDomains('vsbed-spool-r');
      await destroyDataset(`${root()}/b-r`);

      // The archive comes back; a third run goes as usual.
      await sh('mount', ['-o', 'remount,rw', archive]);
      const back = Date.now();
      const third = await sanoidRun();
      runs.push(third.taken);
      await assertBack();
      await setup.spoolDrained(60_000);
      t.diagnostic(`the spool was empty ${Date.now() - back} ms after the archive came back (a run of ${third.ms} ms included)`);
      const stored = listDumps(archive);
      for (const [i, taken] of runs.entries()) {
        for (const g of guests) {
          const mine = tiedTo(stored, taken).filter((d) => d.manifest.domain.name === g.name);
          assert.equal(mine.length, 1, `run ${i + 1}: one dump of ${g.name}, in the store`);
        }
      }
      const verified = await runProgram(cli, ['verify'], setup.env());
      assert.equal(verified.code, 0, verified.stdout);
      // The dump that waited longest (guest a, run 1) and the newest (guest b, run 3), restored from the store.
      const oldest = tiedTo(stored, first!).find((d) => d.manifest.domain.name === 'vsbed-spool-a')!;
      assertWhole(await restoreOnClone(guests[0]!, oldest.manifest.memoryFile, snapshotNames(oldest.manifest)[0]!), 'the dump that waited through the outage');
      await guests[0]!.start();
      const newest = tiedTo(stored, third.taken).find((d) => d.manifest.domain.name === 'vsbed-spool-b')!;
      assertWhole(await restoreOnClone(guests[1]!, newest.manifest.memoryFile, snapshotNames(newest.manifest)[0]!), 'the newest dump');
      await guests[1]!.start();
      for (const g of guests) originals.set(g, await g.sources());
    } finally {
      setup.writeEnv();
      await sh('umount', [archive]).catch(() => sh('umount', ['-l', archive]));
    }
  });

  it("a restic repository under another process's exclusive lock for a run: the run ends with the VMs back, the dumps reach the repository within a minute of the lock's end, and restore silently", async (t) => {
    const repo = path.join(setup.root, 'repo');
    const pw = path.join(setup.root, 'restic.pw');
    writeFileSync(pw, 'not-a-secret-but-0600\n', { mode: 0o600 });
    await sh('restic', ['init', '--repository-version', '2', '--repo', repo, '--password-file', pw]);
    setup.writeEnv({ VIRTSNAP_STORE: `restic:${repo}`, VIRTSNAP_RESTIC_PASSWORD_FILE: pw });
    // `restic check` holds the exclusive lock; stopped, it holds it as long as a long `restic prune` would.
    const holder = spawn('restic', ['check', '--repo', repo, '--password-file', pw], { stdio: 'ignore' });
    try {
      const deadline = Date.now() + 30_000;
      while (readdirSync(path.join(repo, 'locks')).length === 0 && Date.now() < deadline) await sleep(10);
      holder.kill('SIGSTOP');
      assert.equal(readdirSync(path.join(repo, 'locks')).length, 1, 'restic check took the lock');
      const run = await sanoidRun();
      t.diagnostic(`a run with the repository locked: ${run.ms} ms`);
      assert.ok(run.ms < 60_000);
      await assertBack();
      await sleep(3000);
      assert.equal(setup.waiting().length, 2, 'the dumps wait while the repository is locked');
      holder.kill('SIGCONT');
      await new Promise((resolve) => holder.once('exit', resolve));
      const freed = Date.now();
      await setup.spoolDrained(60_000);
      t.diagnostic(`the spool was empty ${Date.now() - freed} ms after the lock was let go`);
      const inRepo = tiedTo(await setup.dumps(), run.taken);
      assert.deepEqual(inRepo.map((d) => d.manifest.store?.kind), ['restic', 'restic']);
      const mark = await consoleMark('vsbed-spool-r');
      const out = await runProgram(cli, ['restore', inRepo.find((d) => d.manifest.domain.name === 'vsbed-spool-a')!.manifest.snapshots[0]!.name, '--clone', `${root()}/a-r`, '--as', 'vsbed-spool-r'], setup.env());
      assert.equal(out.code, 0, out.stderr);
      assertWhole(await watchDomain('vsbed-spool-r', mark), 'a dump stored after the lock');
    } finally {
      holder.kill('SIGKILL');
      setup.writeEnv();
      await removeDomains('vsbed-spool-r');
      await destroyDataset(`${root()}/a-r`);
    }
  });

  it('a spool too small for the next dump: that VM gets no RAM this run (one ERROR names it), the snapshot happens, no waiting dump is deleted, check is CRITICAL', async () => {
    const archive = path.join(setup.root, 'ro-archive2');
    await mountTmpfs(archive, '512m');
    try {
      setup.writeEnv({ VIRTSNAP_OVERLAY_DIR: small(), VIRTSNAP_ARCHIVE_DIR: archive });
      await sh('mount', ['-o', 'remount,ro', archive]);
      const spool = () => readdirSync(path.join(small(), 'spool')).filter((f) => f.endsWith('.json')).sort();
      await sanoidRun();
      const waiting = spool();
      assert.equal(waiting.length, 2);
      // What the next run needs (2 guests of 96 MiB saved with the guest paused, and the margin: 160 MiB each) no longer fits beside them.
      const run = await sanoidRun();
      const errors = run.stderr.split('\n').filter((l) => /ERROR/.test(l) && /gets no RAM this run/.test(l));
      assert.ok(errors.length >= 1, run.stderr);
      for (const e of errors) assert.match(e, /domain "vsbed-spool-[ab]" gets no RAM this run: its dump may take \d+ MiB and .*spool-small has \d+ MiB left/);
      assert.ok(run.taken.length >= 2, 'the snapshots happen all the same');
      await assertBack();
      assert.deepEqual(spool().filter((f) => waiting.includes(f)), waiting, 'no waiting dump was deleted to make room');
      const check = await runProgram(cli, ['check'], setup.env());
      assert.equal(check.code, 2, check.stdout);
      assert.match(check.stdout, /^VIRTSNAP CRITICAL: .*the spool's filesystem \(VIRTSNAP_OVERLAY_DIR .*spool-small\)/);
      await sh('mount', ['-o', 'remount,rw', archive]);
      const deadline = Date.now() + 60_000;
      while (spool().length > 0 && Date.now() < deadline) await sleep(250);
      assert.deepEqual(spool(), [], 'the archiver stores the waiting dumps once the archive is back');
    } finally {
      setup.writeEnv();
      await sh('umount', [archive]).catch(() => sh('umount', ['-l', archive]));
    }
  });
});
