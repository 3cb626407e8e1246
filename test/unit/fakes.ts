// In-memory libvirt and ZFS for unit tests of freeze, thaw, recover and the
// watchdog: the narrow interfaces of lib/deps.ts, with failures on command.
// They model what matters to those modules (which image each disk is on,
// block jobs and their readiness, domain jobs, pause reasons), nothing more.
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { REPO_MANIFEST } from '../../lib/stores/restic.js';
import type { ResticClient, ResticSnapshot } from '../../lib/restic.js';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Config } from '../../lib/config.js';
import type { Deps, RunImages, RunLibvirt, RunZfs } from '../../lib/deps.js';
import { LibvirtError, VirtsnapError } from '../../lib/errors.js';
import { QemuImgMissingError, type OverlaySpec } from '../../lib/libvirt/qemu-img.js';
import { storeFor } from '../../lib/stores/index.js';
import { Journal, type JournalEntry } from '../../lib/journal.js';
import type { Disk } from '../../lib/libvirt/domain-xml.js';
import { parseVersion, type Stack } from '../../lib/libvirt/stack.js';
import { HEADER_BYTES } from '../../lib/libvirt/save-image.js';
import type { CompletedJob, Domain, DomainState } from '../../lib/libvirt/virsh.js';
import { ownerOf } from '../../lib/owner.js';
import { noStop } from '../../lib/signals.js';
import type { SnapshotProps } from '../../lib/zfs.js';

export interface FakeDomain {
  name: string;
  uuid: string;
  state: DomainState;
  reason: string;
  /** target -> the image it is on now, and the one below it. */
  disks: Map<string, { source: string; backing: string | null }>;
  /** target -> a commit job: polls left until it is ready. */
  blockJobs: Map<string, { readyIn: number }>;
  /** A domain job (a RAM save): polls left until it ends by itself (Infinity: only an abort ends it). */
  job: { endsIn: number; aborted: boolean } | null;
  /** The guest agent's channel, as the live XML would say. */
  agent: Domain['agent'];
  /** Filesystems frozen by the guest agent. */
  fsFrozen: boolean;
  /** QEMU's migration downtime limit (ms). */
  downtimeLimit: number;
  /** <domain type=...>: kvm unless a test says qemu (TCG). */
  virtType: string;
}

type Method = keyof RunLibvirt;

/** Each call is logged as `method target?`; `failNext(method, n, err)` makes the next n calls of it throw. */
export class FakeLibvirt implements RunLibvirt {
  readonly domainsByUuid = new Map<string, FakeDomain>();
  readonly calls: string[] = [];
  private readonly failures = new Map<Method, { left: number; error: () => Error }[]>();
  /** Called on every call, before it is carried out: a test's hook to change the world mid-run. */
  onCall: (method: Method, uuid?: string, target?: string) => void = () => undefined;

  add(name: string, uuid: string, disks: Record<string, string>, state: DomainState = 'running'): FakeDomain {
    const d: FakeDomain = {
      name,
      uuid,
      state,
      reason: state === 'running' ? 'unpaused' : '',
      disks: new Map(Object.entries(disks).map(([t, s]) => [t, { source: s, backing: null }])),
      blockJobs: new Map(),
      job: null,
      agent: 'none',
      fsFrozen: false,
      downtimeLimit: 300,
      virtType: 'kvm',
    };
    this.domainsByUuid.set(uuid, d);
    return d;
  }

  failNext(method: Method, times = 1, message = `${method} failed`, timedOut = false): void {
    const list = this.failures.get(method) ?? [];
    list.push({ left: times, error: () => new LibvirtError(timedOut ? `${method}: no answer from libvirt within 1s` : `${method}: ${message}`, timedOut ? '' : message, timedOut) });
    this.failures.set(method, list);
  }

  private enter(method: Method, uuid?: string, target?: string): void {
    this.calls.push(target === undefined ? method : `${method} ${target}`);
    this.onCall(method, uuid, target);
    const pending = this.failures.get(method)?.find((f) => f.left > 0);
    if (pending !== undefined) {
      pending.left--;
      throw pending.error();
    }
  }

  private get(uuid: string): FakeDomain {
    const d = this.domainsByUuid.get(uuid);
    if (d === undefined) throw new LibvirtError(`domain ${uuid} not found`, `error: failed to get domain '${uuid}': Domain not found`);
    return d;
  }

  /** What `stack()` says: Debian 12's by default. */
  stackIs: Stack = { libvirt: parseVersion('9.0.0'), qemu: parseVersion('7.2.22') };

  async stack(): Promise<Stack> {
    this.enter('stack');
    return this.stackIs;
  }

  async domains(): Promise<Domain[]> {
    this.enter('domains');
    return [...this.domainsByUuid.values()].map((d) => this.view(d));
  }

  private view(d: FakeDomain): Domain {
    const disks: Disk[] = [...d.disks].map(([target, x]) => ({
      target,
      device: 'disk',
      type: 'file',
      source: x.source,
      format: 'qcow2',
      readonly: false,
      shareable: false,
      backing: x.backing,
    }));
    return { name: d.name, uuid: d.uuid, virtType: d.virtType, memoryKiB: 1024, disks, nvram: null, tpmEmulator: false, agent: d.agent, state: d.state, xml: '<domain/>' };
  }

  async domain(uuid: string): Promise<Domain> {
    this.enter('domain', uuid);
    return this.view(this.get(uuid));
  }

  async dumpxml(uuid: string): Promise<string> {
    this.enter('dumpxml', uuid);
    this.get(uuid);
    return '<domain/>';
  }

  async state(uuid: string): Promise<DomainState> {
    this.enter('state', uuid);
    return this.get(uuid).state;
  }

  async stateReason(uuid: string): Promise<{ state: DomainState; reason: string }> {
    this.enter('stateReason', uuid);
    const d = this.get(uuid);
    return { state: d.state, reason: d.reason };
  }

  async exists(uuid: string): Promise<boolean> {
    this.enter('exists', uuid);
    return this.domainsByUuid.has(uuid);
  }

  /** Switches every disk named in `overlays` (target -> overlay path). */
  snapshotSwitches = new Map<string, Record<string, string>>();
  /** The options of each createSnapshot call. */
  readonly snapshotOptions: { live: boolean; timeoutMs: number; reuseExternal?: boolean }[] = [];

  async createSnapshot(uuid: string, xml: string, options: { live: boolean; timeoutMs: number; reuseExternal?: boolean }): Promise<void> {
    this.snapshotOptions.push(options);
    this.enter('createSnapshot', uuid);
    const d = this.get(uuid);
    // snapshot='manual' disks: libvirt leaves the domain paused, with no reason given.
    if (xml.includes("snapshot='manual'") && d.state === 'running') {
      d.state = 'paused';
      d.reason = 'unknown';
    }
    for (const [target, overlay] of Object.entries(this.snapshotSwitches.get(uuid) ?? {})) {
      const disk = d.disks.get(target)!;
      d.disks.set(target, { source: overlay, backing: disk.source });
    }
  }

  async maxDowntime(uuid: string): Promise<number> {
    this.enter('maxDowntime', uuid);
    return this.get(uuid).downtimeLimit;
  }

  async setMaxDowntime(uuid: string, ms: number): Promise<void> {
    this.enter('setMaxDowntime', uuid, String(ms));
    this.get(uuid).downtimeLimit = ms;
  }

  async completedJob(): Promise<CompletedJob> {
    this.enter('completedJob');
    return { elapsedMs: 10, downtimeMs: 5, memoryBytes: 1 };
  }

  async activeJob(uuid: string): Promise<{ processedBytes: number; totalBytes: number } | null> {
    this.enter('activeJob', uuid);
    const d = this.get(uuid);
    if (d.job === null) return null;
    if (d.job.aborted || --d.job.endsIn <= 0) {
      d.job = null;
      return null;
    }
    return { processedBytes: 1, totalBytes: 2 };
  }

  async abortJob(uuid: string): Promise<void> {
    this.enter('abortJob', uuid);
    const d = this.get(uuid);
    if (d.job !== null) d.job.aborted = true;
  }

  /** Starts the commit; `commitSteps` polls until ready; with `pivotsItself` (virsh --pivot --wait) it also pivots. */
  commitSteps = 0;

  async activeCommit(uuid: string, target: string): Promise<void> {
    this.enter('activeCommit', uuid, target);
    const d = this.get(uuid);
    if (d.blockJobs.has(target)) throw new LibvirtError('block commit failed', `error: disk '${target}' already in active block job`);
    if (this.commitSteps > 0) {
      d.blockJobs.set(target, { readyIn: this.commitSteps });
      throw new LibvirtError('block commit failed: no answer from libvirt within 1s', '', true);
    }
    this.pivotNow(d, target);
  }

  private pivotNow(d: FakeDomain, target: string): void {
    const disk = d.disks.get(target)!;
    if (disk.backing === null) throw new Error(`fake: ${target} has no backing image to commit into`);
    d.disks.set(target, { source: disk.backing, backing: null });
    d.blockJobs.delete(target);
  }

  async hasBlockJob(uuid: string, target: string): Promise<boolean> {
    this.enter('hasBlockJob', uuid, target);
    return this.get(uuid).blockJobs.has(target);
  }

  async pivot(uuid: string, target: string): Promise<void> {
    this.enter('pivot', uuid, target);
    const d = this.get(uuid);
    const job = d.blockJobs.get(target);
    if (job === undefined) throw new LibvirtError('no job', `error: No active block job '${target}'`);
    if (--job.readyIn > 0) throw new LibvirtError('not ready', `error: block copy still active: disk '${target}' not ready for pivot yet`);
    this.pivotNow(d, target);
  }

  async abortBlockJob(uuid: string, target: string): Promise<void> {
    this.enter('abortBlockJob', uuid, target);
    this.get(uuid).blockJobs.delete(target);
  }

  async fsFreeze(uuid: string): Promise<number> {
    this.enter('fsFreeze', uuid);
    const d = this.get(uuid);
    if (d.agent !== 'connected') throw new LibvirtError('the guest agent did not freeze the filesystems: Guest agent is not responding: QEMU guest agent is not connected', 'error: Guest agent is not responding: QEMU guest agent is not connected');
    d.fsFrozen = true;
    return 1;
  }

  async fsThaw(uuid: string): Promise<number> {
    this.enter('fsThaw', uuid);
    const d = this.get(uuid);
    if (d.agent !== 'connected') throw new LibvirtError('the guest agent did not thaw the filesystems: Guest agent is not responding: QEMU guest agent is not connected', 'error: Guest agent is not responding: QEMU guest agent is not connected');
    const was = d.fsFrozen ? 1 : 0;
    d.fsFrozen = false;
    return was;
  }

  async resume(uuid: string): Promise<void> {
    this.enter('resume', uuid);
    const d = this.get(uuid);
    d.state = 'running';
    d.reason = 'unpaused';
  }
}

/** qemu-img: makes an empty 0600 file per overlay, exclusively, as the real one does; logs `createOverlay FILE` into `calls`. */
export class FakeImages implements RunImages {
  /** Fail the call that would make this overlay (after nothing was made, as the real client leaves it). */
  failOn: string | null = null;

  constructor(readonly calls: string[] = []) {}

  /** No qemu-img installed. */
  missing = false;

  async createOverlay(spec: OverlaySpec): Promise<void> {
    this.calls.push(`createOverlay ${spec.overlay}`);
    if (this.missing) throw new QemuImgMissingError('qemu-img not found');
    if (spec.overlay === this.failOn) throw new VirtsnapError(`cannot create overlay ${spec.overlay} on ${spec.backing}: qemu-img: no space`);
    closeSync(openSync(spec.overlay, 'wx', 0o600));
  }
}

export class FakeZfs implements RunZfs {
  readonly snapshots = new Map<string, SnapshotProps>();
  /** Datasets that no longer exist under their name (renamed). */
  readonly gone = new Set<string>();
  private txg = 100;

  take(name: string, creation = Math.floor(Date.now() / 1000)): void {
    this.snapshots.set(name, { guid: String(Math.floor(Math.random() * 1e15)), createtxg: String(this.txg++), creation });
  }

  async exists(): Promise<boolean> {
    return true;
  }

  async subtree(dataset: string): Promise<string[]> {
    return [dataset];
  }

  async snapshot(names: string[]): Promise<void> {
    for (const n of names) this.take(n);
  }

  async listSnapshots(): Promise<string[]> {
    return [...this.snapshots.keys()];
  }

  async snapshotProps(datasets: string[]): Promise<{ props: Map<string, SnapshotProps>; unknown: Set<string> }> {
    const props = new Map([...this.snapshots].filter(([n]) => datasets.includes(n.split('@')[0]!) && !this.gone.has(n.split('@')[0]!)));
    return { props, unknown: new Set(datasets.filter((d) => this.gone.has(d))) };
  }
}

/** A journal whose writes fail (ENOSPC) once `failAfter` more writes have succeeded. */
export class FlakyJournal extends Journal {
  failAfter = Infinity;
  override write(entry: JournalEntry): void {
    if (this.failAfter <= 0) {
      const err = new Error('ENOSPC: no space left on device, open') as NodeJS.ErrnoException;
      err.code = 'ENOSPC';
      err.syscall = 'open';
      throw err;
    }
    this.failAfter--;
    super.write(entry);
  }
}

export function fakeConfig(root: string): Config {
  return {
    libvirtUri: 'test:///fake',
    overlayDir: path.join(root, 'overlay'),
    archiveDir: path.join(root, 'archive'),
    stateDir: path.join(root, 'state'),
    sanoidConf: path.join(root, 'sanoid.conf'),
    live: 'auto',
    mode: { fallback: 'ram', byType: {} },
    quiesceFallback: 'ram',
    agentTimeoutMs: 1000,
    pauseMaxMs: 60_000,
    parallel: 4,
    saveTimeoutMs: 1000,
    commitTimeoutMs: 3000,
    defineTimeoutMs: 1000,
    restoreTimeoutMs: 1000,
    lockTimeoutMs: 1000,
    watchdog: 'detached',
    metricsFile: null,
    // The fakes' memory files are not save images; the archive tests compress real ones.
    compression: 'gzip',
    store: { kind: 'dir' },
    configFile: null,
  };
}

export function fakeDeps(virsh = new FakeLibvirt(), zfs = new FakeZfs()): Deps & { virsh: FakeLibvirt; zfs: FakeZfs; images: FakeImages; journal: FlakyJournal; root: string } {
  const root = mkdtempSync(path.join(tmpdir(), 'virtsnap-fake-'));
  const config = fakeConfig(root);
  return { virsh, zfs, images: new FakeImages(virsh.calls), config, journal: new FlakyJournal(config.stateDir), owner: ownerOf(process.pid), worker: ownerOf(process.pid), stop: noStop, store: storeFor(config), root };
}

/** A journal entry of a domain frozen by a run whose owner (pid 999999999) is gone. */
export function frozenEntry(d: FakeDomain, overlays: Record<string, string>, changes: Partial<JournalEntry> = {}): JournalEntry {
  const now = new Date().toISOString();
  const dead = { pid: 999_999_999, bootId: 'x', startTime: '1' };
  return {
    format: 'virtsnap-journal/1',
    runId: 'tank/vm@snap',
    targets: ['tank/vm'],
    snapnames: ['snap'],
    types: ['hourly'],
    domain: { name: d.name, uuid: d.uuid },
    step: 'frozen',
    tag: `${d.name}.tag`,
    memoryFile: `/nonexistent/${d.name}.save`,
    metaDir: `/nonexistent/${d.name}.meta`,
    overlays: Object.entries(overlays).map(([target, overlay]) => ({
      target,
      original: d.disks.get(target)!.backing ?? d.disks.get(target)!.source,
      format: 'qcow2',
      bytes: 1,
      dataset: 'tank/vm',
      overlay,
    })),
    snapshots: ['tank/vm@snap'],
    owner: dead,
    worker: dead,
    stateBefore: 'running',
    startedAt: now,
    frozenAt: now,
    existedAtFreeze: {},
    updatedAt: now,
    ...changes,
  };
}

/** Puts `d`'s disks on overlays, as a freeze leaves them. */
export function onOverlays(d: FakeDomain, overlays: Record<string, string>): void {
  for (const [target, overlay] of Object.entries(overlays)) {
    const disk = d.disks.get(target)!;
    d.disks.set(target, { source: overlay, backing: disk.source });
  }
}

/** A restic repository in memory: each snapshot keeps copies of what it backed up. */
export class FakeRestic implements ResticClient {
  readonly repo = '/backup/repo';
  snaps: (ResticSnapshot & { files: Map<string, Buffer> })[] = [];
  calls: string[] = [];
  private n = 0;
  async backup(cwd: string, paths: string[], tags: string[], host: string): Promise<string> {
    this.calls.push(`backup ${paths.join(' ')}`);
    const files = new Map<string, Buffer>();
    const add = (rel: string): void => {
      const abs = path.join(cwd, rel);
      if (statSync(abs).isDirectory()) {
        for (const f of ['domain.xml', REPO_MANIFEST]) if (existsSync(path.join(abs, f))) files.set(`/${rel}/${f}`, readFileSync(path.join(abs, f)));
      } else files.set(`/${rel}`, readFileSync(abs));
    };
    paths.forEach(add);
    const id = createHash('sha256').update(String(++this.n)).digest('hex');
    this.snaps.push({ id, short_id: id.slice(0, 8), time: new Date().toISOString(), hostname: host, tags, paths: paths.map((p) => path.join(cwd, p)), files });
    return id.slice(0, 8);
  }
  async snapshots(tags: string[]): Promise<ResticSnapshot[]> {
    return this.snaps.filter((s) => tags.every((t) => s.tags.includes(t)));
  }
  async dumpText(snapshot: string, file: string): Promise<string> {
    return this.snaps.find((s) => s.id.startsWith(snapshot))!.files.get(file)!.toString();
  }
  async fileSize(snapshot: string, file: string): Promise<number | null> {
    return this.snaps.find((s) => s.id.startsWith(snapshot))?.files.get(file)?.length ?? null;
  }
  async restoreFile(snapshot: string, file: string, targetDir: string): Promise<void> {
    this.calls.push(`restore ${file}`);
    writeFileSync(path.join(targetDir, file), this.snaps.find((s) => s.id.startsWith(snapshot))!.files.get(file)!, { mode: 0o644 });
  }
  async forget(ids: string[]): Promise<void> {
    this.calls.push(`forget ${ids.join(' ')}`);
    this.snaps = this.snaps.filter((s) => !ids.some((i) => s.id.startsWith(i)));
  }
  async prune(): Promise<void> {
    this.calls.push('prune');
  }
  async check(): Promise<void> {}
  async rawSize(): Promise<number> {
    return 0;
  }
}


/** A complete libvirt save image (v2, raw) of `bytes` stream bytes filled with `fill`: what a freeze leaves in the overlay dir. */
export function saveImage(file: string, fill: string, uuid = `u-${fill}`, bytes = 65536): string {
  const header = Buffer.alloc(HEADER_BYTES);
  header.write('LibvirtQemudSave', 0, 16, 'latin1');
  header.writeUInt32LE(2, 16);
  header.writeUInt32LE(1024, 20);
  const xml = Buffer.alloc(1024);
  xml.write(`<domain><name>${fill}</name><uuid>${uuid}</uuid></domain>`);
  writeFileSync(file, Buffer.concat([header, xml, Buffer.alloc(bytes, fill)]), { mode: 0o600 });
  return file;
}

/**
 * The journal entry of a domain a thaw has brought back (step committed,
 * tied to tank/vm@snap), with its memory file and meta dir in the overlay
 * dir as a freeze names them: what DumpStore.seal takes.
 */
export function committedEntry(config: Pick<Config, 'overlayDir'>, name: string, stamp = '20240102T030405.000Z'): JournalEntry {
  mkdirSync(config.overlayDir, { recursive: true, mode: 0o700 });
  const uuid8 = createHash('sha256').update(name).digest('hex').slice(0, 8);
  const tag = `${stamp}-${uuid8}`;
  const base = path.join(config.overlayDir, `${name}.${tag}`);
  mkdirSync(`${base}.meta`, { recursive: true, mode: 0o700 });
  writeFileSync(`${base}.meta/domain.xml`, `<domain><name>${name}</name></domain>`);
  const uuid = `${uuid8}-0000-4000-8000-000000000000`;
  const d = { name, uuid, disks: new Map() } as unknown as FakeDomain;
  return frozenEntry(d, {}, {
    step: 'committed',
    tag,
    memoryFile: saveImage(`${base}.save`, name, uuid),
    metaDir: `${base}.meta`,
    tied: [{ name: 'tank/vm@snap', frozenAs: 'tank/vm@snap', guid: '777', createtxg: '5', creation: 1, mountpoint: '/tank/vm' }],
  });
}
