// freeze against in-memory libvirt and ZFS: every way it can be cut short
// ends with the VMs back on their own disks and nothing in the journal.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { freeze } from '../../lib/freeze.js';
import type { Mode } from '../../lib/mode.js';
import { thawRun } from '../../lib/thaw.js';
import type { DomainPlan, FreezePlan } from '../../lib/plan.js';
import { InterruptedError, type StopSignal } from '../../lib/signals.js';
import { fakeDeps, type FakeDomain } from './fakes.js';

function planFor(deps: ReturnType<typeof fakeDeps>, domains: FakeDomain[], mode: Mode = 'ram', fallback: DomainPlan['fallback'] = null): FreezePlan {
  const plans: DomainPlan[] = domains.map((d) => {
    const base = path.join(deps.config.overlayDir, `${d.name}.tag`);
    const metaInDataset = path.join(deps.root, 'dataset', '.virtsnap', d.name);
    const overlays: Record<string, string> = {};
    for (const target of d.disks.keys()) overlays[target] = `${base}.${target}.qcow2`;
    if (mode !== 'pause') deps.virsh.snapshotSwitches.set(d.uuid, overlays);
    return {
      name: d.name,
      uuid: d.uuid,
      state: d.state,
      action: 'freeze',
      mode,
      fallback,
      modeNote: null,
      live: true,
    liveNote: null,
      tag: `${d.name}.tag`,
      disks: [...d.disks].map(([target, x]) => ({
        target,
        device: 'disk',
        source: x.source,
        format: 'qcow2',
        dataset: 'tank/vm',
        overlay: mode === 'pause' ? null : overlays[target]!,
        manual: mode === 'pause',
        skip: null,
      })),
      memoryFile: `${base}.save`,
      metaDir: `${base}.meta`,
      datasetMetaDirs: [metaInDataset],
      snapshots: ['tank/vm@snap'],
      mountpoints: { 'tank/vm': path.join(deps.root, 'dataset') },
      nvram: null,
      tpmEmulator: false,
      snapshotXml: mode === 'pause' ? "<domainsnapshot><disk name='vda' snapshot='manual'/></domainsnapshot>" : '<domainsnapshot/>',
      reuseOverlays: false,
      downtimeLimitMs: null,
      syncDumpWhileSaving: false,
      ramInDataset: null,
    };
  });
  mkdirSync(path.join(deps.root, 'dataset'), { recursive: true, mode: 0o700 });
  return { runId: 'tank/vm@snap', targets: ['tank/vm'], snapnames: ['snap'], types: ['hourly'], mode, modeWhy: `hourly=${mode}`, datasets: ['tank/vm'], domains: plans, onOverlays: [],
    notFrozen: [], problems: [] };
}

function twoDomains() {
  const deps = fakeDeps();
  const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
  const b = deps.virsh.add('b', 'u-b', { vda: '/tank/vm/b1.qcow2', vdb: '/tank/vm/b2.qcow2' });
  return { deps, a, b, plan: planFor(deps, [a, b]) };
}

function onOwnDisks(...domains: FakeDomain[]): void {
  for (const d of domains) for (const [t, x] of d.disks) assert.ok(x.source.startsWith('/tank/vm/'), `${d.name} ${t} is on ${x.source}`);
}

describe('freeze', () => {
  it('freezes every domain and journals each as frozen', async () => {
    const { deps, a, b, plan } = twoDomains();
    const { frozen } = await freeze(plan, deps);
    assert.deepEqual(frozen.map((e) => e.step), ['frozen', 'frozen']);
    assert.ok(a.disks.get('vda')!.source.includes('.tag.'));
    assert.ok(b.disks.get('vdb')!.source.includes('.tag.'));
    assert.equal(deps.journal.list().length, 2);
  });

  it('a signal during the first save: that save finishes, then both are left unfrozen and the run exits as interrupted', async () => {
    const { deps, a, b, plan } = twoDomains();
    deps.config.parallel = 1; // one after the other: the second has not started when the signal comes
    const stop = { requested: null as NodeJS.Signals | null, check(what: string) { if (this.requested) throw new InterruptedError(`stopped by ${this.requested} ${what}`); } } satisfies StopSignal;
    deps.stop = stop;
    deps.virsh.onCall = (method) => {
      if (method === 'createSnapshot') stop.requested = 'SIGTERM';
    };
    await assert.rejects(freeze(plan, deps), InterruptedError);
    onOwnDisks(a, b);
    assert.equal(deps.virsh.calls.filter((c) => c === 'createSnapshot').length, 1, 'the second domain is never frozen');
    assert.deepEqual(deps.journal.list(), []);
  });

  it("the run's owner died while we froze (sanoid's script_timeout): everything is thawed at once", async () => {
    const { deps, a, b, plan } = twoDomains();
    deps.owner = { pid: 999_999_999, bootId: 'x', startTime: '1' };
    await assert.rejects(freeze(plan, deps), /died while the VMs were frozen .*script_timeout/);
    onOwnDisks(a, b);
    assert.deepEqual(deps.journal.list(), []);
  });

  it("the journal cannot record 'frozen' (state dir full): the domain is thawed all the same", async () => {
    const { deps, a, b, plan } = twoDomains();
    deps.journal.failAfter = 1; // the claim is written, 'frozen' is not
    await assert.rejects(freeze(plan, deps), /ENOSPC/);
    onOwnDisks(a, b);
    assert.ok(deps.virsh.calls.includes('activeCommit vda'), 'committed back without a journal');
  });

  it('a snapshot call that timed out while libvirt completed it: the switched disks are committed back', async () => {
    const { deps, a, plan } = twoDomains();
    deps.virsh.failNext('createSnapshot', 1, '', true);
    deps.virsh.onCall = (method, uuid) => {
      if (method === 'createSnapshot' && uuid === 'u-a') a.disks.set('vda', { source: `${deps.config.overlayDir}/a.tag.vda.qcow2`, backing: '/tank/vm/a.qcow2' });
    };
    await assert.rejects(freeze(plan, deps), /no answer from libvirt/);
    onOwnDisks(a);
    assert.deepEqual(deps.journal.list(), []);
  });

  it('a snapshot job still running after virsh gave up is aborted and waited for before anything is judged', async () => {
    const { deps, a, plan } = twoDomains();
    deps.virsh.failNext('createSnapshot', 1, '', true);
    a.job = { endsIn: 3, aborted: false };
    await assert.rejects(freeze(plan, deps), /no answer from libvirt/);
    const calls = deps.virsh.calls;
    assert.ok(calls.indexOf('abortJob') >= 0 && calls.indexOf('abortJob') < calls.lastIndexOf('domain'), calls.join(', '));
    onOwnDisks(a);
  });
});

describe('freeze with overlays made before the save (reuseOverlays)', () => {
  function reusing() {
    const t = twoDomains();
    for (const dp of t.plan.domains) dp.reuseOverlays = true;
    t.deps.config.parallel = 1;
    return t;
  }
  const overlayFiles = (deps: ReturnType<typeof fakeDeps>): string[] => (existsSync(deps.config.overlayDir) ? readdirSync(deps.config.overlayDir).filter((f) => !f.endsWith('.meta')) : []);

  it('makes every overlay and reserves the memory file (0600) before the save, which reuses them; the thaw removes them', async () => {
    const { deps, a, b, plan } = reusing();
    deps.virsh.onCall = (method, uuid) => {
      if (method !== 'createSnapshot') return;
      const dp = plan.domains.find((d) => d.uuid === uuid)!;
      for (const f of [dp.memoryFile!, ...dp.disks.map((d) => d.overlay!)]) assert.equal(statSync(f).mode & 0o777, 0o600, f);
    };
    await freeze(plan, deps);
    const calls = deps.virsh.calls.filter((c) => /^(createOverlay|createSnapshot)/.test(c)).map((c) => c.replace(/ .*\//, ' '));
    assert.deepEqual(calls, ['createOverlay a.tag.vda.qcow2', 'createSnapshot', 'createOverlay b.tag.vda.qcow2', 'createOverlay b.tag.vdb.qcow2', 'createSnapshot']);
    assert.deepEqual(deps.virsh.snapshotOptions.map((o) => o.reuseExternal), [true, true]);
    await thawRun('tank/vm@snap', deps, { keepDump: false });
    onOwnDisks(a, b);
    assert.deepEqual(overlayFiles(deps).filter((f) => f.endsWith('.qcow2')), []);
  });

  it('an overlay that cannot be made: no save, nothing of ours left, the journal empty', async () => {
    const { deps, a, b, plan } = reusing();
    deps.images.failOn = plan.domains[1]!.disks[1]!.overlay;
    await assert.rejects(freeze(plan, deps), /qemu-img: no space/);
    assert.equal(deps.virsh.calls.filter((c) => c === 'createSnapshot').length, 1, 'only the first domain was saved');
    onOwnDisks(a, b);
    assert.deepEqual(overlayFiles(deps), []);
    assert.deepEqual(deps.journal.list(), []);
  });

  it('without qemu-img: nothing made, and libvirt makes the overlays as before', async () => {
    const { deps, a, b, plan } = reusing();
    deps.images.missing = true;
    const { frozen } = await freeze(plan, deps);
    assert.equal(frozen.length, 2);
    assert.deepEqual(deps.virsh.snapshotOptions.map((o) => o.reuseExternal), [false, false]);
    assert.deepEqual(overlayFiles(deps), [], 'the reserved memory files are gone again');
    await thawRun('tank/vm@snap', deps, { keepDump: false });
    onOwnDisks(a, b);
  });

  it('a memory file that exists is not overwritten: the run fails before any overlay is made', async () => {
    const { deps, plan } = reusing();
    mkdirSync(deps.config.overlayDir, { recursive: true });
    const memory = plan.domains[0]!.memoryFile!;
    (await import('node:fs')).writeFileSync(memory, 'theirs');
    await assert.rejects(freeze(plan, deps), /exists already/);
    assert.equal((await import('node:fs')).readFileSync(memory, 'utf8'), 'theirs');
    assert.ok(!deps.virsh.calls.some((c) => c.startsWith('createOverlay') || c === 'createSnapshot'));
    assert.deepEqual(deps.journal.list(), []);
  });

  it('a failed save removes the overlays made for it', async () => {
    const { deps, a, b, plan } = reusing();
    deps.virsh.failNext('createSnapshot', 1, 'error: operation failed: no space');
    await assert.rejects(freeze(plan, deps), /no space/);
    onOwnDisks(a, b);
    assert.deepEqual(overlayFiles(deps), []);
    assert.deepEqual(deps.journal.list(), []);
  });

  it('a signal while the overlays are made: they are removed and nothing is saved', async () => {
    const { deps, plan } = reusing();
    const stop = { requested: null as NodeJS.Signals | null, check(what: string) { if (this.requested) throw new InterruptedError(`stopped by ${this.requested} ${what}`); } } satisfies StopSignal;
    deps.stop = stop;
    const make = deps.images.createOverlay.bind(deps.images);
    deps.images.createOverlay = async (spec) => {
      await make(spec);
      stop.requested = 'SIGTERM';
    };
    await assert.rejects(freeze(plan, deps), InterruptedError);
    assert.ok(!deps.virsh.calls.includes('createSnapshot'));
    assert.deepEqual(overlayFiles(deps), []);
    assert.deepEqual(deps.journal.list(), []);
  });
});

describe('freeze with a lowered downtime limit (downtimeLimitMs)', () => {
  function lowering(limit = 20) {
    const deps = fakeDeps();
    const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
    const plan = planFor(deps, [a]);
    plan.domains[0]!.downtimeLimitMs = limit;
    return { deps, a, plan };
  }

  it('the save runs at the lowered limit with the old one in the journal; afterwards QEMU and the journal have the old one back', async () => {
    const { deps, a, plan } = lowering();
    a.downtimeLimit = 500;
    let during: [number, number | undefined] | null = null;
    deps.virsh.onCall = (method) => {
      if (method === 'createSnapshot') during = [a.downtimeLimit, deps.journal.read('u-a')!.downtimeLimitBefore];
    };
    const { frozen } = await freeze(plan, deps);
    assert.deepEqual(during, [20, 500]);
    assert.equal(a.downtimeLimit, 500);
    assert.equal(frozen[0]!.downtimeLimitBefore, undefined);
    assert.equal(deps.journal.read('u-a')!.downtimeLimitBefore, undefined);
  });

  it('a failed save sets the old limit back too', async () => {
    const { deps, a, plan } = lowering();
    deps.virsh.failNext('createSnapshot', 1, 'error: operation failed: no space');
    await assert.rejects(freeze(plan, deps), /no space/);
    assert.equal(a.downtimeLimit, 300);
    assert.deepEqual(deps.journal.list(), []);
  });

  it('a limit already at or below ours is left alone', async () => {
    const { deps, a, plan } = lowering();
    a.downtimeLimit = 10;
    await freeze(plan, deps);
    assert.ok(!deps.virsh.calls.some((c) => c.startsWith('setMaxDowntime')), deps.virsh.calls.join(', '));
    assert.equal(a.downtimeLimit, 10);
  });

  it('a limit that cannot be read or set: the save runs anyway', async () => {
    const { deps, a, plan } = lowering();
    deps.virsh.failNext('setMaxDowntime', 1, 'error: Requested operation is not valid');
    const { frozen } = await freeze(plan, deps);
    assert.equal(frozen.length, 1);
    assert.equal(a.downtimeLimit, 300);
  });

  it('a save that does not converge gets the old limit back while it runs', async () => {
    const { deps, a, plan } = lowering();
    const save = deps.virsh.createSnapshot.bind(deps.virsh);
    const seen: number[] = [];
    deps.virsh.createSnapshot = async (uuid, xml, options) => {
      a.job = { endsIn: Infinity, aborted: false };
      deps.virsh.activeJob = async () => ({ processedBytes: 4, totalBytes: 2 });
      await new Promise((r) => setTimeout(r, 1300));
      seen.push(a.downtimeLimit);
      a.job = null;
      return save(uuid, xml, options);
    };
    await freeze(plan, deps);
    assert.deepEqual(seen, [300]);
  });
});

describe('freeze flushing the memory file while it is saved (syncDumpWhileSaving)', () => {
  for (const appears of [true, false]) {
    it(`a save of 700 ms ${appears ? 'with' : 'without'} a memory file ends normally, its file untouched`, async () => {
      const deps = fakeDeps();
      const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
      const plan = planFor(deps, [a]);
      plan.domains[0]!.syncDumpWhileSaving = true;
      const save = deps.virsh.createSnapshot.bind(deps.virsh);
      deps.virsh.createSnapshot = async (uuid, xml, options) => {
        if (appears) (await import('node:fs')).writeFileSync(plan.domains[0]!.memoryFile!, 'ram');
        await new Promise((r) => setTimeout(r, 700));
        return save(uuid, xml, options);
      };
      const { frozen } = await freeze(plan, deps);
      assert.equal(frozen.length, 1);
      if (appears) assert.equal((await import('node:fs')).readFileSync(plan.domains[0]!.memoryFile!, 'utf8'), 'ram');
    });
  }
});

describe('freeze modes', () => {
  it('pause: RAM saved, disks left alone, the guest left paused until post resumes it', async () => {
    const deps = fakeDeps();
    const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
    const { frozen } = await freeze(planFor(deps, [a], 'pause'), deps);
    assert.equal(frozen[0]!.mode, 'pause');
    assert.deepEqual(frozen[0]!.overlays.map((o) => o.overlay), [null]);
    assert.equal(a.state, 'paused');
    onOwnDisks(a);
    const result = await thawRun('tank/vm@snap', deps);
    assert.equal(a.state, 'running');
    assert.ok(!deps.virsh.calls.some((c) => c.startsWith('activeCommit')), 'nothing to commit');
    assert.deepEqual(result.failures, []);
    assert.deepEqual(deps.journal.list(), []);
  });

  it('pause: a user who paused the guest meanwhile keeps it paused', async () => {
    const deps = fakeDeps();
    const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
    await freeze(planFor(deps, [a], 'pause'), deps);
    a.reason = 'user';
    await thawRun('tank/vm@snap', deps);
    assert.equal(a.state, 'paused');
    assert.ok(!deps.virsh.calls.includes('resume'));
  });

  it('quiesce: the agent freezes the filesystems, no RAM is saved, post thaws them', async () => {
    const deps = fakeDeps();
    const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
    a.agent = 'connected';
    const { frozen } = await freeze(planFor(deps, [a], 'quiesce', 'ram'), deps);
    assert.equal(frozen[0]!.mode, 'quiesce');
    assert.ok(a.fsFrozen);
    assert.ok(!deps.virsh.calls.includes('createSnapshot'));
    onOwnDisks(a);
    const result = await thawRun('tank/vm@snap', deps);
    assert.ok(!a.fsFrozen);
    assert.deepEqual([result.failures, result.discarded, result.sealed], [[], [], []]);
    assert.deepEqual(deps.journal.list(), []);
  });

  it('quiesce without an answering agent falls back to ram when configured so, and says which', async () => {
    const deps = fakeDeps();
    const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
    a.agent = 'connected';
    deps.virsh.failNext('fsFreeze', 1, 'Guest agent is not responding: Guest agent not available for now');
    const { frozen } = await freeze(planFor(deps, [a], 'quiesce', 'ram'), deps);
    assert.equal(frozen[0]!.mode, 'ram');
    assert.ok(deps.virsh.calls.includes('createSnapshot'));
    assert.ok(deps.virsh.calls.indexOf('fsThaw') > deps.virsh.calls.indexOf('fsFreeze'), 'a thaw follows the failed freeze');
    assert.ok(a.disks.get('vda')!.source.includes('.tag.'));
  });

  it('quiesce without an answering agent fails the run when configured so, with nothing left frozen', async () => {
    const deps = fakeDeps();
    const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
    const b = deps.virsh.add('b', 'u-b', { vda: '/tank/vm/b.qcow2' });
    a.agent = 'connected';
    deps.config.parallel = 1;
    await assert.rejects(freeze(planFor(deps, [a, b], 'quiesce', 'fail'), deps), /domain "b" cannot be quiesced: .*not connected.*VIRTSNAP_QUIESCE_FALLBACK=ram/);
    assert.ok(!a.fsFrozen, 'the first domain is thawed again');
    assert.ok(!deps.virsh.calls.includes('createSnapshot'));
    assert.deepEqual(deps.journal.list(), []);
  });

  it('parallel: both domains are being frozen at once, and a failure of one undoes both', async () => {
    const { deps, a, b, plan } = twoDomains();
    const started: string[] = [];
    let finished = 0;
    deps.virsh.onCall = (method, uuid) => {
      if (method === 'createSnapshot') {
        started.push(`${uuid}@${finished}`);
        finished++;
      }
    };
    deps.virsh.failNext('createSnapshot', 1, 'error: operation failed: no space');
    await assert.rejects(freeze(plan, deps), /no space/);
    assert.equal(started.length, 2, 'both were started although the first failed');
    onOwnDisks(a, b);
    assert.deepEqual(deps.journal.list(), []);
  });

  it('quiesce: a freeze that timed out and a thaw that is not confirmed keep the entry as frozen, never fall back to ram; post thaws', async () => {
    const deps = fakeDeps();
    const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
    a.agent = 'connected';
    deps.virsh.failNext('fsFreeze', 1, '', true);
    deps.virsh.failNext('fsThaw', 1, '', true);
    deps.virsh.onCall = (method) => {
      if (method === 'fsFreeze') a.fsFrozen = true; // the guest froze after our virsh gave up
    };
    const { frozen } = await freeze(planFor(deps, [a], 'quiesce', 'ram'), deps);
    assert.deepEqual([frozen[0]!.mode, frozen[0]!.step], ['quiesce', 'frozen']);
    assert.ok(!deps.virsh.calls.includes('createSnapshot'), 'no ram fallback while its filesystems may be frozen');
    deps.virsh.onCall = () => undefined;
    await thawRun('tank/vm@snap', deps);
    assert.ok(!a.fsFrozen, 'post thaws them');
    assert.deepEqual(deps.journal.list(), []);
  });

  it('pause: resumed and paused again by a user while frozen: left paused, the dump is not kept', async () => {
    const deps = fakeDeps();
    const a = deps.virsh.add('a', 'u-a', { vda: '/tank/vm/a.qcow2' });
    await freeze(planFor(deps, [a], 'pause'), deps);
    a.reason = 'user';
    const result = await thawRun('tank/vm@snap', deps);
    assert.equal(a.state, 'paused');
    assert.deepEqual(result.discarded.map((d) => d.name), ['a']);
  });
});
