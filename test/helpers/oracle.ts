// The test guest's oracles, as its serial console shows them: what a restored
// guest must never print, and the progress it must keep making.
//
// - The disk oracle (test/bed/guest/init) prints `MISMATCH memory=N disk=M`
//   when its disks and its memory are of two instants, and `TICK N` every ten
//   rounds.
// - The memory oracle (test/bed/memoracle/memoracle.c) prints `VSBED MEM LOST`
//   for a page that lost one of its writes, and `VSBED MEM sweep=S` every two
//   seconds.
// - The kernel prints a BUG, an Oops or a panic where the damage is in its own
//   memory (seen here: `list_del corruption`, a page fault in
//   `timerqueue_add`); none of the guest's oracles would notice those.
// - A guest restored from RAM never prints `VSBED BOOT`: that is a reboot
//   (its kernel panicked, panic=-1), and a restored guest that stops (a
//   panic under on_reboot=destroy) or hangs shows no progress.
//
// Pure, so that the rules are unit-tested (test/unit/oracle.test.ts) and the
// same for the integration tests, the demo and the bench.

/** A line of the console that says the restore was not whole, and which oracle says so. */
const BAD_LINES: { pattern: RegExp; what: string }[] = [
  { pattern: /MISMATCH memory=/, what: 'disk oracle: disk and memory of two instants' },
  { pattern: /VSBED MEM LOST/, what: 'memory oracle: a page lost a write' },
  { pattern: /VSBED MEM failed/, what: 'memory oracle did not start' },
  {
    pattern: /kernel BUG|\bBUG: |Oops|Kernel panic|general protection fault|WARNING: CPU: |list_(?:del|add) corruption|Call Trace:|stack-protector|double fault/,
    what: 'kernel',
  },
  { pattern: /VSBED BOOT/, what: 'reboot' },
];

/** Every line of `text` that says the restore was not whole, with its oracle. */
export function oracleProblems(text: string): string[] {
  const problems: string[] = [];
  for (const line of text.split('\n')) {
    const bad = BAD_LINES.find((b) => b.pattern.test(line));
    if (bad !== undefined) problems.push(`${bad.what}: ${line.trim()}`);
  }
  return problems;
}

/** Progress since a point of the console: TICK lines of the disk oracle, sweep lines of the memory oracle. */
export interface Progress {
  ticks: number;
  sweeps: number;
}

export function progressOf(text: string): Progress {
  return { ticks: (text.match(/TICK \d+/g) ?? []).length, sweeps: (text.match(/VSBED MEM sweep=\d+/g) ?? []).length };
}

/** What a watch of a restored guest asks for: rounds of both oracles, within a time. */
export interface WatchRule {
  /** TICK lines (each is ten rounds of the disk oracle). */
  ticks: number;
  /** Sweep lines of the memory oracle (one every two seconds); 0 for a guest without it. */
  sweeps: number;
  timeoutMs: number;
}

export const DEFAULT_WATCH: WatchRule = { ticks: 3, sweeps: 2, timeoutMs: 90_000 };

/** Enough progress to judge the restore. */
export function enoughProgress(p: Progress, rule: Pick<WatchRule, 'ticks' | 'sweeps'>): boolean {
  return p.ticks >= rule.ticks && p.sweeps >= rule.sweeps;
}

/** The problem when progress stopped short, or null. */
export function stalled(p: Progress, rule: WatchRule): string | null {
  if (enoughProgress(p, rule)) return null;
  return `no progress: ${p.ticks} of ${rule.ticks} TICK lines (disk oracle) and ${p.sweeps} of ${rule.sweeps} sweep lines (memory oracle) within ${Math.round(rule.timeoutMs / 1000)}s: the guest hangs or an oracle died`;
}
