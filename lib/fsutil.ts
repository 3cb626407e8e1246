// Small filesystem helpers with the durability and permissions virtsnap needs:
// RAM dumps and their records hold guest secrets (0600 files, 0700 dirs), and
// a record is either the old or the new version after a crash, never half.
import { closeSync, constants, fchmodSync, fsyncSync, lstatSync, mkdirSync, openSync, renameSync, writeSync, chmodSync, statSync, statfsSync, unlinkSync } from 'node:fs';
import { ConfigError, FsError, VirtsnapError } from './errors.js';
import path from 'node:path';

export const PRIVATE_DIR = 0o700;
export const PRIVATE_FILE = 0o600;
/** x for group and others: a directory they may pass through but not list. */
const SEARCH_ONLY = 0o011;

/**
 * A directory virtsnap keeps private data in (archive, state, overlay dir
 * and what it makes below them). Missing components are created with
 * `mode`. One that already exists keeps its mode (the user chose it), but
 * must be a real directory (not a symlink, unless it is the configured path
 * itself), owned by us and not writable by others: otherwise anyone who can
 * write there could make root write RAM dumps, or delete, through it.
 */
export function ensureDir(dir: string, mode = PRIVATE_DIR, what = dir): void {
  const created = mkdirSync(dir, { recursive: true, mode });
  if (created !== undefined) {
    // mkdir applies the umask; RAM dumps need exactly `mode` on what we made.
    // Parents we made are only searchable by others (0711, never listable
    // or writable): the default archive, state and overlay dirs share
    // /var/lib/virtsnap, and QEMU's user must pass it to reach the overlays.
    for (let p = dir; isInsideDir(p, created); p = path.dirname(p)) {
      chmodSync(p, p === dir ? mode : mode | SEARCH_ONLY);
      if (p === created) break;
    }
  }
  assertOwnDir(dir, what);
}

/** Refuses a directory that others could write to or that someone else owns. */
export function assertOwnDir(dir: string, what = dir): void {
  let st;
  try {
    st = statSync(dir);
  } catch (err) {
    throw new FsError(err as NodeJS.ErrnoException, dir, `cannot use ${what}`);
  }
  if (!st.isDirectory()) throw new ConfigError(`${what} (${dir}) is not a directory: remove it or choose another path`);
  const problem = privacyProblem(st);
  if (problem !== null) {
    throw new ConfigError(`${what} (${dir}) is ${problem}: virtsnap will not keep RAM dumps there, nor write or delete; ${st.uid === ownUid() ? 'chmod go-w it' : 'chown it'} or choose another path`);
  }
}

function ownUid(): number {
  return process.geteuid?.() ?? 0;
}

/**
 * The one rule for a directory virtsnap writes or deletes in: owned by
 * virtsnap's user, and nobody else may write to it. Null when it holds,
 * else what is wrong ("owned by uid N", "writable by others (mode M)").
 */
export function privacyProblem(st: { uid: number; mode: number }): string | null {
  if (st.uid !== ownUid()) return `owned by uid ${st.uid}, not by virtsnap's user (uid ${ownUid()})`;
  if ((st.mode & 0o022) !== 0) return `writable by others (mode ${(st.mode & 0o7777).toString(8)})`;
  return null;
}

/**
 * `dir` below a configured one (`what`, e.g. VIRTSNAP_STATE_DIR): both made
 * private if missing, both checked. A closed parent means nobody else can
 * swap `dir` for a symlink after the check.
 */
export function ensureDirBelow(dir: string, what: string, mode = PRIVATE_DIR): void {
  ensureDir(path.dirname(dir), PRIVATE_DIR, what);
  try {
    mkdirSync(dir, { mode });
    chmodSync(dir, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  if (lstatSync(dir).isSymbolicLink()) throw new VirtsnapError(`${dir} is a symlink: virtsnap does not write through symlinks; remove it`);
  assertOwnDir(dir);
}

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Opens a new file for writing, never through a symlink: O_EXCL makes
 * O_CREAT fail on anything already there, a planted symlink included. A
 * stale file of ours at that name is unlinked first (unlink removes a
 * symlink itself, not what it points to).
 */
export function openExclusive(file: string, mode = PRIVATE_FILE): number {
  removeIfExists(file);
  return openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
}

/** Write to a temp file beside the target, fsync, rename over it, fsync the directory. */
export function writeFileAtomic(file: string, data: string | Buffer, mode = PRIVATE_FILE): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = openExclusive(tmp, mode);
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fsyncSync(fd);
    fchmodSync(fd, mode);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  fsyncDir(dir);
}

export function writeJsonAtomic(file: string, value: unknown, mode = PRIVATE_FILE): void {
  writeFileAtomic(file, JSON.stringify(value, null, 2) + '\n', mode);
}

export function removeIfExists(file: string): boolean {
  try {
    unlinkSync(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

export function exists(file: string): boolean {
  try {
    statSync(file);
    return true;
  } catch {
    return false;
  }
}

/** A name for a file or directory made from a domain name (which may hold any character but /). */
export function fileSafe(name: string): string {
  const safe = name.replace(/[/\x00-\x1f]/g, '_');
  return safe.startsWith('.') ? `_${safe}` : safe;
}

/** `a/b` is inside `a` (both absolute, normalised). */
export function isInsideDir(file: string, dir: string): boolean {
  if (dir === '/') return true;
  return file === dir || file.startsWith(dir + '/');
}

/** Bytes free for us in the filesystem holding `dir` (its nearest existing ancestor), or null if it cannot be told. */
export function freeBytes(dir: string): number | null {
  for (let d = dir; ; d = path.dirname(d)) {
    try {
      const st = statfsSync(d);
      return Number(st.bavail) * Number(st.bsize);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || d === path.dirname(d)) return null;
    }
  }
}
