// Metrics for Prometheus' node_exporter textfile collector: after every run
// (post, `virtsnap snapshot`, recover, the watchdog) and every dump the
// archiver stores, VIRTSNAP_METRICS_FILE is rewritten atomically. The counters and last values live in
// STATE_DIR/metrics.json, so each run adds to what the runs before it saw.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Manifest } from './manifest.js';
import type { Config } from './config.js';
import { ensureDir, PRIVATE_DIR, writeFileAtomic, writeJsonAtomic } from './fsutil.js';
import { withLock } from './lock.js';
import { log } from './log.js';
import { DEFAULT_POLICY, keepsRam, type ModePolicy } from './mode.js';
import { spoolStats, type SpoolStats } from './spool.js';

export interface DomainMetrics {
  name: string;
  /** Seconds since the epoch of the newest dump kept (the RAM's instant: when it was frozen). */
  lastSuccess: number | null;
  pauseMs: number | null;
  saveSeconds: number | null;
  dumpBytes: number | null;
  commitSeconds: number | null;
  dumps: number;
  /** The shortest sanoid period of the newest dump's snapshot types: how old its newest dump gets between runs. */
  periodSeconds?: number | null;
  /** Dumps the archiver stored (absent in state from before the spool). */
  archived?: number;
  failures: number;
}

export interface MetricsState {
  domains: Record<string, DomainMetrics>;
  /** Pre hooks and `virtsnap snapshot` runs that froze nothing because they failed. */
  runFailures: number;
}

export interface RunOutcome {
  /** Dumps kept (sealed into the spool, or inside their snapshots). */
  dumps: Manifest[];
  /** Domains thawed without a dump kept, or not thawed at all. */
  failed: { name: string; uuid: string }[];
  runFailed?: boolean;
  /** Dumps the archiver stored. */
  archived?: Manifest[];
}

function empty(name: string): DomainMetrics {
  return { name, lastSuccess: null, pauseMs: null, saveSeconds: null, dumpBytes: null, commitSeconds: null, dumps: 0, failures: 0 };
}

/** sanoid's snapshot types and their periods (frequently: sanoid's default frequent_period, 15 minutes; a different one is not read). */
const PERIODS: Record<string, number> = { frequently: 900, hourly: 3600, daily: 86_400, weekly: 7 * 86_400, monthly: 30 * 86_400, yearly: 365 * 86_400 };

/**
 * How often a dump of these types comes: the shortest period among
 * `types` whose runs keep RAM (VIRTSNAP_MODE: a midnight run of
 * frequently, hourly and daily keeps RAM for all three, but with
 * `ram,frequently=quiesce,hourly=quiesce` the next dump comes a day later).
 * null when none is a sanoid type that keeps RAM (a manual `virtsnap snapshot`).
 */
export function periodOf(types: readonly string[], policy: ModePolicy = DEFAULT_POLICY): number | null {
  const periods = types.filter((t) => keepsRam(t, policy)).map((t) => PERIODS[t]).filter((p): p is number => p !== undefined);
  return periods.length === 0 ? null : Math.min(...periods);
}

/** Adds one run's outcome to the state. Pure. */
export function addOutcome(state: MetricsState, outcome: RunOutcome, policy: ModePolicy = DEFAULT_POLICY): MetricsState {
  const domains = { ...state.domains };
  for (const m of outcome.dumps) {
    const d = { ...(domains[m.domain.uuid] ?? empty(m.domain.name)), name: m.domain.name };
    d.lastSuccess = Math.round(Date.parse(m.times.frozenAt ?? m.times.startedAt) / 1000);
    d.pauseMs = m.times.pauseMs;
    d.saveSeconds = m.times.saveMs === null ? null : m.times.saveMs / 1000;
    d.dumpBytes = m.bytes;
    d.commitSeconds = m.times.commitMs === undefined || m.times.commitMs === null ? null : m.times.commitMs / 1000;
    d.periodSeconds = periodOf(m.types, policy) ?? d.periodSeconds ?? null;
    d.dumps++;
    domains[m.domain.uuid] = d;
  }
  for (const f of outcome.failed) {
    const d = { ...(domains[f.uuid] ?? empty(f.name)), name: f.name };
    d.failures++;
    domains[f.uuid] = d;
  }
  for (const m of outcome.archived ?? []) {
    const d = { ...(domains[m.domain.uuid] ?? empty(m.domain.name)), name: m.domain.name };
    d.archived = (d.archived ?? 0) + 1;
    domains[m.domain.uuid] = d;
  }
  return { domains, runFailures: state.runFailures + (outcome.runFailed ? 1 : 0) };
}

function label(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

const SERIES: { name: string; type: 'gauge' | 'counter'; help: string; value: (d: DomainMetrics) => number | null }[] = [
  { name: 'virtsnap_last_success_timestamp_seconds', type: 'gauge', help: 'The instant of the newest RAM dump kept for the domain (when it was frozen).', value: (d) => d.lastSuccess },
  { name: 'virtsnap_guest_pause_milliseconds', type: 'gauge', help: "How long the guest's vCPUs were stopped for its newest dump.", value: (d) => d.pauseMs },
  { name: 'virtsnap_save_seconds', type: 'gauge', help: 'How long the RAM save of the newest dump took.', value: (d) => d.saveSeconds },
  { name: 'virtsnap_dump_bytes', type: 'gauge', help: 'Size of the newest RAM dump.', value: (d) => d.dumpBytes },
  { name: 'virtsnap_snapshot_period_seconds', type: 'gauge', help: "The shortest sanoid period of the newest dump's snapshots: how old the newest dump gets between runs.", value: (d) => d.periodSeconds ?? null },
  { name: 'virtsnap_commit_seconds', type: 'gauge', help: 'How long committing the overlays back took for the newest dump.', value: (d) => d.commitSeconds },
  { name: 'virtsnap_dumps_total', type: 'counter', help: 'RAM dumps kept (sealed into the spool, or inside their snapshots).', value: (d) => d.dumps },
  { name: 'virtsnap_archived_total', type: 'counter', help: 'RAM dumps the archiver moved from the spool into the store.', value: (d) => d.archived ?? 0 },
  { name: 'virtsnap_failures_total', type: 'counter', help: 'Runs that thawed the domain without a dump, or could not thaw it.', value: (d) => d.failures },
];

/** The textfile collector's format. Pure. `spool`: what waits for the archiver as the file is written. */
export function renderMetrics(state: MetricsState, spool: SpoolStats | null = null): string {
  const lines: string[] = [];
  const domains = Object.entries(state.domains).sort(([, a], [, b]) => a.name.localeCompare(b.name));
  for (const s of SERIES) {
    const samples = domains.flatMap(([uuid, d]) => {
      const v = s.value(d);
      return v === null ? [] : [`${s.name}{domain="${label(d.name)}",uuid="${label(uuid)}"} ${v}`];
    });
    if (samples.length === 0) continue;
    lines.push(`# HELP ${s.name} ${s.help}`, `# TYPE ${s.name} ${s.type}`, ...samples);
  }
  lines.push('# HELP virtsnap_run_failures_total Snapshot runs that failed before freezing (pre hook, virtsnap snapshot).');
  lines.push('# TYPE virtsnap_run_failures_total counter');
  lines.push(`virtsnap_run_failures_total ${state.runFailures}`);
  if (spool !== null) {
    lines.push('# HELP virtsnap_spool_dumps RAM dumps waiting in the spool for the archiver.', '# TYPE virtsnap_spool_dumps gauge', `virtsnap_spool_dumps ${spool.count}`);
    lines.push('# HELP virtsnap_spool_bytes Bytes of the RAM dumps waiting in the spool.', '# TYPE virtsnap_spool_bytes gauge', `virtsnap_spool_bytes ${spool.bytes}`);
    // A timestamp, not an age: the file is written only when something happens, and time() minus this stays true between writes.
    if (spool.oldestSealedAt !== null) {
      lines.push(
        '# HELP virtsnap_spool_oldest_timestamp_seconds When the oldest dump waiting in the spool was sealed (its age: time() minus this).',
        '# TYPE virtsnap_spool_oldest_timestamp_seconds gauge',
        `virtsnap_spool_oldest_timestamp_seconds ${Math.round(spool.oldestSealedAt / 1000)}`,
      );
    }
  }
  return lines.join('\n') + '\n';
}

/**
 * Records a run and rewrites the metrics file. Never fails the run: metrics
 * are for watching, the VMs and the dumps come first.
 */
export async function recordRun(config: Config, outcome: RunOutcome): Promise<void> {
  await update(config, outcome);
}

/** The archiver stored a dump: counted, and the spool's gauges written as they are now. */
export async function recordArchived(config: Config, m: Manifest): Promise<void> {
  await update(config, { dumps: [], failed: [], archived: [m] });
}

async function update(config: Config, outcome: RunOutcome): Promise<void> {
  if (config.metricsFile === null) return;
  const stateFile = path.join(config.stateDir, 'metrics.json');
  try {
    await withLock(path.join(config.stateDir, 'locks'), 'metrics', Date.now() + config.lockTimeoutMs, () => {
      let state: MetricsState = { domains: {}, runFailures: 0 };
      try {
        const read = JSON.parse(readFileSync(stateFile, 'utf8')) as Partial<MetricsState>;
        if (read !== null && typeof read.domains === 'object' && read.domains !== null && Number.isFinite(read.runFailures)) state = read as MetricsState;
      } catch {
        // first run, or a damaged file: start counting again
      }
      state = addOutcome(state, outcome, config.mode);
      ensureDir(config.stateDir, PRIVATE_DIR, 'VIRTSNAP_STATE_DIR');
      writeJsonAtomic(stateFile, state);
      // Read by node_exporter, which does not run as root; it holds no secret.
      writeFileAtomic(config.metricsFile!, renderMetrics(state, spoolStats(config)), 0o644);
    });
  } catch (err) {
    log.warn(`cannot write the metrics file ${config.metricsFile} (VIRTSNAP_METRICS_FILE): ${(err as Error).message}`);
  }
}
