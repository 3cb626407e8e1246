// The bench's guests: booted once, reused by every variant and repetition,
// and checked after every snapshot. A bench that leaves a VM paused, on an
// overlay or with RAM and disks that disagree (the oracle's MISMATCH) has
// found a bug, not a slow path: it stops and says so.
import { isDeepStrictEqual } from 'node:util';
import { Guest, memoryOf, type GuestOptions } from '../helpers/bed.js';
import { oracleProblems } from '../helpers/oracle.js';

export class BenchError extends Error {
  override name = 'BenchError';
}

export interface BenchGuest {
  guest: Guest;
  /** Its disks as libvirt lists them once booted: where a thawed guest must be again. */
  originals: Record<string, string>;
  memoryMiB: number;
  /** MiB the guest really keeps filled (0 without the filler). */
  filledMiB: number;
}

export async function bootGuest(options: GuestOptions): Promise<BenchGuest> {
  const guest = await Guest.create(options);
  await guest.start();
  // The 512 MiB guest is measured holding its live data, never while still filling.
  if (options.fillMiB) await guest.waitForFill();
  return { guest, originals: await guest.sources(), memoryMiB: memoryOf(options), filledMiB: options.fillMiB ?? 0 };
}

/**
 * What is wrong with `g` after a snapshot, or null: it must run, on its own
 * disks, with a silent oracle since `consoleOffset`, and nothing of ours
 * left in the overlay dir.
 */
export async function problemWith(g: BenchGuest, consoleOffset: number, leftovers: string[]): Promise<string | null> {
  const state = await g.guest.state();
  if (state !== 'running') return `${g.guest.name} is ${state}, not running`;
  const sources = await g.guest.sources();
  if (!isDeepStrictEqual(sources, g.originals)) return `${g.guest.name} is not on its own disks: ${JSON.stringify(sources)}`;
  const text = g.guest.consoleSince(consoleOffset);
  const bad = oracleProblems(text);
  if (bad.length > 0) return `${g.guest.name}: ${bad[0]}`;
  // A filler that died would leave the big guest without its live data.
  const fill = /VSBED FILL (?:failed|refused)[^\n]*/.exec(text);
  if (fill) return `${g.guest.name}: ${fill[0]}`;
  if (leftovers.length > 0) return `${g.guest.name}: left in the overlay dir: ${leftovers.join(', ')}`;
  return null;
}
