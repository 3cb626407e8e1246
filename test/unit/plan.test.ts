import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { XMLValidator } from 'fast-xml-parser';
import { loadConfig, type Config } from '../../lib/config.js';
import type { Inventory } from '../../lib/inventory.js';
import { parseDomainXml, type Disk } from '../../lib/libvirt/domain-xml.js';
import type { Domain, DomainState } from '../../lib/libvirt/virsh.js';
import { parseVersion, UNKNOWN_STACK, type Stack } from '../../lib/libvirt/stack.js';
import { modeOfRun } from '../../lib/mode.js';
import { SAVE_DOWNTIME_LIMIT_MS, planFreeze, runIdOf, tagFor, type RunRequest } from '../../lib/plan.js';
import { DUMP_ID } from '../../lib/manifest.js';

const OVERLAY = '/var/lib/virtsnap/overlay';
const STAMP = '20240102T030405.678Z';
const SNAP1 = 'autosnap_2024-01-02_03:04:05_monthly';
const SNAP2 = 'autosnap_2024-01-02_03:04:05_daily';

let tmp: string;
let config: Config;

before(() => {
  tmp = mkdtempSync(path.join(tmpdir(), 'virtsnap-plan-'));
  const envFile = path.join(tmp, 'virtsnap.env');
  writeFileSync(envFile, '');
  config = loadConfig({
    VIRTSNAP_CONFIG: envFile,
    VIRTSNAP_OVERLAY_DIR: OVERLAY,
    VIRTSNAP_ARCHIVE_DIR: path.join(tmp, 'archive'),
    VIRTSNAP_STATE_DIR: path.join(tmp, 'state'),
    VIRTSNAP_LOG: 'error',
  });
});

after(() => {
  rmSync(tmp, { recursive: true, force: true });
});

function disk(target: string, source: string | null, more: Partial<Disk> = {}): Disk {
  return { target, device: 'disk', type: 'file', source, format: 'qcow2', readonly: false, shareable: false, backing: null, ...more };
}

let uuidCounter = 0;
function dom(name: string, state: DomainState, disks: Disk[], more: Partial<Domain> = {}): Domain {
  uuidCounter++;
  const uuid = `${uuidCounter.toString(16).padStart(8, '0')}-0000-4000-8000-000000000000`;
  return { name, uuid, virtType: 'kvm', memoryKiB: 1024, disks, nvram: null, tpmEmulator: false, agent: 'none', state, xml: '<domain/>', ...more };
}

const DEBIAN12: Stack = { libvirt: parseVersion('9.0.0'), qemu: parseVersion('7.2.22') };
const DEBIAN13: Stack = { libvirt: parseVersion('11.3.0'), qemu: parseVersion('10.0.3') };

function inventory(domains: Domain[], more: Partial<Inventory> = {}): Inventory {
  return {
    stamp: STAMP,
    datasets: ['tank/vm'],
    domains,
    datasetOfSource: new Map([
      ['/tank/vm/a.qcow2', 'tank/vm'],
      ['/tank/vm/b.raw', 'tank/vm'],
      ['/tank/vm/c.qcow2', 'tank/vm'],
      ['/tank/vm/sub/d.qcow2', 'tank/vm/sub'],
      ['/tank/other/e.qcow2', 'tank/other'],
      ['/dev/zvol/tank/vm/z0', 'tank/vm/z0'],
      ['/tank/vm/cd.iso', 'tank/vm'],
      ['/tank/vm/shared.img', 'tank/vm'],
      ['/tank/vm/ro.img', 'tank/vm'],
    ]),
    mountpointOf: new Map([
      ['tank/vm', '/tank/vm'],
      ['tank/vm/sub', '/tank/vm/sub'],
      ['tank/other', '/tank/other'],
    ]),
    datasetOfOverlayDir: null,
    stack: DEBIAN12,
    blockedEntries: new Map(),
    freeBytes: new Map(),
    problems: [],
    ...more,
  };
}

const request: RunRequest = { targets: ['tank/vm'], snapnames: [SNAP1, SNAP2], types: ['monthly', 'daily'] };

describe('runIdOf', () => {
  it('is targets@first snapname', () => {
    assert.equal(runIdOf({ targets: ['tank/vm'], snapnames: [SNAP1, SNAP2] }), `tank/vm@${SNAP1}`);
    assert.equal(runIdOf({ targets: ['tank/a', 'tank/b'], snapnames: ['s'] }), 'tank/a,tank/b@s');
    assert.notEqual(runIdOf({ targets: ['tank/vm'], snapnames: ['x'] }), runIdOf({ targets: ['tank/vm'], snapnames: ['y'] }));
  });
});

describe('planFreeze', () => {
  it('plan header: runId, targets, snapnames, types, datasets sorted', () => {
    const plan = planFreeze(request, inventory([], { datasets: ['tank/vm/sub', 'tank/vm'] }), config);
    assert.equal(plan.runId, runIdOf(request));
    assert.deepEqual(plan.targets, ['tank/vm']);
    assert.deepEqual(plan.snapnames, [SNAP1, SNAP2]);
    assert.deepEqual(plan.types, ['monthly', 'daily']);
    assert.deepEqual(plan.datasets, ['tank/vm', 'tank/vm/sub']);
    assert.deepEqual(plan.domains, []);
    assert.deepEqual(plan.problems, []);
  });

  it('skips cdrom, read-only, shareable, network, empty and lun disks with a reason', () => {
    const d = dom('web', 'running', [
      disk('vda', '/tank/vm/a.qcow2'),
      disk('hdc', '/tank/vm/cd.iso', { device: 'cdrom', readonly: true, format: 'raw' }),
      disk('vdb', '/tank/vm/ro.img', { readonly: true }),
      disk('vdc', '/tank/vm/shared.img', { shareable: true }),
      disk('vdd', null, { type: 'network' }),
      disk('sdb', null, { device: 'cdrom' }),
      disk('sdc', '/dev/sg0', { device: 'lun', type: 'block' }),
      disk('fda', '/tank/vm/c.qcow2', { device: 'floppy' }),
    ]);
    const plan = planFreeze(request, inventory([d]), config);
    assert.equal(plan.domains.length, 1);
    const byTarget = new Map(plan.domains[0]!.disks.map((x) => [x.target, x]));
    assert.equal(byTarget.get('vda')!.skip, null);
    assert.ok(byTarget.get('vda')!.overlay !== null);
    const expected: Record<string, RegExp> = {
      hdc: /cdrom/,
      vdb: /read-only/,
      vdc: /shareable/,
      vdd: /network/,
      sdb: /cdrom/,
      sdc: /lun/,
      fda: /floppy/,
    };
    for (const [target, reason] of Object.entries(expected)) {
      const p = byTarget.get(target)!;
      assert.ok(p.skip !== null, `${target} should be skipped`);
      assert.match(p.skip, reason, target);
      assert.equal(p.overlay, null, target);
    }
    // snapshot XML names every disk, the skipped ones with snapshot='no'
    const xml = plan.domains[0]!.snapshotXml!;
    assert.equal(XMLValidator.validate(xml), true);
    for (const t of byTarget.keys()) assert.ok(xml.includes(`name='${t}'`), t);
    assert.equal((xml.match(/snapshot='no'/g) ?? []).length, 7);
  });

  it('a disk in a dataset not in inventory.datasets is skipped; one outside ZFS too', () => {
    const d = dom('mixed', 'running', [
      disk('vda', '/tank/vm/a.qcow2'),
      disk('vdb', '/tank/vm/sub/d.qcow2'),
      disk('vdc', '/tank/other/e.qcow2'),
      disk('vdd', '/srv/plain/f.qcow2'),
    ]);
    const plan = planFreeze(request, inventory([d]), config);
    const disks = plan.domains[0]!.disks;
    assert.equal(disks[0]!.skip, null);
    assert.equal(disks[0]!.dataset, 'tank/vm');
    assert.equal(disks[1]!.dataset, 'tank/vm/sub');
    assert.match(disks[1]!.skip!, /outside the snapshotted datasets/);
    assert.equal(disks[2]!.dataset, 'tank/other');
    assert.match(disks[2]!.skip!, /outside/);
    assert.equal(disks[3]!.dataset, null);
    assert.match(disks[3]!.skip!, /outside/);
    // only tank/vm holds a frozen disk
    assert.deepEqual(plan.domains[0]!.snapshots, [`tank/vm@${SNAP1}`, `tank/vm@${SNAP2}`]);
  });

  it('with the subtree in datasets (recursive = zfs), child datasets freeze too', () => {
    const d = dom('mixed', 'running', [disk('vda', '/tank/vm/a.qcow2'), disk('vdb', '/tank/vm/sub/d.qcow2'), disk('vdc', '/dev/zvol/tank/vm/z0', { type: 'block', format: 'raw' })]);
    const plan = planFreeze(request, inventory([d], { datasets: ['tank/vm', 'tank/vm/sub', 'tank/vm/z0'] }), config);
    const p = plan.domains[0]!;
    assert.deepEqual(
      p.disks.map((x) => x.skip),
      [null, null, null],
    );
    // snapshots = every dataset holding a frozen disk x every snapname
    assert.deepEqual(
      [...p.snapshots].sort(),
      [
        `tank/vm/sub@${SNAP1}`,
        `tank/vm/sub@${SNAP2}`,
        `tank/vm/z0@${SNAP1}`,
        `tank/vm/z0@${SNAP2}`,
        `tank/vm@${SNAP1}`,
        `tank/vm@${SNAP2}`,
      ].sort(),
    );
    assert.equal(p.snapshots.length, 6);
    assert.equal(new Set(p.snapshots).size, 6);
    // meta dirs only for mounted datasets (a zvol has none)
    assert.deepEqual([...p.datasetMetaDirs].sort(), ['/tank/vm/.virtsnap/mixed', '/tank/vm/sub/.virtsnap/mixed']);
  });

  it('two disks in one dataset give that dataset once per snapname', () => {
    const d = dom('two', 'running', [disk('vda', '/tank/vm/a.qcow2'), disk('vdb', '/tank/vm/b.raw', { format: 'raw' })]);
    const plan = planFreeze(request, inventory([d]), config);
    assert.deepEqual(plan.domains[0]!.snapshots, [`tank/vm@${SNAP1}`, `tank/vm@${SNAP2}`]);
  });

  it('running domain: action freeze, live, memory file and overlays inside the overlay dir, unique', () => {
    const d = dom('web', 'running', [disk('vda', '/tank/vm/a.qcow2'), disk('vdb', '/tank/vm/b.raw', { format: 'raw' }), disk('vdc', '/tank/vm/c.qcow2')], {
      nvram: '/var/lib/libvirt/qemu/nvram/web_VARS.fd',
      tpmEmulator: true,
    });
    const plan = planFreeze(request, inventory([d]), config);
    assert.deepEqual(plan.problems, []);
    const p = plan.domains[0]!;
    assert.equal(p.action, 'freeze');
    assert.equal(p.live, true);
    assert.equal(p.name, 'web');
    assert.equal(p.uuid, d.uuid);
    assert.equal(p.state, 'running');
    assert.ok(p.tag.includes(STAMP));
    assert.ok(p.tag.includes(d.uuid.slice(0, 8)));
    assert.equal(p.nvram, d.nvram);
    assert.equal(p.tpmEmulator, true);
    assert.ok(p.memoryFile !== null);
    assert.equal(path.dirname(p.memoryFile), OVERLAY);
    assert.equal(path.dirname(p.metaDir), OVERLAY);
    const overlays = p.disks.map((x) => x.overlay);
    for (const o of overlays) {
      assert.ok(o !== null);
      assert.equal(path.dirname(o), OVERLAY, o);
      assert.ok(o.endsWith('.qcow2'), o);
    }
    const files = [...overlays, p.memoryFile, p.metaDir];
    assert.equal(new Set(files).size, files.length, 'every file name is unique');
    assert.ok(p.snapshotXml !== null);
    for (const o of overlays) assert.ok(p.snapshotXml.includes(`file='${o}'`));
    assert.ok(p.snapshotXml.includes(`file='${p.memoryFile}'`));
  });

  it('overlay names are unique across domains, even with equal names and disk targets', () => {
    const a = dom('same', 'running', [disk('vda', '/tank/vm/a.qcow2')]);
    const b = dom('same', 'running', [disk('vda', '/tank/vm/b.raw')]);
    const plan = planFreeze(request, inventory([a, b]), config);
    assert.equal(plan.domains.length, 2);
    const files = plan.domains.flatMap((p) => [p.memoryFile, p.metaDir, ...p.disks.map((x) => x.overlay)]);
    assert.equal(new Set(files).size, files.length);
  });

  it('a domain name with / and .. cannot put files outside the overlay dir', () => {
    const d = dom('../../etc/evil', 'running', [disk('vd/a', '/tank/vm/a.qcow2')]);
    const p = planFreeze(request, inventory([d]), config).domains[0]!;
    for (const f of [p.memoryFile!, p.metaDir, p.disks[0]!.overlay!]) {
      assert.equal(path.dirname(f), OVERLAY, f);
      assert.equal(path.resolve(f), f);
    }
    for (const m of p.datasetMetaDirs) assert.equal(path.dirname(m), '/tank/vm/.virtsnap');
  });

  it('shut-off domain -> record, no overlays, no memory file, no snapshot XML', () => {
    const d = dom('off', 'shut off', [disk('vda', '/tank/vm/a.qcow2'), disk('vdb', '/tank/vm/b.raw')]);
    const plan = planFreeze(request, inventory([d]), config);
    assert.deepEqual(plan.problems, []);
    const p = plan.domains[0]!;
    assert.equal(p.action, 'record');
    assert.equal(p.memoryFile, null);
    assert.equal(p.snapshotXml, null);
    assert.equal(p.live, false);
    assert.deepEqual(
      p.disks.map((x) => x.overlay),
      [null, null],
    );
    // still recorded against the snapshots its disks are in
    assert.deepEqual(p.snapshots, [`tank/vm@${SNAP1}`, `tank/vm@${SNAP2}`]);
    assert.deepEqual(p.datasetMetaDirs, ['/tank/vm/.virtsnap/off']);
  });

  it('a writable storage-pool volume disk -> a problem (its dataset cannot be known)', () => {
    const plan = planFreeze(request, inventory([dom('vol', 'running', [disk('vda', '/tank/vm/a.qcow2'), disk('vdb', null, { type: 'volume' })])]), config);
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0]!, /vdb is a libvirt storage volume/);
  });

  it("paused domain -> freeze, live false, disks snapshot='manual' without overlays", () => {
    const plan = planFreeze(request, inventory([dom('p', 'paused', [disk('vda', '/tank/vm/a.qcow2'), disk('hdc', '/tank/vm/cd.iso', { device: 'cdrom' })])]), config);
    assert.deepEqual(plan.problems, []);
    const p = plan.domains[0]!;
    assert.equal(p.action, 'freeze');
    assert.equal(p.live, false);
    assert.deepEqual(p.disks.map((d) => [d.target, d.overlay, d.manual]), [['vda', null, true], ['hdc', null, false]]);
    assert.match(p.snapshotXml!, /<disk name='vda' snapshot='manual'\/>/);
    assert.match(p.snapshotXml!, /<disk name='hdc' snapshot='no'\/>/);
    assert.deepEqual(p.snapshots, [`tank/vm@${SNAP1}`, `tank/vm@${SNAP2}`]);
  });

  it('virtsnap makes the overlays (reuseOverlays) when every disk that switches has a known format; not when none switches', () => {
    const both = [disk('vda', '/tank/vm/a.qcow2'), disk('vdb', '/tank/vm/b.raw', { format: 'raw' }), disk('hdc', '/tank/vm/cd.iso', { device: 'cdrom', format: null })];
    assert.equal(planFreeze(request, inventory([dom('r', 'running', both)]), config).domains[0]!.reuseOverlays, true, 'a skipped cdrom without a format does not count');
    const unknown = [disk('vda', '/tank/vm/a.qcow2'), disk('vdb', '/tank/vm/b.raw', { format: null })];
    assert.equal(planFreeze(request, inventory([dom('u', 'running', unknown)]), config).domains[0]!.reuseOverlays, false, 'libvirt makes them: it probes the format');
    assert.equal(planFreeze(request, inventory([dom('p', 'paused', both)]), config).domains[0]!.reuseOverlays, false, 'a paused domain gets no overlays');
    assert.equal(planFreeze(request, inventory([dom('o', 'shut off', both)]), config).domains[0]!.reuseOverlays, false);
  });

  it('a live save of a running domain that runs on right after it gets the lowered downtime limit; a paused one, pause mode and VIRTSNAP_LIVE=no do not', () => {
    const disks = [disk('vda', '/tank/vm/a.qcow2')];
    assert.equal(planFreeze(request, inventory([dom('r', 'running', disks)]), config).domains[0]!.downtimeLimitMs, SAVE_DOWNTIME_LIMIT_MS);
    assert.equal(planFreeze(request, inventory([dom('r', 'running', disks)]), config).domains[0]!.syncDumpWhileSaving, true);
    assert.equal(planFreeze(request, inventory([dom('p', 'paused', disks)]), config).domains[0]!.syncDumpWhileSaving, false);
    assert.equal(planFreeze(request, inventory([dom('p', 'paused', disks)]), config).domains[0]!.downtimeLimitMs, null);
    assert.equal(planFreeze(request, inventory([dom('n', 'running', disks)]), { ...config, live: 'no' }).domains[0]!.downtimeLimitMs, null);
    assert.equal(planFreeze({ ...request, types: ['monthly'] }, inventory([dom('m', 'running', disks)]), { ...config, mode: { fallback: 'ram' as const, byType: { monthly: 'pause' as const } } }).domains[0]!.downtimeLimitMs, null);
  });

  it('a TCG guest on QEMU < 9.0 is saved with the guest paused by default, saying why; KVM guests and QEMU 10 stay live', () => {
    const disks = [disk('vda', '/tank/vm/a.qcow2')];
    const tcg = planFreeze(request, inventory([dom('t', 'running', disks, { virtType: 'qemu' })]), config).domains[0]!;
    assert.equal(tcg.live, false);
    assert.equal(tcg.liveNote?.level, 'info');
    assert.match(tcg.liveNote!.text, /^QEMU 7\.2\.22 under TCG .* can lose guest writes during a live RAM save \(fixed in QEMU 9\.0\): its RAM is saved with the guest paused \(VIRTSNAP_LIVE=yes forces/);
    assert.equal(tcg.downtimeLimitMs, null, 'no downtime limit without a live save');
    assert.equal(tcg.syncDumpWhileSaving, true, 'the memory file is still flushed while it is written');
    assert.match(tcg.snapshotXml!, /<memory snapshot='external'/);

    const kvm = planFreeze(request, inventory([dom('k', 'running', disks, { virtType: 'kvm' })]), config).domains[0]!;
    assert.deepEqual([kvm.live, kvm.liveNote], [true, null]);
    const fixed = planFreeze(request, inventory([dom('t', 'running', disks, { virtType: 'qemu' })], { stack: DEBIAN13 }), config).domains[0]!;
    assert.deepEqual([fixed.live, fixed.liveNote, fixed.downtimeLimitMs], [true, null, SAVE_DOWNTIME_LIMIT_MS]);
    // libvirt would not say its QEMU: not trusted under TCG.
    const unknown = planFreeze(request, inventory([dom('t', 'running', disks, { virtType: 'qemu' })], { stack: UNKNOWN_STACK }), config).domains[0]!;
    assert.equal(unknown.live, false);
    assert.match(unknown.liveNote!.text, /^a QEMU of unknown version under TCG/);
  });

  it('VIRTSNAP_LIVE=yes forces a live save where it is not trusted, with a warning; no never saves live', () => {
    const disks = [disk('vda', '/tank/vm/a.qcow2')];
    const forced = planFreeze(request, inventory([dom('t', 'running', disks, { virtType: 'qemu' })]), { ...config, live: 'yes' }).domains[0]!;
    assert.equal(forced.live, true);
    assert.equal(forced.liveNote?.level, 'warn');
    assert.match(forced.liveNote!.text, /saved live all the same \(VIRTSNAP_LIVE=yes\), its RAM dump may miss pages$/);
    assert.equal(forced.downtimeLimitMs, SAVE_DOWNTIME_LIMIT_MS);
    const kvmYes = planFreeze(request, inventory([dom('k', 'running', disks)]), { ...config, live: 'yes' }).domains[0]!;
    assert.deepEqual([kvmYes.live, kvmYes.liveNote], [true, null]);
    const never = planFreeze(request, inventory([dom('k', 'running', disks)]), { ...config, live: 'no' }).domains[0]!;
    assert.deepEqual([never.live, never.liveNote], [false, null]);
    // A paused domain is never saved live and needs no note; pause mode follows the same rule as ram.
    const paused = planFreeze(request, inventory([dom('p', 'paused', disks, { virtType: 'qemu' })]), config).domains[0]!;
    assert.deepEqual([paused.live, paused.liveNote], [false, null]);
    const pauseMode = planFreeze(request, inventory([dom('t', 'running', disks, { virtType: 'qemu' })]), { ...config, mode: { fallback: 'pause' as const, byType: {} } }).domains[0]!;
    assert.equal(pauseMode.live, false);
    assert.equal(pauseMode.liveNote?.level, 'info');
  });

  it('a domain whose journal entry is damaged is left alone and named; the others are frozen', () => {
    const a = dom('a', 'running', [disk('vda', '/tank/vm/a.qcow2')]);
    const c = dom('c', 'running', [disk('vda', '/tank/vm/c.qcow2')]);
    const plan = planFreeze(request, inventory([a, c], { blockedEntries: new Map([[a.uuid, 'journal entry /s/journal/x.json is damaged (not JSON)']]) }), config);
    assert.deepEqual(plan.domains.map((d) => d.name), ['c']);
    assert.deepEqual(plan.problems, []);
    assert.equal(plan.notFrozen.length, 1);
    assert.match(plan.notFrozen[0]!.reason, /^domain "a" is not frozen: journal entry .* is damaged/);
  });

  it('a VM whose RAM dump would not fit where it is written gets no RAM this run, named; those that fit are frozen (plan order)', () => {
    // 96 MiB guests; a live save may write twice that, plus the margin: 256 MiB each.
    const guest = (name: string, source: string) => dom(name, 'running', [disk('vda', source)], { memoryKiB: 96 * 1024 });
    const two = [guest('a', '/tank/vm/a.qcow2'), guest('c', '/tank/vm/c.qcow2')];
    const roomy = planFreeze(request, inventory(two, { freeBytes: new Map([[config.overlayDir, 600 * 1024 ** 2]]) }), config);
    assert.deepEqual([roomy.domains.map((d) => d.name), roomy.notFrozen], [['a', 'c'], []]);
    const tight = planFreeze(request, inventory(two, { freeBytes: new Map([[config.overlayDir, 300 * 1024 ** 2]]) }), config);
    assert.deepEqual(tight.domains.map((d) => d.name), ['a']);
    assert.match(tight.notFrozen[0]!.reason, new RegExp(`^domain "c" gets no RAM this run: its dump may take 256 MiB and ${config.overlayDir} has 44 MiB left for it; its snapshot is only crash-consistent`));
    // RAM inside the dataset: the pool's space counts, and a save with the guest paused needs the RAM once.
    const ds: Config = { ...config, store: { kind: 'dataset' }, live: 'no' };
    const inPool = planFreeze(request, inventory(two, { freeBytes: new Map([['/tank/vm', 200 * 1024 ** 2], [config.overlayDir, 10 ** 12]]) }), ds);
    assert.deepEqual(inPool.domains.map((d) => d.name), ['a']);
    assert.match(inPool.notFrozen[0]!.reason, /^domain "c" gets no RAM this run: its dump may take 160 MiB and \/tank\/vm has 40 MiB left/);
    // Unknown free space (statfs failed): as before, frozen.
    assert.deepEqual(planFreeze(request, inventory(two), config).domains.length, 2);
  });

  it('VIRTSNAP_LIVE=no -> running domain not live', () => {
    const noLive = { ...config, live: 'no' as const };
    const plan = planFreeze(request, inventory([dom('r', 'running', [disk('vda', '/tank/vm/a.qcow2')])]), noLive);
    assert.equal(plan.domains[0]!.live, false);
  });

  it('pmsuspended (and crashed) domain -> a problem naming it', () => {
    const plan = planFreeze(
      request,
      inventory([dom('sleepy', 'pmsuspended', [disk('vda', '/tank/vm/a.qcow2')]), dom('dead', 'crashed', [disk('vda', '/tank/vm/b.raw')])]),
      config,
    );
    assert.equal(plan.problems.length, 2);
    assert.ok(plan.problems.some((p) => p.includes('"sleepy"') && p.includes('pmsuspended')));
    assert.ok(plan.problems.some((p) => p.includes('"dead"') && p.includes('crashed')));
  });

  it('a disk whose source is inside the overlay dir -> the domain is named as stuck, not frozen, and the others still are', () => {
    const d = dom('leftover', 'running', [disk('vda', '/tank/vm/a.qcow2'), disk('vdb', `${OVERLAY}/leftover.old.vdb.qcow2`, { backing: '/tank/vm/b.raw' })]);
    const other = dom('other', 'running', [disk('vda', '/tank/vm/c.qcow2')]);
    const plan = planFreeze(request, inventory([d, other]), config);
    assert.deepEqual(plan.problems, []);
    assert.deepEqual(plan.onOverlays.map((o) => o.name), ['leftover']);
    assert.match(plan.onOverlays[0]!.reason, /vdb.*virtsnap recover/);
    assert.deepEqual(plan.domains.map((x) => x.name), ['other']);
  });

  it(
    'a domain whose every disk runs on a leftover overlay -> named as stuck, mentioning virtsnap recover',
    () => {
      const d = { ...parseDomainXml(readFileSync(new URL('../../../test/fixtures/dumpxml-on-overlays.xml', import.meta.url), 'utf8')), state: 'running' as const, xml: '' };
      const overlayConfig = { ...config, overlayDir: '/var/lib/vsbed/overlay' };
      const inv = inventory([d], {
        datasets: ['vsbed/vm'],
        datasetOfSource: new Map([
          ['/vsbed/vm/t1/disk.qcow2', 'vsbed/vm'],
          ['/vsbed/vm/t1/data.raw', 'vsbed/vm'],
          ['/vsbed/vm/t1/cd.iso', 'vsbed/vm'],
        ]),
      });
      const plan = planFreeze({ ...request, targets: ['vsbed/vm'] }, inv, overlayConfig);
      assert.ok(
        plan.onOverlays.some((p) => /virtsnap recover/.test(p.reason)),
        `expected a stuck domain, got ${JSON.stringify(plan.onOverlays)}`,
      );
    },
  );

  it('overlay dir inside a snapshotted dataset -> a problem; outside -> none', () => {
    const d = dom('web', 'running', [disk('vda', '/tank/vm/a.qcow2')]);
    const inside = planFreeze(request, inventory([d], { datasetOfOverlayDir: 'tank/vm' }), config);
    assert.equal(inside.problems.length, 1);
    assert.match(inside.problems[0]!, /VIRTSNAP_OVERLAY_DIR/);
    assert.match(inside.problems[0]!, /tank\/vm/);
    const elsewhere = planFreeze(request, inventory([d], { datasetOfOverlayDir: 'tank/other' }), config);
    assert.deepEqual(elsewhere.problems, []);
  });

  it('inventory problems are carried over', () => {
    const plan = planFreeze(request, inventory([], { problems: ['something odd'] }), config);
    assert.deepEqual(plan.problems, ['something odd']);
  });

  it('a domain with no disk in the datasets is not in the plan', () => {
    const plan = planFreeze(
      request,
      inventory([
        dom('elsewhere', 'running', [disk('vda', '/tank/other/e.qcow2')]),
        dom('nodisks', 'running', []),
        dom('cdonly', 'running', [disk('hdc', '/tank/vm/cd.iso', { device: 'cdrom', readonly: true })]),
        dom('pmsusp-elsewhere', 'pmsuspended', [disk('vda', '/tank/other/e.qcow2')]),
        dom('here', 'running', [disk('vda', '/tank/vm/a.qcow2')]),
      ]),
      config,
    );
    assert.deepEqual(
      plan.domains.map((d) => d.name),
      ['here'],
    );
    assert.deepEqual(plan.problems, []);
  });

  it('domains are planned in name order', () => {
    const plan = planFreeze(
      request,
      inventory([dom('zeta', 'running', [disk('vda', '/tank/vm/a.qcow2')]), dom('alpha', 'running', [disk('vda', '/tank/vm/b.raw')])]),
      config,
    );
    assert.deepEqual(
      plan.domains.map((d) => d.name),
      ['alpha', 'zeta'],
    );
  });
});

describe('modes', () => {
  const policy = { fallback: 'ram' as const, byType: { frequently: 'quiesce' as const, hourly: 'quiesce' as const, monthly: 'pause' as const } };

  it('a run takes the strongest mode its types name: pause, then ram, then quiesce', () => {
    assert.deepEqual(modeOfRun(['hourly'], policy), { mode: 'quiesce', why: 'hourly=quiesce' });
    assert.equal(modeOfRun(['hourly', 'daily'], policy).mode, 'ram');
    assert.match(modeOfRun(['hourly', 'daily'], policy).why, /hourly=quiesce, daily=ram: ram is the strongest/);
    assert.equal(modeOfRun(['daily', 'monthly', 'hourly'], policy).mode, 'pause');
    assert.equal(modeOfRun([], policy).mode, 'ram');
  });

  it('the plan says the mode and why; pause leaves the disks alone (snapshot=manual)', () => {
    const d = dom('web', 'running', [disk('vda', '/tank/vm/a.qcow2'), disk('vdb', '/tank/vm/b.raw', { format: 'raw' })]);
    const plan = planFreeze({ ...request, types: ['monthly'] }, inventory([d]), { ...config, mode: policy });
    assert.equal(plan.mode, 'pause');
    assert.equal(plan.modeWhy, 'monthly=pause');
    const dp = plan.domains[0]!;
    assert.equal(dp.mode, 'pause');
    assert.ok(dp.disks.every((x) => x.manual && x.overlay === null));
    assert.match(dp.snapshotXml!, /<disk name='vda' snapshot='manual'\/>/);
    assert.match(dp.snapshotXml!, /<memory snapshot='external'/);
    assert.equal(dp.reuseOverlays, false);
  });

  it('quiesce: with an agent channel, quiesce with the ram plan ready; without, ram (and a note) or a problem', () => {
    const withAgent = dom('a', 'running', [disk('vda', '/tank/vm/a.qcow2')], { agent: 'connected' });
    const without = dom('b', 'running', [disk('vda', '/tank/vm/c.qcow2')]);
    const paused = dom('c', 'paused', [disk('vda', '/tank/vm/b.raw')], { agent: 'connected' });
    const q = { ...request, types: ['hourly'] };
    const plan = planFreeze(q, inventory([withAgent, without, paused]), { ...config, mode: policy });
    const [a, b, c] = plan.domains;
    assert.deepEqual([a!.mode, a!.fallback, a!.modeNote], ['quiesce', 'ram', null]);
    assert.ok(a!.disks[0]!.overlay !== null, 'the ram plan stays ready for a fallback');
    assert.equal(b!.mode, 'ram');
    assert.match(b!.modeNote!, /no guest agent channel .*VIRTSNAP_QUIESCE_FALLBACK=ram/);
    assert.equal(c!.mode, 'ram');
    assert.match(c!.modeNote!, /paused/);
    assert.deepEqual(plan.problems, []);
    const strict = planFreeze(q, inventory([withAgent, without]), { ...config, mode: policy, quiesceFallback: 'fail' });
    assert.equal(strict.problems.length, 1);
    assert.match(strict.problems[0]!, /domain "b" cannot be quiesced: no guest agent channel .*install and start qemu-guest-agent/);
  });
});

describe('planFreeze with VIRTSNAP_STORE=dataset', () => {
  const inDataset = (): Config => ({ ...config, store: { kind: 'dataset' } });
  it('the memory file goes into the VM dataset\'s .virtsnap/<domain>/, named by the freeze tag', () => {
    const d = dom('web', 'running', [disk('vda', '/tank/vm/a.qcow2')]);
    const plan = planFreeze(request, inventory([d]), inDataset());
    assert.deepEqual(plan.problems, []);
    const p = plan.domains[0]!;
    assert.deepEqual(p.ramInDataset, { dataset: 'tank/vm', mountpoint: '/tank/vm', dir: '/tank/vm/.virtsnap/web' });
    assert.equal(p.memoryFile, `/tank/vm/.virtsnap/web/${p.tag}.save`);
  });
  it('a VM with disks in two datasets is refused, naming it; a quiesced one without a fallback to ram is not (it keeps no RAM)', () => {
    const spread = dom('db', 'running', [disk('vda', '/tank/vm/a.qcow2'), disk('vdb', '/tank/vm/sub/d.qcow2')]);
    const wide = { ...request, targets: ['tank/vm'] };
    const inv = inventory([spread], { datasets: ['tank/vm', 'tank/vm/sub'] });
    const refused = planFreeze(wide, inv, inDataset());
    assert.equal(refused.problems.length, 1);
    assert.match(refused.problems[0]!, /"db" has disks in tank\/vm and tank\/vm\/sub/);
    const agent = { ...spread, agent: 'connected' as const };
    const quiesced = planFreeze(wide, inventory([agent], { datasets: ['tank/vm', 'tank/vm/sub'] }), { ...inDataset(), mode: { fallback: 'quiesce', byType: {} }, quiesceFallback: 'fail' });
    assert.deepEqual(quiesced.problems, []);
  });
  it('the archive store (the default) keeps the memory file in the overlay dir', () => {
    const d = dom('web', 'running', [disk('vda', '/tank/vm/a.qcow2')]);
    const p = planFreeze(request, inventory([d]), config).domains[0]!;
    assert.equal(p.ramInDataset, null);
    assert.ok(p.memoryFile!.startsWith(`${OVERLAY}/`));
  });
});

describe('tagFor: one id, one dump', () => {
  it('two domains of one run whose UUIDs share their first 8 digits get stamps a millisecond apart', () => {
    const taken = new Set<string>();
    const a = tagFor('20261207T195509.110Z', 'aabbccdd-1111-4000-8000-000000000001', taken);
    const b = tagFor('20261207T195509.110Z', 'aabbccdd-2222-4000-8000-000000000002', taken);
    const c = tagFor('20261207T195509.110Z', 'eeff0011-2222-4000-8000-000000000002', taken);
    assert.deepEqual([a, b, c], ['20261207T195509.110Z-aabbccdd', '20261207T195509.111Z-aabbccdd', '20261207T195509.110Z-eeff0011']);
    for (const t of [a, b, c]) assert.match(t, DUMP_ID);
  });
});
