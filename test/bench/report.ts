// The bench's table, from its raw samples (pure: `npm run bench` prints it
// and saves it beside the samples in results/latest-<stack>.json).
import { table } from '../../lib/format.js';
import type { PruneSample } from './prune.js';
import type { CompressorSample, DdSample } from './reference.js';
import type { RunSample } from './snapshot-run.js';
import type { StartupSample } from './startup.js';
import { summarize, type Summary } from './stats.js';

export interface Samples {
  /** The guests as booted: `filledMiB` 0 means the guest had no live data (no filler in this tree). */
  guests: { key: string; name: string; memoryMiB: number; filledMiB: number }[];
  /** One whole sanoid run over one guest, tagged with the guest it covered. */
  stall: (RunSample & { guest: string })[];
  /** One whole sanoid run over four guests. */
  four: RunSample[];
  /** virtsnap's defaults over 1, 4 and 8 guests in one run. */
  scale: RunSample[];
  /** A run with the archive read-only, then the archive back. */
  drain: DrainSample[];
  compressors: (CompressorSample & { guest: string })[];
  dd: (DdSample & { guest: string })[];
  prune: { dumps: number; samples: PruneSample[] } | null;
  startup: StartupSample[];
}

export interface DrainSample {
  rep: number;
  guests: number;
  /** The sanoid run, with the archive read-only. */
  runMs: number;
  /** Dumps waiting in the spool after it. */
  waiting: number;
  /** From the archive being writable again until the spool was empty. */
  drainMs: number;
}

export interface Section {
  title: string;
  header: string[];
  rows: string[][];
}

export interface Target {
  what: string;
  ratio: number | null;
  limit: number;
  unit: string;
  met: boolean | null;
  /** Measured, but not in the case the target names (the big guest without live data). */
  notComparable?: string;
  detail: string;
}

export const SHELL = 'shell';
export const DEFAULTS = 'virtsnap';
export const BIG = 'g512';
export const SMALL = 'g96';

const ms = (v: number | null | undefined): string => (v === null || v === undefined ? '–' : v >= 10_000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`);
const mib = (v: number | null | undefined): string => (v === null || v === undefined ? '–' : `${(v / 2 ** 20).toFixed(1)} MiB`);
const rate = (v: number | null | undefined): string => (v === null || v === undefined ? '–' : `${(v / 2 ** 20).toFixed(0)} MiB/s`);
/** "median (min–max)" */
function spread(s: Summary | null, fmt: (v: number) => string): string {
  if (s === null) return '–';
  return s.n === 1 ? fmt(s.median) : `${fmt(s.median)} (${fmt(s.min)}–${fmt(s.max)})`;
}

function variantsIn(samples: RunSample[]): string[] {
  return [...new Set(samples.map((s) => s.variant))];
}

/** The cell for runs that failed: "failed: <one line>", with how many when not all did. */
function failure(runs: RunSample[]): string | null {
  const failed = runs.filter((r) => !r.ok);
  if (failed.length === 0) return null;
  const what = `failed: ${failed[0]!.error}`;
  return failed.length === runs.length ? what : `${failed.length}/${runs.length} ${what}`;
}

/** A failure's line cut for the table (results/latest-<stack>.json has it whole). */
function short(text: string, max = 110): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** "g512 (320 MiB live)": whether the big guest really held live data (the filler comes from the guest branch). */
function label(s: Samples, key: string): string {
  const g = s.guests.find((x) => x.key === key);
  if (!g) return key;
  return g.filledMiB > 0 ? `${key} (${g.filledMiB} MiB live)` : g.memoryMiB > 96 ? `${key} (no live data)` : key;
}

const okRuns = (runs: RunSample[]): RunSample[] => runs.filter((r) => r.ok);
const perGuest = (runs: RunSample[]) => okRuns(runs).flatMap((r) => r.perGuest);

export function stallSection(s: Samples): Section {
  const rows: string[][] = [];
  for (const guest of [...new Set(s.stall.map((r) => r.guest))]) {
    const ofGuest = s.stall.filter((r) => r.guest === guest);
    for (const variant of variantsIn(ofGuest)) {
      const runs = ofGuest.filter((r) => r.variant === variant);
      const g = perGuest(runs);
      const failed = failure(runs);
      if (okRuns(runs).length === 0) {
        rows.push([label(s, guest), variant, '–', '–', '–', '–', '–', '–', short(failed ?? '')]);
        continue;
      }
      rows.push([
        label(s, guest),
        variant,
        spread(summarize(g.map((x) => x.stallMs)), ms),
        spread(summarize(g.map((x) => x.longestPauseMs)), ms),
        spread(summarize(g.map((x) => x.pausesMs.length)), String),
        spread(summarize(g.map((x) => x.libvirtDowntimeMs)), ms),
        spread(summarize(g.map((x) => x.saveMs)), ms),
        spread(summarize(okRuns(runs).map((r) => r.wallMs)), ms),
        short(failed ?? ''),
      ]);
    }
  }
  return {
    title: 'Guest stall per snapshot: libvirt lifecycle events, Suspended → Resumed (median (min–max))',
    header: ['guest', 'variant', 'stall (sum)', 'longest pause', 'pauses', 'libvirt downtime', 'RAM save', 'sanoid run', ''],
    rows,
  };
}

export function sanoidSection(s: Samples): Section {
  const rows: string[][] = [];
  const groups: [string, RunSample[]][] = [
    ['1 guest', s.stall.filter((r) => r.guest === SMALL)],
    ['4 guests', s.four],
  ];
  for (const [label, runs] of groups) {
    for (const variant of variantsIn(runs).filter((v) => v === SHELL || v === DEFAULTS)) {
      const of = runs.filter((r) => r.variant === variant);
      const failed = failure(of);
      const ok = okRuns(of);
      rows.push([
        label,
        variant,
        ok.length ? spread(summarize(ok.map((r) => r.wallMs)), ms) : '–',
        ms(summarize(ok.map((r) => r.preMs))?.median),
        ms(summarize(ok.map((r) => r.postMs))?.median),
        spread(summarize(perGuest(of).map((g) => g.stallMs)), ms),
        short(failed ?? ''),
      ]);
    }
  }
  return {
    title: 'Whole `sanoid --take-snapshots` run, recursive = zfs, one child dataset per 96 MiB guest (wall time)',
    header: ['guests', 'variant', 'wall', 'pre hook', 'post hook', 'stall per guest', ''],
    rows,
  };
}

export function bytesSection(s: Samples): Section {
  const rows: string[][] = [];
  for (const guest of [...new Set(s.stall.map((r) => r.guest))]) {
    const ofGuest = s.stall.filter((r) => r.guest === guest);
    const dd = s.dd.find((d) => d.guest === guest);
    for (const variant of variantsIn(ofGuest)) {
      const g = perGuest(ofGuest.filter((r) => r.variant === variant));
      if (g.length === 0) continue;
      const raw = summarize(g.map((x) => x.rawBytes));
      const stored = summarize(g.map((x) => x.storedBytes));
      const saveRate = summarize(g.map((x) => (x.rawBytes && x.saveMs ? x.rawBytes / (x.saveMs / 1000) : null)));
      rows.push([
        label(s, guest),
        variant,
        mib(raw?.median),
        `${mib(stored?.median)}${g[0]!.compression ? ` (${g[0]!.compression})` : ''}`,
        raw && stored ? (stored.median / raw.median).toFixed(2) : '–',
        rate(saveRate?.median),
        dd && saveRate ? `${rate(dd.bytesPerSec)} (${(saveRate.median / dd.bytesPerSec).toFixed(2)}×)` : '–',
      ]);
    }
    for (const c of s.compressors.filter((x) => x.guest === guest)) {
      rows.push([label(s, guest), `${c.tool} of a raw dump`, mib(c.rawBytes), mib(c.bytes), (c.bytes / c.rawBytes).toFixed(2), `${rate(c.rawBytes / (c.ms / 1000))} (compressing)`, '']);
    }
  }
  return {
    title: 'Bytes per dump and RAM save rate (save rate = raw bytes / libvirt job time; dd = plain fsync’d write of the same size to the overlay dir)',
    header: ['guest', 'variant', 'raw', 'stored', 'stored/raw', 'save rate', 'dd (save/dd)'],
    rows,
  };
}

export function scaleSection(s: Samples): Section {
  const rows = [...new Set(s.scale.map((r) => r.guests))].sort((a, b) => a - b).map((n) => {
    const runs = s.scale.filter((r) => r.guests === n);
    const ok = okRuns(runs);
    return [String(n), ok.length ? spread(summarize(ok.map((r) => r.wallMs)), ms) : '–', ms(summarize(ok.map((r) => r.wallMs / n))?.median), ms(summarize(ok.map((r) => r.postMs))?.median), short(failure(runs) ?? '')];
  });
  const drain = s.drain.map((d) => [`${d.guests}, archive read-only for the run`, ms(d.runMs), `${d.waiting} dumps waited`, `spool empty ${ms(d.drainMs)} after the archive came back`, '']);
  return { title: "How a run grows: virtsnap's defaults over 1, 4 and 8 guests in one sanoid run (wall, and per guest); then the spool after an archive outage", header: ['guests', 'wall', 'per guest', 'post hook', ''], rows: [...rows, ...drain] };
}

export function pruneSection(s: Samples): Section {
  const rows: string[][] = [];
  if (s.prune) {
    const all = s.prune.samples;
    for (const [label, of] of [
      ['all calls', all],
      ['dump kept (another snapshot left)', all.filter((x) => !x.deletes)],
      ['dump deleted', all.filter((x) => x.deletes)],
    ] as const) {
      const w = summarize(of.map((x) => x.wallMs));
      rows.push([label, String(of.length), ms(w?.median), ms(w?.p90), ms(w?.max), ms(summarize(of.map((x) => x.cpuMs))?.median)]);
    }
  }
  return { title: `Prune hook per call, ${s.prune?.dumps ?? '?'} dumps in the archive (destroy one snapshot, call the hook)`, header: ['calls', 'n', 'median', 'p90', 'max', 'CPU median'], rows };
}

export function startupSection(s: Samples): Section {
  const rows = [...new Set(s.startup.map((x) => x.what))].map((what) => {
    const of = s.startup.filter((x) => x.what === what);
    return [what, String(of.length), spread(summarize(of.map((x) => x.wallMs)), ms), ms(summarize(of.map((x) => x.cpuMs))?.median)];
  });
  return { title: 'Hook start-up with nothing to do (whole process)', header: ['call', 'n', 'wall', 'CPU median'], rows };
}

function target(what: string, value: number | null, reference: number | null, limit: number, unit: string, detail: string): Target {
  // A ratio target needs both sides measured; an absolute one (ms) is the value itself.
  const ratio = unit === 'ms' ? value : value !== null && reference !== null && reference > 0 ? value / reference : null;
  return { what, ratio, limit, unit, met: ratio === null ? null : ratio <= limit, detail };
}

const medianOf = (values: (number | null)[]): number | null => summarize(values)?.median ?? null;

export function targets(s: Samples): Target[] {
  const stallOf = (guest: string, variant: string) => medianOf(perGuest(s.stall.filter((r) => r.guest === guest && r.variant === variant)).map((g) => g.stallMs));
  const wallOf = (runs: RunSample[], variant: string) => medianOf(okRuns(runs.filter((r) => r.variant === variant)).map((r) => r.wallMs));
  // Each dump against its own raw image: the raw size differs a little from snapshot to snapshot.
  const small = perGuest(s.stall.filter((r) => r.guest === SMALL && r.variant === DEFAULTS));
  const archived = medianOf(small.map((g) => (g.storedBytes !== null && g.rawBytes ? g.storedBytes / g.rawBytes : null)));
  const rawSmall = medianOf(small.map((g) => g.rawBytes));
  const storedSmall = medianOf(small.map((g) => g.storedBytes));
  const prune = s.prune ? medianOf(s.prune.samples.map((x) => x.wallMs)) : null;
  const pre = medianOf(s.startup.filter((x) => x.what.startsWith('pre hook')).map((x) => x.wallMs));
  const sb = stallOf(BIG, DEFAULTS);
  const sh = stallOf(BIG, SHELL);
  const w4 = wallOf(s.four, DEFAULTS);
  const w4s = wallOf(s.four, SHELL);
  const w1 = wallOf(s.stall.filter((r) => r.guest === SMALL), DEFAULTS);
  const w1s = wallOf(s.stall.filter((r) => r.guest === SMALL), SHELL);
  const drain = medianOf(s.drain.map((d) => d.drainMs));
  const stall = target('guest stall, defaults vs shell pair (512 MiB guest, live data)', sb, sh, 0.1, '×', `${ms(sb)} vs ${ms(sh)}`);
  if (!(s.guests.find((g) => g.key === BIG)?.filledMiB ?? 0)) stall.notComparable = 'the 512 MiB guest had no live data';
  return [
    stall,
    target('whole sanoid run over 4 guests, virtsnap vs shell pair', w4, w4s, 0.6, '×', `${ms(w4)} vs ${ms(w4s)}`),
    target('whole sanoid run over 1 guest, virtsnap vs shell pair', w1, w1s, 1.0, '×', `${ms(w1)} vs ${ms(w1s)}`),
    target('spool empty after the archive comes back (4 dumps, median)', drain, null, 60_000, 'ms', ms(drain)),
    target('archive vs raw dump (96 MiB guest, defaults)', archived, archived === null ? null : 1, 0.5, '×', `${mib(storedSmall)} vs ${mib(rawSmall)}`),
    target('prune hook per call, 1,000 dumps (median)', prune, null, 100, 'ms', ms(prune)),
    target('hook with nothing to do (pre, median)', pre, null, 150, 'ms', ms(pre)),
  ];
}

export function sections(s: Samples): Section[] {
  return [stallSection(s), sanoidSection(s), scaleSection(s), bytesSection(s), pruneSection(s), startupSection(s)];
}

export function render(s: Samples): string {
  const parts = sections(s).map((x) => `${x.title}\n${x.rows.length ? table(x.header, x.rows) : '  (not measured)\n'}`);
  const t = targets(s).map((x) => [
    x.what,
    x.ratio === null ? '–' : x.unit === "×" ? `${x.ratio.toPrecision(2)}×` : `${Math.round(x.ratio)} ms`,
    `≤ ${x.limit}${x.unit === '×' ? '×' : ' ms'}`,
    x.met === null ? 'not measured' : x.notComparable ? `not comparable: ${x.notComparable}` : x.met ? 'met' : 'not met',
    x.detail,
  ]);
  parts.push(`Targets\n${table(['target', 'measured', 'limit', '', ''], t)}`);
  return parts.join('\n');
}
