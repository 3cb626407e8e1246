// restic: the few commands the restic archive backend runs (VIRTSNAP_ARCHIVE=restic:REPO).
//
// Like lib/zfs.ts for zfs: argument arrays through lib/exec.ts, a timeout on
// every call, typed errors with one line that says what to do. The password
// never goes on a command line (other users see those in ps): restic reads
// it from VIRTSNAP_RESTIC_PASSWORD_FILE (`--password-file`). Everything else
// restic may need (RESTIC_CACHE_DIR, AWS_*, sftp's ssh config, …) it reads
// from virtsnap's environment itself.
import { VirtsnapError, CommandError, firstLine } from './errors.js';
import { run } from './exec.js';

/** restic failed: its exit code and its own first line, with what to do. */
export class ResticError extends VirtsnapError {
  override name = 'ResticError';
  constructor(
    message: string,
    readonly resticMessage: string,
    readonly status: number,
  ) {
    super(message);
  }
}

/** One restic snapshot, as `restic snapshots --json` lists it. */
export interface ResticSnapshot {
  id: string;
  short_id: string;
  time: string;
  hostname: string;
  tags: string[];
  /** What was backed up, as given (absolute). */
  paths: string[];
}

/** The calls the archive makes: faked in the unit tests. */
export interface ResticClient {
  readonly repo: string;
  /** Backs up `paths` (relative to `cwd`, so they sit at the top of the snapshot's tree); the new snapshot's id. */
  backup(cwd: string, paths: string[], tags: string[], host: string): Promise<string>;
  /** Snapshots carrying every one of `tags`. */
  snapshots(tags: string[]): Promise<ResticSnapshot[]>;
  /** One file of a snapshot, as text (a manifest). */
  dumpText(snapshot: string, file: string): Promise<string>;
  /** Restores one file of a snapshot into `targetDir` (mode as backed up: 0600). */
  restoreFile(snapshot: string, file: string, targetDir: string): Promise<void>;
  /** Forgets snapshots; one already forgotten is not an error. */
  forget(ids: string[]): Promise<void>;
  /** Deletes the data no snapshot uses any more. */
  prune(): Promise<void>;
  /** `restic check`, reading `subset` of the packs (e.g. `10%`) when given. */
  check(subset: string | null): Promise<void>;
  /** The repository's size as stored (`stats --mode raw-data`). */
  rawSize(): Promise<number>;
}

/** Tags every virtsnap snapshot carries: `virtsnap`, and the dump's id and domain. */
export const TAG = 'virtsnap';
export const idTag = (id: string): string => `virtsnap-id=${id}`;
export const domainTag = (name: string): string => `virtsnap-domain=${name}`;
export const guidTag = (guid: string): string => `virtsnap-guid=${guid}`;

/** The one-line advice for what restic said. */
export function resticAdvice(repo: string, passwordFile: string, err: CommandError): ResticError {
  const said = firstLine(err.stderr.replace(/^Fatal: /, '')) || `exit code ${err.status}`;
  // The subcommand: after the global flags (--repo R --password-file F) when they are there.
  const command = (err.args[0] === '--repo' ? err.args[4] : err.args[0]) ?? '';
  let what = `restic ${command} on ${repo} failed: ${said}`;
  if (err.timedOut) what = `restic ${command} on ${repo} timed out: is the repository reachable?`;
  else if (err.status === 127) what = 'restic is not installed: apt-get install restic (or unset VIRTSNAP_ARCHIVE)';
  else if (/wrong password|no key found/.test(err.stderr)) what = `restic: wrong password for ${repo}: check VIRTSNAP_RESTIC_PASSWORD_FILE (${passwordFile})`;
  else if (/Resolving password failed|password-file/.test(err.stderr)) what = `restic cannot read the password file ${passwordFile} (VIRTSNAP_RESTIC_PASSWORD_FILE): ${said}`;
  else if (/unable to open config file|Is there a repository/.test(err.stderr)) {
    what = `no restic repository at ${repo}: create it with \`restic init --repository-version 2 --repo ${repo} --password-file ${passwordFile}\``;
  }
  return new ResticError(what, err.stderr, err.status);
}

const LOCKED = /repository is already locked/;
const LOCK_TRIES = 30;
const LOCK_WAIT_MS = 2000;

export class Restic implements ResticClient {
  constructor(
    readonly repo: string,
    private readonly passwordFile: string,
    /**
     * Backup, restore and prune of a big dump over a slow link (sftp, S3) take
     * long; by then the VM is back on its own disks, and only the sanoid run
     * (or the restore) waits. A restic that hangs is still killed, in the end.
     */
    private readonly timeoutMs = 4 * 3600_000,
  ) {}

  private async restic(args: string[], options: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
    // Global flags first: backup's paths come after `--`.
    const full = ['--repo', this.repo, '--password-file', this.passwordFile, ...args];
    for (let attempt = 1; ; attempt++) {
      try {
        return (await run('restic', full, { timeoutMs: options.timeoutMs ?? this.timeoutMs, ...(options.cwd !== undefined ? { cwd: options.cwd } : {}) })).stdout;
      } catch (err) {
        if (!(err instanceof CommandError)) throw err;
        // restic 0.14 cannot wait for a lock (--retry-lock came in 0.16): a forget or prune holds the repo
        // exclusively for a moment while another host's (or run's) backup wants it. Try again for a minute.
        if (LOCKED.test(err.stderr) && attempt < LOCK_TRIES) {
          await new Promise((r) => setTimeout(r, LOCK_WAIT_MS));
          continue;
        }
        throw resticAdvice(this.repo, this.passwordFile, err);
      }
    }
  }

  async backup(cwd: string, paths: string[], tags: string[], host: string): Promise<string> {
    const out = await this.restic(['backup', '--json', '--host', host, ...tags.flatMap((t) => ['--tag', t]), '--', ...paths], { cwd });
    // --json: one status line per progress tick, the summary last.
    for (const line of out.trim().split('\n').reverse()) {
      try {
        const v = JSON.parse(line) as { message_type?: string; snapshot_id?: string };
        if (v.message_type === 'summary' && typeof v.snapshot_id === 'string') return v.snapshot_id;
      } catch {
        // not JSON: a warning restic printed
      }
    }
    throw new ResticError(`restic backup to ${this.repo} printed no snapshot id: run \`restic snapshots --tag ${TAG}\` to see what it did`, out, 0);
  }

  async snapshots(tags: string[]): Promise<ResticSnapshot[]> {
    // Several tags in one --tag: snapshots with all of them.
    const out = await this.restic(['snapshots', '--json', ...(tags.length > 0 ? ['--tag', tags.join(',')] : [])], { timeoutMs: 120_000 });
    const list = JSON.parse(out.trim() || '[]') as ResticSnapshot[] | null;
    return (list ?? []).map((s) => ({ ...s, tags: s.tags ?? [], paths: s.paths ?? [] }));
  }

  async dumpText(snapshot: string, file: string): Promise<string> {
    return this.restic(['dump', snapshot, file], { timeoutMs: 120_000 });
  }

  async restoreFile(snapshot: string, file: string, targetDir: string): Promise<void> {
    await this.restic(['restore', snapshot, '--target', targetDir, '--include', file]);
  }

  async forget(ids: string[]): Promise<void> {
    if (ids.length === 0) return;
    // An id forgotten already (a prune that crashed after its forget, or by hand) only makes restic say "Ignoring": exit 0.
    await this.restic(['forget', ...ids], { timeoutMs: 120_000 });
  }

  async prune(): Promise<void> {
    await this.restic(['prune']);
  }

  async check(subset: string | null): Promise<void> {
    await this.restic(['check', ...(subset === '100%' ? ['--read-data'] : subset !== null ? ['--read-data-subset', subset] : [])], { timeoutMs: 6 * 3600_000 });
  }

  async rawSize(): Promise<number> {
    const v = JSON.parse(await this.restic(['stats', '--json', '--mode', 'raw-data'], { timeoutMs: 120_000 })) as { total_size?: number };
    return v.total_size ?? 0;
  }
}
