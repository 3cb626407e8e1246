// virtsnap as sanoid and users run it, pointed at the test bed.
import { chmodSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { listDumps } from '../../lib/archive.js';
import { type ArchivedDump } from '../../lib/manifest.js';
import { run } from '../../lib/exec.js';
import { scanSpool } from '../../lib/spool.js';
import { bed, hookCommand, runSanoid, sleep, stackUri, type SanoidRun, type SanoidVersion } from './bed.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const hooks = {
  pre: path.join(repoRoot, 'hooks/pre-snapshot'),
  post: path.join(repoRoot, 'hooks/post-snapshot'),
  prune: path.join(repoRoot, 'hooks/prune'),
};
export const cli = path.join(repoRoot, 'bin/virtsnap');

/** One virtsnap installation for a test: its env file, archive and state dirs, sanoid.conf. */
export class Setup {
  readonly envFile: string;
  readonly archiveDir: string;
  readonly stateDir: string;
  readonly sanoidDir: string;

  constructor(
    readonly root: string,
    readonly overlayDir: string,
    archiveDir?: string,
  ) {
    this.envFile = path.join(root, 'virtsnap.env');
    this.archiveDir = archiveDir ?? path.join(root, 'archive');
    this.stateDir = path.join(root, 'state');
    this.sanoidDir = path.join(root, 'sanoid');
  }

  static async create(name: string, settings: Record<string, string> = {}): Promise<Setup> {
    const b = await bed();
    settings = { VIRTSNAP_LIBVIRT_URI: b.uri, ...settings };
    const root = path.join(b.dir, 'tests', name);
    rmSync(root, { recursive: true, force: true });
    mkdirSync(root, { recursive: true, mode: 0o700 });
    // Its own overlay dir, so its own spool: an archiver of another setup (another archive dir) never takes its dumps.
    const overlayDir = settings.VIRTSNAP_OVERLAY_DIR ?? path.join(b.overlayDir, name);
    if (settings.VIRTSNAP_OVERLAY_DIR === undefined) rmSync(overlayDir, { recursive: true, force: true });
    // QEMU (user libvirt-qemu) must reach the overlays: traversable, not listable.
    mkdirSync(overlayDir, { recursive: true, mode: 0o711 });
    const s = new Setup(root, overlayDir, settings.VIRTSNAP_ARCHIVE_DIR);
    s.writeEnv(settings);
    return s;
  }

  writeEnv(settings: Record<string, string> = {}): void {
    const values: Record<string, string> = {
      // The stack the tests run against (VSBED_STACK): every run of this setup talks to its libvirt.
      VIRTSNAP_LIBVIRT_URI: stackUri(),
      VIRTSNAP_OVERLAY_DIR: this.overlayDir,
      VIRTSNAP_ARCHIVE_DIR: this.archiveDir,
      VIRTSNAP_STATE_DIR: this.stateDir,
      VIRTSNAP_SANOID_CONF: path.join(this.sanoidDir, 'sanoid.conf'),
      ...settings,
    };
    // 0600, as the package installs it: it may give restic its credentials.
    writeFileSync(this.envFile, Object.entries(values).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join('\n') + '\n', { mode: 0o600 });
    chmodSync(this.envFile, 0o600);
  }

  /** Environment for running a hook or the CLI directly. */
  env(extra: Record<string, string> = {}): Record<string, string> {
    return { VIRTSNAP_CONFIG: this.envFile, ...extra };
  }

  /** A sanoid.conf section for `dataset` with our hooks, as the README tells users to write it. */
  section(dataset: string, options: Record<string, string> = {}): string {
    const values: Record<string, string> = {
      autosnap: 'yes',
      autoprune: 'no',
      hourly: '3',
      daily: '2',
      monthly: '0',
      yearly: '0',
      pre_snapshot_script: hookCommand(hooks.pre, { VIRTSNAP_CONFIG: this.envFile }),
      post_snapshot_script: hookCommand(hooks.post, { VIRTSNAP_CONFIG: this.envFile }),
      script_timeout: '300',
      force_post_snapshot_script: 'yes',
      ...options,
    };
    return `[${dataset}]\n${Object.entries(values).map(([k, v]) => `  ${k} = ${v}`).join('\n')}\n`;
  }

  async sanoid(version: SanoidVersion, conf: string, args: string[], hoursAhead = 0): Promise<SanoidRun> {
    return runSanoid(version, conf, args, { hoursAhead, configDir: this.sanoidDir });
  }

  /**
   * The dumps in the archive, once the archiver has stored every dump
   * waiting in this setup's spool (post only seals them: lib/spool.ts).
   * `{ waitForArchiver: false }`: as they are now.
   */
  async dumps(options: { waitForArchiver?: boolean } = {}): Promise<ArchivedDump[]> {
    if (options.waitForArchiver !== false) await this.spoolDrained();
    return listDumps(this.archiveDir);
  }

  /** The dumps waiting in this setup's spool. */
  waiting(): ArchivedDump[] {
    return scanSpool({ overlayDir: this.overlayDir }).dumps;
  }

  /** Waits until the spool is empty; fails naming what still waits after `timeoutMs`. */
  async spoolDrained(timeoutMs = 120_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.waiting().length > 0) {
      if (Date.now() >= deadline) throw new Error(`the archiver left ${this.waiting().map((d) => d.manifest.id).join(', ')} in ${this.overlayDir}/spool for ${timeoutMs / 1000}s`);
      await sleep(250);
    }
  }

  journalFiles(): string[] {
    const dir = path.join(this.stateDir, 'journal');
    return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.json')) : [];
  }
}

/** Files in the overlay dir that belong to domain `name` (overlays, memory files, meta dirs). */
export function leftovers(overlayDir: string, name: string): string[] {
  return existsSync(overlayDir) ? readdirSync(overlayDir).filter((f) => f.startsWith(`${name}.`)) : [];
}

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs one of our programs (a hook, the CLI) with a setup's env file, never throwing on a non-zero exit. */
export async function runProgram(program: string, args: string[], env: Record<string, string>, timeoutMs = 300_000): Promise<Ran> {
  try {
    const out = await run(program, args, { env, timeoutMs });
    return { code: 0, ...out };
  } catch (err) {
    const e = err as { status: number; stderr: string; stdout: string };
    return { code: e.status, stdout: e.stdout, stderr: e.stderr };
  }
}

/** `virtsnap ARGS` with the setup's env file. */
export function virtsnap(setup: Setup, args: string[]): Promise<Ran> {
  return runProgram(cli, args, setup.env());
}

/** What sanoid hands a pre or post hook for one hourly snapshot `dataset@<snap>_hourly`. */
export function sanoidEnv(dataset: string, snap: string, script: 'pre' | 'post'): Record<string, string> {
  return {
    SANOID_SCRIPT: script,
    SANOID_TARGET: dataset,
    SANOID_TARGETS: dataset,
    // sanoid's post gets the dataset in SANOID_SNAPNAME (its issue #798).
    SANOID_SNAPNAME: script === 'post' ? `${dataset}@${snap}_hourly` : `${snap}_hourly`,
    SANOID_SNAPNAMES: `${snap}_hourly`,
    SANOID_TYPES: 'hourly',
  };
}
