// Small filesystem helpers with the durability and permissions virtsnap needs:
// RAM dumps and their records hold guest secrets (0600 files, 0700 dirs), and
// a record is either the old or the new version after a crash, never half.
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, writeSync, chmodSync, statSync, unlinkSync } from 'node:fs';
import path from 'node:path';

export const PRIVATE_DIR = 0o700;
export const PRIVATE_FILE = 0o600;

/** mkdir -p, and the last component gets `mode` even if it already existed. */
export function ensureDir(dir: string, mode = PRIVATE_DIR): void {
  mkdirSync(dir, { recursive: true, mode });
  chmodSync(dir, mode);
}

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Write to a temp file beside the target, fsync, rename over it, fsync the directory. */
export function writeFileAtomic(file: string, data: string | Buffer, mode = PRIVATE_FILE): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = openSync(tmp, 'w', mode);
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  chmodSync(tmp, mode);
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
