// Short-lived mutexes between virtsnap processes: `LOCK_DIR/<name>.lock`,
// created with O_EXCL and naming its holder. A lock whose holder died
// is taken over, by one waiter only (takeOver). (Node has no flock(2); this
// is what the journal and the archive use to serialise their
// read-modify-write steps.)
import { closeSync, fstatSync, openSync, readFileSync, statSync, unlinkSync, utimesSync, writeSync } from 'node:fs';
import path from 'node:path';
import { LockTimeoutError } from './errors.js';
import { ensureDirBelow, removeIfExists } from './fsutil.js';
import { ownerIsAlive, ownerOf, processIsAlive, type Owner } from './owner.js';

/** The holder is written as an Owner (pid, boot id, start time): after a reboot a reused pid is not taken for it. */
function holderIsDead(lock: string): boolean {
  let holder: Owner | number;
  try {
    holder = JSON.parse(readFileSync(lock, 'utf8')) as Owner | number;
  } catch {
    // Just created, holder not written yet; or its holder could not write it
    // (a full state dir) and may have died since: only a fresh one counts.
    try {
      return Date.now() - statSync(lock).mtimeMs > UNWRITTEN_LOCK_MS;
    } catch {
      return false;
    }
  }
  if (typeof holder === 'number') return Number.isInteger(holder) && holder > 0 && !processIsAlive(holder); // a bare pid
  if (!Number.isInteger(holder.pid) || holder.pid <= 0) return false;
  return !ownerIsAlive(holder);
}

/** A lock file still empty after this long names no holder: its holder died before it could write itself in. */
const UNWRITTEN_LOCK_MS = 30_000;

/**
 * Removes a lock whose holder died, so that exactly one waiter takes it
 * over. Checking and unlinking are two steps: two waiters that both found
 * the holder dead would both unlink, and the second would remove the lock
 * the first had just made. So the removal happens under a second lock
 * (`<lock>.takeover`, held for microseconds), and only after looking again
 * there: the file judged dead may be the new holder's by then.
 */
function takeOver(lock: string): void {
  const guard = `${lock}.takeover`;
  let fd: number;
  try {
    fd = openSync(guard, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    // Another waiter is taking over; only a guard whose holder died inside it (and long ago) goes.
    if (holderIsDead(guard) && Date.now() - (statSync(guard, { throwIfNoEntry: false })?.mtimeMs ?? Date.now()) > UNWRITTEN_LOCK_MS) removeIfExists(guard);
    return;
  }
  try {
    writeSync(fd, JSON.stringify(ownerOf(process.pid)));
    closeSync(fd);
    if (holderIsDead(lock)) removeIfExists(lock);
  } finally {
    removeIfExists(guard);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Asks `done` every `pollMs` until it says yes (true) or `timeoutMs` passed (false); a `done` that throws is a no. */
export async function waitUntil(done: () => Promise<boolean>, timeoutMs: number, pollMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await done().catch(() => false)) return true;
    if (Date.now() >= deadline) return false;
    await sleep(pollMs);
  }
}

/** Runs `fn` holding lock `name` in `lockDir`, waiting until `deadline` (ms since epoch) for it. */
export async function withLock<T>(lockDir: string, name: string, deadline: number, fn: () => T | Promise<T>): Promise<T> {
  // Locks live in STATE_DIR/locks: both must be ours and closed to others.
  ensureDirBelow(lockDir, 'VIRTSNAP_STATE_DIR');
  const lock = path.join(lockDir, `${name}.lock`);
  for (;;) {
    let fd: number;
    try {
      fd = openSync(lock, 'wx', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if (holderIsDead(lock)) {
        takeOver(lock);
        continue;
      }
      if (Date.now() >= deadline) {
        throw new LockTimeoutError(`lock ${lock} is held by another virtsnap process: wait for it, or remove the file if none runs`);
      }
      await sleep(50);
      continue;
    }
    const ino = fstatSync(fd).ino;
    let heartbeat: NodeJS.Timeout | null = null;
    try {
      try {
        writeSync(fd, JSON.stringify(ownerOf(process.pid)));
      } catch {
        // A full state dir: the lock is held all the same (the file exists),
        // it only cannot say by whom. Touching it needs no free block: while
        // its mtime is fresh, nobody takes it for stale.
        heartbeat = setInterval(() => {
          try {
            const now = new Date();
            utimesSync(lock, now, now);
          } catch {
            // gone: released or taken over
          }
        }, UNWRITTEN_LOCK_MS / 3);
        heartbeat.unref();
      }
      closeSync(fd);
      return await fn();
    } finally {
      if (heartbeat !== null) clearInterval(heartbeat);
      try {
        // Only our own file: one taken over as stale and re-created is another's.
        if (statSync(lock).ino === ino) unlinkSync(lock);
      } catch {
        // already taken over as stale: nothing to release
      }
    }
  }
}
