// Freeze: per domain, claim it in the journal, copy its XML/NVRAM into the
// datasets, then one atomic external snapshot of RAM and disks: the RAM goes
// to a file, the disks switch to overlays outside the datasets, and the
// datasets stop changing at the instant the RAM was saved. (Thaw, the way
// back, is lib/thaw.ts; with it, these are the only modules that change VMs.)
//
// Any failure half-way through a freeze, a signal, or the death of the run's
// owner undoes what was frozen, so a VM is never left on an overlay or
// paused because of us.
import { chmodSync, closeSync, constants, fdatasync, openSync, rmSync, statSync } from 'node:fs';
import type { Deps } from './deps.js';
import { DATASET_META_DEPTH, saveDomainFiles } from './domain-files.js';
import { LibvirtError, VirtsnapError } from './errors.js';
import { ensureDir, freeBytes, removeIfExists } from './fsutil.js';
import { factsOfEntry, type JournalEntry, type OverlayRecord } from './journal.js';
import { sourceOf } from './libvirt/domain-xml.js';
import { setWasRunning } from './libvirt/save-image.js';
import { QemuImgMissingError } from './libvirt/qemu-img.js';
import type { Domain } from './libvirt/virsh.js';
import { about, log } from './log.js';
import { ownerIsAlive } from './owner.js';
import { cannotQuiesce, type DomainPlan, type FreezePlan } from './plan.js';
import { showSaveProgress } from './progress.js';
import { restoreDowntimeLimit, settleDomainJob, thawDomain } from './thaw.js';
import { inParallel } from './parallel.js';
import { datasetOfSnapshot } from './zfs.js';
import { buildManifest } from './manifest.js';
import { hostname } from 'node:os';
import { assertMountpointPrivate, diskIdentity, writeInDatasetManifest } from './ram-in-dataset.js';

export type { Deps } from './deps.js';

/** The journal writes of one freeze and its thaw fit in far less; below this, refuse before touching a VM. */
const STATE_DIR_MIN_FREE = 4 * 1024 * 1024;

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
    mode: dp.mode,
    step: 'snapshotting',
    tag: dp.tag,
    memoryFile: dp.memoryFile as string,
    ...(dp.ramInDataset !== null ? { ramInDataset: dp.ramInDataset } : {}),
    metaDir: dp.metaDir,
    overlays: overlaysOf(dp),
    snapshots: dp.snapshots,
    mountpoints: dp.mountpoints,
    owner: deps.owner,
    worker: deps.worker,
    stateBefore: dp.state,
    startedAt: now,
    updatedAt: now,
  };
}

/** After waiting for another run, the domain must still be what we planned for. */
function assertUnchanged(dp: DomainPlan, domain: Domain): void {
  for (const o of overlaysOf(dp)) {
    const source = sourceOf(domain, o.target);
    if (source !== o.original) {
      throw new VirtsnapError(
        `domain ${JSON.stringify(dp.name)} disk ${o.target} is now on ${source ?? 'nothing'}, not ${o.original}: run again`,
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
  if (dp.action === 'record') {
    await saveDomainFiles(dp, deps.virsh, metaDirsInDatasets(dp));
    log.info(`saved XML of shut-off domain into ${dp.datasetMetaDirs.join(', ')}`, about(dp.name));
    return null;
  }
  deps.stop.check(`before freezing ${JSON.stringify(dp.name)}`);
  if (dp.modeNote !== null) log.info(`${plan.mode} mode: ${dp.modeNote}`, about(dp.name));
  if (dp.mode === 'quiesce') {
    const quiesced = await quiesceDomain(dp, plan, deps);
    if (quiesced !== FALL_BACK) return quiesced;
    return saveRam({ ...dp, mode: 'ram', fallback: null }, plan, deps);
  }
  return saveRam(dp, plan, deps);
}

const FALL_BACK = Symbol('fall back to ram');

/** `<mountpoint>/.virtsnap/<domain>` in each dataset: the XML/NVRAM copies that travel in the snapshot. */
function metaDirsInDatasets(dp: DomainPlan): { dir: string; ours: number }[] {
  return dp.datasetMetaDirs.map((dir) => ({ dir, ours: DATASET_META_DEPTH }));
}

/** libvirt's words when there is no agent to talk to: nothing can have been frozen. */
const NO_AGENT = /not connected|not configured|no agent|agent is not available/i;
/** The filesystems were frozen before we came (another tool's backup): not ours to thaw. */
const FROZEN_BY_OTHERS = /already frozen|is frozen/i;

/**
 * After a failed fsfreeze: true once nothing of ours can be left frozen. A
 * freeze that timed out on our side may still complete in the guest; the
 * agent runs commands in order, so a thaw now comes after it.
 */
async function freezeUndone(dp: DomainPlan, deps: Deps, reason: string): Promise<boolean> {
  if (NO_AGENT.test(reason) || FROZEN_BY_OTHERS.test(reason)) return true;
  try {
    await deps.virsh.fsThaw(dp.uuid, deps.config.agentTimeoutMs);
    return true;
  } catch (err) {
    log.warn(`thaw after the failed freeze: ${(err as Error).message}`, about(dp.name));
    return false;
  }
}

/**
 * quiesce: the guest agent freezes the guest's filesystems (flushed, no
 * writes until the thaw); the disks stay where they are and no RAM is saved.
 * Without an answer from the agent: the ram plan, or a failed run, as
 * VIRTSNAP_QUIESCE_FALLBACK says.
 */
async function quiesceDomain(dp: DomainPlan, plan: FreezePlan, deps: Deps): Promise<JournalEntry | typeof FALL_BACK> {
  const { virsh, config, journal } = deps;
  // Nothing to commit: the disks are recorded only to say which datasets hold the VM.
  let entry: JournalEntry = { ...entryOf(dp, plan, deps), overlays: overlaysOf(dp).map((o) => ({ ...o, overlay: null })) };
  await journal.claim(entry, config.lockTimeoutMs);
  try {
    assertUnchanged(dp, await virsh.domain(dp.uuid));
    await saveDomainFiles(dp, virsh, metaDirsInDatasets(dp));
    deps.stop.check(`before quiescing ${JSON.stringify(dp.name)}`);
  } catch (err) {
    journal.remove(dp.uuid);
    throw err;
  }
  const started = Date.now();
  let count: number;
  try {
    count = await virsh.fsFreeze(dp.uuid, config.agentTimeoutMs);
  } catch (err) {
    const reason = (err as Error).message;
    if (!(await freezeUndone(dp, deps, reason))) {
      // The agent may still freeze them (libvirt waits on it after our virsh
      // gave up) and no thaw was confirmed: the entry stays, as frozen, so
      // post, recover and the watchdog keep thawing. No ram fallback for it.
      log.error(`${reason}, and no thaw could be confirmed: its filesystems may be frozen; post (or the watchdog) thaws them, this snapshot is only crash-consistent`, about(dp.name, plan.targets.join(',')));
      return journal.update(entry, { step: 'frozen', frozenAt: new Date().toISOString() });
    }
    journal.remove(dp.uuid);
    if (dp.fallback === 'ram') {
      log.warn(`${reason}: freezing it with a RAM snapshot instead (VIRTSNAP_QUIESCE_FALLBACK=ram)`, about(dp.name, plan.targets.join(',')));
      return FALL_BACK;
    }
    throw new VirtsnapError(cannotQuiesce(dp.name, reason));
  }
  const frozen = { step: 'frozen' as const, frozenAt: new Date().toISOString() };
  try {
    entry = journal.update(entry, frozen);
  } catch (err) {
    log.error(`cannot record the freeze in the journal (${(err as Error).message}): thawing the filesystems`, about(dp.name));
    await thawDomain({ ...entry, ...frozen }, deps, { keepDump: false });
    throw err;
  }
  // An agent that froze nothing (no filesystem on a block device, or all excluded) makes the snapshot crash-consistent only.
  const said = `froze ${count} filesystem(s) through the guest agent in ${Date.now() - started} ms`;
  if (count === 0) log.warn(`${said}: this snapshot is only crash-consistent`, about(dp.name, plan.targets.join(',')));
  else log.info(said, about(dp.name, plan.targets.join(',')));
  return entry;
}

/** ram and pause: one external snapshot of RAM and disks (pause: disks left alone, the guest left paused). */
async function saveRam(dp: DomainPlan, plan: FreezePlan, deps: Deps): Promise<JournalEntry> {
  const { virsh, config, journal } = deps;
  const inDatasets = metaDirsInDatasets(dp);
  let entry = entryOf(dp, plan, deps);
  await journal.claim(entry, config.lockTimeoutMs);
  const made: string[] = [];
  let reuseOverlays = dp.reuseOverlays;
  try {
    assertUnchanged(dp, await virsh.domain(dp.uuid));
    if (dp.ramInDataset !== null) assertMountpointPrivate(dp.ramInDataset.mountpoint);
    // QEMU must reach the overlays in it: traversable, not listable.
    ensureDir(config.overlayDir, 0o711, 'VIRTSNAP_OVERLAY_DIR');
    await saveDomainFiles(dp, virsh, [{ dir: dp.metaDir, ours: 1 }, ...inDatasets]);
    if (reuseOverlays) reuseOverlays = await makeOverlays(dp, deps, made);
    deps.stop.check(`before saving the RAM of ${JSON.stringify(dp.name)}`);
  } catch (err) {
    for (const file of made) removeIfExists(file);
    rmSync(dp.metaDir, { recursive: true, force: true });
    journal.remove(dp.uuid);
    throw err;
  }
  const started = Date.now();
  const disks = entry.overlays.map((o) => o.target).join(',');
  const how =
    dp.state === 'paused'
      ? `leaving ${disks} as they are (the domain is paused)`
      : dp.mode === 'pause'
        ? `leaving ${disks} as they are; the guest stays paused until post (pause mode${dp.live ? ', RAM saved live' : ''})`
        : `switching ${disks} to overlays${dp.live ? ' (live)' : ''}`;
  log.info(`saving RAM to ${dp.memoryFile} and ${how}`, about(dp.name, plan.targets.join(',')));
  if (dp.downtimeLimitMs !== null) entry = await lowerDowntimeLimit(entry, dp.downtimeLimitMs, deps);
  const progress = showSaveProgress(virsh, dp.uuid, dp.name);
  const converging = entry.downtimeLimitBefore === undefined ? null : watchConvergence(entry, entry.downtimeLimitBefore, deps);
  const syncing = dp.syncDumpWhileSaving ? syncWhileSaving(dp.memoryFile as string) : null;
  try {
    await virsh
      .createSnapshot(dp.uuid, dp.snapshotXml as string, { live: dp.live, timeoutMs: config.saveTimeoutMs, reuseExternal: reuseOverlays })
      .finally(() => {
        progress.stop();
        converging?.stop();
        syncing?.stop();
      });
  } catch (err) {
    if (await restoreDowntimeLimit(entry, deps)) entry = withoutDowntimeLimit(entry);
    await undoFailedSnapshot(entry, dp, deps, lostTrack(err));
    throw err;
  }
  // The journal keeps the old limit until the 'frozen' update below, which drops it once it is set back.
  if (await restoreDowntimeLimit(entry, deps)) entry = withoutDowntimeLimit(entry);
  // Pause mode: libvirt wrote was_running 0 (snapshot='manual' leaves the guest paused); the dump says what the VM was.
  if (dp.mode === 'pause' && dp.state === 'running') {
    try {
      setWasRunning(dp.memoryFile as string, true);
    } catch (err) {
      log.warn(`cannot mark the RAM dump as of a running guest (${(err as Error).message}): a plain \`virsh restore\` of it needs --running`, about(dp.name));
    }
  }
  const job = await virsh.completedJob(dp.uuid).catch(() => null);
  let existedAtFreeze: Record<string, string>;
  try {
    existedAtFreeze = await snapshotsAtFreeze(entry.snapshots, deps);
  } catch (err) {
    log.error(`cannot ask ZFS which snapshots exist (${(err as Error).message}): thawing, no RAM dump could be tied to a snapshot`, about(dp.name));
    await thawDomain({ ...entry, step: 'frozen' }, deps, { keepDump: false });
    throw err;
  }
  const frozen = { step: 'frozen' as const, frozenAt: new Date().toISOString(), existedAtFreeze, ...(job ? { job } : {}) };
  const ramInDataset = entry.ramInDataset;
  if (ramInDataset !== undefined) {
    try {
      const bytes = recordRamInDataset({ ...entry, ...frozen }, deps);
      entry = { ...entry, ramInDataset: { ...ramInDataset, bytes } };
    } catch (err) {
      log.error(`cannot write the manifest of the RAM dump into ${ramInDataset.dir} (${(err as Error).message}): thawing, no RAM dump kept`, about(dp.name));
      await thawDomain({ ...entry, step: 'frozen' }, deps, { keepDump: false });
      throw err;
    }
  }
  try {
    entry = journal.update(entry, frozen);
  } catch (err) {
    // The state dir filled up or went read-only: the domain is still thawed
    // (thaw goes on without the journal), and no dump is kept.
    log.error(`cannot record the freeze in the journal (${(err as Error).message}): thawing, no RAM dump kept`, about(dp.name));
    await thawDomain({ ...entry, ...frozen }, deps, { keepDump: false });
    throw err;
  }
  const paused = dp.mode === 'pause' && dp.state !== 'paused' ? 'the guest stays paused until post' : `guest paused ${job?.downtimeMs ?? '?'} ms`;
  log.info(`frozen in ${Date.now() - started} ms (${paused})`, about(dp.name, plan.targets.join(',')));
  return entry;
}

/**
 * VIRTSNAP_STORE=dataset: the manifest beside the RAM, written once the
 * save is complete and before sanoid's snapshot, with each disk's size and
 * mtime as they stand still now (lib/ram-in-dataset.ts says why). Returns
 * the memory file's size.
 */
function recordRamInDataset(entry: JournalEntry, deps: Deps): number {
  const where = entry.ramInDataset!;
  chmodSync(entry.memoryFile, 0o600); // guest secrets, whatever mode libvirt gave the file it made
  const bytes = statSync(entry.memoryFile).size;
  // Built as every manifest is; inside the dataset it names the snapshots to be taken, not yet their guids.
  const { snapshots: _, sha256: _s, memoryFile: _m, metaDir: _d, ...m } = buildManifest(factsOfEntry(entry, [], { libvirtUri: deps.config.libvirtUri, hostname: hostname() }), {
    memoryFile: entry.memoryFile,
    bytes,
    sha256: '',
    compression: null,
    metaDir: null,
  });
  writeInDatasetManifest(where, {
    ...m,
    store: { kind: 'dataset', dataset: where.dataset, mountpoint: where.mountpoint },
    snapshotNames: entry.snapshots,
    disks: m.disks.map((d) => ({ ...d, identity: diskIdentity(d.source) })),
  });
  return bytes;
}

/**
 * Lowers the domain's migration downtime limit for its save (lib/plan.ts
 * says why), after writing the old one into the journal, so that a thaw
 * sets it back if this process dies during the save. Not essential: when
 * anything here fails, the save runs with QEMU's limit as it is.
 */
async function lowerDowntimeLimit(entry: JournalEntry, limitMs: number, deps: Deps): Promise<JournalEntry> {
  let recorded = entry;
  try {
    const before = await deps.virsh.maxDowntime(entry.domain.uuid);
    if (before <= limitMs) return entry;
    recorded = deps.journal.update(entry, { downtimeLimitBefore: before });
    await deps.virsh.setMaxDowntime(entry.domain.uuid, limitMs);
  } catch (err) {
    log.warn(`saving the RAM with QEMU's migration downtime limit as it is: ${(err as Error).message}`, about(entry.domain.name));
  }
  return recorded;
}

function withoutDowntimeLimit(entry: JournalEntry): JournalEntry {
  const { downtimeLimitBefore: _, ...rest } = entry;
  return rest;
}

/** Bytes saved beyond this many times the RAM: the save is not converging at the lowered limit. */
const CONVERGENCE_FACTOR = 1.5;
const CONVERGENCE_POLL_MS = 1000;

/**
 * A guest that dirties its RAM faster than the save writes it never leaves
 * few enough pages for a low downtime limit: once the save has written
 * CONVERGENCE_FACTOR times its RAM, the old limit is set back and the save
 * ends as it would have without us.
 */
function watchConvergence(entry: JournalEntry, before: number, deps: Deps): { stop(): void } {
  let done = false;
  let busy = false;
  const timer = setInterval(() => {
    if (done || busy) return;
    busy = true;
    deps.virsh
      .activeJob(entry.domain.uuid)
      .then(async (job) => {
        if (done || job === null || job.processedBytes <= CONVERGENCE_FACTOR * job.totalBytes) return;
        done = true;
        clearInterval(timer);
        await deps.virsh.setMaxDowntime(entry.domain.uuid, before);
        log.warn(`the RAM save did not converge at the lowered downtime limit: back to ${before} ms`, about(entry.domain.name));
      })
      .catch(() => undefined)
      .finally(() => {
        busy = false;
      });
  }, CONVERGENCE_POLL_MS);
  return {
    stop() {
      done = true;
      clearInterval(timer);
    },
  };
}

const DUMP_SYNC_MS = 200;

/**
 * libvirt's iohelper fdatasyncs the memory file once QEMU's last pass is
 * written, and libvirt waits for it before it switches the disks and
 * resumes the guest: 118-215 ms of the stall on the bed with the file on
 * disk, 1-4 ms on tmpfs. Flushing the file every DUMP_SYNC_MS while the
 * live save writes it leaves that fdatasync only the last moments' pages
 * (stall median 160 -> 53 ms, 5 interleaved pairs). Read-only, never
 * through a symlink; any error only ends the flushing.
 */
function syncWhileSaving(file: string): { stop(): void } {
  let fd: number | null = null;
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    try {
      fd ??= openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch {
      return; // not there yet: libvirt creates it when the save starts
    }
    busy = true;
    fdatasync(fd, () => {
      busy = false;
    });
  }, DUMP_SYNC_MS);
  return {
    stop() {
      clearInterval(timer);
      const close = (): void => {
        if (busy) return void setTimeout(close, DUMP_SYNC_MS);
        if (fd !== null) closeSync(fd);
        fd = null;
      };
      close();
    },
  };
}

/**
 * Makes the domain's overlays before the save, so that libvirt only opens
 * them while the guest is paused (lib/libvirt/qemu-img.ts says why), and
 * reserves the memory file: with --reuse-external libvirt would write into
 * an existing file rather than refuse it. `made` collects what exists
 * because of us, for the caller to remove if anything fails before the save;
 * after it, undoFailedSnapshot and the thaw remove the planned files.
 * Returns false, having made nothing, where qemu-img is missing.
 */
async function makeOverlays(dp: DomainPlan, deps: Deps, made: string[]): Promise<boolean> {
  const memoryFile = dp.memoryFile as string;
  try {
    closeSync(openSync(memoryFile, 'wx', 0o600));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new VirtsnapError(e.code === 'EEXIST' ? `memory file ${memoryFile} exists already: not overwriting it` : `cannot create memory file ${memoryFile}: ${e.message}`);
  }
  made.push(memoryFile);
  for (const d of dp.disks) {
    if (d.overlay === null) continue;
    try {
      await deps.images.createOverlay({ overlay: d.overlay, backing: d.source as string, backingFormat: d.format as string });
    } catch (err) {
      if (!(err instanceof QemuImgMissingError)) throw err;
      // Not a reason to fail the snapshot: libvirt can make them, as before.
      for (const file of made.splice(0)) removeIfExists(file);
      log.warn(`${err.message}: libvirt makes the overlays, while the guest is paused (install qemu-utils for a shorter pause)`, about(dp.name));
      return false;
    }
    made.push(d.overlay);
  }
  return true;
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
 * Whether snapshot-create's virsh ended without libvirt's answer (our time
 * limit, a signal, libvirtd gone): libvirt may still run the job it started.
 * A refusal (another job holds the domain, a full disk) started nothing of ours.
 */
function lostTrack(err: unknown): boolean {
  return !(err instanceof LibvirtError) || err.timedOut || err.libvirtMessage.trim() === '' || /end of file|socket is closed/i.test(err.message);
}

/**
 * snapshot-create failed. With --atomic libvirt takes either every disk or
 * none; if it did switch some, thaw them. Then nothing of ours may remain.
 */
async function undoFailedSnapshot(entry: JournalEntry, dp: DomainPlan, deps: Deps, ourJobMayRun: boolean): Promise<void> {
  try {
    // A timed-out virsh is killed, but libvirtd goes on with the job: stop it
    // and wait until it is gone before judging what state the domain is in.
    if (!(await settleDomainJob(dp.uuid, deps, dp.name, ourJobMayRun))) {
      log.error('libvirt is still running the snapshot job and would not abort it: the journal is kept, run `virtsnap recover` once it ends', about(dp.name));
      return;
    }
    const domain = await deps.virsh.domain(dp.uuid);
    const switched = entry.overlays.some((o) => sourceOf(domain, o.target) === o.overlay);
    if (switched) {
      await thawDomain({ ...entry, step: 'frozen' }, deps, { keepDump: false });
      return;
    }
    if (domain.state === 'paused' && dp.state === 'running') {
      log.warn('libvirt left the domain paused after the failed snapshot: resuming it', about(dp.name));
      await deps.virsh.resume(dp.uuid);
    }
    for (const o of entry.overlays) if (o.overlay !== null) removeIfExists(o.overlay);
    removeIfExists(entry.memoryFile);
    rmSync(entry.metaDir, { recursive: true, force: true });
    deps.journal.remove(dp.uuid);
  } catch (err) {
    log.error(`could not clean up after the failed snapshot (${(err as Error).message}): the journal is kept, run \`virtsnap recover\``, about(dp.name));
  }
}

export interface FreezeResult {
  frozen: JournalEntry[];
}

function assertStateDirSpace(deps: Deps): void {
  const free = freeBytes(deps.config.stateDir);
  if (free !== null && free < STATE_DIR_MIN_FREE) {
    throw new VirtsnapError(
      `VIRTSNAP_STATE_DIR ${deps.config.stateDir} has ${Math.round(free / 1024)} KiB free, too little to journal a freeze: free some space there (nothing was frozen)`,
    );
  }
}

/** Why RAM is saved with the guest paused (or live against the advice): one line per run and reason, naming the VMs. */
function logLiveNotes(plan: FreezePlan): void {
  const byNote = new Map<string, { level: 'info' | 'warn'; names: string[] }>();
  for (const dp of plan.domains) {
    if (dp.liveNote === null) continue;
    const seen = byNote.get(dp.liveNote.text) ?? { level: dp.liveNote.level, names: [] };
    seen.names.push(JSON.stringify(dp.name));
    byNote.set(dp.liveNote.text, seen);
  }
  for (const [text, { level, names }] of byNote) log[level](`${names.join(', ')}: ${text}`, { dataset: plan.targets.join(',') });
}

export async function freeze(plan: FreezePlan, deps: Deps): Promise<FreezeResult> {
  if (plan.problems.length > 0) {
    for (const p of plan.problems) log.error(p);
    const more = plan.problems.length > 1 ? ` (and ${plan.problems.length - 1} more, see above)` : '';
    throw new VirtsnapError(`${plan.problems[0]}${more}`);
  }
  assertStateDirSpace(deps);
  logLiveNotes(plan);
  const frozen: JournalEntry[] = [];
  try {
    // VIRTSNAP_PARALLEL at a time, so that the datasets stand still for the
    // shortest window and one `zfs snapshot -r` catches every VM in it. The
    // first failure stops new freezes; those under way finish, then all are undone.
    let failure: { err: unknown } | null = null;
    await inParallel(plan.domains, deps.config.parallel, async (dp) => {
      if (failure !== null) return;
      try {
        const entry = await freezeDomain(dp, plan, deps);
        if (entry !== null) frozen.push(entry);
      } catch (err) {
        failure ??= { err };
      }
    });
    if (failure !== null) throw (failure as { err: unknown }).err;
    deps.stop.check('while freezing');
    // sanoid's script_timeout kills sanoid itself, and the hook runs on as an
    // orphan: nobody will take the snapshot or run post, so do not wait for the watchdog.
    if (frozen.length > 0 && !ownerIsAlive(deps.owner)) {
      throw new VirtsnapError(
        `the process that started this run (pid ${deps.owner.pid}) died while the VMs were frozen (sanoid's script_timeout? set script_timeout = 0 or a value above the longest freeze)`,
      );
    }
  } catch (err) {
    if (frozen.length > 0) log.error(`freeze failed: thawing the ${frozen.length} domain(s) already frozen`);
    for (const entry of frozen.reverse()) {
      try {
        await thawDomain(entry, deps, { keepDump: false });
      } catch (thawErr) {
        log.error(`could not thaw: ${(thawErr as Error).message}`, about(entry.domain.name));
      }
    }
    throw err;
  }
  return { frozen };
}
