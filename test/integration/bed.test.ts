// Proves the test bed: real sanoid runs hooks with the documented variables,
// and the guest's oracle tells a consistent restore from an inconsistent one.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { assertWhole, bed, destroyDataset, Guest, mismatches, removeDomains, runSanoid, sh, snapshotsOf, virsh, writeEnvLoggingHook, zfsRetry, type Bed, type SanoidVersion } from '../helpers/bed.js';

const versions: SanoidVersion[] = ['2.1.0', '2.2.0'];

describe('test bed', () => {
  let b: Bed;
  let guest: Guest;
  let dataset: string;
  let scratch: string;

  before(async () => {
    b = await bed();
    dataset = `${b.vmDataset}/bed`;
    await removeDomains('vsbed-bed');
    await destroyDataset(dataset);
    guest = await Guest.create({ name: 'vsbed-bed', dataset });
    await guest.start();
    scratch = mkdtempSync('/tmp/vsbed-test-');
  });

  after(async () => {
    await guest?.remove();
    if (dataset) await destroyDataset(dataset);
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  for (const version of versions) {
    it(`sanoid ${version} snapshots the guest's dataset and passes SANOID_* to its hooks`, async () => {
      const log = path.join(scratch, `env-${version}.log`);
      const hook = path.join(scratch, 'log-env.sh');
      writeEnvLoggingHook(hook, log);
      const conf = `[${dataset}]
  use_template = vm
[template_vm]
  autosnap = yes
  autoprune = no
  hourly = 2
  daily = 1
  monthly = 0
  yearly = 0
  pre_snapshot_script = ${hook}
  post_snapshot_script = ${hook}
  script_timeout = 60
`;
      const before = await snapshotsOf(dataset);
      const out = await runSanoid(version, conf, ['--take-snapshots', '--verbose'], { hoursAhead: version === '2.1.0' ? 0 : 26 });
      assert.equal(out.code, 0, `sanoid failed: ${out.stderr}`);
      const created = (await snapshotsOf(dataset)).filter((s) => !before.includes(s));
      assert.equal(created.length, 2, `expected one daily and one hourly, got ${created.join(', ')}`);
      assert.ok(created.some((s) => /_daily$/.test(s)) && created.some((s) => /_hourly$/.test(s)));

      const calls = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, string>);
      assert.equal(calls.length, 2, 'one pre and one post for both types');
      const [pre, post] = calls as [Record<string, string>, Record<string, string>];
      const names = created.map((s) => s.slice(s.indexOf('@') + 1));
      for (const call of [pre, post]) {
        assert.equal(call.SANOID_TARGET, dataset);
        assert.equal(call.SANOID_TARGETS, dataset);
        assert.deepEqual(call.SANOID_SNAPNAMES!.split(',').sort(), names.sort());
        assert.equal(call.SANOID_TYPES, 'daily,hourly');
      }
      assert.equal(pre.SANOID_SCRIPT, 'pre');
      assert.equal(post.SANOID_SCRIPT, 'post');
      assert.equal(post.SANOID_PRE_FAILURE, '0');
      // sanoid's known quirk (#798): post's SANOID_SNAPNAME carries the dataset.
      assert.match(pre.SANOID_SNAPNAME!, /^autosnap_.*_daily$/);
      assert.equal(post.SANOID_SNAPNAME, `${dataset}@${pre.SANOID_SNAPNAME}`);
    });
  }

  it('oracle: RAM + disk of one instant restore silently; RAM with a later disk is caught', async () => {
    const mem = path.join(b.dir, 'oracle-test.save');
    const overlay = path.join(b.overlayDir, 'vsbed-bed.oracle.qcow2');
    rmSync(mem, { force: true });
    rmSync(overlay, { force: true });
    const vda = (await guest.sources()).vda!;

    // The flow virtsnap automates, by hand: external disk+memory snapshot,
    // ZFS snapshot of the now quiet dataset, then commit back and pivot.
    await virsh('snapshot-create-as', guest.name, '--name', 'oracle', '--no-metadata', '--live',
      '--memspec', `file=${mem},snapshot=external`, '--diskspec', `vda,snapshot=external,file=${overlay}`);
    assert.equal((await guest.sources()).vda, overlay);
    await sh('zfs', ['snapshot', `${dataset}@oracle`]);
    await virsh('blockcommit', guest.name, 'vda', '--active', '--shallow', '--pivot', '--wait', '--timeout', '60');
    assert.equal((await guest.sources()).vda, vda);
    rmSync(overlay, { force: true });

    // The guest goes on writing, so its disk moves past the snapshot.
    await guest.oracleAfter(guest.consoleSize(), 2);
    await guest.stop();

    // Consistent: the dataset rolled back to the snapshot + its RAM.
    await zfsRetry(['rollback', `${dataset}@oracle`]);
    let offset = guest.consoleSize();
    await virsh('restore', mem, '--running');
    let text = await guest.oracleAfter(offset, 3);
    assert.deepEqual(mismatches(text), [], 'a consistent restore must be silent');

    // Inconsistent: the same RAM with a disk that has moved on.
    await guest.oracleAfter(guest.consoleSize(), 2);
    await guest.stop();
    offset = guest.consoleSize();
    await virsh('restore', mem, '--running');
    text = await guest.oracleAfter(offset, 2);
    assert.equal(mismatches(text).length >= 1, true, `the oracle must notice RAM and disk from different instants:\n${text}`);
    rmSync(mem, { force: true });
  });

  it('memory oracle: a whole RAM image restores silently; one page with an older write is named, and only that', async () => {
    const whole = path.join(b.dir, 'memoracle-test.save');
    const damaged = path.join(b.dir, 'memoracle-lost.save');
    rmSync(whole, { force: true });
    // With the guest paused for the whole save every page is sent once: the image is whole. The
    // save stops the guest, so the disk as it is now is of the image's instant: each restore starts from it.
    await virsh('save', guest.name, whole);
    await sh('zfs', ['snapshot', `${dataset}@memoracle`]);
    try {
      writeFileSync(damaged, readFileSync(whole));
      const page = loseOneWrite(damaged);
      let offset = guest.consoleSize();
      await virsh('restore', whole, '--running');
      assertWhole(await guest.watch(offset), 'a whole RAM image');
      await guest.stop();
      await zfsRetry(['rollback', `${dataset}@memoracle`]);
      // The same image with one page as it was a sweep earlier: what a save that missed the page's last write holds.
      offset = guest.consoleSize();
      await virsh('restore', damaged, '--running');
      const w = await guest.watch(offset, { timeoutMs: 30_000 });
      const lost = w.problems.filter((p) => p.startsWith('memory oracle: a page lost a write'));
      assert.equal(lost.length, 1, `exactly the one page: ${w.problems.join(' | ')}`);
      assert.match(lost[0]!, new RegExp(`VSBED MEM LOST page=\\d+ expected=${page.expected.toString(16)} found=${page.found.toString(16)},`));
      assert.deepEqual(mismatches(w.text), [], 'the disk oracle cannot see it');
    } finally {
      rmSync(whole, { force: true });
      rmSync(damaged, { force: true });
      await guest.stop();
      await zfsRetry(['destroy', `${dataset}@memoracle`]);
      await guest.start();
    }
  });
});

/**
 * Finds the first page of the memory oracle's in a raw save image (its stamp
 * in the first, middle and last word: test/bed/memoracle/memoracle.c) and
 * sets it one sweep back, in place: a lost write.
 */
function loseOneWrite(file: string): { expected: bigint; found: bigint } {
  const image = readFileSync(file);
  const tag = Buffer.from([0x44, 0x45, 0x42, 0x53, 0x56]); // bytes 3..7 of a little-endian stamp
  for (let at = image.indexOf(tag); at >= 0; at = image.indexOf(tag, at + 1)) {
    const p = at - 3;
    if (p < 0 || p + 4096 > image.length) continue;
    const stamp = image.readBigUInt64LE(p);
    if (image.readBigUInt64LE(p + 2048) !== stamp || image.readBigUInt64LE(p + 4088) !== stamp) continue;
    const older = stamp - 1n;
    for (const o of [0, 2048, 4088]) image.writeBigUInt64LE(older, p + o);
    writeFileSync(file, image);
    // The guest checks the page against its next sweep's predecessor: the stamp the image held.
    return { expected: stamp, found: older };
  }
  throw new Error(`no page of the memory oracle in ${file}`);
}
