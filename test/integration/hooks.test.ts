// The pre/post hooks under real sanoid, with writing guests on the bed.
// After every run: the domain is back on its own disks, nothing is left in
// the overlay dir, and the archive holds one dump listing every snapshot of
// the run. Every dump restored onto a clone of each of its snapshots keeps
// the oracle silent.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sha256File } from '../../lib/archive.js';
import { snapshotNames, type ArchivedDump } from '../../lib/manifest.js';
import { assertWhole, bed, destroyDataset, Guest, mountpointOf, removeDomains, restoreOnClone, snapshotsOf, virsh, type Bed, type SanoidVersion } from '../helpers/bed.js';
import { leftovers, Setup } from '../helpers/virtsnap.js';

/** One sanoid --take-snapshots run; returns the snapshots it created under `root`. */
async function takeSnapshots(setup: Setup, version: SanoidVersion, conf: string, root: string, hoursAhead: number): Promise<string[]> {
  const before: string[] = await snapshotsOf(root, true).catch(() => []);
  const out = await setup.sanoid(version, conf, ['--take-snapshots', '--verbose'], hoursAhead);
  assert.equal(out.code, 0, `sanoid ${version} failed: ${out.stderr}`);
  assert.doesNotMatch(out.stderr, /WARN: (pre|post)_snapshot_script failed/, `a hook failed:\n${out.stderr}`);
  const after = await snapshotsOf(root, true);
  return after.filter((s) => !before.includes(s));
}

async function assertThawed(setup: Setup, guest: Guest, originals: Record<string, string>): Promise<void> {
  assert.deepEqual(await guest.sources(), originals, `${guest.name} must be back on its own disks`);
  assert.equal(await guest.state(), 'running');
  assert.deepEqual(leftovers(setup.overlayDir, guest.name), [], 'no overlay or memory file may remain');
  assert.deepEqual(setup.journalFiles(), [], 'the journal must be empty after post');
}

async function dumpsOf(setup: Setup, guest: Guest): Promise<ArchivedDump[]> {
  return (await setup.dumps()).filter((d) => d.manifest.domain.name === guest.name);
}

/** Restores `dump` onto a clone of each of `snapshots` (by default its first: a run's snapshots are taken at one instant). */
async function assertRestoresSilently(guest: Guest, dump: ArchivedDump, snapshots = snapshotNames(dump.manifest).slice(0, 1)): Promise<void> {
  for (const snapshot of snapshots) {
    assertWhole(await restoreOnClone(guest, dump.manifest.memoryFile, snapshot), `dump ${dump.manifest.id} on ${snapshot}`);
  }
  await guest.start();
}

describe('pre/post snapshot hooks under sanoid', () => {
  let b: Bed;
  before(async () => {
    b = await bed();
  });

  for (const version of ['2.1.0', '2.2.0'] as SanoidVersion[]) {
    describe(`sanoid ${version}: one writing guest, several runs`, () => {
      const dataset = () => `${b.vmDataset}/hooks-${version.replace(/\./g, '')}`;
      let guest: Guest;
      let setup: Setup;

      before(async () => {
        await removeDomains(`vsbed-hooks-${version.replace(/\./g, '')}`);
        await destroyDataset(dataset());
        setup = await Setup.create(`hooks-${version}`);
        guest = await Guest.create({ name: `vsbed-hooks-${version.replace(/\./g, '')}`, dataset: dataset() });
        await guest.start();
      });
      after(async () => {
        await guest?.remove();
        await destroyDataset(dataset());
      });

      it('freezes before each snapshot, thaws after it, and archives one dump per run', async () => {
        const originals = await guest.sources();
        const conf = setup.section(dataset());
        for (const [run, hoursAhead] of [0, 1, 2].entries()) {
          const created = await takeSnapshots(setup, version, conf, dataset(), hoursAhead);
          assert.ok(created.length >= 1, `run ${run} took no snapshot`);
          await assertThawed(setup, guest, originals);
          const dumps = (await dumpsOf(setup, guest));
          assert.equal(dumps.length, run + 1, 'one dump per run');
          const dump = dumps[dumps.length - 1]!;
          assert.deepEqual(snapshotNames(dump.manifest).sort(), [...created].sort(), 'the dump lists every snapshot of its run');
          assert.equal(statSync(dump.manifest.memoryFile).mode & 0o777, 0o600);
          assert.equal(statSync(path.dirname(dump.manifest.memoryFile)).mode & 0o777, 0o700);
          const { sha256, bytes } = await sha256File(dump.manifest.memoryFile);
          assert.equal(sha256, dump.manifest.sha256);
          assert.equal(bytes, dump.manifest.bytes);
          const metaXml = path.join(await mountpointOf(dataset()), '.virtsnap', guest.name, 'domain.xml');
          assert.ok(existsSync(metaXml), 'domain XML is saved inside the dataset');
        }
      });

      it('every dump restores silently; the first onto a clone of each of its snapshots (hourly and daily of one instant)', async () => {
        const dumps = (await dumpsOf(setup, guest));
        assert.equal(dumps.length, 3);
        await assertRestoresSilently(guest, dumps[0]!, snapshotNames(dumps[0]!.manifest));
        for (const dump of dumps.slice(1)) await assertRestoresSilently(guest, dump);
      });
    });
  }

  describe('sanoid 2.1.0: two guests in one dataset, a guest with two disks and a cdrom, a shut-off guest', () => {
    const dataset = () => `${b.vmDataset}/shared`;
    let setup: Setup;
    let guests: Guest[] = [];
    let off: Guest;

    before(async () => {
      await removeDomains('vsbed-shared-a', 'vsbed-shared-b', 'vsbed-shared-off');
      await destroyDataset(dataset());
      setup = await Setup.create('shared');
      guests = [
        await Guest.create({ name: 'vsbed-shared-a', dataset: dataset() }),
        await Guest.create({
          name: 'vsbed-shared-b',
          dataset: dataset(),
          disks: [
            { target: 'vda', format: 'qcow2' },
            { target: 'vdb', format: 'raw' },
          ],
          cdrom: true,
        }),
      ];
      // Two guests in one dataset must not share image names.
      off = await Guest.create({ name: 'vsbed-shared-off', dataset: `${dataset()}/off`, nvram: true });
      for (const g of guests) await g.start();
    });
    after(async () => {
      for (const g of [...guests, off]) await g?.remove();
      await destroyDataset(dataset());
    });

    it('freezes both guests, both disks, leaves the cdrom alone, records the shut-off guest', async () => {
      const originals = await Promise.all(guests.map((g) => g.sources()));
      const conf = setup.section(dataset(), { recursive: 'zfs' });
      const created = await takeSnapshots(setup, '2.1.0', conf, dataset(), 0);
      for (const [i, g] of guests.entries()) {
        await assertThawed(setup, g, originals[i]!);
        const dumps = (await dumpsOf(setup, g));
        assert.equal(dumps.length, 1);
        assert.deepEqual(snapshotNames(dumps[0]!.manifest).sort(), created.filter((s) => s.startsWith(`${dataset()}@`)).sort());
      }
      const b2 = (await dumpsOf(setup, guests[1]!))[0]!;
      assert.deepEqual(b2.manifest.disks.map((d) => d.target).sort(), ['vda', 'vdb'], 'the cdrom is not snapshotted');
      assert.equal((await dumpsOf(setup, off)).length, 0, 'a shut-off guest has no RAM to dump');
      const offXml = path.join(await mountpointOf(`${dataset()}/off`), '.virtsnap', off.name, 'domain-inactive.xml');
      assert.match(readFileSync(offXml, 'utf8'), /<name>vsbed-shared-off<\/name>/);
      const nvramCopy = path.join(path.dirname(offXml), 'nvram.fd');
      assert.ok(readFileSync(nvramCopy).equals(readFileSync(off.nvramPath())), 'the UEFI variables travel in the snapshot');
      for (const g of guests) await assertRestoresSilently(g, (await dumpsOf(setup, g))[0]!);
    });
  });

  describe('sanoid 2.2.0: a paused guest', () => {
    const dataset = () => `${b.vmDataset}/paused`;
    let setup: Setup;
    let guest: Guest;

    before(async () => {
      await removeDomains('vsbed-paused');
      await destroyDataset(dataset());
      setup = await Setup.create('paused');
      guest = await Guest.create({ name: 'vsbed-paused', dataset: dataset() });
      await guest.start();
      await virsh('suspend', guest.name);
    });
    after(async () => {
      await guest?.remove();
      await destroyDataset(dataset());
    });

    it('is frozen without --live, stays paused, and its dump restores silently', async () => {
      const originals = await guest.sources();
      const created = await takeSnapshots(setup, '2.2.0', setup.section(dataset()), dataset(), 0);
      assert.equal(await guest.state(), 'paused', 'virtsnap must not resume a guest the user paused');
      assert.deepEqual(await guest.sources(), originals);
      assert.deepEqual(leftovers(setup.overlayDir, guest.name), []);
      const [dump] = (await dumpsOf(setup, guest));
      assert.deepEqual(snapshotNames(dump!.manifest).sort(), [...created].sort());
      await assertRestoresSilently(guest, dump!);
    });
  });

  describe('sanoid 2.2.0: recursive = zfs freezes the guests of every child dataset', () => {
    const parent = () => `${b.vmDataset}/tree`;
    let setup: Setup;
    let guests: Guest[] = [];

    before(async () => {
      await removeDomains('vsbed-tree-1', 'vsbed-tree-2');
      await destroyDataset(parent());
      setup = await Setup.create('tree');
      guests = [
        await Guest.create({ name: 'vsbed-tree-1', dataset: `${parent()}/one` }),
        await Guest.create({ name: 'vsbed-tree-2', dataset: `${parent()}/two` }),
      ];
      for (const g of guests) await g.start();
    });
    after(async () => {
      for (const g of guests) await g?.remove();
      await destroyDataset(parent());
    });

    it('one hook call for the parent freezes both children; each dump names its child snapshots', async () => {
      const originals = await Promise.all(guests.map((g) => g.sources()));
      const conf = setup.section(parent(), { recursive: 'zfs' });
      const created = await takeSnapshots(setup, '2.2.0', conf, parent(), 0);
      for (const [i, g] of guests.entries()) {
        await assertThawed(setup, g, originals[i]!);
        const child = g.options.dataset;
        const dumps = (await dumpsOf(setup, g));
        assert.equal(dumps.length, 1);
        assert.deepEqual(snapshotNames(dumps[0]!.manifest).sort(), created.filter((s) => s.startsWith(`${child}@`)).sort());
        await assertRestoresSilently(g, dumps[0]!);
      }
    });
  });
});
