// The pre and post halves of a snapshot run, shared by the sanoid hooks and
// by `virtsnap snapshot`: parse input -> inventory -> plan -> freeze/thaw.
import type { Deps } from './deps.js';
import { LockTimeoutError, VirtsnapError } from './errors.js';
import { takeInventory } from './inventory.js';
import type { JournalEntry } from './journal.js';
import { sleep } from './lock.js';
import { log } from './log.js';
import { planFreeze, runIdOf, type FreezePlan, type RunRequest } from './plan.js';
import { abandoned, recover } from './recovery.js';
// freeze.js and thaw.js load when a run has a domain to freeze or thaw (see recovery.ts).
import type { ThawResult } from './thaw.js';
import { startWatchdog } from './watchdog.js';
import { recordRun } from './metrics.js';
import { isInSubtree } from './zfs.js';

export { makeDeps } from './deps.js';

export interface PreOptions {
  /** Override sanoid.conf: snapshot the targets' whole subtrees (`zfs snapshot -r`). */
  recursive?: boolean;
}

export async function planRun(request: RunRequest, deps: Deps, options: PreOptions = {}): Promise<FreezePlan> {
  // libvirt unreachable: the inventory's first libvirt call says so, before anything is touched.
  const inventory = await takeInventory(request.targets, deps.config, deps, options);
  return planFreeze(request, inventory, deps.config);
}

/** Domains of the plan still frozen by another run that is alive: wait for those, they are not leftovers. */
function heldByLiveRuns(plan: FreezePlan, deps: Deps): string[] {
  const held: string[] = [];
  for (const d of [...plan.onOverlays, ...plan.domains]) {
    const entry = deps.journal.read(d.uuid);
    if (entry !== null && entry.runId !== plan.runId && !abandoned(entry)) held.push(`${JSON.stringify(d.name)} (run ${entry.runId})`);
  }
  return held;
}

/** Plans once every domain concerned is free of other live runs, waiting at most VIRTSNAP_LOCK_TIMEOUT. */
async function planWhenFree(request: RunRequest, deps: Deps, options: PreOptions): Promise<FreezePlan> {
  const deadline = Date.now() + deps.config.lockTimeoutMs;
  let logged = false;
  for (;;) {
    const plan = await planRun(request, deps, options);
    const held = heldByLiveRuns(plan, deps);
    if (held.length === 0) return plan;
    if (Date.now() >= deadline) {
      throw new LockTimeoutError(`${held.join(', ')} still frozen by another run after ${Math.round(deps.config.lockTimeoutMs / 1000)}s: let it finish, or run \`virtsnap recover\` if it died`);
    }
    if (!logged) log.info(`waiting for ${held.join(', ')} to be thawed by the run that froze it`, { dataset: request.targets.join(',') });
    logged = true;
    await sleep(500);
  }
}

/** pre: freeze every domain with disks in the run's datasets. */
export async function runPre(request: RunRequest, deps: Deps, options: PreOptions = {}): Promise<FreezePlan> {
  // A run that died (sanoid killed, host crashed) left its domains in the
  // journal, maybe on overlays: finish it first, or they would block this run.
  await recover(deps, { force: false, quietIfLive: true });
  const plan = await planWhenFree(request, deps, options);
  const dataset = request.targets.join(',');
  // Loud, but not a reason to leave the other VMs unfrozen: the pre hook still
  // exits 0, so sanoid snapshots them (even with no_inconsistent_snapshot).
  for (const s of stuckDomains(plan.datasets, plan.onOverlays, deps)) log.error(s.message, { domain: s.name, dataset });
  for (const d of plan.notFrozen) log.error(d.reason, { domain: d.name, dataset });
  // Each counts as a failure in the metrics: its snapshot has no RAM, and nothing else would say so there.
  if (plan.notFrozen.length > 0) await recordRun(deps.config, { dumps: [], failed: plan.notFrozen.map(({ name, uuid }) => ({ name, uuid })) });
  if (plan.domains.length === 0 && plan.problems.length === 0) {
    log.debug('no domain to freeze here', { dataset });
    return plan;
  }
  // Before the first claim: from here on, if we die, the watchdog brings the VMs back.
  if (plan.problems.length === 0 && plan.domains.some((d) => d.action === 'freeze')) await startWatchdog(plan.runId, deps.config);
  const { freeze } = await import('./freeze.js');
  try {
    await freeze(plan, deps);
  } catch (err) {
    await recordRun(deps.config, { dumps: [], failed: [], runFailed: true });
    throw err;
  }
  return plan;
}

export interface Stuck {
  name: string;
  uuid: string;
  message: string;
  entry: JournalEntry | null;
}

function touches(entry: JournalEntry, datasets: readonly string[]): boolean {
  return entry.overlays.some((o) => datasets.some((ds) => isInSubtree(o.dataset, ds)));
}

/**
 * Domains with disks in `datasets` that no thaw could bring back: still on
 * an overlay of ours with no live run holding them, or an abandoned journal
 * entry (undefined, shut down on overlays, a commit that keeps failing).
 * Every snapshot of these datasets holds such a domain's disk as it was when
 * it was frozen.
 */
export function stuckDomains(datasets: readonly string[], onOverlays: FreezePlan['onOverlays'], deps: Pick<Deps, 'journal'>): Stuck[] {
  const result: Stuck[] = [];
  const seen = new Set<string>();
  for (const entry of deps.journal.list()) {
    // At step committed the VM is back; only its dump waits for the archive (recover retries that).
    if (!abandoned(entry) || entry.step === 'committed' || !touches(entry, datasets)) continue;
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
    if (seen.has(d.uuid) || deps.journal.read(d.uuid) !== null) continue;
    result.push({ name: d.name, uuid: d.uuid, entry: null, message: d.reason });
  }
  return result;
}

/** post: thaw what pre froze and archive the RAM dumps. Throws when any domain could not be thawed. */
export async function runPost(request: RunRequest, deps: Deps): Promise<ThawResult> {
  const result = await (await import('./thaw.js')).thawRun(runIdOf(request), deps);
  await recordRun(deps.config, { dumps: result.dumps.map((d) => d.manifest), failed: result.withoutDump });
  // The run's snapshots that hold a stuck domain's old disk are recorded as such (`virtsnap status`).
  const stuck = stuckDomains(request.targets, [], deps);
  for (const s of stuck) {
    // A quiesced VM's disks never moved: its snapshots are current, only its filesystems may be frozen.
    if (s.entry === null || s.entry.mode === 'quiesce') continue;
    const mine = request.targets.filter((t) => touches(s.entry!, [t])).flatMap((t) => request.snapnames.map((n) => `${t}@${n}`));
    // Under the domain's mutex, on the entry as it is now: never one a thaw removed or a new run claimed meanwhile.
    await deps.journal
      .withMutex(s.uuid, Date.now() + deps.config.lockTimeoutMs, () => {
        const current = deps.journal.read(s.uuid);
        if (current === null || current.tag !== s.entry!.tag) return;
        deps.journal.tryUpdate(current, { staleSnapshots: [...new Set([...(current.staleSnapshots ?? []), ...mine])] });
      })
      .catch((err: Error) => log.warn(`cannot record which snapshots hold its old disk: ${err.message}`, { domain: s.name }));
  }
  if (stuck.length > 0) result.failures.push(...stuck.map((s) => s.message));
  if (result.failures.length > 0) {
    throw new VirtsnapError(result.failures.length === 1 ? result.failures[0]! : `${result.failures.length} domains could not be thawed (see above)`);
  }
  if (result.discarded.length > 0) {
    throw new VirtsnapError(
      `no RAM dump kept for ${result.discarded.map((n) => JSON.stringify(n)).join(', ')} (back on its own disks; see above why): ${request.targets.join(',')}@${request.snapnames[0] ?? ''} holds their disks without RAM`,
    );
  }
  return result;
}
