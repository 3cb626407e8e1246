// The bench's guests: booted once, reused by every variant and repetition,
// and checked after every snapshot. A bench that leaves a VM paused, on an
// overlay or with RAM and disks that disagree (the oracle's MISMATCH) has
// found a bug, not a slow path: it stops and says so.
import { isDeepStrictEqual } from 'node:util';
import { Guest, mismatches, virsh, type GuestOptions } from '../helpers/bed.js';

/**
 * GuestOptions.fillMiB (the guest keeps N MiB of RAM filled and rewritten,
 * printing `VSBED FILL done MiB=N`) comes from the `guest` branch; until it
 * is merged the option is simply not passed on, and the bench says so.
 */
type BenchGuestOptions = GuestOptions & { fillMiB?: number };

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

const FILL_TIMEOUT_MS = 300_000;

export async function bootGuest(options: BenchGuestOptions): Promise<BenchGuest> {
  const guest = await Guest.create(options);
  const offset = guest.consoleSize();
  await guest.start();
  let filledMiB = 0;
  if (options.fillMiB) {
    // Only a Guest that knows the option puts it on the kernel command line.
    const cmdline = /<cmdline>(.*)<\/cmdline>/.exec(await virsh('dumpxml', guest.name))?.[1] ?? '';
    if (/vsbed\.fill=/.test(cmdline)) {
      await guest.waitForConsole(/VSBED FILL done/, offset, FILL_TIMEOUT_MS);
      filledMiB = options.fillMiB;
    } else {
      console.log(`  ${guest.name}: this tree's Guest has no fillMiB (branch guest not merged): running without live data`);
    }
  }
  return { guest, originals: await guest.sources(), memoryMiB: options.memoryMiB ?? 96, filledMiB };
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
  const bad = mismatches(g.guest.consoleSince(consoleOffset));
  if (bad.length > 0) return `${g.guest.name}: the oracle says ${bad[0]}`;
  if (leftovers.length > 0) return `${g.guest.name}: left in the overlay dir: ${leftovers.join(', ')}`;
  return null;
}
