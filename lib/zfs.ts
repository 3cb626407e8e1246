// ZFS: names, where datasets are mounted, and the few zfs commands we run.
//
// Only options that both OpenZFS and zfs-fuse understand are used: zfs-fuse's
// `zfs get` has no -t and its `zfs list` has no -p.
import { readFileSync, readdirSync, realpathSync, lstatSync } from 'node:fs';
import path from 'node:path';
import { CommandError, UsageError, ZfsError } from './errors.js';
import { run } from './exec.js';

// OpenZFS's valid_char(): alphanumerics and - _ . : and space.
const COMPONENT = /^[A-Za-z0-9_.: -]+$/;

export function isDatasetName(name: string): boolean {
  if (name === '' || name.startsWith('/') || name.endsWith('/')) return false;
  return name.split('/').every((c) => COMPONENT.test(c) && c !== '.' && c !== '..');
}

export function assertDatasetName(name: string, what: string): void {
  if (!isDatasetName(name)) throw new UsageError(`${what}: ${JSON.stringify(name)} is not a ZFS dataset name (like tank/vm)`);
}

export function assertSnapshotName(name: string, what: string): void {
  if (!COMPONENT.test(name)) throw new UsageError(`${what}: ${JSON.stringify(name)} is not a ZFS snapshot name (the part after @)`);
}

/** `tank/vm@autosnap_x` -> dataset `tank/vm`, snapname `autosnap_x`. */
export function splitSnapshot(snapshot: string): { dataset: string; snapname: string } {
  const at = snapshot.indexOf('@');
  return { dataset: snapshot.slice(0, at), snapname: snapshot.slice(at + 1) };
}

export function datasetOfSnapshot(snapshot: string): string {
  return splitSnapshot(snapshot).dataset;
}

/** What ZFS says identifies one snapshot. */
export interface SnapshotProps {
  guid: string;
  createtxg: string;
  /** Seconds since the epoch (ZFS keeps whole seconds). */
  creation: number;
}

/** Every snapshot of some pools, found by guid whatever its name is now. */
export interface GuidCensus {
  /**
   * guid -> every snapshot with it now (dataset@snapname and createtxg).
   * Usually one; a copy made with `zfs send | zfs recv` into the same pool
   * (syncoid to a local backup dataset) has the same guid, another createtxg.
   */
  byGuid: Map<string, { name: string; createtxg: string }[]>;
  /** Current snapshot names. */
  names: Set<string>;
  /** Filesystems and volumes of the pools. */
  datasets: Set<string>;
  /** Pools ZFS does not know right now: nothing of theirs counts as gone. */
  unknownPools: Set<string>;
}

/** `zfs get -H -p -o name,property,value guid,createtxg,creation` output -> props per snapshot name. */
export function parseSnapshotProps(out: string, needCreation = true): Map<string, SnapshotProps> {
  const partial = new Map<string, Partial<SnapshotProps>>();
  for (const line of out.split('\n')) {
    const [name, property, value] = line.split('\t');
    if (name === undefined || value === undefined || !name.includes('@')) continue;
    const p = partial.get(name) ?? {};
    if (property === 'guid') p.guid = value;
    else if (property === 'createtxg') p.createtxg = value;
    else if (property === 'creation') p.creation = Number(value);
    partial.set(name, p);
  }
  const props = new Map<string, SnapshotProps>();
  for (const [name, p] of partial) {
    if (p.guid === undefined || p.createtxg === undefined) continue;
    if (needCreation && (p.creation === undefined || !Number.isFinite(p.creation))) continue;
    props.set(name, { guid: p.guid, createtxg: p.createtxg, creation: p.creation ?? NaN });
  }
  return props;
}

export function poolOf(dataset: string): string {
  return dataset.split('/')[0]!;
}

/** `a/b` is `a/b` itself or below it. */
export function isInSubtree(dataset: string, root: string): boolean {
  return dataset === root || dataset.startsWith(root + '/');
}

export interface Mount {
  dataset: string;
  mountpoint: string;
  /** The dataset's own directory mounted there: `/` for the dataset itself, `/images` for a bind of a directory inside it. */
  root?: string;
}

/** /proc/self/mounts escapes space, tab, newline and backslash as octal. */
function unescapeMount(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Mounted ZFS filesystems (OpenZFS: type zfs; zfs-fuse: fuse.zfs), from a mounts table. */
export function parseMounts(table: string): Mount[] {
  const mounts: Mount[] = [];
  for (const line of table.split('\n')) {
    const [source, mountpoint, type] = line.split(' ');
    if (source === undefined || mountpoint === undefined) continue;
    if (type !== 'zfs' && type !== 'fuse.zfs') continue;
    const dataset = unescapeMount(source);
    if (dataset.includes('@')) continue; // a mounted snapshot is not where disks live
    mounts.push({ dataset, mountpoint: unescapeMount(mountpoint) });
  }
  return mounts;
}

/**
 * Mounted ZFS filesystems from /proc/self/mountinfo, with the directory of
 * the dataset each one shows (field 4): a bind of a directory inside a
 * dataset (`mount --bind /tank/vm/images /img`) names the dataset as its
 * source too. A disk under it is still in that dataset; the bind is no
 * mountpoint of the dataset (mountpointsOf).
 */
export function parseMountinfo(table: string): Mount[] {
  const mounts: Mount[] = [];
  for (const line of table.split('\n')) {
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const [, , , root, mountpoint] = line.slice(0, dash).split(' ');
    const [type, source] = line.slice(dash + 3).split(' ');
    if (root === undefined || mountpoint === undefined || source === undefined) continue;
    if (type !== 'zfs' && type !== 'fuse.zfs') continue;
    const dataset = unescapeMount(source);
    if (dataset.includes('@')) continue;
    mounts.push({ dataset, mountpoint: unescapeMount(mountpoint), root: unescapeMount(root) });
  }
  return mounts;
}

export function readMounts(): Mount[] {
  return parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8'));
}

/**
 * Each mounted dataset's mountpoint. A dataset bind-mounted whole
 * elsewhere, or propagated into a chroot's or a container's tree (seen: the
 * bed's Debian 13 root), is in the table once per path, in no order to rely
 * on: the shortest path is where ZFS mounted it, the copies live below some
 * root. Binds of a directory inside it are not mounts of it.
 */
export function mountpointsOf(mounts: readonly Mount[]): Map<string, string> {
  const byDataset = new Map<string, string>();
  for (const m of mounts) {
    if (m.root !== undefined && m.root !== '/') continue;
    const known = byDataset.get(m.dataset);
    if (known === undefined || m.mountpoint.length < known.length) byDataset.set(m.dataset, m.mountpoint);
  }
  return byDataset;
}

/**
 * The dataset a file path lives in: the deepest ZFS mountpoint above it.
 * `realPath` must already have symlinks resolved.
 */
export function datasetOfFile(realPath: string, mounts: readonly Mount[]): Mount | null {
  let best: Mount | null = null;
  for (const m of mounts) {
    const inside = realPath === m.mountpoint || realPath.startsWith(m.mountpoint === '/' ? '/' : m.mountpoint + '/');
    // >=: of two mounts on one path, the later one in the table is the one you see.
    if (inside && (best === null || m.mountpoint.length >= best.mountpoint.length)) best = m;
  }
  return best;
}

/** `/dev/zvol/tank/vm/disk0` (or `-part1`) -> `tank/vm/disk0`. */
export function datasetOfZvolPath(devPath: string): string | null {
  const prefix = '/dev/zvol/';
  if (!devPath.startsWith(prefix)) return null;
  const name = devPath.slice(prefix.length).replace(/-part[0-9]+$/, '');
  return isDatasetName(name) ? name : null;
}

/** Maps /dev/zdN (what /dev/zvol/... links point to) back to the zvol's name. */
export function zvolDeviceMap(root = '/dev/zvol'): Map<string, string> {
  const map = new Map<string, string>();
  const walk = (dir: string): void => {
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch {
      return;
    }
    for (const entry of entries) {
      const p = path.join(dir, entry);
      try {
        if (lstatSync(p).isSymbolicLink()) {
          const name = datasetOfZvolPath(p);
          if (name !== null) map.set(realpathSync(p), name);
        } else {
          walk(p);
        }
      } catch {
        // a link that vanished while we looked: not ours to worry about
      }
    }
  };
  walk(root);
  return map;
}

export interface ZfsClientOptions {
  timeoutMs?: number;
}

/** The zfs commands virtsnap runs. */
export class ZfsClient {
  private readonly timeoutMs: number;

  constructor(options: ZfsClientOptions = {}) {
    this.timeoutMs = options.timeoutMs ?? 60_000;
  }

  private async zfs(args: string[], what: string): Promise<string> {
    try {
      return (await run('zfs', args, { timeoutMs: this.timeoutMs })).stdout;
    } catch (err) {
      if (err instanceof CommandError) throw new ZfsError(`${what}: ${err.stderr || err.message}`, err.stderr);
      throw err;
    }
  }

  async exists(dataset: string): Promise<boolean> {
    try {
      await run('zfs', ['list', '-H', '-o', 'name', dataset], { timeoutMs: this.timeoutMs });
      return true;
    } catch (err) {
      // Only zfs's own "does not exist" means no: a zfs that is missing,
      // killed or broken must not pass for a dataset that is not there.
      if (err instanceof CommandError && !err.timedOut && /does not exist/i.test(err.stderr)) return false;
      if (err instanceof CommandError) throw new ZfsError(`cannot ask zfs whether ${dataset} exists: ${err.stderr || err.message}`, err.stderr);
      throw err;
    }
  }

  /** The dataset and everything below it (filesystems and volumes). */
  async subtree(dataset: string): Promise<string[]> {
    const out = await this.zfs(['list', '-H', '-r', '-o', 'name', '-t', 'filesystem,volume', dataset], `cannot list ${dataset}`);
    return out.split('\n').filter((l) => l !== '');
  }

  async snapshot(names: string[], recursive: boolean): Promise<void> {
    const args = ['snapshot', ...(recursive ? ['-r'] : []), ...names];
    await this.zfs(args, `cannot snapshot ${names.join(' ')}`);
  }

  /** Snapshots of `dataset` and its subtree, oldest first. */
  async listSnapshotsByCreation(dataset: string): Promise<string[]> {
    const out = await this.zfs(['list', '-H', '-t', 'snapshot', '-o', 'name', '-s', 'creation', '-r', dataset], `cannot list snapshots of ${dataset}`);
    return out.split('\n').filter((l) => l !== '');
  }

  /** `destroyNewer`: -r, destroying the snapshots taken after it. */
  async rollback(snapshot: string, destroyNewer: boolean): Promise<void> {
    await this.zfs(['rollback', ...(destroyNewer ? ['-r'] : []), snapshot], `cannot roll back to ${snapshot}`);
  }

  /** Destroys one snapshot, by its name (never -r: only what was asked for). */
  async destroySnapshot(snapshot: string): Promise<void> {
    if (!snapshot.includes('@')) throw new UsageError(`${snapshot} is not a snapshot`);
    await this.zfs(['destroy', snapshot], `cannot destroy ${snapshot}`);
  }

  /** Destroys one dataset (no -r: a clone we just made has no children of its own). */
  async destroy(dataset: string): Promise<void> {
    await this.zfs(['destroy', dataset], `cannot destroy ${dataset}`);
  }

  /** `properties`: set on the clone as it is made (`zfs clone -o`), e.g. a mountpoint of our own. */
  async clone(snapshot: string, target: string, properties: Record<string, string> = {}): Promise<void> {
    const options = Object.entries(properties).flatMap(([k, v]) => ['-o', `${k}=${v}`]);
    await this.zfs(['clone', ...options, snapshot, target], `cannot clone ${snapshot} to ${target}`);
  }

  /** A property of one dataset (`zfs get -H -o value`), or null when the dataset does not exist. */
  async property(dataset: string, name: string): Promise<string | null> {
    if (!(await this.exists(dataset))) return null;
    return (await this.zfs(['get', '-H', '-o', 'value', name, dataset], `cannot read ${name} of ${dataset}`)).trim();
  }

  /** What `zfs allow` says of `dataset` (who else may send, clone or mount it); null where zfs cannot tell (zfs-fuse has no `zfs allow`: it wants pyzfs). */
  async delegations(dataset: string): Promise<string | null> {
    return this.zfs(['allow', dataset], `cannot read the delegations of ${dataset}`).catch(() => null);
  }

  /**
   * guid, createtxg and creation of the snapshots of `datasets` (not of
   * their children). A dataset ZFS does not know is listed in `unknown`.
   * `-p`: zfs-fuse prints guids as "15.0E" without it.
   */
  async snapshotProps(datasets: string[]): Promise<{ props: Map<string, SnapshotProps>; unknown: Set<string> }> {
    const props = new Map<string, SnapshotProps>();
    const unknown = new Set<string>();
    for (const ds of new Set(datasets)) {
      if (!(await this.exists(ds))) {
        unknown.add(ds);
        continue;
      }
      const out = await this.zfs(['get', '-H', '-p', '-d', '1', '-o', 'name,property,value', 'guid,createtxg,creation', ds], `cannot read snapshots of ${ds}`);
      for (const [name, p] of parseSnapshotProps(out)) if (name.startsWith(`${ds}@`)) props.set(name, p);
    }
    return { props, unknown };
  }

  /**
   * Every snapshot of each pool by guid, under its current name: a snapshot
   * keeps its guid through `zfs rename` and `zfs promote` (and send|recv).
   * A pool ZFS does not know (not imported) is listed in `unknownPools`.
   */
  async guidCensus(pools: string[]): Promise<GuidCensus> {
    const census: GuidCensus = { byGuid: new Map(), names: new Set(), datasets: new Set(), unknownPools: new Set() };
    for (const pool of new Set(pools)) {
      if (!(await this.exists(pool))) {
        census.unknownPools.add(pool);
        continue;
      }
      const out = await this.zfs(['get', '-H', '-p', '-r', '-o', 'name,property,value', 'guid,createtxg', pool], `cannot list snapshots of pool ${pool}`);
      for (const line of out.split('\n')) {
        const [name] = line.split('\t');
        if (name !== undefined && name !== '' && !name.includes('@')) census.datasets.add(name);
      }
      for (const [name, p] of parseSnapshotProps(out, false)) {
        census.names.add(name);
        census.byGuid.set(p.guid, [...(census.byGuid.get(p.guid) ?? []), { name, createtxg: p.createtxg }]);
      }
    }
    return census;
  }

  /** The pools ZFS has imported now. */
  async importedPools(): Promise<string[]> {
    try {
      return (await run('zpool', ['list', '-H', '-o', 'name'], { timeoutMs: this.timeoutMs })).stdout.split('\n').filter((l) => l !== '');
    } catch (err) {
      if (err instanceof CommandError) throw new ZfsError(`cannot list the imported pools: ${err.stderr || err.message}`, err.stderr);
      throw err;
    }
  }

  /**
   * The census a dump's fate is decided on: every imported pool (a snapshot
   * received into another pool of this host keeps its guid: the dump is
   * still needed there), and the pools `refs` name, so that one not
   * imported counts as unknown, never as gone.
   */
  async censusFor(refs: readonly { name: string }[]): Promise<GuidCensus> {
    return this.guidCensus([...new Set([...(await this.importedPools()), ...refs.map((r) => poolOf(splitSnapshot(r.name).dataset))])]);
  }

  /**
   * The guid each of these snapshots has now, in one `zfs get`; a name that
   * no longer exists is left out (zfs says so for it and goes on with the
   * others). Anything else zfs says is an error.
   */
  async guidsOf(names: readonly string[]): Promise<Map<string, string>> {
    const result = new Map<string, string>();
    if (names.length === 0) return result;
    let out: string;
    try {
      out = (await run('zfs', ['get', '-H', '-p', '-o', 'name,value', 'guid', ...new Set(names)], { timeoutMs: this.timeoutMs })).stdout;
    } catch (err) {
      if (!(err instanceof CommandError) || err.timedOut) throw err;
      // Its complaints come on one line (lib/exec.ts): only those about names that do not exist are expected.
      const other = err.stderr.replace(/cannot open '[^']*': (?:dataset|snapshot) does not exist/g, '').trim();
      if (other !== '' || err.status === 127) throw new ZfsError(`cannot read the guids of ${names.length} snapshot(s): ${err.stderr || err.message}`, err.stderr);
      out = err.stdout;
    }
    for (const line of out.split('\n')) {
      const [name, guid] = line.split('\t');
      if (name !== undefined && guid !== undefined && name.includes('@')) result.set(name, guid.trim());
    }
    return result;
  }

  /**
   * Snapshots as `dataset@name`: of `dataset` only, of its whole subtree
   * (`recursive`), or of every pool (no dataset).
   */
  async listSnapshots(dataset?: string, recursive = true): Promise<string[]> {
    const args = ['list', '-H', '-t', 'snapshot', '-o', 'name', ...(dataset ? ['-r', dataset] : [])];
    const out = await this.zfs(args, `cannot list snapshots${dataset ? ` of ${dataset}` : ''}`);
    const all = out.split('\n').filter((l) => l !== '');
    if (dataset === undefined || recursive) return all;
    return all.filter((s) => s.startsWith(`${dataset}@`));
  }
}
