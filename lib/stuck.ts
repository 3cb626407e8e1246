// Which domains are stuck: left frozen by a run that is over, and not
// brought back by any thaw since. The one rule for it, used by the pre hook
// (named loudly before every freeze), post (its exit status, and which of its
// snapshots hold an old disk), status and the watchdog.
import type { Journal, JournalEntry } from './journal.js';
import { ownerIsAlive } from './owner.js';
import type { FreezePlan } from './plan.js';
import { isInSubtree } from './zfs.js';

/**
 * The one rule for taking over a domain's journal entry: neither the run's
 * owner (sanoid, or `virtsnap snapshot`) nor the process that froze it (the
 * pre hook, which sanoid's script_timeout can orphan) is alive.
 */
export function abandoned(entry: Pick<JournalEntry, 'owner' | 'worker'>): boolean {
  return !ownerIsAlive(entry.owner) && !(entry.worker !== undefined && ownerIsAlive(entry.worker));
}

/** Whether one of the domain's disks in the journal entry lies in one of `datasets`' subtrees. */
export function touches(entry: Pick<JournalEntry, 'overlays'>, datasets: readonly string[]): boolean {
  return entry.overlays.some((o) => datasets.some((ds) => isInSubtree(o.dataset, ds)));
}

/**
 * An entry whose domain no thaw brought back: abandoned, and not yet on its
 * own disks. (At step committed the VM is back; only its dump waits.)
 */
export function isStuck(entry: JournalEntry): boolean {
  return abandoned(entry) && entry.step !== 'committed';
}

export interface Stuck {
  name: string;
  uuid: string;
  message: string;
  entry: JournalEntry | null;
}

/**
 * Domains with disks in `datasets` that no thaw could bring back: still on
 * an overlay of ours with no live run holding them, or an abandoned journal
 * entry (undefined, shut down on overlays, a commit that keeps failing).
 * Every snapshot of these datasets holds such a domain's disk as it was when
 * it was frozen.
 */
export function stuckDomains(datasets: readonly string[], onOverlays: FreezePlan['onOverlays'], journal: Pick<Journal, 'list' | 'read'>): Stuck[] {
  const result: Stuck[] = [];
  const seen = new Set<string>();
  for (const entry of journal.list()) {
    if (!isStuck(entry) || !touches(entry, datasets)) continue;
    seen.add(entry.domain.uuid);
    result.push({
      name: entry.domain.name,
      uuid: entry.domain.uuid,
      entry,
      message:
        entry.mode === 'quiesce'
          ? `domain ${JSON.stringify(entry.domain.name)} may still have its filesystems frozen since ${entry.frozenAt ?? entry.startedAt} (run ${entry.runId}): its guest agent did not confirm a thaw; \`virsh domfsthaw ${entry.domain.name}\`, then \`virtsnap recover\``
          : `domain ${JSON.stringify(entry.domain.name)} is stuck since ${entry.frozenAt ?? entry.startedAt} (run ${entry.runId}, step ${entry.step}): ` +
            `snapshots hold its disk as it was then, not its newest writes; \`virtsnap status\` says why, \`virtsnap recover\` retries, \`virtsnap recover --discard\` ends it`,
    });
  }
  for (const d of onOverlays) {
    if (seen.has(d.uuid) || journal.read(d.uuid) !== null) continue;
    result.push({ name: d.name, uuid: d.uuid, entry: null, message: d.reason });
  }
  return result;
}

