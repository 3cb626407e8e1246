// Failure paths a careful read found (issue 20), each injected for real on
// the bed: restic settings and secrets that only the env file gives, a
// replica in another pool of the same host, restores racing runs and
// people, a damaged journal entry, a pool too full for RAM inside the
// snapshot, and a pause-mode dump restored by hand. One writing guest serves
// them all; after each, the promises hold (the guest runs on its own disks,
// nothing of ours is left, every restore is whole).
import { makeClients } from '../../lib/deps.js';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { snapshotNames } from '../../lib/manifest.js';
import { loadConfig } from '../../lib/config.js';
import { readSaveImageHeader } from '../../lib/libvirt/save-image.js';
import { LibvirtClient } from '../../lib/libvirt/virsh.js';
import { executeRestore, prepareRestore } from '../../lib/restore.js';
import { ZfsClient } from '../../lib/zfs.js';
import { assertWhole, backup, bed, consoleMark, destroyDataset, Guest, removeDomains, restoreOnClone, sh, snapshotsOf, virsh, watchDomain, zfsRetry, type Bed } from '../helpers/bed.js';
import { startRestServer, type RestServer } from '../helpers/rest-server.js';
import { cli, hooks, leftovers, runProgram, sanoidEnv, Setup, virtsnap } from '../helpers/virtsnap.js';

describe('failure paths (issue 20), on the bed', () => {
  let b: Bed;
  let guest: Guest;
  let originals: Record<string, string>;
  const dataset = () => `${b.vmDataset}/paths`;

  async function assertBack(setup: Setup): Promise<void> {
    assert.deepEqual(await guest.sources(), originals, 'on its own disks');
    assert.equal(await guest.state(), 'running', 'running, not paused');
    assert.deepEqual(leftovers(setup.overlayDir, guest.name), [], 'nothing left in the overlay dir');
    assert.deepEqual(setup.journalFiles().filter((f) => f.startsWith(guest.uuid)), [], 'no journal entry of it');
  }

  /** One run through the hooks, as sanoid calls them, for `dataset@<snap>_hourly`. */
  async function hooksRun(setup: Setup, snap: string, extra: Record<string, string> = {}): Promise<{ pre: Awaited<ReturnType<typeof runProgram>>; post: Awaited<ReturnType<typeof runProgram>> }> {
    const pre = await runProgram(hooks.pre, [], setup.env({ ...sanoidEnv(dataset(), snap, 'pre'), ...extra }));
    await sh('zfs', ['snapshot', `${dataset()}@${snap}_hourly`]);
    const post = await runProgram(hooks.post, [], setup.env({ ...sanoidEnv(dataset(), snap, 'post'), ...extra }));
    return { pre, post };
  }

  before(async () => {
    b = await bed();
    await removeDomains('vsbed-paths', 'vsbed-paths-r', 'vsbed-paths-rep');
    await destroyDataset(`${b.vmDataset}/paths-c`, 180);
    await destroyDataset(dataset(), 180);
    guest = await Guest.create({ name: 'vsbed-paths', dataset: dataset() });
    await guest.start();
    originals = await guest.sources();
  });
  after(async () => {
    await removeDomains('vsbed-paths-r', 'vsbed-paths-rep');
    await guest?.remove();
    const k = await backup();
    await destroyDataset(`${k.pool}/paths-rep-c`, 180);
    await destroyDataset(`${k.pool}/paths-rep`, 180);
    await destroyDataset(`${b.vmDataset}/paths-c`, 180);
    await destroyDataset(dataset(), 180);
  });

  describe('restic: settings only the env file gives, and a repository URL with a password', () => {
    let server: RestServer;
    const SECRET = 'S3cr3t-in-the-url';
    const PW = 'pw-of-the-repository';
    let setup: Setup;

    before(async () => {
      setup = await Setup.create('paths-restic');
      server = await startRestServer(path.join(setup.root, 'rest'), 'vsbed', SECRET);
      const url = server.url('vsbed', SECRET);
      const pwFile = path.join(setup.root, 'restic.pw');
      writeFileSync(pwFile, `${PW}\n`, { mode: 0o600 });
      const repoFile = path.join(setup.root, 'restic.repo');
      writeFileSync(repoFile, `${url}\n`, { mode: 0o600 });
      await sh('restic', ['init', '--repository-version', '2'], { env: { RESTIC_REPOSITORY_FILE: repoFile, RESTIC_PASSWORD_FILE: pwFile } });
      // Everything restic needs only in the env file, in restic's own words; nothing in virtsnap's settings.
      setup.writeEnv({ VIRTSNAP_STORE: 'restic', VIRTSNAP_LOG: 'debug' });
      writeFileSync(setup.envFile, `${readFileSync(setup.envFile, 'utf8')}export RESTIC_REPOSITORY_FILE=${repoFile} # holds the URL and its password\nRESTIC_PASSWORD_FILE=${pwFile}\nRESTIC_CACHE_DIR=${path.join(setup.root, 'cache')}\n`, { mode: 0o600 });
    });
    after(async () => {
      await server?.close();
    });

    it('a run through the hooks archives into the repository the env file names; list, verify and a restore read it', async () => {
      const { pre, post } = await hooksRun(setup, 'rst');
      assert.equal(pre.code, 0, pre.stderr);
      assert.equal(post.code, 0, post.stderr);
      await assertBack(setup);
      const dumps = (await setup.dumps());
      assert.equal(dumps.length, 1);
      assert.equal(dumps[0]!.manifest.store?.kind, 'restic');
      const list = await virtsnap(setup, ['list', '--json']);
      assert.equal(list.code, 0, list.stderr);
      const verify = await virtsnap(setup, ['verify']);
      assert.equal(verify.code, 0, verify.stdout + verify.stderr);
      const mark = await consoleMark('vsbed-paths-r');
      const restored = await virtsnap(setup, ['restore', `${dataset()}@rst_hourly`, '--clone', `${b.vmDataset}/paths-c`, '--as', 'vsbed-paths-r']);
      assert.equal(restored.code, 0, restored.stderr);
      assertWhole(await watchDomain('vsbed-paths-r', mark), 'a dump from a repository only the env file names');
      await removeDomains('vsbed-paths-r');
      await destroyDataset(`${b.vmDataset}/paths-c`, 180);
      assert.equal(server.unauthorized, 0, 'restic always had the credentials');
    });

    it('during a run no command line, no log line and no file virtsnap writes (the env file aside) holds the URL\'s password', async () => {
      const seen: string[] = [];
      let watching = true;
      // Every process's command line, as any local user could read it, while the run goes on.
      const sampler = (async () => {
        while (watching) {
          for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
            try {
              const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
              if (cmdline.includes(SECRET)) seen.push(cmdline);
            } catch {
              // gone
            }
          }
          await new Promise((r) => setTimeout(r, 20));
        }
      })();
      const out = await virtsnap(setup, ['snapshot', dataset(), '--name', 'secret']);
      const gc = await virtsnap(setup, ['gc']);
      const doctor = await virtsnap(setup, ['doctor']);
      watching = false;
      await sampler;
      assert.equal(out.code, 0, out.stderr);
      assert.deepEqual(seen, [], 'no command line holds it');
      for (const [what, text] of [['snapshot', out.stdout + out.stderr], ['gc', gc.stdout + gc.stderr], ['doctor', doctor.stdout + doctor.stderr]]) {
        assert.ok(!text!.includes(SECRET), `${what}'s output holds it: ${text}`);
      }
      assert.match(doctor.stdout, /restic: repository rest:http:\/\/vsbed:\*\*\*@127\.0\.0\.1:\d+\/ answers/);
      // Everything virtsnap wrote: archive (manifests, meta dirs), state (journal, locks, watchdog log, indexes), overlay dir.
      const written = [setup.archiveDir, setup.stateDir].flatMap((d) => filesUnder(d));
      const holding = written.filter((f) => readFileSync(f).includes(SECRET));
      assert.deepEqual(holding, [], 'no file of ours holds it');
      assert.ok(written.some((f) => f.endsWith('.json') && readFileSync(f, 'utf8').includes('vsbed:***@')), 'the manifests name the repository, masked');
      await assertBack(setup);
    });
  });

  describe('a copy of a snapshot received into another pool of this host', () => {
    it('keeps its RAM when the source snapshot is pruned (prune hook and gc), restores whole, and the dump goes with the copy', async () => {
      const setup = await Setup.create('paths-replica');
      const k = await backup();
      const out = await virtsnap(setup, ['snapshot', dataset(), '--name', 'rep']);
      assert.equal(out.code, 0, out.stderr);
      // Stored first, as it is long before sanoid prunes: a prune that finds the archiver storing the dump leaves it to the next prune or gc.
      await setup.spoolDrained();
      await sh('bash', ['-c', `zfs send ${dataset()}@rep | zfs recv -u ${k.pool}/paths-rep`]);
      await sh('zfs', ['set', 'mountpoint=/' + `${k.pool}/paths-rep`, `${k.pool}/paths-rep`]).catch(() => undefined);
      await zfsRetry(['destroy', `${dataset()}@rep`]);
      const prune = await runProgram(hooks.prune, [], setup.env({ SANOID_SCRIPT: 'prune', SANOID_TARGET: dataset(), SANOID_SNAPNAME: 'rep' }));
      assert.equal(prune.code, 0, prune.stderr);
      const gc = await virtsnap(setup, ['gc']);
      assert.equal(gc.code, 0, gc.stderr);
      const dumps = (await setup.dumps());
      assert.equal(dumps.length, 1, 'the dump is kept: the copy in the other pool needs it');
      assert.deepEqual(snapshotNames(dumps[0]!.manifest), [`${k.pool}/paths-rep@rep`], 'it follows the copy');
      const mark = await consoleMark('vsbed-paths-rep');
      const restored = await virtsnap(setup, ['restore', `${k.pool}/paths-rep@rep`, '--clone', `${k.pool}/paths-rep-c`, '--as', 'vsbed-paths-rep']);
      assert.equal(restored.code, 0, restored.stderr);
      assertWhole(await watchDomain('vsbed-paths-rep', mark), 'the copy in the other pool');
      await removeDomains('vsbed-paths-rep');
      await destroyDataset(`${k.pool}/paths-rep-c`, 180);
      await destroyDataset(`${k.pool}/paths-rep`, 180);
      const gone = await virtsnap(setup, ['gc']);
      assert.equal(gone.code, 0, gone.stderr);
      assert.deepEqual((await setup.dumps()), [], 'no copy left: the dump goes');
    });
  });

  describe('restore against races: it holds what it touches, looks again before it acts, undoes only what it made', () => {
    let setup: Setup;
    const deps = () => {
      const config = loadConfig({ VIRTSNAP_CONFIG: setup.envFile });
      return { ...makeClients(config), config };
    };
    const request = (snap: string, mode: 'clone' | 'rollback') => ({
      snapshot: `${dataset()}@${snap}`,
      mode: mode === 'clone' ? ({ kind: 'clone', dataset: `${b.vmDataset}/paths-c` } as const) : ({ kind: 'rollback' } as const),
      destroyNewer: true,
      paused: false,
      ...(mode === 'clone' ? { as: 'vsbed-paths-r' } : {}),
    });

    before(async () => {
      setup = await Setup.create('paths-races', { VIRTSNAP_LOCK_TIMEOUT: '4' });
      const out = await virtsnap(setup, ['snapshot', dataset(), '--name', 'race']);
      assert.equal(out.code, 0, out.stderr);
    });

    it('a newer snapshot that appears after the plan: refused before anything is stopped or destroyed', async () => {
      const prepared = await prepareRestore(request('race', 'rollback'), deps());
      assert.deepEqual(prepared.plan.problems, []);
      await sh('zfs', ['snapshot', `${dataset()}@late`]);
      await assert.rejects(executeRestore(prepared, deps()), /changed since its plan was made: the snapshots newer than .*@race are now .*@late.*nothing was changed/);
      assert.equal(await guest.state(), 'running', 'not stopped');
      assert.ok((await snapshotsOf(dataset())).includes(`${dataset()}@late`), 'the snapshot nobody was shown still exists');
      await zfsRetry(['destroy', `${dataset()}@late`]);
    });

    it('a dataset at the clone target that appears after the plan: refused, and it is left as it is', async () => {
      const prepared = await prepareRestore(request('race', 'clone'), deps());
      assert.deepEqual(prepared.plan.problems, []);
      await sh('zfs', ['create', `${b.vmDataset}/paths-c`]);
      writeFileSync(path.join(`/${b.vmDataset}/paths-c`, 'someone-elses'), 'x');
      await assert.rejects(executeRestore(prepared, deps()), /dataset .*paths-c already exists/);
      assert.ok(existsSync(path.join(`/${b.vmDataset}/paths-c`, 'someone-elses')), 'not destroyed: this restore did not make it');
      await destroyDataset(`${b.vmDataset}/paths-c`, 180);
    });

    it('a VM a snapshot run holds: the restore waits for it, then refuses; the run is not disturbed', async () => {
      const pre = await runProgram(hooks.pre, [], setup.env(sanoidEnv(dataset(), 'held', 'pre')));
      assert.equal(pre.code, 0, pre.stderr);
      try {
        const prepared = await prepareRestore(request('race', 'rollback'), deps());
        // Planned while frozen: the plan itself already says so.
        assert.match(prepared.plan.problems.join(' '), /is held by a snapshot run/);
        // Planned before the freeze (a person read it meanwhile): the hold refuses.
        const early = { ...prepared, plan: { ...prepared.plan, problems: [] } };
        await assert.rejects(executeRestore(early, deps()), /is held by run .*held.*nothing was changed/);
      } finally {
        await sh('zfs', ['snapshot', `${dataset()}@held_hourly`]);
        const post = await runProgram(hooks.post, [], setup.env(sanoidEnv(dataset(), 'held', 'post')));
        assert.equal(post.code, 0, post.stderr);
      }
      await assertBack(setup);
    });

    it('with the holds released, the same rollback restores in place, whole', async () => {
      await guest.stop();
      const offset = guest.consoleSize();
      const prepared = await prepareRestore(request('race', 'rollback'), deps());
      const result = await executeRestore(prepared, deps());
      assert.match(result.messages.join('\n'), /vsbed-paths: running/);
      assertWhole(await guest.watch(offset), 'the rollback');
      assert.deepEqual(setup.journalFiles(), [], 'the restore let go of its holds');
      originals = await guest.sources();
    });
  });

  describe('a damaged journal entry', () => {
    it('blocks nothing but its own domain: a run through the hooks goes on; status, check and doctor name it', async () => {
      const setup = await Setup.create('paths-damaged');
      mkdirSync(path.join(setup.stateDir, 'journal'), { recursive: true, mode: 0o700 });
      const damaged = path.join(setup.stateDir, 'journal', '0badc0de-0000-4000-8000-000000000000.json');
      writeFileSync(damaged, '{"format": "virtsnap-journ', { mode: 0o600 });
      const { pre, post } = await hooksRun(setup, 'dmg');
      assert.equal(pre.code, 0, pre.stderr);
      assert.equal(post.code, 0, post.stderr);
      assert.equal((await setup.dumps()).length, 1, 'the guest was frozen and dumped');
      await assertBack(setup);
      const status = await virtsnap(setup, ['status']);
      assert.match(status.stdout, /0badc0de-0000-4000-8000-000000000000 .*JOURNAL DAMAGED/);
      const doctor = await virtsnap(setup, ['doctor']);
      assert.match(doctor.stdout, /^FAIL journal: journal entry .*0badc0de.* is damaged \(not JSON\)/m);
      // check watches the datasets with our hooks in sanoid.conf.
      mkdirSync(setup.sanoidDir, { recursive: true });
      writeFileSync(path.join(setup.sanoidDir, 'sanoid.conf'), setup.section(dataset()));
      const check = await virtsnap(setup, ['check']);
      assert.equal(check.code, 2, check.stdout);
      assert.match(check.stdout, /^VIRTSNAP CRITICAL: 0badc0de-0000-4000-8000-000000000000: its journal entry is damaged/);
      rmSync(damaged);
    });
  });

  describe('RAM inside the snapshot on a pool too full for it', () => {
    it('the VM is not frozen (one ERROR line names it), its snapshot is taken; check says the RAM does not fit', async () => {
      const setup = await Setup.create('paths-full', { VIRTSNAP_STORE: 'dataset' });
      mkdirSync(setup.sanoidDir, { recursive: true });
      writeFileSync(path.join(setup.sanoidDir, 'sanoid.conf'), setup.section(dataset()));
      const used = Number((await sh('zfs', ['get', '-H', '-p', '-o', 'value', 'used', dataset()])).trim());
      // Room for the disks and a little more, far from a 96 MiB guest's RAM.
      await sh('zfs', ['set', `quota=${used + 24 * 1024 * 1024}`, dataset()]);
      try {
        const { pre, post } = await hooksRun(setup, 'full');
        assert.equal(pre.code, 0, `the others would still be frozen: ${pre.stderr}`);
        assert.match(pre.stderr, /ERROR: domain="vsbed-paths" .*domain "vsbed-paths" gets no RAM this run: its dump may take \d+ MiB and \/\S+ has \d+ MiB left for it/);
        assert.equal(post.code, 0, post.stderr);
        assert.ok((await snapshotsOf(dataset())).includes(`${dataset()}@full_hourly`), 'the snapshot is taken, without RAM');
        await assertBack(setup);
        const check = await virtsnap(setup, ['check']);
        assert.equal(check.code, 2, check.stdout);
        assert.match(check.stdout, /vsbed-paths has no RAM dump/);
        const doctor = await virtsnap(setup, ['doctor']);
        assert.match(doctor.stdout, /^FAIL space: .* free in pool .*the next run's dumps of 1 VM\(s\) take/m);
      } finally {
        await sh('zfs', ['set', 'quota=none', dataset()]);
      }
    });
  });

  describe('a pause-mode dump restored by hand', () => {
    it('says the guest was running: a plain `virsh restore` brings it back running, whole', async () => {
      const setup = await Setup.create('paths-pause');
      const out = await virtsnap(setup, ['snapshot', dataset(), '--name', 'byhand', '--mode', 'pause']);
      assert.equal(out.code, 0, out.stderr);
      await assertBack(setup);
      const dump = (await setup.dumps())[0]!;
      // The stored copy (gzip by default): header and XML as they are, was_running included.
      assert.equal(readSaveImageHeader(dump.manifest.memoryFile)?.wasRunning, true);
      assertWhole(await restoreOnClone(guest, dump.manifest.memoryFile, `${dataset()}@byhand`, {}, []), 'a plain virsh restore of the pause-mode dump');
      await guest.start();
      originals = await guest.sources();
    });
  });
});

/** Every file under `dir`. */
function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name))
    .filter((f) => statSync(f).size < 64 * 1024 * 1024);
}
