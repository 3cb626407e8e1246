// Which RAM dumps name a snapshot, without reading every manifest.
//
// sanoid calls the prune hook once per destroyed snapshot, and with 1,000
// dumps reading every manifest costs ~80 ms of CPU a call. This index (in
// VIRTSNAP_STATE_DIR, a cache, rebuilt whenever it is missing or unreadable)
// remembers the snapshot names each manifest file held, keyed by the file's
// inode, size, mtime and ctime. It is only ever used to *skip* reading a
// manifest that did not name the snapshot: every manifest it points to, and
// every one it does not know or that changed, is read from the archive
// itself, and nothing is decided on what the index says. A stale index can
// only make prune miss a dump that names the snapshot (the dump then keeps
// its name until the next prune of it or `virtsnap gc`, which read the
// manifests): it costs time, never data.
import { lstatSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { looksLikeManifest, readManifest, snapshotNames, type ArchivedDump } from './archive.js';
import { VirtsnapError } from './errors.js';
import { assertOwnDir, privacyProblem, PRIVATE_FILE } from './fsutil.js';
import { log } from './log.js';

const FORMAT = 'virtsnap-archive-index/1';

/**
 * A file changed within this long before the index was read may change
 * again within the same timestamp tick without its stat changing: such a
 * file is read, not taken from the index, until it is older.
 */
const SETTLE_MS = 2000;

/** What one manifest file held when it had this stat: the snapshot names, a reason it is broken, or not ours. */
type Entry = { sig: string; names: string[] } | { sig: string; broken: string } | { sig: string; foreign: true };

interface IndexFile {
  format: typeof FORMAT;
  archiveDir: string;
  /** manifest path -> entry */
  files: Record<string, Entry>;
}

export function indexFile(stateDir: string): string {
  return path.join(stateDir, 'archive-index.json');
}

function load(file: string, archiveDir: string): Record<string, Entry> {
  try {
    const value = JSON.parse(readFileSync(file, 'utf8')) as Partial<IndexFile>;
    if (value.format === FORMAT && value.archiveDir === archiveDir && typeof value.files === 'object' && value.files !== null) return value.files;
  } catch {
    // missing, torn by a crash, or damaged: read the manifests
  }
  return {};
}

/** A cache: written without fsync (a torn one is simply rebuilt), and a failure to write it fails nothing. */
function save(file: string, archiveDir: string, files: Record<string, Entry>): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, JSON.stringify({ format: FORMAT, archiveDir, files } satisfies IndexFile), { mode: PRIVATE_FILE });
    renameSync(tmp, file);
  } catch (err) {
    log.debug(`cannot write the archive index ${file}: ${(err as Error).message}`);
  }
}

export interface Naming {
  /** The dumps whose manifest, read now, names the snapshot (oldest first). */
  dumps: ArchivedDump[];
  /** Manifests that cannot be read, as scanArchive reports them: never a reason to delete anything. */
  broken: { file: string; reason: string }[];
}

/**
 * The dumps that name `snapshot` (dataset@snapname) in their manifests:
 * what `scanArchive(archiveDir).dumps` filtered on the snapshot gives, and
 * scanArchive's broken manifests, with the same rules for what is read (a
 * private domain dir, our manifests, never through a symlink). Call it
 * under the archive lock, like every user of the manifests.
 */
export function dumpsNaming(archiveDir: string, stateDir: string, snapshot: string, options: { now?: number } = {}): Naming {
  const result: Naming = { dumps: [], broken: [] };
  const settledBefore = (options.now ?? Date.now()) - SETTLE_MS;
  let domains: string[];
  try {
    domains = readdirSync(archiveDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return result;
    throw new VirtsnapError(`cannot read archive ${archiveDir} (VIRTSNAP_ARCHIVE_DIR): ${(err as Error).message}`);
  }
  assertOwnDir(archiveDir, 'VIRTSNAP_ARCHIVE_DIR');
  const file = indexFile(stateDir);
  const before = load(file, archiveDir);
  const after: Record<string, Entry> = {};
  let changed = false;
  for (const d of domains.sort()) {
    // Plain joins: path.join on every one of thousands of names is a measurable part of a call.
    const dir = `${archiveDir}/${d}`;
    const st = lstatSync(dir, { throwIfNoEntry: false });
    // As scanArchive: only a private directory of ours is read.
    if (st === undefined || !st.isDirectory() || privacyProblem(st) !== null) continue;
    for (const f of readdirSync(dir).sort()) {
      if (!f.endsWith('.json') || f.startsWith('.')) continue;
      const manifestFile = `${dir}/${f}`;
      const fst = lstatSync(manifestFile, { throwIfNoEntry: false });
      if (fst === undefined || !fst.isFile()) continue;
      // Times in ms with their fraction: a double keeps them to well under a microsecond.
      const sig = `${fst.ino}:${fst.size}:${fst.mtimeMs}:${fst.ctimeMs}`;
      const known = before[manifestFile];
      let entry: Entry;
      let dump: ArchivedDump | null = null;
      if (known !== undefined && known.sig === sig) {
        entry = known;
      } else {
        changed = true;
        const id = f.slice(0, -'.json'.length);
        if (!looksLikeManifest(manifestFile, id)) entry = { sig, foreign: true };
        else {
          try {
            dump = { manifest: readManifest(manifestFile), manifestFile };
            entry = { sig, names: snapshotNames(dump.manifest) };
          } catch (err) {
            entry = { sig, broken: (err as Error).message };
          }
        }
      }
      // Remembered only once settled: see SETTLE_MS.
      if (fst.mtimeMs < settledBefore && fst.ctimeMs < settledBefore) after[manifestFile] = entry;
      else changed = true;
      if ('broken' in entry) result.broken.push({ file: manifestFile, reason: entry.broken });
      if (!('names' in entry) || !entry.names.includes(snapshot)) continue;
      // Read now, whatever the index said: only the manifest itself decides.
      if (dump === null) {
        try {
          dump = { manifest: readManifest(manifestFile), manifestFile };
        } catch (err) {
          result.broken.push({ file: manifestFile, reason: (err as Error).message });
          continue;
        }
      }
      if (snapshotNames(dump.manifest).includes(snapshot)) result.dumps.push(dump);
    }
  }
  if (changed || Object.keys(before).length !== Object.keys(after).length) save(file, archiveDir, after);
  // Oldest first, as scanArchive. Plain comparison of the ISO times: localeCompare's first call loads ICU's collator (~8 ms).
  result.dumps.sort((a, b) => (a.manifest.times.startedAt < b.manifest.times.startedAt ? -1 : a.manifest.times.startedAt > b.manifest.times.startedAt ? 1 : 0));
  return result;
}
