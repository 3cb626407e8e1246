// The RAM archive's lifecycle under real sanoid: a dump lives exactly as long
// as one of its snapshots. Then gc after snapshots destroyed by hand, and
// verify on a good, a truncated and a corrupted dump.
import assert from 'node:assert/strict';
import { closeSync, copyFileSync, existsSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { run } from '../../lib/exec.js';
import { snapshotNames, type Manifest } from '../../lib/manifest.js';
import { bed, destroyDataset, Guest, hookCommand, removeDomains, snapshotsOf, zfsRetry, type Bed, type SanoidVersion } from '../helpers/bed.js';
import { hooks, Setup, virtsnap } from '../helpers/virtsnap.js';

function byName(snapshots: string[], suffix: string): string[] {
  return snapshots.filter((s) => s.endsWith(suffix));
}

describe('prune hook under sanoid: a dump goes with the last of its snapshots', () => {
  let b: Bed;
  before(async () => {
    b = await bed();
  });

  for (const version of ['2.1.0', '2.2.0'] as SanoidVersion[]) {
    describe(`sanoid ${version}`, () => {
      const v = version.replace(/\./g, '');
      const dataset = () => `${b.vmDataset}/prune-${v}`;
      let setup: Setup;
      let guest: Guest;

      before(async () => {
        await removeDomains(`vsbed-prune-${v}`);
        await destroyDataset(dataset());
        setup = await Setup.create(`prune-${v}`);
        guest = await Guest.create({ name: `vsbed-prune-${v}`, dataset: dataset() });
        await guest.start();
      });
      after(async () => {
        await guest?.remove();
        await destroyDataset(dataset());
      });

      it('hourly+daily share a dump; pruning the hourly keeps it for the daily; pruning the daily deletes it', async () => {
        // Keep sanoid's daily boundary 12 hours away, so only the runs we
        // move past it take a daily, whatever the time of day CI runs at.
        const dailyHour = String((new Date().getUTCHours() + 12) % 24);
        const extra: Record<string, string> = { autoprune: 'yes', hourly: '1', daily: '1', daily_hour: dailyHour, daily_min: '0' };
        extra.pruning_script = hookCommand(hooks.prune, { VIRTSNAP_CONFIG: setup.envFile });
        // sanoid 2.2.0's pre_pruning_script pointed at our prune hook by mistake must do no harm.
        if (version === '2.2.0') extra.pre_pruning_script = hookCommand(hooks.prune, { VIRTSNAP_CONFIG: setup.envFile });
        const conf = setup.section(dataset(), extra);
        const sanoid = async (args: string[], hours: number) => {
          const out = await setup.sanoid(version, conf, [...args, '--verbose'], hours);
          assert.equal(out.code, 0, out.stderr);
          assert.doesNotMatch(out.stderr, /WARN: .*script failed/, out.stderr);
          return out;
        };

        await sanoid(['--take-snapshots'], 0);
        const [a] = (await setup.dumps());
        assert.ok(a);
        assert.equal(a.manifest.snapshots.length, 2, 'run A: one hourly and one daily, one dump');
        const [aHourly] = byName(snapshotNames(a.manifest), '_hourly');
        const [aDaily] = byName(snapshotNames(a.manifest), '_daily');

        await sanoid(['--take-snapshots'], 1);
        await sanoid(['--prune-snapshots'], 1);
        const snaps = await snapshotsOf(dataset());
        assert.ok(!snaps.includes(aHourly!), 'sanoid pruned the first hourly');
        let dumps = (await setup.dumps());
        assert.equal(dumps.length, 2);
        assert.deepEqual(snapshotNames(dumps[0]!.manifest), [aDaily], 'the dump stays, for the daily only');
        assert.ok(existsSync(a.manifest.memoryFile));
        const bDump = dumps[1]!;

        await sanoid(['--take-snapshots'], 25);
        await sanoid(['--prune-snapshots'], 25);
        const left = await snapshotsOf(dataset());
        assert.ok(!left.includes(aDaily!), 'sanoid pruned the first daily');
        dumps = (await setup.dumps());
        assert.equal(dumps.length, 1, 'dumps A (daily gone) and B (hourly gone) are deleted');
        assert.ok(!existsSync(a.manifest.memoryFile) && !existsSync(bDump.manifest.memoryFile));
        assert.deepEqual(snapshotNames(dumps[0]!.manifest).sort(), left.sort(), 'the last dump names exactly the snapshots left');
      });

      it('a prune call for a snapshot without a dump is a quiet no-op', async () => {
        const out = await run(hooks.prune, [], {
          env: setup.env({ SANOID_SCRIPT: 'prune', SANOID_TARGET: dataset(), SANOID_SNAPNAME: 'autosnap_1999-01-01_00:00:00_hourly' }),
        });
        assert.equal(out.stderr, '');
        assert.equal((await setup.dumps()).length, 1);
      });
    });
  }

  describe('gc and verify', () => {
    const dataset = () => `${b.vmDataset}/gc`;
    let setup: Setup;
    let guest: Guest;

    before(async () => {
      await removeDomains('vsbed-gc');
      await destroyDataset(dataset());
      // Its own overlay dir: gc also sweeps the overlay dir, which other tests share.
      setup = await Setup.create('gc', { VIRTSNAP_OVERLAY_DIR: path.join(b.dir, 'overlay-gc') });
      guest = await Guest.create({ name: 'vsbed-gc', dataset: dataset() });
      await guest.start();
    });
    after(async () => {
      await guest?.remove();
      await destroyDataset(dataset());
    });

    it('gc drops dumps whose snapshots were destroyed by hand, and half-written files', async () => {
      for (const name of ['one', 'two']) {
        const out = await virtsnap(setup, ['snapshot', dataset(), '--name', name]);
        assert.equal(out.code, 0, out.stderr);
      }
      const [one, two] = (await setup.dumps());
      assert.ok(one && two);
      const dir = path.dirname(one.manifest.memoryFile);
      // A copy into the archive that a crash cut short, named as virtsnap names them.
      const part = path.join(dir, '20240101T000000.000Z-deadbeef.save.part');
      writeFileSync(part, Buffer.concat([Buffer.from('LibvirtQemudPart'), Buffer.alloc(200)]));
      // Not virtsnap's naming: reported, never deleted.
      const foreign = path.join(dir, 'crashed.save');
      writeFileSync(foreign, Buffer.concat([Buffer.from('LibvirtQemudPart'), Buffer.alloc(200)]));

      await zfsRetry(['destroy', `${dataset()}@one`]);
      const dry = await virtsnap(setup, ['gc', '--dry-run', '--json']);
      assert.equal(dry.code, 0, dry.stderr);
      const report = JSON.parse(dry.stdout) as { deleted: string[]; removed: string[]; foreign: { path: string }[]; freedBytes: number };
      assert.deepEqual(report.deleted, [one.manifest.id]);
      assert.deepEqual(report.removed, [part]);
      assert.deepEqual(report.foreign.map((f) => f.path), [foreign]);
      assert.ok(existsSync(one.manifest.memoryFile), '--dry-run deletes nothing');

      // A manifest that is not JSON is never a reason to delete anything.
      const broken = path.join(dir, 'broken.json');
      writeFileSync(broken, '{"format": "virtsnap-dump/1", "snapsh');
      const prune = await run(hooks.prune, [], { env: setup.env({ SANOID_SCRIPT: 'prune', SANOID_TARGET: dataset(), SANOID_SNAPNAME: 'never-taken' }) });
      assert.match(prune.stderr, /broken\.json is not readable JSON.*left alone/);
      assert.ok(existsSync(one.manifest.memoryFile), 'a prune call for another snapshot leaves dump one to gc');

      const real = await virtsnap(setup, ['gc']);
      assert.equal(real.code, 0, real.stderr);
      assert.match(real.stdout, /freed \d+\.\d MiB/);
      assert.ok(!existsSync(one.manifest.memoryFile) && !existsSync(one.manifestFile) && !existsSync(part));
      assert.match(real.stdout, /left alone: .*broken\.json/);
      assert.ok(existsSync(broken));
      assert.ok(existsSync(foreign), 'not ours: left alone');
      assert.match(real.stdout, /not ours, left alone: .*crashed\.save/);
      rmSync(broken);
      rmSync(foreign);
      assert.deepEqual((await setup.dumps()).map((d) => d.manifest.id), [two.manifest.id]);
    });

    it('verify: a good dump passes; a truncated one and one with a flipped byte fail', async () => {
      const [good] = (await setup.dumps());
      assert.ok(good);
      const ok = await virtsnap(setup, ['verify', dataset()]);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assert.match(ok.stdout, /^OK +vsbed-gc /m);

      const copy = (id: string): Manifest => {
        const dir = path.dirname(good.manifest.memoryFile);
        const m: Manifest = { ...good.manifest, id, memoryFile: path.join(dir, `${id}.save`), metaDir: null };
        copyFileSync(good.manifest.memoryFile, m.memoryFile);
        writeFileSync(path.join(dir, `${id}.json`), JSON.stringify(m));
        return m;
      };
      const truncated = copy('truncated');
      truncateSync(truncated.memoryFile, 50_000);
      const flipped = copy('flipped');
      const fd = openSync(flipped.memoryFile, 'r+');
      const at = Math.floor(flipped.bytes / 2);
      const byte = Buffer.alloc(1);
      const orig = readFileSync(flipped.memoryFile).subarray(at, at + 1);
      byte[0] = orig[0]! ^ 0xff;
      writeSync(fd, byte, 0, 1, at);
      closeSync(fd);

      const bad = await virtsnap(setup, ['verify', 'vsbed-gc']);
      assert.equal(bad.code, 1);
      const lines = bad.stdout.trim().split('\n');
      assert.equal(lines.length, 3);
      assert.match(lines.find((l) => l.includes('truncated'))!, /^BAD .*(truncated|size|sha256)/);
      assert.match(lines.find((l) => l.includes('flipped'))!, /^BAD .*sha256/);
      assert.match(lines.find((l) => l.includes(good.manifest.id))!, /^OK /);
    });
  });
});
