// `virtsnap snapshot DATASET [-r] [--name NAME]`: a one-off consistent
// snapshot, the same freeze/thaw as the hooks with `zfs snapshot` between.
import type { ArchivedDump } from '../manifest.js';
import { VirtsnapError } from '../errors.js';
import type { Deps } from '../deps.js';
import { thawRun } from '../thaw.js';
import { stampOf } from '../inventory.js';
import { log } from '../log.js';
import { runIdOf, type FreezePlan } from '../plan.js';
import { planRun, runPost, runPre } from '../runs.js';
import { assertDatasetName, assertSnapshotName } from '../zfs.js';

export interface SnapshotOptions {
  dataset: string;
  recursive: boolean;
  name?: string;
  dryRun: boolean;
}

export interface SnapshotResult {
  snapshots: string[];
  plan: FreezePlan;
  dumps: ArchivedDump[];
}

export function defaultSnapshotName(now = new Date()): string {
  return `virtsnap_${stampOf(now).replace(/\.\d+Z$/, 'Z')}`;
}

export async function oneOffSnapshot(options: SnapshotOptions, deps: Deps): Promise<SnapshotResult> {
  assertDatasetName(options.dataset, 'virtsnap snapshot');
  const name = options.name ?? defaultSnapshotName();
  assertSnapshotName(name, '--name');
  const request = { targets: [options.dataset], snapnames: [name], types: [] };
  const snapshot = `${options.dataset}@${name}`;
  if (options.dryRun) {
    return { snapshots: [snapshot], plan: await planRun(request, deps, { recursive: options.recursive }), dumps: [] };
  }
  // Refused early, for a clear message; the thaw checks again by guid, so a
  // snapshot of this name made meanwhile is never taken for ours either.
  const taken = (await deps.zfs.listSnapshots(options.dataset, options.recursive)).filter((s) => s.endsWith(`@${name}`));
  if (taken.length > 0) {
    throw new VirtsnapError(`snapshot ${taken.join(', ')} already exists: choose another --name`);
  }
  let plan: FreezePlan;
  try {
    plan = await runPre(request, deps, { recursive: options.recursive });
  } catch (err) {
    // runPre undoes what it froze; if that undo failed too, this is the post hook's second chance.
    await thawRun(runIdOf(request), deps).catch(() => undefined);
    throw err;
  }
  let snapshotError: unknown = null;
  try {
    await deps.zfs.snapshot([snapshot], options.recursive);
    log.info(`took ZFS snapshot ${snapshot}${options.recursive ? ' (recursive)' : ''}`, { dataset: options.dataset });
  } catch (err) {
    snapshotError = err;
  }
  // Thaw whether or not the snapshot worked: the VMs must leave their overlays.
  if (snapshotError !== null) {
    // No snapshot, so no dump is kept: that is the consequence, zfs's error the
    // cause. A VM that could not be thawed is said first, loudest.
    const { failures } = await thawRun(runIdOf(request), deps);
    if (failures.length > 0) throw new VirtsnapError(`${failures.map((f) => f.message).join('; ')} (and zfs snapshot failed: ${(snapshotError as Error).message})`);
    throw snapshotError;
  }
  const { sealed: dumps } = await runPost(request, deps);
  // quiesce keeps no dump (unless the guest agent failed and ram stood in).
  const expected = plan.domains.filter((d) => d.action === 'freeze' && d.mode !== 'quiesce').length;
  if (dumps.length < expected) {
    throw new VirtsnapError(`snapshot ${snapshot} was taken but only ${dumps.length} of ${expected} RAM dumps were kept (see above)`);
  }
  return { snapshots: [snapshot], plan, dumps };
}
