// How long a RAM dump lives: exactly as long as one snapshot it belongs to.
//
// One dump usually serves several snapshots (hourly, daily and monthly taken
// in one run share one instant). sanoid's pruning_script tells us about one
// destroyed snapshot at a time; the dump goes only when no snapshot it names
// exists any more. The manifest is a cache: ZFS is the truth, asked before
// anything is deleted. The same rule holds for a dump in the store and one
// still waiting in the spool; a waiting dump is only touched under its own
// lock (the archiver's while it stores it: then it is left for later).
import { existsSync, lstatSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { halfWrittenId, setSnapshots, withArchiveLock } from './archive.js';
import { withWaitingDump } from './archiver.js';
import { DUMP_ID, isWaiting, snapshotNames, type ArchivedDump, type Manifest } from './manifest.js';
import { dumpsNaming } from './archive-index.js';
import type { Config } from './config.js';
import { LockTimeoutError } from './errors.js';
import { assertOwnDir } from './fsutil.js';
import { Journal } from './journal.js';
import { log } from './log.js';
import type { PruneEvent } from './sanoid/env.js';
import { scanSpool, SPOOL_NAME, spoolDir, spooled } from './spool.js';
import type { DumpStore } from './stores/store.js';
import { locate, type SnapshotRef } from './snapshot-id.js';
import { datasetOfSnapshot, type GuidCensus, type ZfsClient } from './zfs.js';

/** What becomes of a dump: nothing, its snapshots renamed or fewer, or deleted. */
export type Fate = { kind: 'keep' } | { kind: 'update'; snapshots: SnapshotRef[]; gone: string[] } | { kind: 'delete'; gone: string[] };

/**
 * The one rule for when a RAM dump may be deleted: when none of its
 * snapshots exists any more, found by guid (so `zfs rename` and `zfs
 * promote` never orphan it) in any imported pool (a copy received with
 * `zfs send | zfs recv` keeps the guid: a restore of it needs the RAM). A
 * snapshot of a pool ZFS does not know right now (not imported) counts as
 * existing. Snapshots that moved get their current name. The census must
 * cover every imported pool (ZfsClient.censusFor).
 */
export function fateOf(manifest: Pick<Manifest, 'snapshots'>, census: GuidCensus): Fate {
  const kept: SnapshotRef[] = [];
  const gone: string[] = [];
  let renamed = false;
  for (const ref of manifest.snapshots) {
    const where = locate(ref, census);
    if (where === 'gone') gone.push(ref.name);
    else if (where === 'unknown') kept.push(ref);
    else {
      if (where !== ref.name) renamed = true;
      kept.push({ ...ref, name: where });
    }
  }
  if (kept.length === 0) return { kind: 'delete', gone };
  if (gone.length === 0 && !renamed) return { kind: 'keep' };
  return { kind: 'update', snapshots: kept, gone };
}

export interface PruneResult {
  /** Dumps that no longer name the pruned snapshot but still serve others. */
  updated: string[];
  /** Dumps deleted because no snapshot of theirs is left. */
  deleted: string[];
  freedBytes: number;
}

function warnUnknownPools(census: GuidCensus, report: (line: string) => void): void {
  for (const pool of census.unknownPools) report(`pool ${pool} is not imported: the snapshots of its dumps count as kept, nothing of it is deleted`);
}

/**
 * A dump's fate after sanoid destroyed `pruned`, from one `zfs get guid` of
 * its recorded names (`guids`: each name's guid now), or null when that
 * cannot tell and the census must (fateOf). The pruned name no longer
 * holding its guid is gone; every other name still holding its own is
 * where it was recorded: the dump is kept for those. A name that lost its
 * guid may have been renamed, promoted or received elsewhere: only a census
 * of every pool tells. A ref of an old manifest (no guid) holds by its name.
 */
export function fateByNames(manifest: Pick<Manifest, 'snapshots'>, pruned: string, guids: ReadonlyMap<string, string>): Fate | null {
  const holds = (r: SnapshotRef) => (r.guid === null ? guids.has(r.name) : guids.get(r.name) === r.guid);
  const mine = manifest.snapshots.filter((r) => r.name === pruned);
  const others = manifest.snapshots.filter((r) => r.name !== pruned);
  if (mine.length === 0 || mine.some(holds)) return { kind: 'keep' }; // sanoid says so, ZFS still has it
  if (others.length === 0 || !others.every(holds)) return null;
  return { kind: 'update', snapshots: others, gone: [pruned] };
}

/**
 * pruning_script: sanoid destroyed `dataset@snapname`. The dumps that name
 * it are judged on one `zfs get guid` of their recorded names
 * (fateByNames): those whose other snapshots all stand where they were
 * recorded just drop the pruned name. Only a dump with a name that lost its
 * guid is judged on a census of every imported pool (fateOf): deleted, or
 * followed where its snapshots went.
 */
export async function pruneSnapshot(event: PruneEvent, config: Config, zfs: Pick<ZfsClient, 'guidsOf' | 'censusFor'>, store: DumpStore): Promise<PruneResult> {
  const snapshot = `${event.dataset}@${event.snapname}`;
  const result: PruneResult = { updated: [], deleted: [], freedBytes: 0 };
  return withArchiveLock(config.stateDir, config.lockTimeoutMs, async () => {
    // Through the index: a prune call reads only the manifests that name the snapshot (lib/archive-index.ts).
    const stored = dumpsNaming(config.archiveDir, config.stateDir, snapshot);
    const spool = scanSpool(config);
    const dumps = [...stored.dumps, ...spool.dumps.filter((d) => snapshotNames(d.manifest).includes(snapshot))];
    for (const b of [...stored.broken, ...spool.broken]) log.warn(`${b.reason} (left alone)`);
    if (dumps.length === 0) {
      log.debug(`no RAM dump belongs to ${snapshot}: nothing to do`, { dataset: event.dataset });
      return result;
    }
    const guids = await zfs.guidsOf(dumps.flatMap((d) => snapshotNames(d.manifest)));
    if (guids.has(snapshot)) log.warn(`sanoid says ${snapshot} was pruned, but ZFS still has it: its RAM dump stays`, { dataset: event.dataset });
    const fates = new Map(dumps.map((d) => [d, fateByNames(d.manifest, snapshot, guids)]));
    const open = dumps.filter((d) => fates.get(d) === null);
    if (open.length > 0) {
      const census = await zfs.censusFor(open.flatMap((d) => d.manifest.snapshots));
      warnUnknownPools(census, (line) => log.warn(line, { dataset: event.dataset }));
      for (const d of open) fates.set(d, fateOf(d.manifest, census));
    }
    for (const [dump, fate] of fates) {
      const m = dump.manifest;
      const ctx = { domain: m.domain.name, dataset: event.dataset };
      const done = await settle(dump, fate!, config, store, false);
      if (done.kind === 'updated') {
        result.updated.push(m.id);
        log.info(`RAM dump ${m.id} kept for ${done.snapshots.join(', ')}`, ctx);
      } else if (done.kind === 'deleted') {
        result.deleted.push(m.id);
        result.freedBytes += done.freedBytes;
        log.info(`RAM dump ${m.id}${isWaiting(m) ? ' (waiting in the spool)' : ''} deleted: none of its snapshots exists any more (${done.gone.join(', ')})`, ctx);
      } else if (done.kind === 'kept') log.warn(`RAM dump ${m.id} kept: ${done.reason}`, ctx);
    }
    return result;
  });
}

/** What settle did with a dump. */
type Settled =
  | { kind: 'unchanged' }
  | { kind: 'updated'; snapshots: string[] }
  | { kind: 'deleted'; gone: string[]; freedBytes: number }
  /** Its fate could not be carried out now: the next prune or gc tries again. */
  | { kind: 'kept'; reason: string };

/**
 * Carries out a dump's fate: a stored dump through its store, a waiting one
 * in the spool under its own lock (never while the archiver stores it).
 */
async function settle(dump: ArchivedDump, fate: Fate, config: Config, store: DumpStore, dryRun: boolean): Promise<Settled> {
  if (fate.kind === 'keep') return { kind: 'unchanged' };
  const waiting = isWaiting(dump.manifest);
  const act = async (): Promise<Settled> => {
    // A waiting dump as it is now, under its lock: the archiver may have stored it and let it go since the scan.
    if (waiting && !dryRun && !existsSync(dump.manifestFile)) return { kind: 'unchanged' };
    if (fate.kind === 'update') {
      if (!dryRun) setSnapshots(dump, fate.snapshots);
      return { kind: 'updated', snapshots: fate.snapshots.map((r) => r.name) };
    }
    const freedBytes = dryRun ? sizeOf(dump.manifest.memoryFile) : waiting ? await store.discard(dump) : await store.drop(dump);
    return { kind: 'deleted', gone: fate.gone, freedBytes };
  };
  try {
    return waiting && !dryRun ? await withWaitingDump(config, dump.manifest.id, act) : await act();
  } catch (err) {
    if (err instanceof LockTimeoutError) return { kind: 'kept', reason: 'the archiver or a restore holds it right now: the next prune or gc looks again' };
    // Kept, and the other dumps still settled: the next prune or gc tries again.
    return { kind: 'kept', reason: (err as Error).message };
  }
}

export interface GcReport {
  /** Dumps whose snapshots are fewer now, or were renamed or promoted. */
  updated: string[];
  deleted: string[];
  /** Files of ours removed that belonged to no dump (half-written, orphaned). */
  removed: string[];
  /** Left alone, with the reason (unreadable manifests, pools not imported). */
  kept: string[];
  /** Files and dirs that virtsnap did not write, found in the archive or overlay dir: never deleted. */
  foreign: { path: string; reason: string }[];
  freedBytes: number;
  /** With VIRTSNAP_STORE=restic:REPO: whether `restic prune` ran (the space of forgotten dumps comes back then). */
  resticPruned?: boolean;
}

function sizeOf(p: string): number {
  try {
    const st = lstatSync(p);
    if (!st.isDirectory()) return st.size;
    return readdirSync(p).reduce((sum, f) => sum + sizeOf(path.join(p, f)), 0);
  } catch {
    return 0;
  }
}

/** What virtsnap names files in the overlay dir: `<domain>.<stamp>-<uuid8>.save|.meta` in flight, `….<disk>.qcow2` overlays (plan.ts). */
const IN_FLIGHT = /\.\d{8}T\d{6}\.\d{3}Z-([0-9a-f]{8})\.(save|meta)$/;
const OVERLAY = /\.\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}\.[^/]+\.qcow2$/;

/**
 * In-flight files in the overlay dir that no journal entry claims: memory
 * files and meta dirs of runs that died before they were journaled or after
 * they were thawed, recognised by virtsnap's own naming. Anything else there
 * (a user's own `virsh save` image) is reported, not touched. Overlays
 * (.qcow2) are never touched here: one may still be in use by a VM, and
 * `virtsnap recover` is the tool for those.
 */
function sweepOverlayDir(config: Config): { strays: string[]; foreign: GcReport['foreign'] } {
  const result: { strays: string[]; foreign: GcReport['foreign'] } = { strays: [], foreign: [] };
  let files: string[];
  try {
    files = readdirSync(config.overlayDir);
  } catch {
    return result;
  }
  const { entries, damaged } = new Journal(config.stateDir).scan();
  const claimed = new Set(entries.flatMap((e) => [e.memoryFile, e.metaDir]));
  // A damaged entry names no files: what its domain's freezes made (their tag ends in its UUID's first 8) may be what it claims.
  const unknownClaims = damaged.map((d) => d.uuid.slice(0, 8));
  for (const f of files.sort()) {
    const p = path.join(config.overlayDir, f);
    const st = lstatSync(p, { throwIfNoEntry: false });
    if (st === undefined || OVERLAY.test(f) || (f === SPOOL_NAME && st.isDirectory())) continue;
    const m = IN_FLIGHT.exec(f);
    const ours = m !== null && (f.endsWith('.save') ? st.isFile() : st.isDirectory());
    if (!ours) result.foreign.push({ path: p, reason: 'not written by virtsnap (left alone)' });
    else if (unknownClaims.includes(m[1]!)) result.foreign.push({ path: p, reason: 'its domain\'s journal entry is damaged: left alone (virtsnap status)' });
    else if (!claimed.has(p)) result.strays.push(p);
  }
  return result;
}

/** How old spool files without a manifest must be before gc takes them for left over. */
const SPOOL_STRAY_MS = 3600_000;

/**
 * Leftovers of ours in a dir of the state dir: entries named as we name
 * them (`ours`), of the kind we make, untouched for `maxAgeMs`.
 */
function stale(dir: string, ours: RegExp, kind: 'file' | 'dir', maxAgeMs: number, now = Date.now()): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((f) => ours.test(f))
    .map((f) => path.join(dir, f))
    .filter((p) => {
      const st = lstatSync(p, { throwIfNoEntry: false });
      return st !== undefined && (kind === 'dir' ? st.isDirectory() : st.isFile()) && now - st.mtimeMs > maxAgeMs;
    });
}

/**
 * Memory files fetched from restic (`STATE_DIR/fetch/<id>-XXXXXX`, localDump's
 * mkdtemp) by a verify or restore that was killed outright (SIGKILL: no exit
 * handler removed them). Secrets lying around: gc removes them once a day
 * old (no verify or restore reads one for a day).
 */
function staleFetches(config: Config): string[] {
  return stale(path.join(config.stateDir, 'fetch'), new RegExp(`^${DUMP_ID.source.slice(1, -1)}-[^-]+$`), 'dir', 24 * 3600_000);
}

/** Settings files (STATE_DIR/settings/) whose helper never started or died before it read them: a helper takes its own within a second. */
function staleSettings(config: Config): string[] {
  // STATE_DIR/watchdog/ held them before the archiver came (0.1): they may hold a restic URL.
  return ['settings', 'watchdog'].flatMap((d) => stale(path.join(config.stateDir, d), /^[0-9a-f-]{36}\.env$/, 'file', 3600_000));
}

/**
 * The dumps `gc` would delete now (none of their snapshots exists), read
 * without the archive lock: for `virtsnap check`, which must not wait on a
 * prune. Never a dump of a pool that is not imported.
 */
export async function unneededDumps(dumps: ArchivedDump[], zfs: Pick<ZfsClient, 'censusFor'>): Promise<ArchivedDump[]> {
  const census = await zfs.censusFor(dumps.flatMap((d) => d.manifest.snapshots));
  return dumps.filter((d) => fateOf(d.manifest, census).kind === 'delete');
}

/** `virtsnap gc`: sweep the store and the spool against ZFS. */
export async function collectGarbage(config: Config, zfs: Pick<ZfsClient, 'censusFor'>, store: DumpStore, options: { dryRun: boolean }): Promise<GcReport> {
  const report: GcReport = { updated: [], deleted: [], removed: [], kept: [], foreign: [], freedBytes: 0 };
  // Never sweep a dir others could swap things into under our feet: checked before anything is deleted.
  if (existsSync(config.overlayDir)) assertOwnDir(config.overlayDir, 'VIRTSNAP_OVERLAY_DIR');
  await withArchiveLock(config.stateDir, config.lockTimeoutMs, async () => {
    const scan = store.scan();
    const spool = scanSpool(config);
    for (const b of [...scan.broken, ...spool.broken]) report.kept.push(`${b.file}: ${b.reason}`);
    report.foreign.push(...scan.foreign, ...spool.foreign);
    const dumps = [...scan.dumps, ...spool.dumps];
    const census = await zfs.censusFor(dumps.flatMap((d) => d.manifest.snapshots));
    warnUnknownPools(census, (line) => report.kept.push(line));
    for (const dump of dumps) {
      const done = await settle(dump, fateOf(dump.manifest, census), config, store, options.dryRun);
      if (done.kind === 'updated') report.updated.push(dump.manifest.id);
      else if (done.kind === 'kept') report.kept.push(`${dump.manifest.id}: ${done.reason}`);
      else if (done.kind === 'deleted') {
        report.deleted.push(dump.manifest.id);
        report.freedBytes += done.freedBytes;
      }
    }
    const overlay = sweepOverlayDir(config);
    report.foreign.push(...overlay.foreign);
    // A .part or a seal cut short whose dump a thaw or the archiver is at right now (its id in the journal or the spool) is not a stray.
    const journal = new Journal(config.stateDir).scan();
    const inFlight = new Set([...journal.entries.map((e) => e.tag), ...spool.dumps.map((d) => d.manifest.id)]);
    const damagedClaims = journal.damaged.map((d) => d.uuid.slice(0, 8));
    // Spool files without a manifest: a drop cut short, or a seal under way or cut short. Only an hour after
    // they were renamed in, and looked at again now: a seal takes milliseconds, and its journal entry goes only after its manifest is written.
    const now = Date.now();
    const unsealed = spool.unsealed.filter((u) => now - u.sealedAtMs > SPOOL_STRAY_MS && !damagedClaims.some((c) => u.id.endsWith(`-${c}`)));
    const claimedNow = new Set(new Journal(config.stateDir).list().map((e) => e.tag));
    const strays = [
      ...scan.strays.filter((f) => !inFlight.has(halfWrittenId(f) ?? '')),
      ...unsealed.filter((u) => !inFlight.has(u.id) && !claimedNow.has(u.id) && !existsSync(spooled(spoolDir(config), u.id).manifest)).map((u) => u.path),
    ];
    for (const stray of [...strays, ...overlay.strays, ...staleFetches(config), ...staleSettings(config)]) {
      report.removed.push(stray);
      report.freedBytes += sizeOf(stray);
      if (!options.dryRun) rmSync(stray, { recursive: true, force: true });
    }
  });
  // After the lock: the store's own step (restic: prune, which may take hours) never holds up post or prune.
  const collected = await store.collect(options.dryRun);
  report.kept.push(...collected.kept);
  if (collected.pruned) report.resticPruned = true;
  return report;
}

