// How long a RAM dump lives: exactly as long as one snapshot it belongs to.
//
// One dump usually serves several snapshots (hourly, daily and monthly taken
// in one run share one instant). sanoid's pruning_script tells us about one
// destroyed snapshot at a time; the dump goes only when no snapshot it names
// exists any more. The manifest is a cache: ZFS is the truth, asked before
// anything is deleted.
import { existsSync, lstatSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { DUMP_ID, halfWrittenId, scanArchive, setSnapshots, snapshotNames, withArchiveLock, type ArchivedDump, type Manifest } from './archive.js';
import { dumpsNaming } from './archive-index.js';
import { deleteStoredDump, gcRestic, resticOf } from './archive-store.js';
import type { Config } from './config.js';
import { assertOwnDir } from './fsutil.js';
import { Journal } from './journal.js';
import { log } from './log.js';
import type { ResticClient } from './restic.js';
import type { PruneEvent } from './sanoid/env.js';
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
 * Whether one of a dump's snapshots still has its recorded name and guid
 * (`guids`: what ZFS says each recorded name's guid is now): then the dump
 * is kept, and nothing needs looking for. A ref of an old manifest (no
 * guid) holds by its name.
 */
export function stillHeld(manifest: Pick<Manifest, 'snapshots'>, guids: ReadonlyMap<string, string>): boolean {
  return manifest.snapshots.some((r) => (r.guid === null ? guids.has(r.name) : guids.get(r.name) === r.guid));
}

/**
 * pruning_script: sanoid destroyed `dataset@snapname`. A dump another of
 * whose snapshots still stands where it was recorded is kept as it is: one
 * `zfs get guid` of the recorded names says so. Only a dump none of whose
 * names holds its guid any more is judged on a census of every imported
 * pool (fateOf): deleted, or followed where its snapshots went.
 */
export async function pruneSnapshot(event: PruneEvent, config: Config, zfs: ZfsClient): Promise<PruneResult> {
  const snapshot = `${event.dataset}@${event.snapname}`;
  const result: PruneResult = { updated: [], deleted: [], freedBytes: 0 };
  return withArchiveLock(config.stateDir, config.lockTimeoutMs, async () => {
    // Through the index: a prune call reads only the manifests that name the snapshot (lib/archive-index.ts).
    const { dumps, broken } = dumpsNaming(config.archiveDir, config.stateDir, snapshot);
    for (const b of broken) log.warn(`${b.reason} (left alone)`);
    if (dumps.length === 0) {
      log.debug(`no RAM dump belongs to ${snapshot}: nothing to do`, { dataset: event.dataset });
      return result;
    }
    const guids = await zfs.guidsOf(dumps.flatMap((d) => snapshotNames(d.manifest)));
    if (guids.has(snapshot)) log.warn(`sanoid says ${snapshot} was pruned, but ZFS still has it: its RAM dump stays`, { dataset: event.dataset });
    const open: ArchivedDump[] = [];
    for (const dump of dumps) {
      if (stillHeld(dump.manifest, guids)) log.debug(`RAM dump ${dump.manifest.id} kept: another of its snapshots stands`, { domain: dump.manifest.domain.name, dataset: event.dataset });
      else open.push(dump);
    }
    if (open.length === 0) return result;
    const census = await zfs.censusFor(open.flatMap((d) => d.manifest.snapshots));
    warnUnknownPools(census, (line) => log.warn(line, { dataset: event.dataset }));
    const restic = resticOf(config);
    for (const dump of open) await settle(dump, fateOf(dump.manifest, census), result, restic);
    return result;
  });
}

/** Carries out a dump's fate. */
async function settle(dump: ArchivedDump, fate: Fate, result: PruneResult, restic: ResticClient | null): Promise<void> {
  const m = dump.manifest;
  const ctx = { domain: m.domain.name, dataset: datasetOfSnapshot(m.snapshots[0]?.name ?? '@') };
  if (fate.kind === 'keep') return;
  if (fate.kind === 'update') {
    setSnapshots(dump, fate.snapshots);
    result.updated.push(m.id);
    log.info(`RAM dump ${m.id} kept for ${fate.snapshots.map((r) => r.name).join(', ')}`, ctx);
    return;
  }
  try {
    result.freedBytes += await deleteStoredDump(dump, restic);
  } catch (err) {
    // Kept, and the other dumps still settled: the next prune or gc tries again.
    log.warn(`RAM dump ${m.id} kept: ${(err as Error).message}`, ctx);
    return;
  }
  result.deleted.push(m.id);
  log.info(`RAM dump ${m.id} deleted: none of its snapshots exists any more (${fate.gone.join(', ')})`, ctx);
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
  /** With VIRTSNAP_ARCHIVE=restic:REPO: whether `restic prune` ran (the space of forgotten dumps comes back then). */
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
    if (st === undefined || OVERLAY.test(f)) continue;
    const m = IN_FLIGHT.exec(f);
    const ours = m !== null && (f.endsWith('.save') ? st.isFile() : st.isDirectory());
    if (!ours) result.foreign.push({ path: p, reason: 'not written by virtsnap (left alone)' });
    else if (unknownClaims.includes(m[1]!)) result.foreign.push({ path: p, reason: 'its domain\'s journal entry is damaged: left alone (virtsnap status)' });
    else if (!claimed.has(p)) result.strays.push(p);
  }
  return result;
}

/** How old a fetched memory file must be before gc takes it for left behind: no verify or restore reads one for a day. */
const FETCH_STALE_MS = 24 * 3600_000;

/**
 * Memory files fetched from restic (`STATE_DIR/fetch/<id>-XXXXXX`) by a
 * verify or restore that was killed outright (SIGKILL: no exit handler
 * removed them). Secrets lying around: gc removes them once a day old.
 */
function staleFetches(config: Config, now = Date.now()): string[] {
  const dir = path.join(config.stateDir, 'fetch');
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((f) => DUMP_ID.test(f.replace(/-[^-]*$/, ''))) // localDump's mkdtemp: `<id>-XXXXXX`
    .map((f) => path.join(dir, f))
    .filter((p) => {
      const st = lstatSync(p, { throwIfNoEntry: false });
      return st !== undefined && st.isDirectory() && now - st.mtimeMs > FETCH_STALE_MS;
    });
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

/** `virtsnap gc`: sweep the whole archive against ZFS. */
export async function collectGarbage(config: Config, zfs: ZfsClient, options: { dryRun: boolean }): Promise<GcReport> {
  const report: GcReport = { updated: [], deleted: [], removed: [], kept: [], foreign: [], freedBytes: 0 };
  // Never sweep a dir others could swap things into under our feet: checked before anything is deleted.
  if (existsSync(config.overlayDir)) assertOwnDir(config.overlayDir, 'VIRTSNAP_OVERLAY_DIR');
  let resticToPrune: ResticClient | null = null;
  await withArchiveLock(config.stateDir, config.lockTimeoutMs, async () => {
    const scan = scanArchive(config.archiveDir);
    const restic = resticOf(config);
    for (const b of scan.broken) report.kept.push(`${b.file}: ${b.reason}`);
    report.foreign.push(...scan.foreign);
    const census = await zfs.censusFor(scan.dumps.flatMap((d) => d.manifest.snapshots));
    warnUnknownPools(census, (line) => report.kept.push(line));
    for (const dump of scan.dumps) {
      const fate = fateOf(dump.manifest, census);
      if (fate.kind === 'keep') continue;
      if (fate.kind === 'update') {
        report.updated.push(dump.manifest.id);
        if (!options.dryRun) setSnapshots(dump, fate.snapshots);
        continue;
      }
      if (!options.dryRun) {
        try {
          await deleteStoredDump(dump, restic);
        } catch (err) {
          report.kept.push(`${dump.manifest.id}: ${(err as Error).message}`);
          continue;
        }
      }
      report.deleted.push(dump.manifest.id);
      report.freedBytes += sizeOf(dump.manifest.memoryFile);
    }
    if (restic !== null) {
      // Never forgets what no manifest here names (another host may own it, `--host` tells): only reports it.
      // No `restic prune` under the archive lock: it may take hours, and post must archive meanwhile (restic locks the repo itself).
      const rgc = await gcRestic(restic, scan.dumps, true).catch((err: Error) => {
        report.kept.push(`restic repository ${restic.repo}: ${err.message}`);
        return null;
      });
      if (rgc !== null) report.kept.push(...rgc.unknown);
      resticToPrune = options.dryRun ? null : restic;
    }
    const overlay = sweepOverlayDir(config);
    report.foreign.push(...overlay.foreign);
    // A .part whose dump a thaw is staging right now (its id is a journal entry's tag) is not a stray.
    const inFlight = new Set(new Journal(config.stateDir).list().map((e) => e.tag));
    const strays = scan.strays.filter((f) => !inFlight.has(halfWrittenId(f) ?? ''));
    for (const stray of [...strays, ...overlay.strays, ...staleFetches(config)]) {
      report.removed.push(stray);
      report.freedBytes += sizeOf(stray);
      if (!options.dryRun) rmSync(stray, { recursive: true, force: true });
    }
  });
  // After the lock: the space of the dumps forgotten comes back.
  const prunable = resticToPrune as ResticClient | null;
  if (prunable !== null) {
    try {
      await prunable.prune();
      report.resticPruned = true;
    } catch (err) {
      report.kept.push(`restic prune of ${prunable.repo}: ${(err as Error).message}; run \`virtsnap gc\` again`);
    }
  }
  return report;
}
