// syncoid on the bed (issue 12): the bed's pool stands for the hypervisor,
// its second pool for the backup host. Debian's syncoid 2.1.0 replicates a
// dataset from one to the other through zfs-fuse, and what arrives is the
// source's: the same snapshots (by guid), files, modes and mtimes.
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, readdirSync, readFileSync, statSync, utimesSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { backup, bed, destroyDataset, mountpointOf, runSyncoid, sh, snapshotsOf, type Backup, type Bed, type SyncoidRun } from '../helpers/bed.js';

/** One snapshot's property, raw (-p: zfs-fuse prints a guid as "15.0E" without it). */
async function prop(name: string, property: string): Promise<string> {
  return (await sh('zfs', ['get', '-H', '-p', '-o', 'value', property, name])).trim();
}

/** Short snapshot names of `dataset` with their guids, oldest first. */
async function guids(dataset: string): Promise<[string, string][]> {
  const out: [string, string][] = [];
  for (const s of await snapshotsOf(dataset)) out.push([s.slice(s.indexOf('@') + 1), await prop(s, 'guid')]);
  return out;
}

/** Every entry under `dir`: path, mode, mtime (ns), size, and a file's bytes. */
function tree(dir: string): string[] {
  const lines: string[] = [];
  const walk = (rel: string): void => {
    for (const name of readdirSync(path.join(dir, rel)).sort()) {
      const r = path.join(rel, name);
      const st = statSync(path.join(dir, r), { bigint: true });
      const content = st.isFile() ? readFileSync(path.join(dir, r)).toString('base64') : '';
      lines.push(`${r} ${(st.mode & 0o7777n).toString(8)} ${st.mtimeNs} ${st.size} ${content}`);
      if (st.isDirectory()) walk(r);
    }
  };
  walk('');
  return lines;
}

function ok(out: SyncoidRun): void {
  assert.equal(out.code, 0, `syncoid failed (${out.code}): ${out.stderr}\n${out.stdout}`);
}

describe('syncoid to the backup pool', () => {
  let b: Bed;
  let k: Backup;
  let src: string;
  let dst: string;
  let dstProps: string;
  let clone: string;
  let srcDir: string;

  before(async () => {
    b = await bed();
    k = await backup();
    src = `${b.vmDataset}/syn-src`;
    dst = `${k.pool}/syn-dst`;
    dstProps = `${k.pool}/syn-dst-p`;
    clone = `${k.pool}/syn-dst-clone`;
    for (const ds of [clone, dst, dstProps, src]) await destroyDataset(ds);
    await sh('zfs', ['create', src]);
    srcDir = await mountpointOf(src);
    writeFileSync(path.join(srcDir, 'f'), 'one\n');
    // Like a RAM dump in the archive: a 0600 file in a 0700 dir, an old mtime.
    mkdirSync(path.join(srcDir, 'dumps'), { mode: 0o700 });
    chmodSync(path.join(srcDir, 'dumps'), 0o700);
    writeFileSync(path.join(srcDir, 'dumps', 'ram.save'), 'secret\n', { mode: 0o600 });
    utimesSync(path.join(srcDir, 'dumps', 'ram.save'), new Date('2020-01-02T03:04:05Z'), new Date('2020-01-02T03:04:05Z'));
    await sh('zfs', ['snapshot', `${src}@s1`]);
    await sh('zfs', ['set', 'virtsnap:x=one', `${src}@s1`]);
    writeFileSync(path.join(srcDir, 'f'), 'two\n');
    await sh('zfs', ['snapshot', `${src}@s2`]);
    await sh('zfs', ['set', 'virtsnap:x=two', `${src}@s2`]);
  });

  after(async () => {
    for (const ds of [clone, dst, dstProps, src]) if (ds) await destroyDataset(ds);
  });

  it('full, then incremental: same guids, mounted under the backup pool, same files, modes and mtimes', async () => {
    ok(await runSyncoid(src, dst, ['--no-sync-snap']));
    assert.deepEqual(await guids(dst), await guids(src));
    assert.equal(await prop(dst, 'mounted'), 'yes');
    const dstDir = await mountpointOf(dst);
    // Inherited from the backup pool's root: the received copy never lands on the source's path.
    assert.equal(dstDir, path.join(await mountpointOf(k.pool), 'syn-dst'));
    assert.deepEqual(tree(dstDir), tree(srcDir));
    assert.equal(statSync(path.join(dstDir, 'dumps')).mode & 0o777, 0o700);
    assert.equal(statSync(path.join(dstDir, 'dumps', 'ram.save')).mode & 0o777, 0o600);

    // The backup host writes into its copy and clones a received snapshot.
    writeFileSync(path.join(dstDir, 'written-on-target'), 'x\n');
    await sh('zfs', ['clone', `${dst}@s2`, clone]);
    assert.equal(await mountpointOf(clone), path.join(await mountpointOf(k.pool), 'syn-dst-clone'));
    assert.equal(readFileSync(path.join(await mountpointOf(clone), 'f'), 'utf8'), 'two\n');

    writeFileSync(path.join(srcDir, 'f'), 'three\n');
    await sh('zfs', ['snapshot', `${src}@s3`]);
    const out = await runSyncoid(src, dst, ['--no-sync-snap']);
    ok(out);
    assert.deepEqual(await guids(dst), await guids(src));
    assert.deepEqual((await guids(dst)).map(([n]) => n), ['s1', 's2', 's3']);
    // syncoid rolls the target back to the newest common snapshot
    // (`zfs rollback -R dst@s2`, then `zfs receive -F`): the write is gone.
    assert.ok(!existsSync(path.join(dstDir, 'written-on-target')), 'the file written on the target survived the incremental');
    assert.deepEqual(tree(dstDir), tree(srcDir));
    // The clone of s2 (the rollback's own snapshot, so -R spares it) lives on.
    assert.equal(await prop(clone, 'origin'), `${dst}@s2`);
    assert.equal(readFileSync(path.join(await mountpointOf(clone), 'f'), 'utf8'), 'two\n');
  });

  it("snapshots' user properties arrive with --sendoptions=p only", async () => {
    // Default send: none of the source's user properties.
    for (const s of ['s1', 's2']) assert.equal(await prop(`${dst}@${s}`, 'virtsnap:x'), '-');
    ok(await runSyncoid(src, dstProps, ['--no-sync-snap', '--sendoptions=p']));
    assert.equal(await prop(`${dstProps}@s1`, 'virtsnap:x'), 'one');
    assert.equal(await prop(`${dstProps}@s2`, 'virtsnap:x'), 'two');
    assert.equal(await prop(`${dstProps}@s3`, 'virtsnap:x'), '-');
    // A -p stream carries the properties of all the dataset's snapshots:
    // a change to one already received arrives with the next incremental.
    await sh('zfs', ['set', 'virtsnap:x=one-later', `${src}@s1`]);
    await sh('zfs', ['set', 'virtsnap:x=three', `${src}@s3`]);
    await sh('zfs', ['snapshot', `${src}@s4`]);
    ok(await runSyncoid(src, dstProps, ['--no-sync-snap', '--sendoptions=p']));
    assert.deepEqual(await guids(dstProps), await guids(src));
    assert.equal(await prop(`${dstProps}@s1`, 'virtsnap:x'), 'one-later');
    assert.equal(await prop(`${dstProps}@s3`, 'virtsnap:x'), 'three');
  });

  it('recursive (-r) with its own sync snapshot: every child arrives with the same snapshots', async () => {
    const child = `${src}/disk`;
    await sh('zfs', ['create', child]);
    writeFileSync(path.join(await mountpointOf(child), 'img'), 'disk\n');
    await sh('zfs', ['snapshot', '-r', `${src}@r1`]);
    // Into the target that already has src: the child arrives in full, src incrementally.
    const out = await runSyncoid(src, dst, ['-r']);
    ok(out);
    for (const [s, d] of [[src, dst], [child, `${dst}/disk`]] as const) {
      const names = (await guids(d)).map(([n]) => n);
      assert.ok(names.includes('r1') && names.some((n) => n.startsWith('syncoid_')), `${d}: ${names.join(' ')}`);
      assert.deepEqual(await guids(d), await guids(s));
    }
    assert.equal(readFileSync(path.join(await mountpointOf(`${dst}/disk`), 'img'), 'utf8'), 'disk\n');
  });
});
