// Freeze and thaw: the only module that changes VMs.
//
// freeze: per domain, claim it in the journal, copy its XML/NVRAM into the
//   datasets, then one atomic external snapshot of RAM and disks: the RAM goes
//   to a file, the disks switch to overlays outside the datasets, and the
//   datasets stop changing at the instant the RAM was saved.
// thaw: per domain, active block commit of each overlay back into its own
//   image and pivot, check the domain is on its own disks, delete the
//   overlays, archive the RAM dump.
//
// Any failure half-way through a freeze undoes what was frozen, so a VM is
// never left on an overlay or paused because of us.
import { hostname } from 'node:os';
import { rmSync, statSync } from 'node:fs';
import { archiveDump, snapshotNames, withArchiveLock, type ArchivedDump } from './archive.js';
import type { Config } from './config.js';
import { DATASET_META_DEPTH, saveDomainFiles } from './domain-files.js';
import { LibvirtError, VirtsnapError } from './errors.js';
import { ensureDir, exists, removeIfExists } from './fsutil.js';
import type { JournalEntry, OverlayRecord } from './journal.js';
import type { Owner } from './owner.js';
import { Journal } from './journal.js';
import { readSaveImageHeader } from './libvirt/save-image.js';
import type { Domain, LibvirtClient } from './libvirt/virsh.js';
import { log } from './log.js';
import { showSaveProgress } from './progress.js';
import { sleep, withLock } from './lock.js';
import type { DomainPlan, FreezePlan } from './plan.js';
import { datasetOfSnapshot, type ZfsClient } from './zfs.js';
import { tieSnapshots, type SnapshotRef } from './snapshot-id.js';

export interface Deps {
  virsh: LibvirtClient;
  zfs: ZfsClient;
  config: Config;
  journal: Journal;
  /** The process that owns the run (sanoid for the hooks, see owner.hookOwnerPid). */
  owner: Owner;
}

function ctx(name: string, dataset?: string) {
  return dataset === undefined ? { domain: name } : { domain: name, dataset };
}

function fileSize(file: string): number | null {
  try {
    const st = statSync(file);
    return st.isFile() ? st.size : null;
  } catch {
    return null;
  }
}

function overlaysOf(dp: DomainPlan): OverlayRecord[] {
  return dp.disks
    .filter((d) => d.overlay !== null || d.manual)
    .map((d) => ({
      target: d.target,
      original: d.source as string,
      format: d.format,
      bytes: fileSize(d.source as string),
      dataset: d.dataset as string,
      overlay: d.overlay,
    }));
}

function entryOf(dp: DomainPlan, plan: FreezePlan, deps: Deps): JournalEntry {
  const now = new Date().toISOString();
  return {
    format: 'virtsnap-journal/1',
    runId: plan.runId,
    targets: plan.targets,
    snapnames: plan.snapnames,
    types: plan.types,
    domain: { name: dp.name, uuid: dp.uuid },
    step: 'snapshotting',
    tag: dp.tag,
    memoryFile: dp.memoryFile as string,
    metaDir: dp.metaDir,
    overlays: overlaysOf(dp),
    snapshots: dp.snapshots,
    mountpoints: dp.mountpoints,
    owner: deps.owner,
    startedAt: now,
    updatedAt: now,
  };
}

/** After waiting for another run, the domain must still be what we planned for. */
function assertUnchanged(dp: DomainPlan, domain: Domain): void {
  for (const o of overlaysOf(dp)) {
    const disk = domain.disks.find((d) => d.target === o.target);
    if (disk?.source !== o.original) {
      throw new VirtsnapError(
        `domain ${JSON.stringify(dp.name)} disk ${o.target} is now on ${disk?.source ?? 'nothing'}, not ${o.original}: run again`,
      );
    }
  }
  if (domain.state === 'shut off') {
    throw new VirtsnapError(`domain ${JSON.stringify(dp.name)} shut down while we planned: run again`);
  }
  // A paused domain is frozen without overlays, a running one with them: neither plan fits the other.
  if ((domain.state === 'paused') !== (dp.state === 'paused')) {
    throw new VirtsnapError(`domain ${JSON.stringify(dp.name)} went from ${dp.state} to ${domain.state} while we planned: run again`);
  }
}

async function freezeDomain(dp: DomainPlan, plan: FreezePlan, deps: Deps): Promise<JournalEntry | null> {
  const { virsh, config, journal } = deps;
  const inDatasets = dp.datasetMetaDirs.map((dir) => ({ dir, ours: DATASET_META_DEPTH }));
  if (dp.action === 'record') {
    await saveDomainFiles(dp, virsh, inDatasets);
    log.info(`saved XML of shut-off domain into ${dp.datasetMetaDirs.join(', ')}`, ctx(dp.name));
    return null;
  }
  let entry = entryOf(dp, plan, deps);
  await journal.claim(entry, config.lockTimeoutMs);
  try {
    assertUnchanged(dp, await virsh.domain(dp.uuid));
    // QEMU must reach the overlays in it: traversable, not listable.
    ensureDir(config.overlayDir, 0o711, 'VIRTSNAP_OVERLAY_DIR');
    await saveDomainFiles(dp, virsh, [{ dir: dp.metaDir, ours: 1 }, ...inDatasets]);
  } catch (err) {
    rmSync(dp.metaDir, { recursive: true, force: true });
    journal.remove(dp.uuid);
    throw err;
  }
  const started = Date.now();
  const disks = entry.overlays.map((o) => o.target).join(',');
  const how = dp.state === 'paused' ? `leaving ${disks} as they are (the domain is paused)` : `switching ${disks} to overlays${dp.live ? ' (live)' : ''}`;
  log.info(`saving RAM to ${dp.memoryFile} and ${how}`, ctx(dp.name, plan.targets.join(',')));
  const progress = showSaveProgress(virsh, dp.uuid, dp.name);
  try {
    await virsh.createSnapshot(dp.uuid, dp.snapshotXml as string, { live: dp.live, timeoutMs: config.saveTimeoutMs }).finally(() => progress.stop());
  } catch (err) {
    await undoFailedSnapshot(entry, dp, deps);
    throw err;
  }
  const job = await virsh.completedJob(dp.uuid).catch(() => null);
  let existedAtFreeze: Record<string, string>;
  try {
    existedAtFreeze = await snapshotsAtFreeze(entry.snapshots, deps);
  } catch (err) {
    log.error(`cannot ask ZFS which snapshots exist (${(err as Error).message}): thawing, no RAM dump could be tied to a snapshot`, ctx(dp.name));
    await thawDomain({ ...entry, step: 'frozen' }, deps, { keepDump: false });
    throw err;
  }
  entry = journal.update(entry, { step: 'frozen', frozenAt: new Date().toISOString(), existedAtFreeze, ...(job ? { job } : {}) });
  log.info(
    `frozen in ${Date.now() - started} ms (guest paused ${job?.downtimeMs ?? '?'} ms)`,
    ctx(dp.name, plan.targets.join(',')),
  );
  return entry;
}

/**
 * The run's snapshot names that exist right after the RAM was saved, with
 * their guids: whatever exists now was taken before the disks stood still,
 * and the dump must never be tied to it (sanoid reusing a name, a user's
 * `DS@NAME` made by hand).
 */
async function snapshotsAtFreeze(wanted: string[], deps: Deps): Promise<Record<string, string>> {
  const { props } = await deps.zfs.snapshotProps(wanted.map(datasetOfSnapshot));
  const existed: Record<string, string> = {};
  for (const name of wanted) {
    const p = props.get(name);
    if (p !== undefined) existed[name] = p.guid;
  }
  return existed;
}

/**
 * snapshot-create failed. With --atomic libvirt takes either every disk or
 * none; if it did switch some, thaw them. Then nothing of ours may remain.
 */
async function undoFailedSnapshot(entry: JournalEntry, dp: DomainPlan, deps: Deps): Promise<void> {
  try {
    // A timed-out virsh is killed, but libvirtd goes on with the job: stop it
    // and wait until it is gone before judging what state the domain is in.
    if (!(await jobGone(dp.uuid, deps))) {
      log.error('libvirt is still running the snapshot job and would not abort it: the journal is kept, run `virtsnap recover` once it ends', ctx(dp.name));
      return;
    }
    const domain = await deps.virsh.domain(dp.uuid);
    const switched = entry.overlays.some((o) => domain.disks.find((d) => d.target === o.target)?.source === o.overlay);
    if (switched) {
      await thawDomain({ ...entry, step: 'frozen' }, deps, { keepDump: false });
      return;
    }
    if (domain.state === 'paused' && dp.state === 'running') {
      log.warn('libvirt left the domain paused after the failed snapshot: resuming it', ctx(dp.name));
      await deps.virsh.resume(dp.uuid);
    }
    for (const o of entry.overlays) if (o.overlay !== null) removeIfExists(o.overlay);
    removeIfExists(entry.memoryFile);
    rmSync(entry.metaDir, { recursive: true, force: true });
    deps.journal.remove(dp.uuid);
  } catch (err) {
    log.error(`could not clean up after the failed snapshot (${(err as Error).message}): the journal is kept, run \`virtsnap recover\``, ctx(dp.name));
  }
}

async function jobGone(uuid: string, deps: Deps): Promise<boolean> {
  if ((await deps.virsh.activeJob(uuid).catch(() => null)) === null) return true;
  await deps.virsh.abortJob(uuid).catch(() => undefined);
  for (let i = 0; i < 120; i++) {
    await sleep(500);
    if ((await deps.virsh.activeJob(uuid).catch(() => null)) === null) return true;
  }
  return false;
}

export interface FreezeResult {
  frozen: JournalEntry[];
}

export async function freeze(plan: FreezePlan, deps: Deps): Promise<FreezeResult> {
  if (plan.problems.length > 0) {
    for (const p of plan.problems) log.error(p);
    const more = plan.problems.length > 1 ? ` (and ${plan.problems.length - 1} more, see above)` : '';
    throw new VirtsnapError(`${plan.problems[0]}${more}`);
  }
  const frozen: JournalEntry[] = [];
  try {
    for (const dp of plan.domains) {
      const entry = await freezeDomain(dp, plan, deps);
      if (entry !== null) frozen.push(entry);
    }
  } catch (err) {
    if (frozen.length > 0) log.error(`freeze failed: thawing the ${frozen.length} domain(s) already frozen`);
    for (const entry of frozen.reverse()) {
      try {
        await thawDomain(entry, deps, { keepDump: false });
      } catch (thawErr) {
        log.error(`could not thaw: ${(thawErr as Error).message}`, ctx(entry.domain.name));
      }
    }
    throw err;
  }
  return { frozen };
}

async function commitDisk(entry: JournalEntry, o: OverlayRecord, domain: Domain, deps: Deps): Promise<void> {
  const disk = domain.disks.find((d) => d.target === o.target);
  if (disk?.source === o.original) return; // nothing to commit, or committed before a crash
  if (disk?.source !== o.overlay) {
    throw new VirtsnapError(
      `domain ${JSON.stringify(entry.domain.name)} disk ${o.target} is on ${disk?.source ?? 'nothing'}, neither our overlay ${o.overlay} nor ${o.original}: leaving it alone, check it by hand`,
    );
  }
  const started = Date.now();
  try {
    await deps.virsh.activeCommit(entry.domain.uuid, o.target, deps.config.commitTimeoutMs);
  } catch (err) {
    // virsh aborts the job itself on --timeout; make sure no job is left in any case.
    if (await deps.virsh.hasBlockJob(entry.domain.uuid, o.target).catch(() => false)) {
      await deps.virsh.abortBlockJob(entry.domain.uuid, o.target).catch(() => undefined);
    }
    const reason = err instanceof LibvirtError ? err.libvirtMessage.replace(/\berror: /g, '').trim() : (err as Error).message;
    throw new VirtsnapError(
      `block commit of ${o.target} failed, the domain stays on overlay ${o.overlay} (${reason}): fix the cause, then run \`virtsnap recover\``,
    );
  }
  log.info(`committed ${o.target} back into ${o.original} in ${Date.now() - started} ms`, ctx(entry.domain.name, o.dataset));
}

function assertOnOriginals(entry: JournalEntry, domain: Domain): void {
  for (const o of entry.overlays) {
    const source = domain.disks.find((d) => d.target === o.target)?.source;
    if (source !== o.original) {
      throw new VirtsnapError(`domain ${JSON.stringify(entry.domain.name)} disk ${o.target} is on ${source ?? 'nothing'} after the commit, expected ${o.original}`);
    }
  }
}

export interface ThawOptions {
  /** Archive the RAM dump (post hook), or throw it away (undoing a failed freeze). */
  keepDump: boolean;
}

/** The domain was thawed by another process (post and `recover --force` racing) while this one waited its turn. */
export const THAWED_ELSEWHERE = 'thawed-elsewhere';

/**
 * Brings one domain back onto its own disks and deals with its RAM dump.
 * One thaw per domain at a time, from the first look at the domain to the
 * journal's removal: post, `recover` and `recover --force` serialise here,
 * so one never aborts the block job of another.
 */
export async function thawDomain(entry: JournalEntry, deps: Deps, options: ThawOptions): Promise<ArchivedDump | null | typeof THAWED_ELSEWHERE> {
  const patience = deps.config.lockTimeoutMs + deps.config.commitTimeoutMs * Math.max(1, entry.overlays.length);
  return withLock(deps.journal.lockDir, `thaw-${entry.domain.uuid}`, Date.now() + patience, async () => {
    const current = deps.journal.read(entry.domain.uuid);
    if (current === null || current.tag !== entry.tag) {
      log.info('already thawed by another virtsnap process', ctx(entry.domain.name));
      return THAWED_ELSEWHERE;
    }
    return thawHeld(entry, deps, options);
  });
}

async function thawHeld(entry: JournalEntry, deps: Deps, options: ThawOptions): Promise<ArchivedDump | null> {
  const { virsh, journal } = deps;
  const before = await virsh.domain(entry.domain.uuid);
  if (before.state === 'shut off' && entry.overlays.some((o) => before.disks.find((d) => d.target === o.target)?.source === o.overlay)) {
    throw new VirtsnapError(
      `domain ${JSON.stringify(entry.domain.name)} was shut down while on overlays: start it (it runs on the overlays) and run \`virtsnap recover\``,
    );
  }
  let keep = options.keepDump;
  const manual = entry.overlays.length > 0 && entry.overlays.every((o) => o.overlay === null);
  if (manual && before.state !== 'paused' && keep) {
    log.error('the domain was frozen paused (no overlays) but has been resumed since: its disks moved on, the RAM dump is discarded', ctx(entry.domain.name));
    keep = false;
  }
  // Which snapshots hold the disks of the RAM's instant is decided now, while
  // they still stand still, and written down before the first commit: after
  // a crash half-way through the commits, recover must not look again.
  let tied = entry.tied;
  if (keep && tied === undefined) {
    if (entry.step === 'frozen') tied = await tieDump(entry, deps);
    else log.error(`the run died at step ${entry.step}, before it recorded which snapshots hold the RAM's instant: the RAM dump is discarded`, ctx(entry.domain.name));
  }
  entry = journal.update(entry, { step: entry.step === 'committed' ? 'committed' : 'committing', ...(tied !== undefined ? { tied } : {}) });
  for (const o of entry.overlays) await commitDisk(entry, o, before, deps);
  assertOnOriginals(entry, await virsh.domain(entry.domain.uuid));
  for (const o of entry.overlays) if (o.overlay !== null) removeIfExists(o.overlay);
  entry = journal.update(entry, { step: 'committed' });
  const dump = keep && tied !== undefined && tied.length > 0 ? await keepDump(entry, tied, deps) : null;
  if (dump === null) dropDump(entry);
  journal.remove(entry.domain.uuid);
  return dump;
}

/** The snapshots of the run that hold this domain's disks as they were when its RAM was saved (see lib/snapshot-id.ts). */
async function tieDump(entry: JournalEntry, deps: Deps): Promise<SnapshotRef[]> {
  const name = entry.domain.name;
  let now;
  try {
    now = await deps.zfs.snapshotProps(entry.snapshots.map(datasetOfSnapshot));
  } catch (err) {
    log.error(`cannot ask ZFS which snapshots exist (${(err as Error).message}): the RAM dump cannot be tied to any snapshot and is discarded`, ctx(name));
    return [];
  }
  const { tied, refused } = tieSnapshots({
    wanted: entry.snapshots,
    existedAtFreeze: entry.existedAtFreeze,
    now: now.props,
    unknownDatasets: now.unknown,
    freezeStartedMs: Date.parse(entry.startedAt),
    mountpointOf: (ds) => entry.mountpoints?.[ds] ?? null,
  });
  for (const r of refused) log.warn(`RAM dump not tied to ${r.name}: ${r.reason}`, ctx(name, datasetOfSnapshot(r.name)));
  if (tied.length === 0) {
    log.error(`no snapshot of this run holds the disks as they were when the RAM was saved (${entry.snapshots.join(', ')}): RAM dump discarded`, ctx(name));
  }
  return tied;
}

function dropDump(entry: JournalEntry): void {
  removeIfExists(entry.memoryFile);
  rmSync(entry.metaDir, { recursive: true, force: true });
}

/** Archives the dump, tied to the snapshots that hold its instant. */
async function keepDump(entry: JournalEntry, tied: SnapshotRef[], deps: Deps): Promise<ArchivedDump | null> {
  const name = entry.domain.name;
  if (!exists(entry.memoryFile)) {
    log.error(`memory file ${entry.memoryFile} is missing: no RAM dump for this snapshot`, ctx(name));
    return null;
  }
  const header = readSaveImageHeader(entry.memoryFile);
  if (header === null || !header.complete) {
    log.error(`memory file ${entry.memoryFile} is incomplete: no RAM dump for this snapshot`, ctx(name));
    return null;
  }
  // Under the archive lock: gc must not take a half-archived dump for a stray.
  const dump = await withArchiveLock(deps.config.stateDir, deps.config.lockTimeoutMs, () => archiveDump(deps.config.archiveDir, {
    id: entry.tag,
    domain: entry.domain,
    snapshots: tied,
    types: entry.types,
    memoryFile: entry.memoryFile,
    metaDir: entry.metaDir,
    disks: entry.overlays.map((o) => ({ target: o.target, source: o.original, dataset: o.dataset, format: o.format, bytes: o.bytes })),
    startedAt: entry.startedAt,
    frozenAt: entry.frozenAt ?? null,
    job: entry.job ?? null,
    libvirtUri: deps.config.libvirtUri,
    hostname: hostname(),
  }));
  log.info(`archived RAM dump ${dump.manifest.memoryFile} (${dump.manifest.bytes} bytes) for ${snapshotNames(dump.manifest).join(', ')}`, ctx(name));
  return dump;
}

export interface ThawResult {
  dumps: ArchivedDump[];
  failures: string[];
  /** Domains thawed without a RAM dump kept (not tied to any snapshot, or incomplete): see the log. */
  discarded: string[];
}

/** post: thaw every domain the run froze. One domain's failure does not stop the others. */
export async function thawRun(runId: string, deps: Deps): Promise<ThawResult> {
  const result: ThawResult = { dumps: [], failures: [], discarded: [] };
  for (const entry of deps.journal.list().filter((e) => e.runId === runId)) {
    try {
      const dump = await thawDomain(entry, deps, { keepDump: true });
      if (dump === THAWED_ELSEWHERE) continue;
      if (dump !== null) result.dumps.push(dump);
      else result.discarded.push(entry.domain.name);
    } catch (err) {
      log.error((err as Error).message, ctx(entry.domain.name));
      result.failures.push((err as Error).message);
    }
  }
  return result;
}
