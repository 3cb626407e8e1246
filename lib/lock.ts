// Short-lived mutexes between virtsnap processes: `LOCK_DIR/<name>.lock`,
// created with O_EXCL and holding the holder's pid. A lock whose holder died
// is taken over. (Node has no flock(2); this is what the journal and the
// archive use to serialise their read-modify-write steps.)
import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import { LockTimeoutError } from './errors.js';
import { ensureDir, removeIfExists } from './fsutil.js';

export function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function holderIsDead(lock: string): boolean {
  let pid: number;
  try {
    pid = Number(readFileSync(lock, 'utf8'));
  } catch {
    return false; // just created, pid not written yet
  }
  if (!Number.isInteger(pid) || pid <= 0) return false;
  return !processIsAlive(pid);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs `fn` holding lock `name` in `lockDir`, waiting until `deadline` (ms since epoch) for it. */
export async function withLock<T>(lockDir: string, name: string, deadline: number, fn: () => T | Promise<T>): Promise<T> {
  ensureDir(lockDir);
  const lock = path.join(lockDir, `${name}.lock`);
  for (;;) {
    let fd: number;
    try {
      fd = openSync(lock, 'wx', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if (holderIsDead(lock)) {
        removeIfExists(lock);
        continue;
      }
      if (Date.now() >= deadline) {
        throw new LockTimeoutError(`lock ${lock} is held by another virtsnap process: wait for it, or remove the file if none runs`);
      }
      await sleep(50);
      continue;
    }
    try {
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return await fn();
    } finally {
      try {
        unlinkSync(lock);
      } catch {
        // already taken over as stale: nothing to release
      }
    }
  }
}
