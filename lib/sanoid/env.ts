// What sanoid tells its hooks, through environment variables.
//
// One pre/post pair covers every type due in one run for one dataset
// (sanoid >= 2.1.0), so a run is: targets x snapnames. Quirks handled here:
// - SANOID_SNAPNAME is `name` in pre but `dataset@name` in post (sanoid
//   #798: a Perl foreach alias rewrites the array in place). We prefer
//   SANOID_SNAPNAMES and strip `dataset@` from SANOID_SNAPNAME.
// - SANOID_TARGET is deprecated in favour of SANOID_TARGETS (always one
//   dataset so far); we accept either.
// - pre_pruning_script (2.2.0+) gets no SANOID_SCRIPT at all.
import { UsageError } from '../errors.js';
import { assertDatasetName, assertSnapshotName } from '../zfs.js';

export type SnapshotPhase = 'pre' | 'post';

export interface SnapshotRun {
  phase: SnapshotPhase;
  /** Datasets sanoid snapshots in this run (SANOID_TARGETS). */
  targets: string[];
  /** Snapshot names without the dataset, largest type first (SANOID_SNAPNAMES). */
  snapnames: string[];
  /** Snapshot types, in the same order (SANOID_TYPES); may be empty. */
  types: string[];
  /** post only: sanoid says the pre hook failed (SANOID_PRE_FAILURE=1). */
  preFailure: boolean;
}

export interface PruneEvent {
  /** What sanoid says it is running: 'prune' after a destroy, null from pre_pruning_script. */
  script: 'prune' | null;
  dataset: string;
  snapname: string;
}

const hookOf: Record<SnapshotPhase, string> = {
  pre: 'pre_snapshot_script = .../hooks/pre-snapshot',
  post: 'post_snapshot_script = .../hooks/post-snapshot',
};

export function parseSnapshotEnv(env: NodeJS.ProcessEnv, phase: SnapshotPhase): SnapshotRun {
  const script = env.SANOID_SCRIPT;
  if (script === undefined || script === '') {
    throw new UsageError(
      `SANOID_SCRIPT is not set: this hook is run by sanoid (${hookOf[phase]}); for a one-off snapshot use \`virtsnap snapshot DATASET\``,
    );
  }
  if (script !== phase) {
    throw new UsageError(
      `this is the ${phase} hook but sanoid runs it as SANOID_SCRIPT=${script}: in sanoid.conf set ${hookOf[phase]}`,
    );
  }
  const targets = parseTargets(env);
  const snapnames = parseSnapnames(env);
  const types = splitList(env.SANOID_TYPES ?? '');
  if (types.length > 0 && types.length !== snapnames.length) {
    throw new UsageError(
      `SANOID_TYPES (${env.SANOID_TYPES}) and SANOID_SNAPNAMES (${snapnames.join(',')}) differ in length: this hook expects sanoid 2.1.0 or newer`,
    );
  }
  return { phase, targets, snapnames, types, preFailure: env.SANOID_PRE_FAILURE === '1' };
}

export function parsePruneEnv(env: NodeJS.ProcessEnv): PruneEvent {
  const script = env.SANOID_SCRIPT;
  if (script !== undefined && script !== '' && script !== 'prune') {
    throw new UsageError(`this is the prune hook but sanoid runs it as SANOID_SCRIPT=${script}: in sanoid.conf set pruning_script = .../hooks/prune`);
  }
  const dataset = required(env, 'SANOID_TARGET', 'pruning_script');
  assertDatasetName(dataset, 'SANOID_TARGET');
  const snapname = stripDataset(required(env, 'SANOID_SNAPNAME', 'pruning_script'), dataset);
  assertSnapshotName(snapname, 'SANOID_SNAPNAME');
  return { script: script === 'prune' ? 'prune' : null, dataset, snapname };
}

function parseTargets(env: NodeJS.ProcessEnv): string[] {
  const name = env.SANOID_TARGETS ? 'SANOID_TARGETS' : 'SANOID_TARGET';
  const raw = env[name];
  if (raw === undefined || raw === '') {
    throw new UsageError('neither SANOID_TARGETS nor SANOID_TARGET is set: run this hook from sanoid 2.1.0 or newer');
  }
  const targets = splitList(raw);
  if (targets.length === 0) throw new UsageError(`${name}=${JSON.stringify(raw)} names no dataset`);
  for (const t of targets) assertDatasetName(t, name);
  return targets;
}

function parseSnapnames(env: NodeJS.ProcessEnv): string[] {
  const list = env.SANOID_SNAPNAMES;
  const names = list ? splitList(list) : splitList(env.SANOID_SNAPNAME ?? '').map((n) => stripDataset(n));
  if (names.length === 0) {
    throw new UsageError('neither SANOID_SNAPNAMES nor SANOID_SNAPNAME is set: run this hook from sanoid 2.1.0 or newer');
  }
  for (const n of names) assertSnapshotName(n, list ? 'SANOID_SNAPNAMES' : 'SANOID_SNAPNAME');
  return names;
}

/** `tank/vm@autosnap_x` -> `autosnap_x`; a bare name is returned as is. */
export function stripDataset(name: string, dataset?: string): string {
  const at = name.indexOf('@');
  if (at < 0) return name;
  const prefix = name.slice(0, at);
  if (dataset !== undefined && prefix !== dataset) {
    throw new UsageError(`SANOID_SNAPNAME=${name} is not a snapshot of SANOID_TARGET=${dataset}`);
  }
  return name.slice(at + 1);
}

function splitList(raw: string): string[] {
  return raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function required(env: NodeJS.ProcessEnv, key: string, hook: string): string {
  const value = env[key];
  if (value === undefined || value === '') throw new UsageError(`${key} is not set: this hook is run by sanoid as ${hook}`);
  return value;
}
