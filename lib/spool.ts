// The spool: where a RAM dump waits between post and its store.
//
// `VIRTSNAP_OVERLAY_DIR/spool/` holds, per dump, `<id>.save` (the memory
// file as libvirt wrote it), `<id>.meta/` (XML, NVRAM, TPM copies) and
// `<id>.json` (its manifest, `store: spool`, with its tie to the run's
// snapshots). Post seals a dump there with renames only (libvirt wrote it in
// the overlay dir: the same filesystem), so neither sanoid nor the next run
// ever waits for hashing, compression or an archive that is away: the
// archiver (lib/archiver.ts) drains the spool into the store.
//
// The manifest is written last: a dump is waiting once it is there. A crash
// half-way leaves the journal entry (step committed) of a dump whose files are
// partly moved; its thaw seals it again from wherever they are.
import { existsSync, lstatSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Config } from './config.js';
import { VirtsnapError } from './errors.js';
import { ensureDirBelow, fsyncDir, writeJsonAtomic } from './fsutil.js';
import { factsOfEntry, type JournalEntry } from './journal.js';
import { readSaveImageHeader } from './libvirt/save-image.js';
import { buildManifest, DUMP_ID, readManifest, type ArchivedDump } from './manifest.js';
import type { SnapshotRef } from './snapshot-id.js';

/** The spool's name in the overlay dir. */
export const SPOOL_NAME = 'spool';

export function spoolDir(config: Pick<Config, 'overlayDir'>): string {
  return path.join(config.overlayDir, SPOOL_NAME);
}

/** A dump's three names in the spool. */
export function spooled(dir: string, id: string): { save: string; meta: string; manifest: string } {
  return { save: path.join(dir, `${id}.save`), meta: path.join(dir, `${id}.meta`), manifest: path.join(dir, `${id}.json`) };
}

/**
 * A thawed domain has no dump for this store to seal: no complete memory
 * file, or one the freeze put elsewhere (VIRTSNAP_STORE changed between pre
 * and post). Its snapshot gets no RAM from us: the thaw discards the dump.
 */
export class NothingToSealError extends VirtsnapError {
  override name = 'NothingToSealError';
}

/**
 * A waiting dump whose memory file is gone from the spool while no store
 * holds it (deleted by hand, a disk error): nothing is left to store. The
 * archiver says so once and removes its manifest, instead of retrying.
 */
export class DumpGoneError extends VirtsnapError {
  override name = 'DumpGoneError';
}

/**
 * The check every store's keep makes before it reads a waiting dump's
 * memory file (after it looked for a copy it stored already): its bytes
 * are there, or it is gone for good and its manifest goes (DumpGoneError).
 */
export function assertWaitingBytes(waiting: ArchivedDump): void {
  if (existsSync(waiting.manifest.memoryFile)) return;
  const names = waiting.manifest.snapshots.map((r) => r.name).join(', ');
  dropWaiting(waiting);
  throw new DumpGoneError(`RAM dump ${waiting.manifest.id} waited in the spool without its memory file, and no store holds it: ${names || 'its snapshots'} have no RAM; its manifest is removed`);
}

/** Why a thawed domain's dump cannot be sealed, or null: the memory file is there and complete. */
function memoryProblem(file: string): string | null {
  if (!existsSync(file)) return `memory file ${file} is missing`;
  const header = readSaveImageHeader(file);
  if (header === null || !header.complete) return `memory file ${file} is incomplete`;
  return null;
}

/**
 * Seals the dump of a domain that is back on its own disks into the spool,
 * tied to `tied`: the memory file and meta dir renamed in, then the manifest
 * written. Renames only, never a copy (the spool is in the overlay dir).
 * Throws, naming the file, when there is no complete memory file to seal.
 */
export function sealIntoSpool(entry: JournalEntry, tied: SnapshotRef[], config: Pick<Config, 'overlayDir' | 'libvirtUri'>, hostname: string): ArchivedDump {
  if (entry.ramInDataset !== undefined) {
    throw new NothingToSealError(`its RAM was saved inside its dataset (VIRTSNAP_STORE was dataset when it was frozen): the snapshots hold it, restore finds it there`);
  }
  const dir = spoolDir(config);
  ensureDirBelow(dir, 'VIRTSNAP_OVERLAY_DIR');
  const to = spooled(dir, entry.tag);
  // Sealed already by a thaw killed after the manifest, before the journal entry went.
  if (!existsSync(entry.memoryFile) && existsSync(to.manifest) && existsSync(to.save)) return { manifest: readManifest(to.manifest, 'spool'), manifestFile: to.manifest };
  // An earlier seal may have moved it already (killed before the manifest).
  const from = existsSync(entry.memoryFile) ? entry.memoryFile : to.save;
  const problem = memoryProblem(from);
  if (problem !== null) throw new NothingToSealError(`${problem}: no RAM dump for this snapshot`);
  if (from !== to.save) renameSync(from, to.save);
  let metaDir: string | null = null;
  if (existsSync(entry.metaDir)) {
    rmSync(to.meta, { recursive: true, force: true });
    renameSync(entry.metaDir, to.meta);
  }
  if (existsSync(to.meta)) metaDir = to.meta;
  fsyncDir(dir);
  const manifest = buildManifest(
    factsOfEntry(entry, tied, { libvirtUri: config.libvirtUri, hostname }),
    { memoryFile: to.save, bytes: statSync(to.save).size, sha256: '', compression: null, metaDir, store: { kind: 'spool' } },
  );
  writeJsonAtomic(to.manifest, manifest);
  return { manifest, manifestFile: to.manifest };
}

export interface SpoolScan {
  /** Sealed dumps, oldest first. */
  dumps: ArchivedDump[];
  /** Manifests that cannot be read: kept, named. */
  broken: { file: string; reason: string }[];
  /**
   * Files of ours without a manifest: a seal under way or cut short (its
   * journal entry finishes it), or a drop cut short. `sealedAtMs`: when it
   * was renamed in (its ctime).
   */
  unsealed: { id: string; path: string; sealedAtMs: number }[];
  /** Anything else: never touched. */
  foreign: { path: string; reason: string }[];
}

/**
 * What waits in the spool. A missing spool is an empty one. Read while the
 * archiver, prune or gc may take a dump away: a file gone between the
 * listing and its read is a dump gone, not a broken one.
 */
export function scanSpool(config: Pick<Config, 'overlayDir'>): SpoolScan {
  const scan: SpoolScan = { dumps: [], broken: [], unsealed: [], foreign: [] };
  const dir = spoolDir(config);
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return scan;
    throw new VirtsnapError(`cannot read the spool ${dir} (VIRTSNAP_OVERLAY_DIR): ${(err as Error).message}`);
  }
  const sealed = new Set<string>();
  for (const f of names.filter((n) => n.endsWith('.json') && DUMP_ID.test(n.slice(0, -'.json'.length)))) {
    const id = f.slice(0, -'.json'.length);
    sealed.add(id);
    const file = path.join(dir, f);
    try {
      scan.dumps.push({ manifest: readManifest(file, 'spool'), manifestFile: file });
    } catch (err) {
      if (existsSync(file)) scan.broken.push({ file, reason: (err as Error).message });
    }
  }
  for (const f of names) {
    const m = /^(.+)\.(save|meta|json)$/.exec(f);
    const p = path.join(dir, f);
    const st = lstatSync(p, { throwIfNoEntry: false });
    if (st === undefined) continue; // taken away meanwhile
    if (m !== null && DUMP_ID.test(m[1]!) && !st.isSymbolicLink()) {
      if (!sealed.has(m[1]!)) scan.unsealed.push({ id: m[1]!, path: p, sealedAtMs: st.ctimeMs });
      continue;
    }
    // writeJsonAtomic's temp names: a seal that was killed while writing its manifest.
    if (/^\..+\.json\.\d+\.tmp$/.test(f)) continue;
    scan.foreign.push({ path: p, reason: 'not written by virtsnap (left alone)' });
  }
  scan.dumps.sort((a, b) => (a.manifest.times.startedAt < b.manifest.times.startedAt ? -1 : 1));
  return scan;
}

/**
 * Removes a waiting dump's files, the manifest first: a manifest in the
 * spool always has its memory file beside it. A crash half-way leaves files
 * without a manifest and without a journal entry, which gc removes.
 * Returns the bytes freed.
 */
export function dropWaiting(dump: ArchivedDump): number {
  const to = spooled(path.dirname(dump.manifestFile), dump.manifest.id);
  let freed = 0;
  try {
    freed = lstatSync(to.save).size;
  } catch {
    // gone already
  }
  rmSync(to.manifest, { force: true });
  fsyncDir(path.dirname(to.manifest));
  rmSync(to.save, { force: true });
  rmSync(to.meta, { recursive: true, force: true });
  return freed;
}

/** What waits: how many dumps, their bytes, and when the oldest was sealed. */
export interface SpoolStats {
  count: number;
  bytes: number;
  /** Milliseconds since the epoch; null when none waits. */
  oldestSealedAt: number | null;
}

export function spoolStats(config: Pick<Config, 'overlayDir'>): SpoolStats {
  return statsOf(scanSpool(config).dumps);
}

/** Pure: the stats of a list of waiting dumps. */
export function statsOf(dumps: readonly ArchivedDump[]): SpoolStats {
  const sealed = dumps.map((d) => Date.parse(d.manifest.times.archivedAt)).filter(Number.isFinite);
  return { count: dumps.length, bytes: dumps.reduce((s, d) => s + d.manifest.bytes, 0), oldestSealedAt: sealed.length === 0 ? null : Math.min(...sealed) };
}

/** How long the oldest dump has waited, in seconds (0 when none waits). */
export function oldestWaitSeconds(stats: SpoolStats, now = Date.now()): number {
  return stats.oldestSealedAt === null ? 0 : Math.max(0, Math.round((now - stats.oldestSealedAt) / 1000));
}
