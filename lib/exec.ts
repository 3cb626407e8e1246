// The one place where virtsnap starts other programs.
//
// zx's `$` quotes every interpolated value (an array becomes one quoted word
// per element), so the command and its arguments reach the program exactly
// as given: no value we pass is ever parsed by the shell. Every call has a
// timeout and runs with LC_ALL=C, so error texts are the ones we match on.
import { CommandError, oneLine } from './errors.js';

// Loaded on first use: hooks start on every snapshot and prune, and many of
// those calls (a dataset without VMs, a snapshot without a dump) run no
// command at all. zx/core is zx without its globals and script helpers.
let zx: Promise<typeof import('zx/core')> | null = null;
function loadZx(): Promise<typeof import('zx/core')> {
  zx ??= import('zx/core');
  return zx;
}

export interface RunOptions {
  /** Milliseconds before the command is killed. */
  timeoutMs?: number;
  /** Extra environment variables. */
  env?: Record<string, string>;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

export const DEFAULT_TIMEOUT_MS = 60_000;

/** The environment of every program we start: C messages, the ones we match on. */
function commandEnv(extra: Record<string, string> = {}): Record<string, string | undefined> {
  return { ...process.env, ...extra, LC_ALL: 'C', LANG: 'C' };
}

export async function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const { $ } = await loadZx();
  const shell = $({
    quiet: true,
    nothrow: true,
    verbose: false,
    timeout: timeoutMs,
    timeoutSignal: 'SIGKILL',
    env: commandEnv(options.env),
    // stdin must not be a socket (node's default pipe): Debian's bash then
    // believes it runs under rshd and sources root's ~/.bashrc.
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group: Ctrl-C reaches virtsnap, which finishes or undoes
    // the step, instead of virsh, which would abort libvirt's job under us.
    detached: true,
  });
  const started = Date.now();
  const out = await shell`${command} ${[...args]}`;
  const result = { stdout: out.stdout, stderr: out.stderr };
  if (out.exitCode === 0) return result;
  // zx kills with SIGKILL on timeout; any other death by signal is a crash.
  const timedOut = out.signal === 'SIGKILL' && Date.now() - started >= timeoutMs;
  throw new CommandError(command, args, out.exitCode ?? -1, asItself(command, out.exitCode, oneLine(out.stderr || out.stdout)), timedOut, out.stdout);
}

/**
 * The program's own complaint, not the shell's that started it: bash says
 * `/bin/bash: line 1: zfs: command not found` (exit 127) or `Permission
 * denied` (126) about a program it could not run.
 */
export function asItself(command: string, exitCode: number | null, stderr: string): string {
  const text = stderr.replace(/^(?:\/bin\/|\/usr\/bin\/)?(?:ba)?sh: (?:line \d+: )?/, '');
  if (exitCode === 127 && /command not found|No such file/i.test(text)) return `${command}: command not found (is it installed, and on PATH?)`;
  if (exitCode === 126) return `${command}: cannot be run (${text.replace(/^.*?: /, '')})`;
  return text;
}

/**
 * Starts a program that outlives us (the watchdog): its own session, so a
 * signal to our process group or the end of a cron job does not reach it;
 * output appended to `logFile`. Returns its pid.
 */
export async function startDetached(command: string, args: readonly string[], options: { logFile: string; env?: Record<string, string>; unset?: string[] }): Promise<number> {
  const { spawn } = await import('node:child_process');
  const { openSync, closeSync } = await import('node:fs');
  const fd = openSync(options.logFile, 'a', 0o600);
  try {
    const env = commandEnv(options.env);
    for (const name of options.unset ?? []) delete env[name];
    const child = spawn(command, [...args], { detached: true, stdio: ['ignore', fd, fd], env });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('spawn', () => resolve(child.pid ?? -1));
      child.once('error', reject);
    });
    child.unref();
    return pid;
  } finally {
    closeSync(fd);
  }
}
