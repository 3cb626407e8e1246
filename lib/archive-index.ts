// Which RAM dumps name a snapshot, without reading every manifest.
//
// sanoid calls the prune hook once per destroyed snapshot, and with 1,000
// dumps reading every manifest costs ~80 ms of CPU a call. This index (in
// VIRTSNAP_STATE_DIR, a cache, rebuilt whenever it is missing or unreadable)
// remembers the snapshot names each manifest file held. A domain dir whose
// inode, mtime and ctime are unchanged is taken as it was (virtsnap writes
// every manifest with a rename, which changes its dir); a changed one is
// listed again and each manifest in it checked by its inode, size, mtime
// and ctime. The index is only ever used to *skip* reading a manifest that
// did not name the snapshot: every manifest it points to, and every one it
// does not know or that changed, is read from the archive itself, and
// nothing is decided on what the index says. A stale index (a manifest
// edited in place by hand) can only make prune miss a dump that names the
// snapshot (the dump then keeps its name until the next prune of it or
// `virtsnap gc`, which read the manifests): it costs time, never data.
import { lstatSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { archiveDomainDirs, looksLikeManifest } from './archive.js';
import { readManifest, snapshotNames, type ArchivedDump } from './manifest.js';
import { privacyProblem, PRIVATE_FILE } from './fsutil.js';
import { log } from './log.js';

const FORMAT = 'virtsnap-archive-index/2';

/**
 * A file changed within this long before the index was read may change
 * again within the same timestamp tick without its stat changing: such a
 * file is read, not taken from the index, until it is older.
 */
const SETTLE_MS = 2000;

/** What one manifest file held when it had this stat: the snapshot names, a reason it is broken, or not ours. */
type Entry = { sig: string; names: string[] } | { sig: string; broken: string } | { sig: string; foreign: true };

interface DirEntry {
  /** The domain dir's inode, mtime and ctime. */
  sig: string;
  /** manifest file name -> entry */
  files: Record<string, Entry>;
}

interface IndexFile {
  format: typeof FORMAT;
  archiveDir: string;
  /** domain dir name -> what it held */
  dirs: Record<string, DirEntry>;
}

export function indexFile(stateDir: string): string {
  return path.join(stateDir, 'archive-index.json');
}

function load(file: string, archiveDir: string): Record<string, DirEntry> {
  try {
    const value = JSON.parse(readFileSync(file, 'utf8')) as Partial<IndexFile>;
    if (value.format === FORMAT && value.archiveDir === archiveDir && typeof value.dirs === 'object' && value.dirs !== null) return value.dirs;
  } catch {
    // missing, torn by a crash, or damaged: read the manifests
  }
  return {};
}

/** A cache: written without fsync (a torn one is simply rebuilt), and a failure to write it fails nothing. */
function save(file: string, archiveDir: string, dirs: Record<string, DirEntry>): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, JSON.stringify({ format: FORMAT, archiveDir, dirs } satisfies IndexFile), { mode: PRIVATE_FILE });
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
  const domains = archiveDomainDirs(archiveDir);
  if (domains === null) return result;
  const file = indexFile(stateDir);
  const before = load(file, archiveDir);
  const after: Record<string, DirEntry> = {};
  let changed = false;
  const settled = (st: { mtimeMs: number; ctimeMs: number }) => st.mtimeMs < settledBefore && st.ctimeMs < settledBefore;
  for (const d of domains.sort()) {
    // Plain joins: path.join on every one of thousands of names is a measurable part of a call.
    const dir = `${archiveDir}/${d}`;
    const st = lstatSync(dir, { throwIfNoEntry: false });
    // As scanArchive: only a private directory of ours is read.
    if (st === undefined || !st.isDirectory() || privacyProblem(st) !== null) continue;
    const dirSig = `${st.ino}:${st.mtimeMs}:${st.ctimeMs}`;
    const knownDir = before[d];
    // Unchanged since it was indexed: no listing, no stat of each manifest (each costs ~12 us here, 1,000 of them a tenth of a call).
    const unchanged = knownDir !== undefined && knownDir.sig === dirSig && settled(st);
    const files: Record<string, Entry> = {};
    let complete = true;
    const names = unchanged ? Object.keys(knownDir.files) : readdirSync(dir).sort();
    for (const f of names) {
      if (!f.endsWith('.json') || f.startsWith('.')) continue;
      const manifestFile = `${dir}/${f}`;
      let entry: Entry;
      let dump: ArchivedDump | null = null;
      if (unchanged) {
        entry = knownDir.files[f]!;
      } else {
        const fst = lstatSync(manifestFile, { throwIfNoEntry: false });
        if (fst === undefined || !fst.isFile()) continue;
        // Times in ms with their fraction: a double keeps them to well under a microsecond.
        const sig = `${fst.ino}:${fst.size}:${fst.mtimeMs}:${fst.ctimeMs}`;
        const known = knownDir?.files[f];
        if (known !== undefined && known.sig === sig) {
          entry = known;
        } else {
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
        // Remembered only once settled (see SETTLE_MS); till then its dir is listed on every call.
        if (settled(fst)) files[f] = entry;
        else complete = false;
      }
      if (unchanged) files[f] = entry;
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
    if (!unchanged) changed = true;
    // A dir not yet settled, or with a file not remembered, is listed again next time.
    after[d] = { sig: settled(st) && complete ? dirSig : '', files };
  }
  if (changed || Object.keys(before).length !== Object.keys(after).length) save(file, archiveDir, after);
  // Oldest first, as scanArchive. Plain comparison of the ISO times: localeCompare's first call loads ICU's collator (~8 ms).
  result.dumps.sort((a, b) => (a.manifest.times.startedAt < b.manifest.times.startedAt ? -1 : a.manifest.times.startedAt > b.manifest.times.startedAt ? 1 : 0));
  return result;
}
