// restic: the few commands the restic archive backend runs (VIRTSNAP_STORE=restic:REPO).
//
// Like lib/zfs.ts for zfs: argument arrays through lib/exec.ts, a timeout on
// every call, typed errors with one line that says what to do.
//
// Secrets never go on a command line (any local user reads /proc/*/cmdline):
// restic gets the repository (a rest: URL may hold a password) and the
// password file through its environment (RESTIC_REPOSITORY,
// RESTIC_PASSWORD_FILE), with the env file's other variables (AWS_*, B2_*,
// RESTIC_CACHE_DIR, ...), which reach restic and nothing else. Every text
// that names the repository (messages, manifests, tags) names it with the
// password masked (redactRepo).
import { readFileSync } from 'node:fs';
import type { ResticBackend } from './config.js';
import { VirtsnapError, CommandError, firstLine } from './errors.js';
import { run } from './exec.js';

/** `rest:https://user:secret@host/` -> `rest:https://user:***@host/`: the one rule for showing a repository. */
export function redactRepo(text: string): string {
  return text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^/\s:@]*):[^@/\s]*@/gi, '$1:***@');
}

/** The repository as people may see it, from what the settings say. */
export function shownRepo(backend: Pick<ResticBackend, 'repo' | 'env'>): string {
  if (backend.repo !== null) return redactRepo(backend.repo);
  if (backend.env.RESTIC_REPOSITORY !== undefined) return redactRepo(backend.env.RESTIC_REPOSITORY);
  const file = backend.env.RESTIC_REPOSITORY_FILE!;
  try {
    return redactRepo(readFileSync(file, 'utf8').split('\n')[0]!.trim());
  } catch {
    return `the repository in ${file} (RESTIC_REPOSITORY_FILE)`;
  }
}

/** restic's environment: the env file's variables, then the repository and password virtsnap's own settings name. */
export function resticEnv(backend: Pick<ResticBackend, 'repo' | 'passwordFile' | 'env'>): { env: Record<string, string>; unset: string[] } {
  const env = { ...backend.env };
  const unset: string[] = [];
  // What virtsnap's settings name wins; restic refuses two ways of giving one thing.
  if (backend.repo !== null) {
    env.RESTIC_REPOSITORY = backend.repo;
    delete env.RESTIC_REPOSITORY_FILE;
    unset.push('RESTIC_REPOSITORY_FILE');
  }
  if (backend.passwordFile !== null) {
    env.RESTIC_PASSWORD_FILE = backend.passwordFile;
    for (const k of ['RESTIC_PASSWORD_COMMAND', 'RESTIC_PASSWORD']) {
      delete env[k];
      unset.push(k);
    }
  }
  return { env, unset };
}

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
  /** The size of a file at the top of a snapshot's tree as stored, or null when the snapshot has no such file. */
  fileSize(snapshot: string, file: string): Promise<number | null>;
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

/**
 * The one-line advice for what restic said. `repo` is the repository as
 * shown (masked); restic's own words are masked too, whatever it echoes.
 */
export function resticAdvice(repo: string, passwordFile: string | null, err: CommandError, secrets: readonly string[] = []): ResticError {
  let stderr = err.stderr;
  for (const s of secrets) if (s !== '') stderr = stderr.split(s).join(redactRepo(s) === s ? '***' : redactRepo(s));
  stderr = redactRepo(stderr);
  const said = firstLine(stderr.replace(/^Fatal: /, '')) || `exit code ${err.status}`;
  const command = err.args[0] ?? '';
  const password = passwordFile === null ? 'the password the env file gives restic (RESTIC_PASSWORD_FILE, RESTIC_PASSWORD_COMMAND)' : `VIRTSNAP_RESTIC_PASSWORD_FILE (${passwordFile})`;
  let what = `restic ${command} on ${repo} failed: ${said}`;
  if (err.timedOut) what = `restic ${command} on ${repo} timed out: is the repository reachable?`;
  else if (err.status === 127) what = 'restic is not installed: apt-get install restic (or set VIRTSNAP_STORE=dir)';
  else if (/wrong password|no key found/.test(stderr)) what = `restic: wrong password for ${repo}: check ${password}`;
  else if (/Resolving password failed|password-file/.test(stderr)) what = `restic cannot read its password (${password}): ${said}`;
  else if (/unable to open config file|Is there a repository/.test(stderr)) {
    what = `no restic repository at ${repo}: create it with \`restic init --repository-version 2\`, with the repository and ${password} as virtsnap gives them`;
  } else if (err.status === 3) what = `restic ${command} on ${repo} could not read all of its input (exit 3: the snapshot it made is incomplete): ${said}`;
  return new ResticError(what, stderr, err.status);
}

const LOCKED = /repository is already locked/;
const LOCK_TRIES = 30;
const LOCK_WAIT_MS = 2000;

export class Restic implements ResticClient {
  /** The repository as people may see it (lib/restic.ts redactRepo): in messages, manifests, comparisons. */
  readonly repo: string;
  private readonly env: { env: Record<string, string>; unset: string[] };

  constructor(
    private readonly backend: Pick<ResticBackend, 'repo' | 'passwordFile' | 'env'>,
    /**
     * Backup, restore and prune of a big dump over a slow link (sftp, S3) take
     * long; by then the VM is back on its own disks, and only the sanoid run
     * (or the restore) waits. A restic that hangs is still killed, in the end.
     */
    private readonly timeoutMs = 4 * 3600_000,
  ) {
    this.repo = shownRepo(backend);
    this.env = resticEnv(backend);
  }

  private async restic(args: string[], options: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
    for (let attempt = 1; ; attempt++) {
      try {
        return (await run('restic', args, { timeoutMs: options.timeoutMs ?? this.timeoutMs, env: this.env.env, unset: this.env.unset, dieWithUs: true, ...(options.cwd !== undefined ? { cwd: options.cwd } : {}) })).stdout;
      } catch (err) {
        if (!(err instanceof CommandError)) throw err;
        // restic 0.14 cannot wait for a lock (--retry-lock came in 0.16): a forget or prune holds the repo
        // exclusively for a moment while another host's (or run's) backup wants it. Try again for a minute.
        if (LOCKED.test(err.stderr) && attempt < LOCK_TRIES) {
          await new Promise((r) => setTimeout(r, LOCK_WAIT_MS));
          continue;
        }
        throw resticAdvice(this.repo, this.backend.passwordFile, err, [this.env.env.RESTIC_REPOSITORY ?? '', this.env.env.RESTIC_PASSWORD ?? '']);
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

  async fileSize(snapshot: string, file: string): Promise<number | null> {
    // One JSON object a line: the snapshot, then each node with its path and size.
    const out = await this.restic(['ls', '--json', snapshot], { timeoutMs: 120_000 });
    for (const line of out.split('\n')) {
      try {
        const v = JSON.parse(line) as { struct_type?: string; path?: string; type?: string; size?: number };
        if (v.struct_type === 'node' && v.path === file && v.type === 'file') return v.size ?? 0;
      } catch {
        // not JSON
      }
    }
    return null;
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
