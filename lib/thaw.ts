// Thaw: bring one frozen domain back onto its own disks and deal with its
// RAM dump. Per domain: settle any libvirt job still running on it, decide
// which snapshots hold the RAM's instant (before the disks move again),
// active block commit of each overlay into its own image and pivot, check,
// resume what a pause of ours or an I/O error left paused, delete the
// overlays, then seal the dump (its store's: lib/stores/) or drop it.
//
// The same code serves post, `virtsnap recover`, the watchdog and a freeze
// undoing itself: it starts from whatever step the journal says and never
// assumes the step before it finished.
import { rmSync } from 'node:fs';
import type { ArchivedDump } from './manifest.js';
import type { Deps } from './deps.js';
import { asFsError, LibvirtError, VirtsnapError } from './errors.js';
import { removeIfExists } from './fsutil.js';
import type { JournalEntry, OverlayRecord } from './journal.js';
import { sourceOf } from './libvirt/domain-xml.js';
import type { Domain } from './libvirt/virsh.js';
import { about, log } from './log.js';
import { sleep, waitUntil, withLock } from './lock.js';
import { inParallel } from './parallel.js';
import { tieSnapshots, type SnapshotRef } from './snapshot-id.js';
import { NothingToSealError } from './spool.js';
import { datasetOfSnapshot } from './zfs.js';
import { isStuck, touches } from './stuck.js';
import { removeLiveRam } from './ram-in-dataset.js';

/** A domain that no thaw can bring back without a person: named by every later run and `virtsnap status`. */
export class StuckError extends VirtsnapError {
  override name = 'StuckError';
}

/** libvirt's own words for a failed call, without virsh's `error:` prefixes. */
function libvirtReason(err: unknown): string {
  return err instanceof LibvirtError ? err.libvirtMessage.replace(/\berror: /g, '').trim() || err.message : (err as Error).message;
}

/** How often to look again while waiting for libvirt. */
const POLL_MS = 500;

/**
 * Waits until libvirt runs no job on the domain: a thaw never judges a
 * domain while libvirt's snapshot job on it still runs (a killed virsh
 * leaves libvirtd going on with it, and the disks switch when it ends).
 * `abort`: the job is ours (a snapshot-create we lost track of), stop it
 * first; otherwise it may be another tool's (a backup, a migration) and is
 * only waited for. False when it would not end.
 */
export async function settleDomainJob(uuid: string, deps: Pick<Deps, 'virsh'>, name: string, abort: boolean, timeoutMs = 60_000): Promise<boolean> {
  if ((await deps.virsh.activeJob(uuid).catch(() => null)) === null) return true;
  if (abort) {
    log.warn('libvirt still runs the snapshot job of a run that was cut short: aborting it and waiting for it to end', about(name));
    await deps.virsh.abortJob(uuid).catch(() => undefined);
  } else {
    log.warn('libvirt runs a job on the domain that is not ours: waiting for it to end', about(name));
  }
  return waitUntil(async () => (await deps.virsh.activeJob(uuid).catch(() => null)) === null, timeoutMs, POLL_MS);
}

/**
 * Pivots our commit job on `target` once it is ready. A job left by an
 * interrupted thaw (post killed during `blockcommit --wait`, virsh killed by
 * a timeout or a signal, libvirtd restarted) is ours and nearly done: pivot
 * it, never abort it. Returns when the disk is on its original image.
 */
async function pivotWhenReady(entry: JournalEntry, o: OverlayRecord, deps: Deps, timeoutMs: number): Promise<void> {
  const { uuid, name } = entry.domain;
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  for (;;) {
    if (!(await deps.virsh.hasBlockJob(uuid, o.target))) {
      const source = sourceOf(await deps.virsh.domain(uuid), o.target);
      if (source === o.original) return; // it pivoted on its own (the virsh that started it did)
      throw new VirtsnapError(`the commit job on ${o.target} ended without a pivot: the disk is on ${source ?? 'nothing'}${lastError ? ` (${lastError})` : ''}`);
    }
    try {
      await deps.virsh.pivot(uuid, o.target);
      log.info(`pivoted the commit job of ${o.target} that an interrupted thaw left running`, about(name, o.dataset));
      return;
    } catch (err) {
      lastError = libvirtReason(err);
    }
    if (Date.now() >= deadline) throw new VirtsnapError(`the commit job on ${o.target} was not ready for a pivot within ${Math.round(timeoutMs / 1000)}s (${lastError})`);
    await sleep(POLL_MS);
  }
}

/** Attempts at one disk's commit: libvirtd restarting under a thaw makes the first fail with no harm done. */
const COMMIT_ATTEMPTS = 3;

/**
 * Commits one disk back and pivots. A failed call is not a result: virsh
 * may have been killed (a timeout, a signal) or lost libvirtd (restarted)
 * while libvirt and QEMU went on. Each attempt starts from what libvirt
 * says now: on the original image (done), a job of ours (pivot it when
 * ready), or on our overlay with no job (commit again).
 */
async function commitDisk(entry: JournalEntry, o: OverlayRecord, domain: Domain, deps: Deps): Promise<void> {
  const { uuid, name } = entry.domain;
  const started = Date.now();
  const deadline = started + deps.config.commitTimeoutMs;
  let reason = '';
  for (let attempt = 1; ; attempt++) {
    try {
      const now = attempt === 1 ? domain : await deps.virsh.domain(uuid);
      const source = sourceOf(now, o.target);
      if (source === o.original) break; // committed (by us, before a crash, or by a virsh we lost)
      if (source !== o.overlay) {
        throw new StuckError(
          `domain ${JSON.stringify(name)} disk ${o.target} is on ${source ?? 'nothing'}, neither our overlay ${o.overlay} nor ${o.original}: leaving it alone, check it by hand`,
        );
      }
      if (await deps.virsh.hasBlockJob(uuid, o.target)) {
        log.warn(`a commit job of an interrupted thaw still runs on ${o.target}: waiting for it to be ready, then pivoting`, about(name, o.dataset));
        await pivotWhenReady(entry, o, deps, Math.max(1000, deadline - Date.now()));
      } else {
        await deps.virsh.activeCommit(uuid, o.target, deps.config.commitTimeoutMs);
      }
    } catch (err) {
      if (err instanceof StuckError) throw err;
      reason = libvirtReason(err);
      // At least one more look: a call that timed out may have finished in libvirt.
      if (attempt >= COMMIT_ATTEMPTS || (attempt > 1 && Date.now() >= deadline)) {
        if (await deps.virsh.hasBlockJob(uuid, o.target).catch(() => false)) await deps.virsh.abortBlockJob(uuid, o.target).catch(() => undefined);
        throw new VirtsnapError(
          `block commit of ${o.target} failed, the domain stays on overlay ${o.overlay} (${reason}): fix the cause, then run \`virtsnap recover\``,
        );
      }
      log.warn(`block commit of ${o.target}: ${reason}; looking at libvirt again`, about(name, o.dataset));
      await sleep(2 * POLL_MS * attempt);
    }
  }
  log.info(`committed ${o.target} back into ${o.original} in ${Date.now() - started} ms`, about(name, o.dataset));
}

function assertOnOriginals(entry: JournalEntry, domain: Domain): void {
  for (const o of entry.overlays) {
    const source = sourceOf(domain, o.target);
    if (source !== o.original) {
      throw new VirtsnapError(`domain ${JSON.stringify(entry.domain.name)} disk ${o.target} is on ${source ?? 'nothing'} after the commit, expected ${o.original}`);
    }
  }
}

/** libvirt's reason for a pause by a person (`virsh suspend`): never ours to undo, and the guest ran before it. */
const PAUSED_BY_USER = /^user$/i;

/** ` after N ms` since the freeze, for the log. */
function sinceFrozen(entry: Pick<JournalEntry, 'frozenAt'>): string {
  return entry.frozenAt === undefined ? '' : ` after ${Date.now() - Date.parse(entry.frozenAt)} ms`;
}

/** libvirt's reasons for a pause that only we (a snapshot, a save) or a full overlay dir (an I/O error) cause. */
const PAUSED_BY_US_OR_IO = /^(snapshot|saving|save|migrating|I\/O error|ioerror|starting up|from snapshot)$/i;

/**
 * A domain that ran when frozen and is paused now, by our snapshot or by
 * QEMU on an I/O error (the overlay's filesystem filled up), is resumed once
 * it is back on its own disks. A pause by a user is left alone.
 */
async function resumeIfOurs(entry: JournalEntry, deps: Deps): Promise<void> {
  if ((entry.stateBefore ?? 'running') === 'paused') return;
  const { state, reason } = await deps.virsh.stateReason(entry.domain.uuid);
  if (state !== 'paused') return;
  if (entry.mode === 'pause') {
    // libvirt gives no reason (`unknown`) for the pause a snapshot='manual' leaves.
    if (PAUSED_BY_USER.test(reason)) {
      log.warn('the domain was paused by a user while frozen in pause mode: left paused', about(entry.domain.name));
      return;
    }
    await deps.virsh.resume(entry.domain.uuid);
    log.info(`resumed the guest${sinceFrozen(entry)} (pause mode)`, about(entry.domain.name));
    return;
  }
  if (!PAUSED_BY_US_OR_IO.test(reason)) return;
  await deps.virsh.resume(entry.domain.uuid);
  const why = /I\/O|ioerror/i.test(reason) ? 'QEMU had paused it on an I/O error while it ran on the overlay' : `it was left paused (${reason})`;
  log.warn(`resumed the domain: ${why}; it runs on its own disks again`, about(entry.domain.name));
}

/**
 * Sets the domain's migration downtime limit back to what it was before the
 * freeze lowered it, if the freeze could not (it died during the save).
 * Best effort: a stopped QEMU has lost the setting anyway.
 */
export async function restoreDowntimeLimit(entry: JournalEntry, deps: Deps): Promise<boolean> {
  const before = entry.downtimeLimitBefore;
  if (before === undefined) return true;
  try {
    if ((await deps.virsh.state(entry.domain.uuid)) !== 'shut off') await deps.virsh.setMaxDowntime(entry.domain.uuid, before);
    return true;
  } catch (err) {
    log.warn(`could not set its migration downtime limit back to ${before} ms: ${(err as Error).message}`, about(entry.domain.name));
    return false;
  }
}

export interface ThawOptions {
  /** Seal the RAM dump (post, recover, the watchdog), or throw it away (undoing a failed freeze). */
  keepDump: boolean;
}

/** How the VM came out of the thaw. */
export type Back =
  /** On its own disks, as it ran (or stayed paused) before the freeze. */
  | { kind: 'committed' }
  /** Its filesystems thawed (quiesce: its disks never moved). */
  | { kind: 'quiesced' }
  /** Another virtsnap process thawed it meanwhile (post and `recover --force` racing), or a dead restore's hold was let go. */
  | { kind: 'elsewhere' };

/** What became of its RAM dump. */
export type DumpFate =
  /** Sealed: waiting in the spool for the archiver, or inside its snapshots already (lib/stores/). */
  | { kind: 'sealed'; dump: ArchivedDump }
  /** Thrown away, and why: tied to no snapshot, the run died too early, cut short, an undone freeze. */
  | { kind: 'discarded'; reason: string }
  /** There is none here: a quiesce keeps no RAM, or the thaw was someone else's. */
  | { kind: 'none' };

export interface Thawed {
  back: Back;
  dump: DumpFate;
}

const ELSEWHERE: Thawed = { back: { kind: 'elsewhere' }, dump: { kind: 'none' } };

/**
 * Brings one domain back onto its own disks and deals with its RAM dump.
 * One thaw per domain at a time, from the first look at the domain to the
 * journal's removal: post, `recover`, `recover --force` and the watchdog
 * serialise here, so one never aborts the block job of another.
 */
export async function thawDomain(entry: JournalEntry, deps: Deps, options: ThawOptions): Promise<Thawed> {
  const patience = deps.config.lockTimeoutMs + deps.config.commitTimeoutMs * Math.max(1, entry.overlays.length);
  return withLock(deps.journal.lockDir, `thaw-${entry.domain.uuid}`, Date.now() + patience, async () => {
    let current: JournalEntry | null;
    try {
      current = deps.journal.read(entry.domain.uuid);
    } catch {
      current = entry; // a damaged journal file: the entry we hold is all we know
    }
    if (current === null || current.tag !== entry.tag) {
      log.info('already thawed by another virtsnap process', about(entry.domain.name));
      return ELSEWHERE;
    }
    if (current.step === 'restoring') {
      // A restore's hold, left by a restore that died: there is nothing of a snapshot run to undo.
      log.warn(`a restore (${current.runId}) that ended without letting go held this domain: released; look at it (\`virsh domstate\`, \`virtsnap status\`) before restoring again`, about(entry.domain.name));
      deps.journal.remove(entry.domain.uuid);
      return ELSEWHERE;
    }
    // What is on disk is newer than what the caller read (a step it missed), unless the caller could not write it.
    const newest = stepOrder(current.step) >= stepOrder(entry.step) ? { ...entry, ...current } : entry;
    if (newest.mode === 'quiesce') {
      await thawFilesystems(newest, deps);
      return { back: { kind: 'quiesced' }, dump: { kind: 'none' } };
    }
    return thawHeld(newest, deps, options);
  });
}

function stepOrder(step: JournalEntry['step']): number {
  return ['snapshotting', 'frozen', 'committing', 'committed'].indexOf(step);
}

/** Attempts at thawing a guest's filesystems: its agent may be busy for a moment (a freeze that timed out on our side). */
const FSTHAW_ATTEMPTS = 3;

/**
 * quiesce: the guest's filesystems are thawed through its agent, whatever
 * step the run reached (a thaw of filesystems that are not frozen is
 * harmless). A guest that is gone or shut off has nothing frozen.
 */
async function thawFilesystems(entry: JournalEntry, deps: Deps): Promise<void> {
  const { uuid, name } = entry.domain;
  const { virsh, journal } = deps;
  let reason = '';
  for (let attempt = 1; attempt <= FSTHAW_ATTEMPTS; attempt++) {
    if (!(await virsh.exists(uuid)) || (await virsh.state(uuid)) === 'shut off') {
      log.warn('the domain stopped while its filesystems were frozen: nothing to thaw', about(name));
      journal.remove(uuid);
      return;
    }
    try {
      const thawed = await virsh.fsThaw(uuid, deps.config.agentTimeoutMs);
      log.info(`thawed ${thawed} filesystem(s) through the guest agent${sinceFrozen(entry)}`, about(name));
      journal.remove(uuid);
      return;
    } catch (err) {
      reason = libvirtReason(err);
      log.warn(`the guest agent did not thaw the filesystems (${reason})${attempt < FSTHAW_ATTEMPTS ? ': trying again' : ''}`, about(name));
      if (attempt < FSTHAW_ATTEMPTS) await sleep(2 * POLL_MS * attempt);
    }
  }
  throw new VirtsnapError(
    `the filesystems of domain ${JSON.stringify(name)} may still be frozen: its guest agent did not thaw them (${reason}); run \`virsh domfsthaw ${name}\`, then \`virtsnap recover\``,
  );
}

async function thawHeld(entry: JournalEntry, deps: Deps, options: ThawOptions): Promise<Thawed> {
  const { virsh, journal } = deps;
  const name = entry.domain.name;
  // Why the dump is thrown away, once that is decided: null while it is to be kept.
  let discard: string | null = options.keepDump ? null : 'its freeze was undone';
  // RAM inside the dataset: gone from the live dataset first, whatever comes
  // next (a commit, a resume, a person booting the VM by hand after a stuck
  // thaw), so no later snapshot pairs it with newer disks. The snapshots
  // taken meanwhile keep their own copy (lib/ram-in-dataset.ts).
  if (entry.ramInDataset !== undefined && entry.step !== 'committed') await removeRamBeforeDisksMove(entry);
  if (entry.step !== 'committed') {
    if (!(await virsh.exists(entry.domain.uuid))) {
      throw new StuckError(
        `domain ${JSON.stringify(name)} was undefined while frozen: its newest writes are in ${entry.overlays.map((o) => o.overlay).filter((x) => x !== null).join(', ') || 'no overlay'}; ` +
          `define it again and run \`virtsnap recover\`, or end this with \`virtsnap recover --discard ${name}\``,
      );
    }
    // Only at step snapshotting can the job be our snapshot-create; later ones belong to someone else.
    if (!(await settleDomainJob(entry.domain.uuid, deps, name, entry.step === 'snapshotting'))) {
      throw new VirtsnapError(`libvirt still runs a job on domain ${JSON.stringify(name)} and would not abort it: run \`virtsnap recover\` once it ends`);
    }
    const before = await virsh.domain(entry.domain.uuid);
    if (before.state === 'shut off' && entry.overlays.some((o) => sourceOf(before, o.target) === o.overlay)) {
      throw new StuckError(
        `domain ${JSON.stringify(name)} was shut down while on overlays: start it (it runs on the overlays) and run \`virtsnap recover\``,
      );
    }
    const manual = entry.overlays.length > 0 && entry.overlays.every((o) => o.overlay === null);
    if (manual && before.state !== 'paused' && discard === null) {
      discard = 'the domain was frozen paused (no overlays) but has been resumed since: its disks moved on';
      log.error(`${discard}, the RAM dump is discarded`, about(name));
    }
    // Pause mode: our snapshot leaves no reason (`unknown`); `user` means
    // someone resumed and paused it again meanwhile, and its disks moved on.
    if (manual && entry.mode === 'pause' && entry.stateBefore !== 'paused' && before.state === 'paused' && discard === null) {
      const { reason } = await virsh.stateReason(entry.domain.uuid);
      if (PAUSED_BY_USER.test(reason)) {
        discard = 'the domain was paused again by a user after a resume while frozen: its disks moved on';
        log.error(`${discard}, the RAM dump is discarded`, about(name));
      }
    }
    // Which snapshots hold the disks of the RAM's instant is decided now, while
    // they still stand still, and written down before the first commit: after
    // a crash half-way through the commits, recover must not look again.
    let tied = entry.tied;
    if (discard === null && tied === undefined) {
      if (entry.step === 'frozen') tied = await tieDump(entry, deps);
      else {
        discard = `the run died at step ${entry.step}, before it recorded which snapshots hold the RAM's instant`;
        log.error(`${discard}: the RAM dump is discarded`, about(name));
      }
    }
    const committing = journal.tryUpdate(entry, { step: 'committing', ...(tied !== undefined ? { tied } : {}) });
    entry = committing.entry;
    if (!committing.written && entry.tied !== undefined && entry.tied.length > 0 && discard === null) {
      // Unrecorded, the tie could be made again after a crash, once the disks moved on.
      discard = 'the journal cannot record which snapshots hold the RAM dump';
      log.error(`${discard}: it is discarded`, about(name));
    }
    const commitStarted = Date.now();
    for (const o of entry.overlays) if (o.overlay !== null) await commitDisk(entry, o, before, deps);
    const commitMs = Date.now() - commitStarted;
    assertOnOriginals(entry, await virsh.domain(entry.domain.uuid));
    await resumeIfOurs(entry, deps);
    await restoreDowntimeLimit(entry, deps);
    for (const o of entry.overlays) if (o.overlay !== null) removeIfExists(o.overlay);
    entry = journal.tryUpdate(entry, { step: 'committed', commitMs }).entry;
  }
  const back: Back = { kind: 'committed' };
  const tied = entry.tied ?? [];
  if (discard === null && tied.length === 0) discard = 'no snapshot of this run holds the disks as they were when the RAM was saved';
  if (discard === null) {
    const sealed = sealDump(entry, tied, deps);
    if (sealed.kind === 'sealed') {
      journal.remove(entry.domain.uuid);
      return { back, dump: sealed };
    }
    discard = sealed.reason;
  }
  dropDump(entry);
  journal.remove(entry.domain.uuid);
  return { back, dump: { kind: 'discarded', reason: discard } };
}

/**
 * The dump of a VM back on its own disks into its store's hands
 * (DumpStore.seal: the spool, or where it already is). Renames only: post,
 * and the next run, never wait for hashing, compression or the store.
 * Nothing complete to seal: discarded. Anything else (the spool's
 * filesystem full or read-only) keeps the journal entry at step committed,
 * with the dump where it is, for `virtsnap recover`.
 */
function sealDump(entry: JournalEntry, tied: SnapshotRef[], deps: Deps): Extract<DumpFate, { kind: 'sealed' | 'discarded' }> {
  try {
    return { kind: 'sealed', dump: deps.store.seal(entry, tied) };
  } catch (err) {
    if (err instanceof NothingToSealError) {
      log.error(err.message, about(entry.domain.name));
      return { kind: 'discarded', reason: err.message };
    }
    const fsError = asFsError(err);
    const why = fsError !== null ? fsError.message : (err as Error).message;
    throw new VirtsnapError(`the VM is back on its own disks, but its RAM dump cannot be sealed (${why}): it waits in ${entry.memoryFile}; fix that, then run \`virtsnap recover\``);
  }
}

/** The snapshots of the run that hold this domain's disks as they were when its RAM was saved (see lib/snapshot-id.ts). */
async function tieDump(entry: JournalEntry, deps: Deps): Promise<SnapshotRef[]> {
  const name = entry.domain.name;
  let now;
  try {
    now = await deps.zfs.snapshotProps(entry.snapshots.map(datasetOfSnapshot));
  } catch (err) {
    log.error(`cannot ask ZFS which snapshots exist (${(err as Error).message}): the RAM dump cannot be tied to any snapshot and is discarded`, about(name));
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
  for (const r of refused) log.warn(`RAM dump not tied to ${r.name}: ${r.reason}`, about(name, datasetOfSnapshot(r.name)));
  if (tied.length === 0) {
    log.error(`no snapshot of this run holds the disks as they were when the RAM was saved (${entry.snapshots.join(', ')}): RAM dump discarded`, about(name));
  }
  return tied;
}

/**
 * Removes a dump's files from the live dataset; a failure is loud, never a
 * reason to keep the VM on its overlays. The disks then move on only after
 * the second of the save has passed: zfs-fuse keeps whole seconds of mtime,
 * and a restore tells RAM caught by a later snapshot by its disks' mtimes.
 */
async function removeRamBeforeDisksMove(entry: JournalEntry): Promise<void> {
  try {
    removeLiveRam(entry.ramInDataset!.dir, entry.tag);
  } catch (err) {
    log.error(
      `cannot remove RAM dump ${entry.memoryFile} from the live dataset (${(err as Error).message}): remove it by hand; a later snapshot holding it pairs it with newer disks (a restore refuses that: the disks' mtimes differ)`,
      about(entry.domain.name),
    );
    await sleep(1100);
  }
}

export function dropDump(entry: Pick<JournalEntry, 'memoryFile' | 'metaDir' | 'ramInDataset' | 'tag'>): void {
  if (entry.ramInDataset !== undefined) {
    try {
      removeLiveRam(entry.ramInDataset.dir, entry.tag);
    } catch {
      // named by removeRamBeforeDisksMove already, or removed below
    }
  }
  removeIfExists(entry.memoryFile);
  rmSync(entry.metaDir, { recursive: true, force: true });
}

/** A domain of a run and what happened to it, for post's report and the metrics. */
export interface DomainOutcome {
  name: string;
  uuid: string;
}

export interface ThawResult {
  /** Dumps sealed: waiting in the spool for the archiver, or inside their snapshots. */
  sealed: ArchivedDump[];
  /** Domains that could not be brought back (or only partly): the message says what to do. */
  failures: (DomainOutcome & { message: string })[];
  /** Domains back on their own disks without a RAM dump, and why. */
  discarded: (DomainOutcome & { reason: string })[];
}

/** The domains of `result` whose snapshot has no RAM (the metrics count them as failures). */
export function withoutDump(result: Pick<ThawResult, 'failures' | 'discarded'>): DomainOutcome[] {
  return [...result.failures, ...result.discarded].map(({ name, uuid }) => ({ name, uuid }));
}

/**
 * post: thaw every domain the run froze, VIRTSNAP_PARALLEL at a time. A
 * dump is only sealed (renames), so no VM and no sanoid waits for hashing,
 * compression or the store: the archiver does that afterwards. One domain's
 * failure does not stop the others. `datasets`, `snapnames`: the run's, to
 * record which of its snapshots hold the old disk of a domain left stuck.
 */
export async function thawRun(runId: string, deps: Deps, options: ThawOptions = { keepDump: true }, run?: { datasets: readonly string[]; snapnames: readonly string[] }): Promise<ThawResult> {
  const result: ThawResult = { sealed: [], failures: [], discarded: [] };
  const entries = deps.journal.list().filter((e) => e.runId === runId);
  await inParallel(entries, deps.config.parallel, async (entry) => {
    const domain = { name: entry.domain.name, uuid: entry.domain.uuid };
    try {
      const { dump } = await thawDomain(entry, deps, options);
      if (dump.kind === 'sealed') result.sealed.push(dump.dump);
      else if (dump.kind === 'discarded' && options.keepDump) result.discarded.push({ ...domain, reason: dump.reason });
    } catch (err) {
      log.error((err as Error).message, about(entry.domain.name));
      result.failures.push({ ...domain, message: (err as Error).message });
    }
  });
  if (run !== undefined) await markStale({ runId, ...run }, deps);
  return result;
}

/**
 * The run's snapshots that hold the old disk of a domain stuck since an
 * earlier run are recorded as such (`virtsnap status`, restore's warning).
 * A quiesced domain's disks never moved: its snapshots are current.
 */
async function markStale(run: { runId: string; datasets: readonly string[]; snapnames: readonly string[] }, deps: Deps): Promise<void> {
  for (const entry of deps.journal.list()) {
    if (entry.runId === run.runId || entry.mode === 'quiesce' || !isStuck(entry)) continue;
    const mine = run.datasets.filter((t) => touches(entry, [t])).flatMap((t) => run.snapnames.map((n) => `${t}@${n}`));
    if (mine.length === 0) continue;
    // Under the domain's mutex, on the entry as it is now: never one a thaw removed or a new run claimed meanwhile.
    await deps.journal
      .withMutex(entry.domain.uuid, Date.now() + deps.config.lockTimeoutMs, () => {
        const current = deps.journal.read(entry.domain.uuid);
        if (current === null || current.tag !== entry.tag) return;
        deps.journal.tryUpdate(current, { staleSnapshots: [...new Set([...(current.staleSnapshots ?? []), ...mine])] });
      })
      .catch((err: Error) => log.warn(`cannot record which snapshots hold its old disk: ${err.message}`, about(entry.domain.name)));
  }
}
