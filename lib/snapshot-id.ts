// How a snapshot is identified, in one place.
//
// A name is not an identity: sanoid may reuse one (its DST fall-back), a user
// may create `tank/vm@X` before `virtsnap snapshot --name X`, and `zfs rename`
// or `zfs promote` move a snapshot to another name. ZFS gives every snapshot
// a guid that survives rename, promote and `zfs send | zfs recv`; a dump is
// tied to its snapshots by guid, and found again by guid.
//
// A dump may only be tied to a snapshot taken while the VM's disks stood
// still: after its RAM was saved (the disks switched to overlays, or the
// domain stayed paused) and before the first block commit. virtsnap records
// which snapshots of the run's names exist right after the freeze, and looks
// again right before the commit: only snapshots that appeared in between are
// the disk state of the RAM's instant.
import { isInSubtree, poolOf, splitSnapshot, type GuidCensus, type SnapshotProps } from './zfs.js';

export interface SnapshotRef {
  /** dataset@snapname, as last seen (list, gc and prune follow renames and promotes). */
  name: string;
  /** dataset@snapname when the dump was tied to it: the disk paths inside the dump name its dataset as it was then. */
  frozenAs: string;
  /** ZFS guid; null only in dumps archived before virtsnap recorded guids (found by name then). */
  guid: string | null;
  createtxg: string | null;
  /** Seconds since the epoch. */
  creation: number | null;
  /** Where its dataset was mounted when the dump was taken: the disk paths inside the dump are under it. */
  mountpoint: string | null;
}

/** A ref from a manifest written before guids were recorded. */
export function legacyRef(name: string): SnapshotRef {
  return { name, frozenAs: name, guid: null, createtxg: null, creation: null, mountpoint: null };
}

export interface TieInput {
  /** Every dataset@snapname the run was to take for this domain. */
  wanted: string[];
  /** guids of those names that already existed right after the freeze (undefined: not recorded, an older journal). */
  existedAtFreeze: Record<string, string> | undefined;
  /** What ZFS says now, right before the first commit. */
  now: Map<string, SnapshotProps>;
  /** Datasets ZFS does not know now (renamed or destroyed since the freeze). */
  unknownDatasets: ReadonlySet<string>;
  /** When the freeze began (ms since the epoch): nothing older can hold its disks. */
  freezeStartedMs: number;
  mountpointOf: (dataset: string) => string | null;
}

export interface TieResult {
  tied: SnapshotRef[];
  /** Names the dump is not tied to, and why. */
  refused: { name: string; reason: string }[];
}

/** Which of the run's snapshots hold the disks exactly as they were when the RAM was saved. */
export function tieSnapshots(input: TieInput): TieResult {
  const result: TieResult = { tied: [], refused: [] };
  for (const name of input.wanted) {
    const { dataset } = splitSnapshot(name);
    const props = input.now.get(name);
    if (props === undefined) {
      const why = input.unknownDatasets.has(dataset)
        ? `dataset ${dataset} does not exist any more (renamed or destroyed while the VM was frozen)`
        : 'it does not exist (zfs snapshot failed, or it was not taken before the thaw)';
      result.refused.push({ name, reason: why });
      continue;
    }
    const before = input.existedAtFreeze?.[name];
    if (before !== undefined && before === props.guid) {
      result.refused.push({ name, reason: `it existed before the freeze (guid ${props.guid}), so it holds older disk state` });
      continue;
    }
    // Whole seconds: a snapshot from the second the freeze began still passes
    // this check, which is why the guids seen at the freeze are the real test.
    if (props.creation < Math.floor(input.freezeStartedMs / 1000)) {
      result.refused.push({ name, reason: `it was created at ${new Date(props.creation * 1000).toISOString()}, before the freeze began` });
      continue;
    }
    result.tied.push({ name, frozenAs: name, guid: props.guid, createtxg: props.createtxg, creation: props.creation, mountpoint: input.mountpointOf(dataset) });
  }
  return result;
}

/** Where a ref's snapshot is now: its current name, 'gone', or 'unknown' (its pool is not imported). */
export function locate(ref: SnapshotRef, census: GuidCensus): string | 'gone' | 'unknown' {
  const { dataset } = splitSnapshot(ref.name);
  if (ref.guid !== null) {
    const found = census.byGuid.get(ref.guid) ?? [];
    // Its pool not imported here (another host, whose snapshots came by
    // `zfs recv`): unknown, unless a received copy is in a pool we looked at.
    if (found.length === 0) return census.unknownPools.has(poolOf(dataset)) ? 'unknown' : 'gone';
    // The one it was last seen as; else the same snapshot renamed or promoted
    // (same createtxg); else a received copy, the only one left of it.
    const pick = found.find((f) => f.name === ref.name) ?? found.find((f) => f.createtxg === ref.createtxg) ?? [...found].sort((a, b) => a.name.localeCompare(b.name))[0]!;
    return pick.name;
  }
  // No guid (an old manifest): by name, and never gone while its dataset is unknown (renamed?).
  if (census.unknownPools.has(poolOf(dataset))) return 'unknown';
  if (census.names.has(ref.name)) return ref.name;
  return census.datasets.has(dataset) ? 'gone' : 'unknown';
}

/** The refs under their current names (gone or unknown ones keep the name they had). */
export function follow(refs: readonly SnapshotRef[], census: GuidCensus): SnapshotRef[] {
  return refs.map((r) => {
    const where = locate(r, census);
    return where === 'gone' || where === 'unknown' ? r : { ...r, name: where };
  });
}

/** `name` is `dataset@snapname` or a child's snapshot of that name: what a restore of `dataset@snapname` takes. */
export function isSnapshotAt(name: string, dataset: string, snapname: string): boolean {
  const p = splitSnapshot(name);
  return p.snapname === snapname && isInSubtree(p.dataset, dataset);
}

/**
 * The refs that are `dataset@snapname` or a child's snapshot of that name,
 * under those names: matched by guid, so a dump is found for a received copy
 * of its snapshot (another pool, another dataset name, on a backup host)
 * even where the original is imported too. A ref without guid (an old
 * manifest) only by its name. `census` must cover the dataset's pool.
 */
export function refsAt(refs: readonly SnapshotRef[], census: GuidCensus, dataset: string, snapname: string): SnapshotRef[] {
  const here = (name: string): boolean => isSnapshotAt(name, dataset, snapname);
  return refs.flatMap((r) => {
    if (r.guid === null) return here(r.name) && census.names.has(r.name) ? [r] : [];
    const copy = (census.byGuid.get(r.guid) ?? []).find((f) => here(f.name));
    return copy === undefined ? [] : [{ ...r, name: copy.name }];
  });
}
