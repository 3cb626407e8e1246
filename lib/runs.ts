// The pre and post halves of a snapshot run, shared by the sanoid hooks and
// by `virtsnap snapshot`: parse input -> inventory -> plan -> freeze/thaw.
import type { Deps } from './deps.js';
import { LockTimeoutError, VirtsnapError } from './errors.js';
import { takeInventory } from './inventory.js';
import { sleep } from './lock.js';
import { log } from './log.js';
import { planFreeze, runIdOf, type FreezePlan, type RunRequest } from './plan.js';
import { recover } from './recovery.js';
import { abandoned, stuckDomains } from './stuck.js';
import { spoolHasDumps, startArchiver } from './archiver.js';
import { isWaiting } from './manifest.js';
// freeze.js and thaw.js load when a run has a domain to freeze or thaw (see recovery.ts).
import type { ThawResult } from './thaw.js';
import { startWatchdog } from './watchdog.js';
import { recordRun } from './metrics.js';

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
  // Dumps left waiting (an archiver that gave up, a reboot): an archiver for them, outside this run.
  if (deps.store.spooled && spoolHasDumps(deps.config)) await startArchiver(deps.config);
  const plan = await planWhenFree(request, deps, options);
  const dataset = request.targets.join(',');
  // Loud, but not a reason to leave the other VMs unfrozen: the pre hook still
  // exits 0, so sanoid snapshots them (even with no_inconsistent_snapshot).
  for (const s of stuckDomains(plan.datasets, plan.onOverlays, deps.journal)) log.error(s.message, { domain: s.name, dataset });
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

/** post: thaw what pre froze and seal the RAM dumps. Throws when any domain could not be thawed or kept no dump. */
export async function runPost(request: RunRequest, deps: Deps): Promise<ThawResult> {
  const { thawRun, withoutDump } = await import('./thaw.js');
  const result = await thawRun(runIdOf(request), deps, { keepDump: true }, { datasets: request.targets, snapnames: request.snapnames });
  await recordRun(deps.config, { dumps: result.sealed.map((d) => d.manifest), failed: withoutDump(result) });
  if (result.sealed.some((d) => isWaiting(d.manifest))) await startArchiver(deps.config);
  const failures = [...result.failures.map((f) => f.message), ...stuckDomains(request.targets, [], deps.journal).map((s) => s.message)];
  if (failures.length > 0) {
    throw new VirtsnapError(failures.length === 1 ? failures[0]! : `${failures.length} domains could not be thawed (see above)`);
  }
  if (result.discarded.length > 0) {
    throw new VirtsnapError(
      `no RAM dump kept for ${result.discarded.map((d) => JSON.stringify(d.name)).join(', ')} (back on its own disks; see above why): ${request.targets.join(',')}@${request.snapnames[0] ?? ''} holds their disks without RAM`,
    );
  }
  return result;
}
