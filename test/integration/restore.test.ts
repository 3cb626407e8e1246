// One-off snapshots and restores on the bed: a restored guest continues its
// counter from the dump and the oracle stays silent, beside the original
// (--clone --as) and in its place (--rollback).
import assert from 'node:assert/strict';
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { snapshotNames, type Manifest } from '../../lib/manifest.js';
import { assertWhole, bed, consoleMark, destroyDataset, Guest, lastTick, mountpointOf, removeDomains, sh, virsh, watchDomain, type Bed } from '../helpers/bed.js';
import { hooks, Setup, virtsnap } from '../helpers/virtsnap.js';

function firstTick(text: string): number {
  const m = /TICK (\d+)/.exec(text);
  return m ? Number(m[1]) : -1;
}

describe('virtsnap snapshot and restore', () => {
  let b: Bed;
  let setup: Setup;
  let guest: Guest;
  let off: Guest;
  const dataset = () => `${b.vmDataset}/rs`;
  const clones = () => [`${b.pool}/rs-clone`, `${b.pool}/rs-clone-off`, `${b.pool}/rs-nope`, `${b.pool}/rs-paused`];

  before(async () => {
    b = await bed();
    await removeDomains('vsbed-rs', 'vsbed-rs-off', 'vsbed-rs-clone', 'vsbed-rs-off2', 'vsbed-rs-paused');
    for (const c of clones()) await destroyDataset(c);
    await destroyDataset(dataset());
    setup = await Setup.create('restore');
    guest = await Guest.create({ name: 'vsbed-rs', dataset: dataset() });
    off = await Guest.create({ name: 'vsbed-rs-off', dataset: dataset() });
    await guest.start();
  });
  after(async () => {
    await removeDomains('vsbed-rs-clone', 'vsbed-rs-off2', 'vsbed-rs-paused');
    await guest?.remove();
    await off?.remove();
    for (const c of clones()) await destroyDataset(c);
    await destroyDataset(dataset());
  });

  let counterAtSnapshot = -1;

  it('snapshot: one consistent snapshot now, with its dump, printed as JSON', async () => {
    counterAtSnapshot = lastTick(guest.consoleSince(0));
    const out = await virtsnap(setup, ['snapshot', dataset(), '--name', 'one', '--json']);
    assert.equal(out.code, 0, out.stderr);
    const manifests = JSON.parse(out.stdout) as Manifest[];
    assert.equal(manifests.length, 1, 'one dump: the shut-off guest has no RAM');
    assert.deepEqual(manifests[0]!.snapshots.map((r) => r.name), [`${dataset()}@one`]);
    assert.equal(await guest.state(), 'running');
    const again = await virtsnap(setup, ['snapshot', dataset(), '--name', 'one']);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /already exists/);
  });

  it('restore --clone --as: the clone runs beside the untouched original and continues silently', async () => {
    const originals = await guest.sources();
    const mark = await consoleMark('vsbed-rs-clone');
    const out = await virtsnap(setup, ['restore', `${dataset()}@one`, '--clone', `${b.pool}/rs-clone`, '--as', 'vsbed-rs-clone']);
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, /vsbed-rs-clone: running/);
    assert.equal(await guest.state(), 'running');
    assert.deepEqual(await guest.sources(), originals, 'the original is untouched');
    const clone = (await virsh('domblklist', 'vsbed-rs-clone')).trim();
    assert.ok(clone.includes(await mountpointOf(`${b.pool}/rs-clone`)), clone);
    const w = await watchDomain('vsbed-rs-clone', mark);
    assertWhole(w, 'the clone');
    const text = w.text;
    assert.ok(firstTick(text) >= counterAtSnapshot, `the clone continues the counter (${firstTick(text)} >= ${counterAtSnapshot})`);
    await removeDomains('vsbed-rs-clone');
  });

  it('restore --rollback refuses while newer snapshots exist, then with --yes --destroy-newer restores in place silently', async () => {
    const second = await virtsnap(setup, ['snapshot', dataset(), '--name', 'two']);
    assert.equal(second.code, 0, second.stderr);
    const refused = await virtsnap(setup, ['restore', `${dataset()}@one`, '--rollback']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, new RegExp(`newer snapshot\\(s\\): ${dataset()}@two`));
    assert.equal(await guest.state(), 'running', 'a refusal changes nothing');

    const dry = await virtsnap(setup, ['restore', `${dataset()}@one`, '--rollback', '--destroy-newer', '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    const plan = JSON.parse(dry.stdout) as { stop: string[]; newer: string[] };
    assert.deepEqual(plan.stop, ['vsbed-rs'], 'the rollback stops the running guest');
    assert.deepEqual(plan.newer, [`${dataset()}@two`]);
    // Stopped here rather than by restore, so that the console is settled
    // before the restored guest's first line (virtlogd appends late lines).
    await guest.stop();
    const offset = guest.consoleSize();
    const out = await virtsnap(setup, ['restore', `${dataset()}@one`, '--rollback', '--yes', '--destroy-newer']);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(await guest.state(), 'running');
    const w = await guest.watch(offset);
    assertWhole(w, 'the rollback');
    assert.ok(firstTick(w.text) >= counterAtSnapshot);
  });

  it('a shut-off VM restores its disks and definition, and says there was no RAM', async () => {
    const out = await virtsnap(setup, ['restore', `${dataset()}@one`, '--domain', 'vsbed-rs-off', '--clone', `${b.pool}/rs-clone-off`, '--as', 'vsbed-rs-off2']);
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, /no RAM dump/);
    assert.equal((await virsh('domstate', 'vsbed-rs-off2')).trim(), 'shut off');
    assert.ok((await virsh('domblklist', 'vsbed-rs-off2')).includes(await mountpointOf(`${b.pool}/rs-clone-off`)));
  });

  it('restore --paused leaves the restored VM paused, to be looked at first', async () => {
    const out = await virtsnap(setup, ['restore', `${dataset()}@one`, '--domain', 'vsbed-rs', '--clone', `${b.pool}/rs-paused`, '--as', 'vsbed-rs-paused', '--paused']);
    assert.equal(out.code, 0, out.stderr);
    assert.equal((await virsh('domstate', 'vsbed-rs-paused')).trim(), 'paused');
    await removeDomains('vsbed-rs-paused');
  });

  it('status shows each VM, its dataset, that it is not on an overlay, and its latest dump with a snapshot (@two was destroyed by the rollback)', async () => {
    const out = await virtsnap(setup, ['status', '--json', dataset()]);
    assert.equal(out.code, 0, out.stderr);
    const rows = JSON.parse(out.stdout) as { name: string; state: string; datasets: string[]; onOverlay: string[]; latestDump: { snapshots: string[] } | null }[];
    const rs = rows.find((r) => r.name === 'vsbed-rs');
    assert.ok(rs, out.stdout);
    assert.equal(rs.state, 'running');
    assert.deepEqual(rs.datasets, [dataset()]);
    assert.deepEqual(rs.onOverlay, []);
    assert.deepEqual(rs.latestDump?.snapshots, [`${dataset()}@one`]);
    assert.equal(rows.find((r) => r.name === 'vsbed-rs-off')?.latestDump, null);
  });

  it('doctor flags the default script_timeout and passes the recommended sanoid.conf', async () => {
    const conf = (extra: Record<string, string>) => setup.section(dataset(), { pruning_script: hooks.prune, ...extra });
    const sanoidConf = path.join(setup.sanoidDir, 'sanoid.conf');
    mkdirSync(setup.sanoidDir, { recursive: true });
    writeFileSync(sanoidConf, conf({}).replace(/^\s*script_timeout = .*\n/m, ''));
    const bad = await virtsnap(setup, ['doctor']);
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.match(bad.stdout, /^FAIL sanoid.conf: .*script_timeout is the default 5 s/m);
    writeFileSync(sanoidConf, conf({ script_timeout: '0' }));
    const good = await virtsnap(setup, ['doctor']);
    assert.equal(good.code, 0, good.stdout + good.stderr);
    assert.match(good.stdout, /^OK {3}libvirt: reachable/m);
    assert.doesNotMatch(good.stdout, /^FAIL/m);
  });

  it('refuses a missing snapshot and a corrupted dump, changing nothing', async () => {
    const missing = await virtsnap(setup, ['restore', `${dataset()}@nope`, '--clone', `${b.pool}/rs-nope`]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /snapshot vsbed\/vm\/rs@nope does not exist/);

    const dump = (await setup.dumps()).find((d) => snapshotNames(d.manifest).includes(`${dataset()}@one`))!;
    const at = Math.floor(dump.manifest.bytes / 2);
    const flipped = readFileSync(dump.manifest.memoryFile).subarray(at, at + 1)[0]! ^ 0xff;
    const fd = openSync(dump.manifest.memoryFile, 'r+');
    writeSync(fd, Buffer.from([flipped]), 0, 1, at);
    closeSync(fd);
    const bad = await virtsnap(setup, ['restore', `${dataset()}@one`, '--clone', `${b.pool}/rs-nope`, '--as', 'vsbed-rs-nope']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /is bad \(sha256/);
    assert.equal((await sh('zfs', ['list', '-H', '-o', 'name', '-r', b.pool])).includes('rs-nope'), false, 'nothing was cloned');
    assert.equal(await guest.state(), 'running');
  });
});
