// The pre and post halves of a snapshot run, shared by the sanoid hooks and
// by `virtsnap snapshot`: parse input -> inventory -> plan -> freeze/thaw.
import type { Config } from './config.js';
import { LockTimeoutError, VirtsnapError } from './errors.js';
import { freeze, thawRun, type Deps, type ThawResult } from './freeze.js';
import { takeInventory } from './inventory.js';
import { Journal } from './journal.js';
import { hookOwnerPid, ownerIsAlive, ownerOf } from './owner.js';
import { sleep } from './lock.js';
import { LibvirtClient } from './libvirt/virsh.js';
import { log } from './log.js';
import { planFreeze, runIdOf, type FreezePlan, type RunRequest } from './plan.js';
import { recover } from './recovery.js';
import { ZfsClient } from './zfs.js';

/** `ownerPid`: the process whose death ends the run; the hooks' is sanoid. */
export function makeDeps(config: Config, ownerPid = hookOwnerPid()): Deps {
  return {
    virsh: new LibvirtClient({ uri: config.libvirtUri }),
    zfs: new ZfsClient(),
    config,
    journal: new Journal(config.stateDir),
    owner: ownerOf(ownerPid),
  };
}

export interface PreOptions {
  /** Override sanoid.conf: snapshot the targets' whole subtrees (`zfs snapshot -r`). */
  recursive?: boolean;
}

export async function planRun(request: RunRequest, deps: Deps, options: PreOptions = {}): Promise<FreezePlan> {
  await deps.virsh.version(); // fail early, with a clear message, when libvirt is unreachable
  const inventory = await takeInventory(request.targets, deps.config, deps, options);
  return planFreeze(request, inventory, deps.config);
}

/** Domains of the plan still frozen by another run that is alive: wait for those, they are not leftovers. */
function heldByLiveRuns(plan: FreezePlan, deps: Deps): string[] {
  const held: string[] = [];
  for (const d of plan.onOverlays) {
    const entry = deps.journal.read(d.uuid);
    if (entry !== null && entry.runId !== plan.runId && ownerIsAlive(entry.owner)) held.push(`${JSON.stringify(d.name)} (run ${entry.runId})`);
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
  if (plan.domains.length === 0 && plan.problems.length === 0) {
    log.debug('no domain has disks here: nothing to freeze', { dataset });
    return plan;
  }
  await freeze(plan, deps);
  return plan;
}

/** post: thaw what pre froze and archive the RAM dumps. Throws when any domain could not be thawed. */
export async function runPost(request: RunRequest, deps: Deps): Promise<ThawResult> {
  const result = await thawRun(runIdOf(request), deps);
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
