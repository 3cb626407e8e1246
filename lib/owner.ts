// Which process owns a run or a lock, identified so that neither a reboot
// nor a reused pid can pass for it: pid + the kernel's boot id + the
// process's start time (in clock ticks since boot).
import { readFileSync } from 'node:fs';

export interface Owner {
  pid: number;
  bootId: string;
  startTime: string;
}

/** /proc/<pid>/stat's fields after the command name: [0] the state, [19] the start time. */
function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/**
 * Alive: it exists and is not a zombie. A process killed with -9 stays a
 * zombie until its parent reaps it (an orphan's reaper, PID 1, may take a
 * second or longer): it holds no lock and does nothing any more.
 */
export function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const state = statFields(pid)?.[0];
  return state !== 'Z' && state !== 'X';
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

function startTimeOf(pid: number): string | null {
  return statFields(pid)?.[19] ?? null;
}

export function ownerOf(pid: number): Owner {
  return { pid, bootId: bootId(), startTime: startTimeOf(pid) ?? 'unknown' };
}

export function ownerIsAlive(owner: Owner): boolean {
  if (owner.bootId !== bootId()) return false;
  if (!processIsAlive(owner.pid)) return false;
  const now = startTimeOf(owner.pid);
  return now === null || owner.startTime === 'unknown' || now === owner.startTime;
}


/**
 * The process a hook works for: sanoid runs hooks with Perl's system(), which
 * goes through /bin/sh when the command has shell syntax in it. Skip shells.
 */
export function hookOwnerPid(): number {
  let pid = process.ppid;
  for (let i = 0; i < 3; i++) {
    let comm: string;
    let stat: string;
    try {
      comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      return pid;
    }
    if (!['sh', 'dash', 'bash', 'env'].includes(comm)) return pid;
    const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (!Number.isInteger(parent) || parent <= 1) return pid;
    pid = parent;
  }
  return pid;
}

