// The one place where virtsnap starts other programs.
//
// Each program is started directly (node's spawn, no shell): the command and
// its arguments reach it exactly as given, one array element per argument,
// so no value we pass is ever parsed by a shell. Every call has a timeout and
// runs with LC_ALL=C, so error texts are the ones we match on.
//
// Not zx, though the design started with it: zx runs every command through
// bash, and loading it costs 30-60 ms of a hook's start-up (measured on the
// test bed: 2 cores, Node 20), plus 3-5 ms per call for the bash it starts.
// Sanoid runs the hooks for every dataset on every run and the prune hook
// once per destroyed snapshot, mostly with nothing to do: that start-up is
// most of what they cost.
import { closeSync, openSync } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { CommandError, oneLine } from './errors.js';

export interface RunOptions {
  /** Milliseconds before the command is killed. */
  timeoutMs?: number;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Working directory (restic stores the paths it backs up as given: relative ones stay short). */
  cwd?: string;
  /** Variables of our own environment the program must not see. */
  unset?: readonly string[];
  /**
   * Killed when virtsnap dies (`setpriv --pdeathsig KILL`): the program runs
   * in a process group of its own, so a killed archiver would otherwise
   * leave its restic backup writing beside the next archiver's.
   */
  dieWithUs?: boolean;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

export const DEFAULT_TIMEOUT_MS = 60_000;

/** The environment of every program we start: C messages, the ones we match on. */
function commandEnv(extra: Record<string, string> = {}, unset: readonly string[] = []): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = { ...process.env, ...extra, LC_ALL: 'C', LANG: 'C' };
  for (const name of unset) if (!(name in extra)) delete env[name];
  return env;
}

/**
 * node:child_process on first use: it brings net, dgram and stream code
 * along, which the many hook calls that start no program (post and prune
 * with nothing to do) do not need.
 */
function childProcess(): Promise<typeof import('node:child_process')> {
  return import('node:child_process');
}

/** What a program that could not be started at all is reported as: the shell's exit codes for the same (127, 126). */
function startFailure(err: NodeJS.ErrnoException): { status: number; stderr: string } {
  if (err.code === 'ENOENT') return { status: 127, stderr: 'command not found' };
  if (err.code === 'EACCES' || err.code === 'EPERM' || err.code === 'ENOEXEC') return { status: 126, stderr: `${err.code === 'ENOEXEC' ? 'Exec format error' : 'Permission denied'}` };
  return { status: 126, stderr: err.message };
}

/** Kills `child`'s whole process group (whatever the program started goes with it) once `timeoutMs` passed. */
function killGroupAfter(child: import('node:child_process').ChildProcess, timeoutMs: number, onTimeout: () => void): NodeJS.Timeout {
  return setTimeout(() => {
    onTimeout();
    try {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch {
      child.kill('SIGKILL');
    }
  }, timeoutMs);
}

export async function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const { spawn } = await childProcess();
  const out = await new Promise<{ stdout: string; stderr: string; status: number | null; signal: NodeJS.Signals | null; timedOut: boolean; startError: NodeJS.ErrnoException | null }>((resolve) => {
    const [program, argv] = options.dieWithUs === true ? ['setpriv', ['--pdeathsig', 'KILL', '--', command, ...args]] : [command, [...args]];
    const child = spawn(program, argv, {
      env: commandEnv(options.env, options.unset),
      ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
      // stdin must not be a socket (node's default pipe): Debian's bash, in
      // any script we start, then believes it runs under rshd and sources
      // root's ~/.bashrc.
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group: Ctrl-C reaches virtsnap, which finishes or undoes
      // the step, instead of virsh, which would abort libvirt's job under us.
      detached: true,
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let startError: NodeJS.ErrnoException | null = null;
    // Null when the spawn itself failed (EMFILE): the 'error' handler below answers then.
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = killGroupAfter(child, timeoutMs, () => (timedOut = true));
    child.once('error', (err: NodeJS.ErrnoException) => {
      // Only a program that could not be started ends here (no 'close' is guaranteed then).
      if (child.pid !== undefined) return;
      startError = err;
      clearTimeout(timer);
      resolve({ stdout, stderr, status: null, signal: null, timedOut: false, startError });
    });
    child.once('close', (status, signal) => {
      if (child.pid === undefined) return; // never started: the 'error' handler answers
      clearTimeout(timer);
      resolve({ stdout, stderr, status, signal, timedOut: timedOut && signal === 'SIGKILL', startError: null });
    });
  });
  const result = { stdout: out.stdout, stderr: out.stderr };
  if (out.startError !== null) {
    const { status, stderr } = startFailure(out.startError);
    throw new CommandError(command, args, status, asItself(command, status, stderr), false, '');
  }
  if (out.status === 0) return result;
  // Killed at our limit (our own timer's SIGKILL); any other death by signal is a crash, not a timeout.
  throw new CommandError(command, args, out.status ?? -1, asItself(command, out.status, oneLine(out.stderr || out.stdout)), out.timedOut, out.stdout);
}

/** A program that data streams through (zstd): its stdin and stdout, and how it ended. */
export interface Filter {
  stdin: Writable;
  stdout: Readable;
  /** Resolves once it exited 0; rejects with a CommandError (its stderr) otherwise, or when it outlived `timeoutMs`. */
  done: Promise<void>;
}

/**
 * Starts `command` as a filter: what is written to its stdin comes out of
 * its stdout. Same rules as run(): no shell, LC_ALL=C, a timeout that kills
 * its process group.
 */
export async function filter(command: string, args: readonly string[], options: RunOptions = {}): Promise<Filter> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const { spawn } = await childProcess();
  const child = spawn(command, [...args], { env: commandEnv(options.env, options.unset), stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  let stderr = '';
  const done = new Promise<void>((resolve, reject) => {
    let timedOut = false;
    const timer = killGroupAfter(child, timeoutMs, () => (timedOut = true));
    child.once('error', (err: NodeJS.ErrnoException) => {
      if (child.pid !== undefined) return;
      clearTimeout(timer);
      const f = startFailure(err);
      reject(new CommandError(command, args, f.status, asItself(command, f.status, f.stderr), false, ''));
    });
    child.once('close', (status) => {
      if (child.pid === undefined) return;
      clearTimeout(timer);
      if (status === 0) resolve();
      else reject(new CommandError(command, args, status ?? -1, asItself(command, status, oneLine(stderr)), timedOut, ''));
    });
  });
  // Listened to once the 'error' handler is on: a spawn that fails (EMFILE) leaves the pipes null.
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  if (child.stdin === null || child.stdout === null) {
    await done;
    throw new CommandError(command, args, 126, `could not start ${command}`, false, '');
  }
  return { stdin: child.stdin, stdout: child.stdout, done };
}

/** Whether `program` can be run here (`program --version` answers): the zstd libvirt and the archiver need, for one. */
export async function hasProgram(program: string): Promise<boolean> {
  return run(program, ['--version'], { timeoutMs: 10_000 }).then(
    () => true,
    () => false,
  );
}

/**
 * The program's own complaint, not the shell's that started it: bash says
 * `/bin/bash: line 1: zfs: command not found` (exit 127) or `Permission
 * denied` (126) about a program it could not run.
 */
export function asItself(command: string, exitCode: number | null, stderr: string): string {
  const text = stderr.replace(/^(?:\/bin\/|\/usr\/bin\/)?(?:ba)?sh: (?:line \d+: )?|^setpriv: failed to execute [^:]*: /, '');
  if (exitCode === 127 && /command not found|No such file/i.test(text)) return `${command}: command not found (is it installed, and on PATH?)`;
  if (exitCode === 126) return `${command}: cannot be run (${text.replace(/^.*?: /, '')})`;
  return text;
}

/**
 * Starts a program that outlives us (the watchdog) as nobody's child: a
 * shell in a session of its own starts it in the background and exits, so
 * it is reparented to init. A supervisor or `timeout` that kills us with
 * our process group, or walks our children and kills them, never reaches
 * it. Its output is appended to `logFile`. The shell's script is fixed;
 * the program and its arguments reach it as "$@", never as text.
 * Returns its pid, once it runs.
 */
export async function startOrphan(command: string, args: readonly string[], options: { logFile: string; env?: Record<string, string>; unset?: string[] }): Promise<number> {
  const { spawn } = await childProcess();
  const fd = openSync(options.logFile, 'a', 0o600);
  try {
    const child = spawn('/bin/sh', ['-c', '"$@" >&2 & echo $!', 'sh', command, ...args], {
      detached: true,
      stdio: ['ignore', 'pipe', fd],
      env: commandEnv(options.env, options.unset),
    });
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    const status = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code) => resolve(code));
    });
    const pid = Number(out.trim());
    if (status !== 0 || !Number.isInteger(pid) || pid <= 0) throw new CommandError('/bin/sh', ['-c', `start ${command}`], status ?? -1, `could not start ${command} in the background`);
    return pid;
  } finally {
    closeSync(fd);
  }
}
