// Whether a RAM dump fits where it is written: the one rule for it, before
// a freeze (lib/plan.ts), and for doctor and check (will the next run's
// dumps fit, and what sanoid's retention will keep).
//
// A save that runs out of space is worse than no save: the memory file is
// cut short (no RAM for that snapshot) and, with the RAM in the VM's own
// dataset, a full pool fails the block commit after it and leaves the VM on
// its overlay. So a VM whose dump would not fit is not frozen at all this
// run: its snapshot is only crash-consistent, and one ERROR line names it.
// No waiting dump is ever deleted to make room.

/** Kept free beside every dump: the overlays the guests write while frozen, the manifest, the filesystem's own. */
export const DUMP_MARGIN_BYTES = 64 * 1024 * 1024;

/**
 * Bytes a RAM save may write: the guest's memory once with the guest
 * paused; with a live save the pages it dirties meanwhile are written
 * again (QEMU appends them), so up to twice that (virtsnap sets the old
 * downtime limit back once a save has written 1.5 times the RAM; Proxmox
 * reserves 2x RAM for the same reason).
 */
export function dumpNeed(memoryKiB: number, live: boolean): number {
  return memoryKiB * 1024 * (live ? 2 : 1) + DUMP_MARGIN_BYTES;
}

export interface RamCandidate {
  name: string;
  uuid: string;
  need: number;
  /** Where the memory file is written (a dir), and a key for the space it shares with others (a filesystem, a pool). */
  dir: string;
  key: string;
}

export type Fit = { fits: true } | { fits: false; why: string };

const mib = (n: number) => `${Math.round(n / 1024 ** 2)} MiB`;

/**
 * Which of the run's dumps fit, in plan order: each takes its need from what
 * is left where it goes. `free`: bytes free per key (null: unknown, as
 * before this check: assumed to fit). Pure.
 */
export function fitDumps(candidates: readonly RamCandidate[], free: ReadonlyMap<string, number | null>): Map<string, Fit> {
  const left = new Map(free);
  const result = new Map<string, Fit>();
  for (const c of candidates) {
    const room = left.get(c.key) ?? null;
    if (room === null) {
      result.set(c.uuid, { fits: true });
      continue;
    }
    if (c.need <= room) {
      left.set(c.key, room - c.need);
      result.set(c.uuid, { fits: true });
      continue;
    }
    result.set(c.uuid, {
      fits: false,
      why: `domain ${JSON.stringify(c.name)} gets no RAM this run: its dump may take ${mib(c.need)} and ${c.dir} has ${mib(Math.max(0, room))} left for it; its snapshot is only crash-consistent; free space there (no RAM dump is ever deleted to make room)`,
    });
  }
  return result;
}

/** For doctor and check: the next run's dumps and what retention keeps, against the space where they go. */
export interface SpaceNeed {
  domain: string;
  /** The next dump, its newest one's size where one exists. */
  dumpBytes: number;
  /** Runs sanoid's retention keeps at once (lib/sanoid/conf.ts runsKept). */
  kept: number;
  /** What its dumps hold there now. */
  heldBytes: number;
}

export type SpaceVerdict = { level: 'ok' | 'warn' | 'fail'; text: string };

/** The next run must fit (fail), what retention will keep should (warn). Pure. */
export function judgeSpace(where: string, free: number, needs: readonly SpaceNeed[]): SpaceVerdict {
  const gib = (n: number) => `${(n / 1024 ** 3).toFixed(1)} GiB`;
  if (needs.length === 0) return { level: 'ok', text: `${gib(free)} free in ${where}; no running VM on a dataset that runs our hooks` };
  const next = needs.reduce((sum, n) => sum + n.dumpBytes, 0);
  const growth = needs.reduce((sum, n) => sum + Math.max(0, n.dumpBytes * n.kept - n.heldBytes), 0);
  const kept = Math.max(...needs.map((n) => n.kept));
  if (free < next) return { level: 'fail', text: `${gib(free)} free in ${where}, the next run's dumps of ${needs.length} VM(s) take ${gib(next)}: they would get no RAM; free space there` };
  if (free < growth) {
    return { level: 'warn', text: `${gib(free)} free in ${where}; sanoid's retention keeps up to ${kept} dumps per VM, ${gib(growth)} more than ${where} holds now for ${needs.map((n) => n.domain).join(', ')}: free space, or keep fewer snapshots` };
  }
  return { level: 'ok', text: `${gib(free)} free in ${where}, enough for up to ${kept} dumps per VM of ${needs.length} VM(s) (${gib(growth)} more)` };
}
