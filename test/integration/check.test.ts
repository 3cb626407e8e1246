// `virtsnap check` against the real bed: CRITICAL while a running VM has no
// dump and while a VM is on an overlay no run holds; OK after a sanoid run
// and after `recover`.
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { after, before, describe, it } from 'node:test';
import { bed, destroyDataset, Guest, removeDomains, sh, type Bed } from '../helpers/bed.js';
import { cli, hooks, runProgram, sanoidEnv, Setup } from '../helpers/virtsnap.js';

const parsePrometheus = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => { name: string; metrics: { labels?: Record<string, string>; value: string }[] }[];

describe('virtsnap check (Nagios plugin) and the metrics file', () => {
  let b: Bed;
  let setup: Setup;
  let g: Guest;
  let conf: string;
  const dataset = () => `${b.vmDataset}/check`;
  const check = () => runProgram(cli, ['check'], setup.env());

  before(async () => {
    b = await bed();
    await removeDomains('vsbed-check');
    await destroyDataset(dataset());
    setup = await Setup.create('check');
    setup.writeEnv({ VIRTSNAP_METRICS_FILE: path.join(setup.root, 'virtsnap.prom') });
    g = await Guest.create({ name: 'vsbed-check', dataset: dataset() });
    await g.start();
    conf = setup.section(dataset());
    mkdirSync(setup.sanoidDir, { recursive: true });
    writeFileSync(path.join(setup.sanoidDir, 'sanoid.conf'), conf);
  });
  after(async () => {
    await g?.remove();
    await destroyDataset(dataset());
  });

  it('CRITICAL while the running VM has no RAM dump; OK after a sanoid run, with perfdata', async () => {
    const before = await check();
    assert.equal(before.code, 2, before.stdout);
    assert.match(before.stdout, /^VIRTSNAP CRITICAL: vsbed-check has no RAM dump\n$/);
    const run = await setup.sanoid('2.1.0', conf, ['--take-snapshots'], 1);
    assert.equal(run.code, 0, run.stderr);
    const afterRun = await check();
    assert.equal(afterRun.code, 0, afterRun.stdout);
    assert.match(afterRun.stdout, /^VIRTSNAP OK: 1 VM\(s\) on 1 dataset\(s\) have fresh RAM dumps \| 'vsbed-check_dump_age'=\d+s;5400;21600;0\n$/);
    // The run's metrics, as node_exporter's textfile collector reads them.
    const families = parsePrometheus(readFileSync(path.join(setup.root, 'virtsnap.prom'), 'utf8'));
    const sample = (name: string) => families.find((f) => f.name === name)?.metrics.find((m) => m.labels?.domain === 'vsbed-check')?.value;
    assert.ok(Math.abs(Number(sample('virtsnap_last_success_timestamp_seconds')) - Date.now() / 1000) < 600);
    assert.ok(Number(sample('virtsnap_dump_bytes')) > 1_000_000);
    assert.ok(Number(sample('virtsnap_save_seconds')) > 0);
    assert.ok(Number(sample('virtsnap_commit_seconds')) >= 0);
    assert.equal(sample('virtsnap_dumps_total'), '1');
  });

  it('CRITICAL while the VM is on an overlay no run holds; OK after recover', async () => {
    assert.equal((await runProgram(hooks.pre, [], setup.env(sanoidEnv(dataset(), 'left', 'pre')))).code, 0);
    // What a lost journal looks like from outside: a VM on our overlay, nobody holding it.
    const entry = path.join(setup.stateDir, 'journal', `${g.uuid}.json`);
    const saved = readFileSync(entry);
    rmSync(entry);
    const during = await check();
    assert.equal(during.code, 2, during.stdout);
    assert.match(during.stdout, /CRITICAL: vsbed-check on an overlay outside a run/);
    writeFileSync(entry, saved, { mode: 0o600 });
    const rec = await runProgram(cli, ['recover', '--force'], setup.env());
    assert.equal(rec.code, 0, rec.stderr);
    const afterRecover = await check();
    assert.equal(afterRecover.code, 0, afterRecover.stdout);
  });

  it('WARNING for a dump that fails verify and one whose snapshots are gone; OK after gc', async () => {
    const run = await setup.sanoid('2.1.0', conf, ['--take-snapshots'], 3);
    assert.equal(run.code, 0, run.stderr);
    const [oldest, ...rest] = (await setup.dumps()).sort((a, b) => a.manifest.times.archivedAt.localeCompare(b.manifest.times.archivedAt));
    assert.ok(oldest !== undefined && rest.length > 0, 'two dumps');
    // A damaged file (cut short) and snapshots destroyed by hand, without the prune hook.
    truncateSync(oldest.manifest.memoryFile, oldest.manifest.bytes - 4096);
    for (const s of oldest.manifest.snapshots) await sh('zfs', ['destroy', s.name]);
    const warned = await check();
    assert.equal(warned.code, 1, warned.stdout);
    assert.match(warned.stdout, /^VIRTSNAP WARNING: 1 RAM dump\(s\) fail verify \(virtsnap verify\), 1 RAM dump\(s\) whose snapshots are all gone \(virtsnap gc\) \| /);
    const gc = await runProgram(cli, ['gc'], setup.env());
    assert.equal(gc.code, 0, gc.stderr);
    const clean = await check();
    assert.equal(clean.code, 0, clean.stdout);
  });

  it("doctor fails an overlay dir QEMU's user cannot reach, where a freeze really fails with Permission denied", async () => {
    // A 0700 parent: root can write below it, QEMU (libvirt-qemu) cannot enter it.
    const parent = path.join(path.dirname(b.overlayDir), 'closed-check');
    rmSync(parent, { recursive: true, force: true });
    mkdirSync(parent, { mode: 0o700 });
    chmodSync(parent, 0o700);
    const closed = path.join(parent, 'overlay');
    const env = (extra: Record<string, string> = {}) => setup.env({ VIRTSNAP_OVERLAY_DIR: closed, ...extra });
    try {
      const doc = await runProgram(cli, ['doctor'], env());
      assert.equal(doc.code, 1, doc.stdout);
      assert.match(doc.stdout, new RegExp(`^FAIL overlay access: QEMU runs as \\S+ and cannot enter ${parent} \\(mode 700, uid 0\\)`, 'm'));
      const sources = await g.sources();
      const pre = await runProgram(hooks.pre, [], env(sanoidEnv(dataset(), 'closed', 'pre')));
      assert.notEqual(pre.code, 0, pre.stderr);
      assert.match(pre.stderr, /Permission denied/);
      // Refused without harm: on its own disks, running, nothing held.
      assert.deepEqual(await g.sources(), sources);
      assert.equal(await g.state(), 'running');
      assert.deepEqual(setup.journalFiles(), []);
      // Opened for QEMU the way the Debian package lays out /var/lib/virtsnap: doctor is content.
      chmodSync(parent, 0o711);
      const fixed = await runProgram(cli, ['doctor'], env());
      assert.match(fixed.stdout, /^OK {3}overlay access: QEMU \(\S+\) can reach /m);
    } finally {
      // Whatever failed above: no VM left held, no closed dir left behind.
      if (setup.journalFiles().length > 0) await runProgram(cli, ['recover', '--force'], env());
      rmSync(parent, { recursive: true, force: true });
    }
  });

  it('UNKNOWN, exit 3, when it cannot tell', async () => {
    const out = await runProgram(cli, ['check'], setup.env({ VIRTSNAP_SANOID_CONF: '/nonexistent/sanoid.conf' }));
    assert.equal(out.code, 3);
    assert.match(out.stdout, /^VIRTSNAP UNKNOWN: .*sanoid\.conf not found/);
  });
});
