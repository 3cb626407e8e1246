// How long a RAM dump lives: exactly as long as one snapshot it belongs to.
//
// One dump usually serves several snapshots (hourly, daily and monthly taken
// in one run share one instant). sanoid's pruning_script tells us about one
// destroyed snapshot at a time; the dump goes only when no snapshot it names
// exists any more. The manifest is a cache: ZFS is the truth, asked before
// anything is deleted.
import { readdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { deleteDump, scanArchive, setSnapshots, withArchiveLock, type ArchivedDump } from './archive.js';
import type { Config } from './config.js';
import { exists, isInsideDir } from './fsutil.js';
import { Journal } from './journal.js';
import { readSaveImageHeader } from './libvirt/save-image.js';
import { log } from './log.js';
import type { PruneEvent } from './sanoid/env.js';
import { datasetOfSnapshot, type SnapshotCensus, type ZfsClient } from './zfs.js';

/** The snapshots of a dump that still count: present in ZFS, or of a dataset ZFS does not know right now. */
function stillNeeded(snapshots: string[], census: SnapshotCensus): string[] {
  // Never delete on an unknown dataset: its pool may only be missing for now.
  return snapshots.filter((s) => census.present.has(s) || census.unknownDatasets.has(datasetOfSnapshot(s)));
}

export interface PruneResult {
  /** Dumps that no longer name the pruned snapshot but still serve others. */
  updated: string[];
  /** Dumps deleted because no snapshot of theirs is left. */
  deleted: string[];
  freedBytes: number;
}

/** pruning_script: sanoid destroyed `dataset@snapname`. */
export async function pruneSnapshot(event: PruneEvent, config: Config, zfs: ZfsClient): Promise<PruneResult> {
  const snapshot = `${event.dataset}@${event.snapname}`;
  const result: PruneResult = { updated: [], deleted: [], freedBytes: 0 };
  return withArchiveLock(config.stateDir, config.lockTimeoutMs, async () => {
    const scan = scanArchive(config.archiveDir);
    for (const b of scan.broken) log.warn(`${b.reason} (left alone)`);
    const dumps = scan.dumps.filter((d) => d.manifest.snapshots.includes(snapshot));
    if (dumps.length === 0) {
      log.debug(`no RAM dump belongs to ${snapshot}: nothing to do`, { dataset: event.dataset });
      return result;
    }
    const truth = await zfs.census(dumps.flatMap((d) => d.manifest.snapshots));
    if (truth.present.has(snapshot)) {
      log.warn(`sanoid says ${snapshot} was pruned, but ZFS still has it: its RAM dump stays`, { dataset: event.dataset });
    }
    for (const ds of truth.unknownDatasets) log.warn(`dataset ${ds} is not known to ZFS (pool not imported? renamed?): its snapshots count as kept`, { dataset: ds });
    for (const dump of dumps) settle(dump, truth, result);
    return result;
  });
}

/** Brings one dump in line with ZFS: fewer snapshots, or gone. */
function settle(dump: ArchivedDump, truth: SnapshotCensus, result: PruneResult): void {
  const m = dump.manifest;
  const keep = stillNeeded(m.snapshots, truth);
  const ctx = { domain: m.domain.name, dataset: datasetOfSnapshot(m.snapshots[0] ?? '@') };
  if (keep.length === m.snapshots.length) return;
  if (keep.length > 0) {
    setSnapshots(dump, keep);
    result.updated.push(m.id);
    log.info(`RAM dump ${m.id} kept for ${keep.join(', ')}`, ctx);
    return;
  }
  result.freedBytes += deleteDump(dump);
  result.deleted.push(m.id);
  log.info(`RAM dump ${m.id} deleted: none of its snapshots exists any more`, ctx);
}

export interface GcReport {
  updated: string[];
  deleted: string[];
  /** Files removed that belonged to no dump (half-written, orphaned). */
  removed: string[];
  /** Left alone, with the reason. */
  kept: string[];
  freedBytes: number;
}

function sizeOf(p: string): number {
  try {
    const st = statSync(p);
    if (!st.isDirectory()) return st.size;
    return readdirSync(p).reduce((sum, f) => sum + sizeOf(path.join(p, f)), 0);
  } catch {
    return 0;
  }
}

/**
 * In-flight files in the overlay dir that no journal entry claims: memory
 * files and meta dirs of runs that died before they were journaled or after
 * they were thawed. Overlays (.qcow2) are never touched here: one may still
 * be in use by a VM, and `virtsnap recover` is the tool for those.
 */
function overlayDirStrays(config: Config): string[] {
  let files: string[];
  try {
    files = readdirSync(config.overlayDir);
  } catch {
    return [];
  }
  const claimed = new Set(new Journal(config.stateDir).list().flatMap((e) => [e.memoryFile, e.metaDir]));
  return files
    .map((f) => path.join(config.overlayDir, f))
    .filter((p) => (p.endsWith('.save') || p.endsWith('.meta')) && !claimed.has(p));
}

function isHalfWritten(file: string): boolean {
  if (file.endsWith('.part') || /\.tmp$/.test(file)) return true;
  if (!file.endsWith('.save')) return false;
  const header = readSaveImageHeader(file);
  return header !== null && !header.complete;
}

/** `virtsnap gc`: sweep the whole archive against ZFS. */
export async function collectGarbage(config: Config, zfs: ZfsClient, options: { dryRun: boolean }): Promise<GcReport> {
  const report: GcReport = { updated: [], deleted: [], removed: [], kept: [], freedBytes: 0 };
  return withArchiveLock(config.stateDir, config.lockTimeoutMs, async () => {
    const scan = scanArchive(config.archiveDir);
    for (const b of scan.broken) report.kept.push(`${b.file}: ${b.reason}`);
    const truth = await zfs.census(scan.dumps.flatMap((d) => d.manifest.snapshots));
    for (const ds of truth.unknownDatasets) report.kept.push(`dumps of ${ds}: ZFS does not know this dataset (pool not imported? renamed?), nothing deleted for it`);
    for (const dump of scan.dumps) {
      const m = dump.manifest;
      const keep = stillNeeded(m.snapshots, truth);
      if (keep.length === m.snapshots.length) continue;
      if (keep.length > 0) {
        report.updated.push(m.id);
        if (!options.dryRun) setSnapshots(dump, keep);
        continue;
      }
      report.deleted.push(m.id);
      report.freedBytes += sizeOf(m.memoryFile);
      if (!options.dryRun) deleteDump(dump);
    }
    for (const stray of [...scan.strays, ...overlayDirStrays(config)]) {
      const inArchive = isInsideDir(stray, config.archiveDir);
      // An unclaimed file in the archive belongs to no snapshot; in the overlay dir only RAM files are ours to sweep.
      if (!inArchive && !isHalfWritten(stray) && !stray.endsWith('.meta') && !stray.endsWith('.save')) continue;
      if (!exists(stray)) continue;
      report.removed.push(stray);
      report.freedBytes += sizeOf(stray);
      if (!options.dryRun) rmSync(stray, { recursive: true, force: true });
    }
    return report;
  });
}
