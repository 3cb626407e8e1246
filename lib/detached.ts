// Helpers that outlive the hook that starts them: the watchdog (brings VMs
// back if a run dies) and the archiver (drains the spool into the store).
//
// How they start: under systemd (PID 1 is systemd), as a transient service
// through `systemd-run`, outside sanoid.service's cgroup, which systemd
// kills as a whole when sanoid dies or is stopped; their log goes to the
// journal. Elsewhere (cron, a shell, the test bed), as nobody's child in a
// session of its own (exec.ts startOrphan): a supervisor or a `timeout`
// that kills the hook with its children never reaches them. They log to
// STATE_DIR/<name>.log and, for errors, to syslog through logger(1).
//
// They see the settings the hook sees: VIRTSNAP_* of its environment,
// through a private file (0600 in the state dir) that they read and remove,
// never `systemd-run --setenv` (any user reads a unit's environment over
// D-Bus, and a restic URL may hold a password).
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from './config.js';
import { VirtsnapError } from './errors.js';
import { run, startOrphan } from './exec.js';
import { ensureDir, ensureDirBelow, PRIVATE_DIR, writeFileAtomic } from './fsutil.js';
import { log, toJournal } from './log.js';

export type Helper = 'watchdog' | 'archiver';

/** Each helper's virtsnap command, and what systemd shows of it. */
const HELPERS: Record<Helper, { command: string; description: string }> = {
  watchdog: { command: 'watchdog', description: 'virtsnap watchdog: thaws VMs if a snapshot run dies' },
  archiver: { command: 'archive', description: 'virtsnap archiver: moves waiting RAM dumps into their store' },
};

const virtsnapJs = path.join(path.dirname(fileURLToPath(import.meta.url)), '../bin/virtsnap.js');

/** Where the settings files wait for their helper: STATE_DIR/settings/<uuid>.env. */
function settingsDir(stateDir: string): string {
  return path.join(stateDir, 'settings');
}

/** The settings the helper must see as we do (the env file's path, every VIRTSNAP_ variable), in a private file. */
function writeSettings(stateDir: string): string {
  const dir = settingsDir(stateDir);
  ensureDirBelow(dir, 'VIRTSNAP_STATE_DIR');
  const file = path.join(dir, `${randomUUID()}.env`);
  const lines = Object.entries(process.env)
    .filter(([k, v]) => k.startsWith('VIRTSNAP_') && v !== undefined)
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  writeFileAtomic(file, Buffer.from(lines.join('\n') + '\n'));
  return file;
}

/** The helper's side: takes the settings from the file its starter wrote (only VIRTSNAP_ variables), then removes it. Before loadConfig. */
export function takeSettings(file: string): void {
  if (!/\/settings\/[0-9a-f-]{36}\.env$/.test(file)) throw new VirtsnapError(`--settings ${file} is not a settings file of virtsnap`);
  const dotenv = createRequire(import.meta.url)('dotenv') as typeof import('dotenv');
  const values = dotenv.parse(readFileSync(file, 'utf8'));
  for (const [k, v] of Object.entries(values)) if (k.startsWith('VIRTSNAP_')) process.env[k] = v;
  rmSync(file, { force: true });
}

/**
 * Starts `virtsnap <helper> ...args` detached. Throws when it cannot start
 * (the watchdog's starter then refuses its run).
 */
export async function startHelper(helper: Helper, args: readonly string[], config: Pick<Config, 'stateDir' | 'watchdog'>): Promise<void> {
  ensureDir(config.stateDir, PRIVATE_DIR, 'VIRTSNAP_STATE_DIR');
  const settings = writeSettings(config.stateDir);
  const argv = [virtsnapJs, HELPERS[helper].command, ...args, '--settings', settings];
  try {
    if (config.watchdog === 'auto' && existsSync('/run/systemd/system')) {
      // Type=exec: systemd-run returns once the helper really runs, or fails.
      await run('systemd-run', [
        '--quiet',
        '--collect',
        '--property=Type=exec',
        `--unit=virtsnap-${helper}-${process.pid}-${Date.now()}`,
        `--description=${HELPERS[helper].description}`,
        '--',
        process.execPath,
        ...argv,
      ]);
      return;
    }
    // Its stderr is a file: it must not believe it writes to the journal.
    await startOrphan(process.execPath, argv, { logFile: path.join(config.stateDir, `${helper}.log`), unset: ['JOURNAL_STREAM'] });
  } catch (err) {
    rmSync(settings, { force: true });
    throw err;
  }
}

/** An event a person must hear of: the log at error priority, and syslog where there is no journal. */
export async function alarm(helper: Helper, message: string, ctx: { dataset?: string; domain?: string }, level: 'error' | 'warn' = 'error'): Promise<void> {
  log[level](`${helper}: ${message}`, ctx);
  if (toJournal()) return;
  await run('logger', ['-t', 'virtsnap', '-p', `daemon.${level === 'error' ? 'err' : 'warning'}`, '--', `${helper}: ${message}`], { timeoutMs: 5_000 }).catch(() => undefined);
}
