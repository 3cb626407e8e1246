// `virtsnap check [--warn D] [--crit D] [DATASET]`: a Nagios/Icinga plugin in
// the style of `sanoid --monitor-snapshots`: one line, perfdata after `|`,
// exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
//
// CRITICAL: a running VM on a dataset sanoid snapshots with our hooks has no
// RAM dump, or none newer than the critical age; a VM runs on one of our
// overlays with no run holding it; a VM is stuck (no thaw could bring it
// back); the spool cannot hold the next run's dumps. WARNING: the newest
// dump is older than the warning age; a dump has waited in the spool for
// over an hour (the store is not taking it); the store has manifests it
// cannot read, dumps whose header or size is wrong (verify's cheap part; the
// sha256 is left to `virtsnap verify`), or dumps `virtsnap gc` would delete.
import { existsSync } from 'node:fs';
import { knownDumps, type DumpStore } from '../stores/index.js';
import { sleep } from '../lock.js';
import { unneededDumps } from '../retention.js';
import { checkStructure } from '../dump-check.js';
import type { Config } from '../config.js';
import { age } from '../format.js';
import type { LibvirtClient } from '../libvirt/virsh.js';
import { autosnaps, countOf, nearestSection, readSanoidConf, recursionOf, runsOurHooks, type Ini } from '../sanoid/conf.js';
import { isInSubtree, type ZfsClient } from '../zfs.js';
import { domainStatus, type DomainStatus } from './status.js';
import { spaceReport } from './space.js';
import type { SpaceVerdict } from '../space.js';
import { latestInSnapshots } from '../ram-in-dataset.js';

export const OK = 0;
export const WARNING = 1;
export const CRITICAL = 2;
export const UNKNOWN = 3;

export interface Thresholds {
  warnSeconds: number;
  critSeconds: number;
}

/** A dataset sanoid snapshots with virtsnap's hooks, and how old its newest dump may get. */
export interface Watched extends Thresholds {
  dataset: string;
  subtree: boolean;
}

/**
 * sanoid's own monitoring defaults (hourly_warn 90 min, hourly_crit 6 h;
 * daily_warn 28 h, daily_crit 32 h), chosen by the section's shortest period.
 * A period the section does not set has sanoid's default (hourly = 48,
 * daily = 90: sanoid.defaults.conf).
 */
function defaultsFor(ini: Ini, section: string): Thresholds | null {
  if (countOf(ini, section, 'hourly') > 0) return { warnSeconds: 90 * 60, critSeconds: 6 * 3600 };
  if (countOf(ini, section, 'daily') > 0) return { warnSeconds: 28 * 3600, critSeconds: 32 * 3600 };
  return null;
}

/** A sanoid.conf section: whether virtsnap's hooks run for it, and so whether its VMs must have dumps. */
export interface Section {
  dataset: string;
  subtree: boolean;
  /** null: sanoid snapshots it without our hook, or not at all. */
  limits: Thresholds | null;
}

export function sectionsOf(ini: Ini, override: Partial<Thresholds>): Section[] {
  const result: Section[] = [];
  for (const section of ini.keys()) {
    if (section.startsWith('template_')) continue;
    const ours = runsOurHooks(ini, section);
    const defaults = defaultsFor(ini, section);
    const limits = ours && autosnaps(ini, section) && (defaults !== null || (override.warnSeconds !== undefined && override.critSeconds !== undefined)) ? ({ ...defaults, ...override } as Thresholds) : null;
    result.push({ dataset: section, subtree: recursionOf(ini, section) !== 'no', limits });
  }
  return result;
}

/** The sections virtsnap's hooks run for. */
export function watchedDatasets(ini: Ini, override: Partial<Thresholds>): Watched[] {
  return sectionsOf(ini, override).flatMap((s) => (s.limits === null ? [] : [{ dataset: s.dataset, subtree: s.subtree, ...s.limits }]));
}

export interface Verdict {
  status: number;
  line: string;
}

/** What the archive holds that needs a look: counts for the WARNING line. */
export interface ArchiveFindings {
  brokenManifests: number;
  /** Dumps whose header, embedded XML or size is wrong (lib/verify.ts checkStructure). */
  failingVerify: number;
  /** Dumps none of whose snapshots exists any more. */
  unneeded: number;
}

export const CLEAN_ARCHIVE: ArchiveFindings = { brokenManifests: 0, failingVerify: 0, unneeded: 0 };

/** The plugin's verdict from what `virtsnap status` knows. Pure. */
/** `space`: where the dumps go and whether they fit (lib/commands/space.ts): the next run's (CRITICAL), what retention keeps (WARNING). */
/** An hour: a dump waiting longer means the store is not taking it (the archiver retries every 30 s at most). */
export const SPOOL_WAIT_WARN_SECONDS = 3600;

export function judge(rows: DomainStatus[], sections: Section[], archive: ArchiveFindings, space: readonly SpaceVerdict[] = []): Verdict {
  const watched = sections.filter((s) => s.limits !== null);
  const critical: string[] = [];
  const warning: string[] = [];
  const perf: string[] = [];
  let checked = 0;
  for (const r of rows) {
    const limits = r.datasets.map((ds) => nearestSection(ds, sections)?.limits ?? null).filter((l): l is Thresholds => l !== null);
    const w = limits.length === 0 ? undefined : limits.reduce((a, b) => (a.critSeconds <= b.critSeconds ? a : b));
    if (r.damagedEntry !== null) {
      critical.push(`${r.name}: its journal entry is damaged (virtsnap status)`);
      continue;
    }
    if (r.stuck !== null) {
      critical.push(`${r.name} stuck since ${r.stuck.since}`);
      continue;
    }
    if (r.onOverlay.length > 0 && r.heldBy === null) critical.push(`${r.name} on an overlay outside a run`);
    if (w === undefined || r.state === 'shut off' || r.state === 'undefined') continue;
    checked++;
    if (r.latestDump === null) {
      critical.push(`${r.name} has no RAM dump`);
      continue;
    }
    const s = r.latestDump.ageSeconds;
    perf.push(`'${r.name.replace(/'/g, "''").replace(/[|=]/g, '_')}_dump_age'=${s}s;${w.warnSeconds};${w.critSeconds};0`);
    if (s > w.critSeconds) critical.push(`${r.name} newest dump ${age(s)} old`);
    else if (s > w.warnSeconds) warning.push(`${r.name} newest dump ${age(s)} old`);
  }
  const late = rows.filter((r) => r.waiting !== null && r.waiting.oldestSeconds > SPOOL_WAIT_WARN_SECONDS);
  if (late.length > 0) {
    const n = late.reduce((sum, r) => sum + r.waiting!.count, 0);
    warning.push(`${n} RAM dump(s) of ${late.map((r) => r.name).join(', ')} waiting in the spool for over an hour (virtsnap archive says why)`);
  }
  if (archive.brokenManifests > 0) warning.push(`${archive.brokenManifests} unreadable manifest(s) in the archive (virtsnap verify)`);
  if (archive.failingVerify > 0) warning.push(`${archive.failingVerify} RAM dump(s) fail verify (virtsnap verify)`);
  if (archive.unneeded > 0) warning.push(`${archive.unneeded} RAM dump(s) whose snapshots are all gone (virtsnap gc)`);
  for (const s of space) (s.level === 'fail' ? critical : s.level === 'warn' ? warning : []).push(s.text);
  const tail = perf.length > 0 ? ` | ${perf.join(' ')}` : '';
  if (critical.length > 0) return { status: CRITICAL, line: `CRITICAL: ${[...critical, ...warning].join(', ')}${tail}` };
  if (warning.length > 0) return { status: WARNING, line: `WARNING: ${warning.join(', ')}${tail}` };
  return { status: OK, line: `OK: ${checked} VM(s) on ${watched.length} dataset(s) have fresh RAM dumps${tail}` };
}

export async function check(config: Config, clients: { virsh: LibvirtClient; zfs: ZfsClient; store: DumpStore }, override: Partial<Thresholds>, dataset?: string): Promise<Verdict> {
  const { virsh, zfs, store } = clients;
  const ini = readSanoidConf(config.sanoidConf);
  if (ini === null) return { status: UNKNOWN, line: `UNKNOWN: ${config.sanoidConf} not found (VIRTSNAP_SANOID_CONF): cannot tell which datasets to watch` };
  const sections = sectionsOf(ini, override);
  const watched = sections.filter((w) => w.limits !== null && (dataset === undefined || isInSubtree(w.dataset, dataset) || isInSubtree(dataset, w.dataset)));
  // Watching nothing must never look like all is well.
  if (watched.length === 0) {
    return { status: UNKNOWN, line: `UNKNOWN: no section of ${config.sanoidConf} runs virtsnap's pre hook${dataset === undefined ? '' : ` for ${dataset}`}: nothing to watch` };
  }
  const rows = await domainStatus(config, virsh, zfs, store, dataset);
  const scan = store.scan();
  const known = knownDumps(store, config, scan);
  const dumps = known.dumps;
  // Read without the archive lock: the archiver storing, or gc deleting, has a
  // dump's manifest and memory file out of step for a moment. Look again.
  let failing = dumps.filter((d) => checkStructure(d.manifest) !== null);
  if (failing.length > 0) {
    await sleep(2000);
    failing = failing.filter((d) => existsSync(d.manifestFile) && checkStructure(d.manifest) !== null);
  }
  const running = (await virsh.domains()).filter((d) => d.state === 'running' || d.state === 'paused');
  const space = running.length === 0 ? [] : spaceReport({ config, ini, running, stack: await virsh.stack(), archived: scan.dumps, inSnapshots: latestInSnapshots(config.stateDir) });
  return judge(
    rows,
    sections,
    {
      brokenManifests: known.broken.length,
      failingVerify: failing.length,
      unneeded: (await unneededDumps(dumps, zfs)).length,
    },
    space,
  );
}

/** `90m`, `2h`, `1d`, `300` (seconds). */
export function parseDuration(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*([smhd]?)$/.exec(text.trim());
  if (m === null) return null;
  const unit: Record<string, number> = { '': 1, s: 1, m: 60, h: 3600, d: 86400 };
  return Math.round(Number(m[1]) * unit[m[2]!]!);
}
