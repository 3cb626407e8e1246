// One sample: one whole `sanoid --take-snapshots` run of one variant over a
// dataset whose children hold the guests, timed from outside, with the
// guests' pauses read from libvirt's lifecycle events of that time window,
// then every guest checked.
import { oneLine } from '../../lib/errors.js';
import { snapshotsOf, sleep } from '../helpers/bed.js';
import { leftovers } from '../helpers/virtsnap.js';
import { EventWatcher, stallOf } from './events.js';
import { BenchError, problemWith, type BenchGuest } from './guests.js';
import type { DumpFacts, Variant } from './variants.js';

export interface GuestSample extends Omit<DumpFacts, 'rawFile'> {
  domain: string;
  stallMs: number;
  longestPauseMs: number;
  /** Each Suspended → Resumed of the run, in ms. */
  pausesMs: number[];
}

export interface RunSample {
  variant: string;
  rep: number;
  dataset: string;
  /** Guests the run covered. */
  guests: number;
  ok: boolean;
  /** One line, when a hook or sanoid failed. */
  error: string | null;
  wallMs: number;
  /** The pre and post hooks' own time within wallMs (the rest is sanoid: zfs list, zfs snapshot, its start). */
  preMs: number | null;
  postMs: number | null;
  snapshots: number;
  perGuest: GuestSample[];
}

/** Events reach virsh a moment after the fact. */
const EVENT_GRACE_MS = 500;

/**
 * Each dataset's sanoid clock moves one hour ahead per run (libfaketime), so
 * every run has an hourly snapshot due and calls its hooks.
 */
const hours = new Map<string, number>();

export async function snapshotRun(
  variant: Variant,
  dataset: string,
  guests: BenchGuest[],
  watcher: EventWatcher,
  rep: number,
  uri: string,
  onRawFile?: (g: BenchGuest, file: string) => Promise<void>,
): Promise<RunSample> {
  const hoursAhead = (hours.get(dataset) ?? -1) + 1;
  variant.takeHookTimes(); // a log left by an earlier run
  hours.set(dataset, hoursAhead);
  const offsets = guests.map((g) => g.guest.consoleSize());
  const before = new Set(await snapshotsOf(dataset, true));
  const from = Date.now();
  const out = await variant.setup.sanoid('2.1.0', variant.conf(dataset), ['--take-snapshots', '--verbose'], hoursAhead);
  const to = Date.now();
  const wallMs = to - from;
  const { preMs, postMs } = variant.takeHookTimes();
  await sleep(EVENT_GRACE_MS);
  const created = (await snapshotsOf(dataset, true)).filter((s) => !before.has(s));
  let error = failureOf(out.code, out.stderr);
  if (error === null && created.length === 0) error = 'sanoid took no snapshot (nothing due?)';

  for (const [i, g] of guests.entries()) {
    const problem = await problemWith(g, offsets[i]!, leftovers(g.guest.b.overlayDir, g.guest.name));
    if (problem) throw new BenchError(`stopping after ${variant.name} (${error === null ? 'its hooks reported success' : `failed: ${error}`}): ${problem}`);
  }

  const events = watcher.events();
  const perGuest: GuestSample[] = [];
  for (const g of guests) {
    const stall = stallOf(events, g.guest.name, from, to + EVENT_GRACE_MS);
    const { rawFile, ...facts } = await variant.facts({ name: g.guest.name, uuid: g.guest.uuid }, uri);
    // Hooks that exit 0 but froze nothing (a guest they did not find) would pass for a stall of 0 ms.
    if (error === null && facts.storedBytes === null) error = `no RAM dump of ${g.guest.name} after the run`;
    if (rawFile && onRawFile && error === null) await onRawFile(g, rawFile);
    perGuest.push({ domain: g.guest.name, stallMs: stall.totalMs, longestPauseMs: stall.longestMs, pausesMs: stall.pausesMs, ...facts });
  }
  await variant.discardDumps();
  return { variant: variant.name, rep, dataset, guests: guests.length, ok: error === null, error, wallMs, preMs, postMs, snapshots: created.length, perGuest };
}

/**
 * One line for a failed run: sanoid's exit code, or the hook's own
 * complaint (the hooks' stderr goes through sanoid's). A hook's failure does
 * not stop sanoid: it takes the snapshot anyway and prints a WARN line.
 */
export function failureOf(code: number, stderr: string): string | null {
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  const warn = lines.find((l) => /WARN: (pre|post)_snapshot_script failed/.test(l));
  if (code === 0 && !warn) return null;
  const cause = lines.find((l) => !l.startsWith('WARN') && /error|failed|unknown|cannot|denied|not /i.test(l));
  return oneLine(cause ?? warn ?? `sanoid exited ${code}`);
}
