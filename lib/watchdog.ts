// The watchdog: from the moment a run starts freezing until its thaw, a
// process outside the hook makes sure the VMs come back.
//
// Why: sanoid's script_timeout kills sanoid itself (SIGALRM) and the hook
// runs on as an orphan; `kill -9` of a hook or of sanoid, a stop of
// sanoid.service, an OOM kill: in each, nobody runs post. The watchdog sees
// the run's owner and the freezing process gone while domains of the run are
// still in the journal, waits for any thaw in progress (the per-domain thaw
// lock), and commits them back through the same recover as everyone else.
// A dump is kept only if a snapshot of the run was taken while the disks
// stood still (lib/snapshot-id.ts); otherwise it belongs to no snapshot and
// is discarded.
//
// How it is started, and how it sees the run's settings: lib/detached.ts.
import type { Config } from './config.js';
import type { Deps } from './deps.js';
import { alarm, startHelper } from './detached.js';
import { sleep } from './lock.js';
import { ownerIsAlive, ownerOf, type Owner } from './owner.js';
import { recover } from './recovery.js';
import { abandoned } from './stuck.js';
import type { JournalEntry } from './journal.js';
import { thawDomain } from './thaw.js';
import { startArchiver } from './archiver.js';
import { isWaiting } from './manifest.js';

/** How often the watchdog looks: with a thaw of a few seconds, VMs are back well within a minute. */
export const WATCH_INTERVAL_MS = 2_000;

const MAX_TRIES = 3;

export type Verdict = 'wait' | 'thaw' | 'done' | 'give-up';

/**
 * What the watchdog does next, from what it sees. Pure: the rule in one place.
 * `entries`: the run's journal entries; `starterAlive`: the process that
 * started the watchdog (the pre hook, or `virtsnap snapshot`) still runs;
 * `failedBefore`: entries that a recover of ours already failed on.
 */
export function verdict(entries: readonly { abandoned: boolean; tag: string }[], starterAlive: boolean, failedBefore: ReadonlySet<string>): Verdict {
  if (entries.length === 0) return starterAlive ? 'wait' : 'done';
  const orphans = entries.filter((e) => e.abandoned);
  if (orphans.length === 0) return 'wait';
  if (orphans.every((e) => failedBefore.has(e.tag))) return entries.length === orphans.length ? 'give-up' : 'wait';
  return 'thaw';
}

/** Watches run `runId` until none of its domains is frozen and the process that started it is gone. */
export async function watch(runId: string, starter: Owner, deps: Deps, intervalMs = WATCH_INTERVAL_MS): Promise<number> {
  const failures = new Map<string, number>();
  const failed = new Set<string>(); // given up on after MAX_TRIES
  const ctx = { dataset: runId };
  for (;;) {
    // Nothing may end the watch early but its own verdict: an unreadable
    // journal file or a failed libvirt call is said, then looked at again.
    try {
      let entries = deps.journal.list().filter((e) => e.runId === runId);
      const late = overdue(entries, deps.config.pauseMaxMs);
      if (late.length > 0) {
        await resumeOverdue(entries.filter((e) => late.includes(e.tag)), deps, ctx, failures);
        entries = deps.journal.list().filter((e) => e.runId === runId);
      }
      const next = verdict(
        entries.map((e) => ({ abandoned: abandoned(e), tag: e.tag })),
        ownerIsAlive(starter),
        failed,
      );
      if (next === 'done') return 0;
      if (next === 'give-up') {
        await alarm('watchdog', `run ${runId}: ${entries.map((e) => JSON.stringify(e.domain.name)).join(', ')} could not be brought back (see above): \`virtsnap status\` names them, \`virtsnap recover\` retries`, ctx);
        return 1;
      }
      // Stopped (host shutdown, systemctl stop): nothing of ours is abandoned now, and the run's own hooks handle their signals.
      if (next === 'wait' && deps.stop.requested !== null) return 0;
      if (next === 'thaw') {
        const names = entries.filter((e) => abandoned(e)).map((e) => JSON.stringify(e.domain.name));
        await alarm('watchdog', `run ${runId} ended without its post hook (its owner, pid ${entries[0]!.owner.pid}, is gone) while ${names.join(', ')} were frozen: committing them back`, ctx);
        const result = await recover(deps, { force: false, quietIfLive: true, runId });
        if (result.recovered.length > 0) await alarm('watchdog', `run ${runId}: ${result.recovered.map((n) => JSON.stringify(n)).join(', ')} back on their own disks`, ctx, 'warn');
        if (result.failed.length === 0) continue;
        // libvirtd restarting, a commit that timed out: try again a few times before giving up.
        for (const e of deps.journal.list().filter((x) => x.runId === runId && result.failed.includes(x.domain.name))) {
          const n = (failures.get(e.tag) ?? 0) + 1;
          failures.set(e.tag, n);
          if (n >= MAX_TRIES || result.stuck.includes(e.domain.name)) failed.add(e.tag);
        }
      }
    } catch (err) {
      await alarm('watchdog', `run ${runId}: ${(err as Error).message}: looking again`, ctx);
    }
    await sleep(intervalMs);
  }
}

/**
 * Pause mode keeps a guest paused from its RAM save to post. A run that is
 * alive but slow (a ZFS snapshot that hangs, sanoid busy elsewhere) must not
 * keep it paused for long: VIRTSNAP_PAUSE_MAX after the run's freezing ended
 * (the pre hook gone, its last VM frozen: a VM paused early while others
 * were still being saved is not late), the watchdog thaws the paused ones
 * itself. A dump is kept only if a snapshot of the run was taken meanwhile.
 * Returns the tags of the entries to thaw.
 */
export function overdue(
  entries: readonly Pick<JournalEntry, 'mode' | 'step' | 'frozenAt' | 'stateBefore' | 'worker' | 'tag'>[],
  pauseMaxMs: number,
  now = Date.now(),
  freezing = (e: Pick<JournalEntry, 'worker'>) => e.worker !== undefined && ownerIsAlive(e.worker),
): string[] {
  if (entries.length === 0 || entries.some((e) => e.step === 'snapshotting' || freezing(e))) return [];
  const frozenAts = entries.flatMap((e) => (e.frozenAt === undefined ? [] : [Date.parse(e.frozenAt)]));
  if (frozenAts.length === 0 || now - Math.max(...frozenAts) <= pauseMaxMs) return [];
  return entries.filter((e) => e.mode === 'pause' && e.step === 'frozen' && e.stateBefore !== 'paused').map((e) => e.tag);
}

/** Thaws overdue pause entries (resume, tie and seal), each at most MAX_TRIES times. */
async function resumeOverdue(entries: JournalEntry[], deps: Deps, ctx: { dataset: string }, tries: Map<string, number>): Promise<void> {
  const limit = Math.round(deps.config.pauseMaxMs / 1000);
  for (const e of entries) {
    const n = (tries.get(`pause:${e.tag}`) ?? 0) + 1;
    if (n > MAX_TRIES) continue; // said three times already; status and the run's own post name it
    tries.set(`pause:${e.tag}`, n);
    try {
      const { back, dump } = await thawDomain(e, deps, { keepDump: true });
      if (back.kind === 'elsewhere') continue; // post came meanwhile
      const kept = dump.kind === 'sealed' ? 'its RAM dump is kept for the snapshot taken meanwhile' : 'no snapshot of the run was taken while it was paused, so no RAM dump is kept';
      await alarm('watchdog', `${JSON.stringify(e.domain.name)} was still paused ${limit}s (VIRTSNAP_PAUSE_MAX) after the run froze it, waiting for post: resumed it; ${kept}`, ctx);
      if (dump.kind === 'sealed' && isWaiting(dump.dump.manifest)) await startArchiver(deps.config);
    } catch (err) {
      await alarm('watchdog', `${JSON.stringify(e.domain.name)} has been paused for more than VIRTSNAP_PAUSE_MAX (${limit}s) and could not be resumed: ${(err as Error).message}`, ctx);
    }
  }
}

/**
 * Starts the watchdog for a run, before its first domain is claimed. A run
 * whose watchdog cannot be started is refused: nothing would bring its VMs
 * back if we died.
 */
export async function startWatchdog(runId: string, config: Config, starterPid = process.pid): Promise<void> {
  const starter = ownerOf(starterPid);
  await startHelper('watchdog', ['--run', runId, '--starter', `${starter.pid}:${starter.startTime}`], config);
}

/** `PID:STARTTIME` from the command line: the starter, so that a reused pid is never taken for it. */
export function parseStarter(text: string | undefined): Owner | null {
  const m = /^(\d+)(?::(\S+))?$/.exec(text ?? '');
  if (m === null) return null;
  const live = ownerOf(Number(m[1]));
  return { ...live, startTime: m[2] ?? live.startTime };
}
