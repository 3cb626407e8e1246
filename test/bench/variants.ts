// The ways of snapshotting a running VM that the bench compares, each run
// under real sanoid as its pre/post_snapshot_script pair: the shell pair
// every blog post shows (test/bench/shell-pre, shell-post) and virtsnap's
// hooks with different settings. A variant owns a Setup (its env file,
// archive and state dirs), so its dumps never mix with another's.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { deleteDump } from '../../lib/archive.js';
import { type Manifest } from '../../lib/manifest.js';
import { LibvirtClient } from '../../lib/libvirt/virsh.js';
import { hookCommand, shellQuote, stackUri } from '../helpers/bed.js';
import { hooks, repoRoot, Setup } from '../helpers/virtsnap.js';

export interface VariantSpec {
  name: string;
  what: string;
  kind: 'shell' | 'virtsnap';
  /** virtsnap: lines of its env file (an unknown one makes its hooks fail, which the table shows). Shell: BENCH_* for the scripts. */
  settings: Record<string, string>;
}

/** What one snapshot left behind for one domain. */
export interface DumpFacts {
  /** The RAM file as libvirt wrote it. */
  rawBytes: number | null;
  /** What the archive keeps (compressed or not). */
  storedBytes: number | null;
  compression: string | null;
  /** libvirt's "Total downtime" of the save job. */
  libvirtDowntimeMs: number | null;
  /** libvirt's "Time elapsed" of the save job. */
  saveMs: number | null;
  /** A raw save image of this snapshot, while it is still there (for the reference compressors). */
  rawFile: string | null;
}

const SCRIPT_TIMEOUT = '900';

export class Variant {
  private constructor(
    readonly spec: VariantSpec,
    readonly setup: Setup,
  ) {}

  get name(): string {
    return this.spec.name;
  }

  static async create(spec: VariantSpec): Promise<Variant> {
    const setup = await Setup.create(`b-bench-${spec.name}`, spec.kind === 'virtsnap' ? spec.settings : {});
    // virtsnap makes its archive itself; the shell pair's post only moves its RAM file there. Dumps are secrets.
    if (spec.kind === 'shell') mkdirSync(setup.archiveDir, { recursive: true, mode: 0o700 });
    return new Variant(spec, setup);
  }

  /** Where timed-hook appends the times of this variant's hook calls. */
  get hookLog(): string {
    return path.join(this.setup.root, 'hook-times.log');
  }

  /**
   * Its sanoid.conf for `dataset` with `recursive = zfs`: one hook call per
   * run over every guest below. Each hook runs under test/bench/timed-hook.
   */
  conf(dataset: string): string {
    const timed = (label: string, program: string, env: Record<string, string>) =>
      `${hookCommand(path.join(repoRoot, 'test/bench/timed-hook'), env)} ${shellQuote(this.hookLog)} ${label} ${shellQuote(program)}`;
    const env: Record<string, string> =
      this.spec.kind === 'virtsnap'
        ? { VIRTSNAP_CONFIG: this.setup.envFile }
        : { BENCH_OVERLAY_DIR: this.setup.overlayDir, BENCH_DUMP_DIR: this.setup.archiveDir, BENCH_URI: stackUri(), ...this.spec.settings };
    const [pre, post] = this.spec.kind === 'virtsnap' ? [hooks.pre, hooks.post] : ['shell-pre', 'shell-post'].map((f) => path.join(repoRoot, 'test/bench', f));
    return this.setup.section(dataset, {
      recursive: 'zfs',
      script_timeout: SCRIPT_TIMEOUT,
      pre_snapshot_script: timed('pre', pre!, env),
      post_snapshot_script: timed('post', post!, env),
    });
  }

  /** How long the pre and post hooks of the last run took (ms), from timed-hook's log; the log starts afresh. */
  takeHookTimes(): { preMs: number | null; postMs: number | null } {
    const lines = existsSync(this.hookLog) ? readFileSync(this.hookLog, 'utf8').split('\n') : [];
    rmSync(this.hookLog, { force: true });
    const of = (label: string): number | null => {
      const spans = lines.map((l) => l.split(' ')).filter((f) => f[0] === label && f.length === 4).map((f) => (Number(f[2]) - Number(f[1])) / 1e6);
      return spans.length ? spans.reduce((a, b) => a + b, 0) : null;
    };
    return { preMs: of('pre'), postMs: of('post') };
  }

  /** Facts about the newest dump of `domain` from this variant. */
  async facts(domain: { name: string; uuid: string }, uri: string): Promise<DumpFacts> {
    if (this.spec.kind === 'shell') {
      const file = path.join(this.setup.archiveDir, `${domain.name}.mem`);
      const bytes = statSync(file, { throwIfNoEntry: false })?.size ?? null;
      // The shell pair records nothing; libvirt still has the save job's numbers (block commits are not domain jobs).
      const job = await new LibvirtClient({ uri }).completedJob(domain.uuid).catch(() => null);
      return { rawBytes: bytes, storedBytes: bytes, compression: null, libvirtDowntimeMs: job?.downtimeMs ?? null, saveMs: job?.elapsedMs ?? null, rawFile: bytes === null ? null : file };
    }
    const dumps = (await this.setup.dumps()).filter((d) => d.manifest.domain.uuid === domain.uuid);
    const newest = dumps.sort((a, b) => a.manifest.times.startedAt.localeCompare(b.manifest.times.startedAt)).at(-1);
    if (!newest) return { rawBytes: null, storedBytes: null, compression: null, libvirtDowntimeMs: null, saveMs: null, rawFile: null };
    // compression and raw come with VIRTSNAP_COMPRESS (branch compress); a manifest without them is a raw dump.
    const m = newest.manifest as Manifest & { compression?: string | null; raw?: { bytes: number } };
    const compression = m.compression ?? null;
    return {
      rawBytes: m.raw?.bytes ?? (compression === null ? m.bytes : null),
      storedBytes: m.bytes,
      compression,
      libvirtDowntimeMs: m.times.pauseMs,
      saveMs: m.times.saveMs,
      rawFile: compression === null ? m.memoryFile : null,
    };
  }

  /** Drops this variant's dumps of the bench's guests once measured: a 512 MiB guest's are big. */
  async discardDumps(): Promise<void> {
    if (this.spec.kind === 'virtsnap') {
      for (const d of (await this.setup.dumps())) deleteDump(d);
      return;
    }
    for (const f of safeList(this.setup.archiveDir)) if (f.endsWith('.mem')) rmSync(path.join(this.setup.archiveDir, f), { force: true });
  }

  remove(): void {
    rmSync(this.setup.root, { recursive: true, force: true });
  }
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Guest stall: every way of taking the snapshot. */
export const STALL_VARIANTS: VariantSpec[] = [
  { name: 'shell', what: 'shell pair: snapshot-create-as --memspec --diskspec --atomic; blockcommit --active --wait --pivot', kind: 'shell', settings: {} },
  { name: 'shell-live', what: 'shell pair with --live', kind: 'shell', settings: { BENCH_LIVE: 'yes' } },
  { name: 'virtsnap', what: 'virtsnap, default settings', kind: 'virtsnap', settings: {} },
  { name: 'virtsnap-nonlive', what: 'virtsnap, VIRTSNAP_LIVE=no', kind: 'virtsnap', settings: { VIRTSNAP_LIVE: 'no' } },
  { name: 'virtsnap-pause', what: 'virtsnap, VIRTSNAP_MODE=pause', kind: 'virtsnap', settings: { VIRTSNAP_MODE: 'pause' } },
];

/** Bytes archived, on the small guest only: the same snapshot stored raw and compressed. */
export const BYTES_VARIANTS: VariantSpec[] = [
  { name: 'virtsnap-raw', what: 'virtsnap, VIRTSNAP_COMPRESS=no', kind: 'virtsnap', settings: { VIRTSNAP_COMPRESS: 'no' } },
  { name: 'virtsnap-gzip', what: 'virtsnap, VIRTSNAP_COMPRESS=gzip', kind: 'virtsnap', settings: { VIRTSNAP_COMPRESS: 'gzip' } },
];

/** The whole sanoid run over 1 and over 4 guests. */
export const RUN_VARIANTS: VariantSpec[] = [STALL_VARIANTS[0]!, STALL_VARIANTS[2]!];
