// Gathering the facts a freeze plan is made from: which datasets the run
// snapshots, which domains exist, and which dataset each disk lives in
// (resolved from the disk's path, no naming convention needed).
import { existsSync, realpathSync } from 'node:fs';
import path from 'node:path';
import type { Config } from './config.js';
import { UsageError } from './errors.js';
import { assertOwnDir, freeBytes } from './fsutil.js';
import type { Domain, LibvirtClient } from './libvirt/virsh.js';
import { UNKNOWN_STACK, type Stack } from './libvirt/stack.js';
import type { Journal } from './journal.js';
import { abandoned } from './stuck.js';
import { log } from './log.js';
import { readSanoidConf, recursionOf } from './sanoid/conf.js';
import { datasetOfFile, datasetOfZvolPath, mountpointsOf, readMounts, zvolDeviceMap, type Mount, type ZfsClient } from './zfs.js';

export interface Inventory {
  /** UTC time of this run, compact, used in file names: 20261122T002717.123Z */
  stamp: string;
  /** Datasets this run snapshots. */
  datasets: string[];
  domains: Domain[];
  /** Disk source path -> dataset it lives in. Sources outside ZFS are absent. */
  datasetOfSource: Map<string, string>;
  /** Mounted datasets -> mountpoint. */
  mountpointOf: Map<string, string>;
  /** The dataset VIRTSNAP_OVERLAY_DIR lives in, if it is on ZFS. */
  datasetOfOverlayDir: string | null;
  /**
   * libvirt's and QEMU's versions (lib/libvirt/stack.ts), asked for only
   * when a domain here may have its RAM saved; unknown otherwise.
   */
  stack: Stack;
  /**
   * Domains no run may freeze now (UUID -> why): a damaged journal entry
   * (nobody knows what was done to them), or a dump of an earlier run that
   * could not be sealed into the spool (the VM is back; its entry keeps the
   * dump until `virtsnap recover` seals it).
   */
  blockedEntries: Map<string, string>;
  /** Free bytes (statfs) in VIRTSNAP_OVERLAY_DIR and at each mountpoint of the run's datasets, where RAM dumps are written. */
  freeBytes: Map<string, number | null>;
  problems: string[];
}

export interface Clients {
  journal: Pick<Journal, 'scan'>;
  virsh: Pick<LibvirtClient, 'domains' | 'stack'>;
  zfs: Pick<ZfsClient, 'exists' | 'subtree'>;
}

function blockedEntries(journal: Pick<Journal, 'scan'>): Map<string, string> {
  const { entries, damaged } = journal.scan();
  const blocked = new Map(damaged.map((d) => [d.uuid, d.reason]));
  for (const e of entries) {
    if (e.step !== 'committed' || !abandoned(e)) continue;
    blocked.set(e.domain.uuid, `its RAM dump of run ${e.runId} could not be sealed into the spool (it waits in ${e.memoryFile}): \`virtsnap status\` and the log say why; \`virtsnap recover\` seals it once that is fixed`);
  }
  return blocked;
}

export function stampOf(date: Date): string {
  return date.toISOString().replace(/[-:]/g, '');
}

/** The datasets a run on `targets` snapshots: a target's subtree when sanoid uses `recursive = zfs` for it. */
export async function snapshottedDatasets(
  targets: string[],
  config: Config,
  zfs: Pick<ZfsClient, 'exists' | 'subtree'>,
  recursive?: boolean,
  mounts: readonly Mount[] = readMounts(),
): Promise<string[]> {
  const ini = recursive === undefined ? readSanoidConf(config.sanoidConf) : null;
  const mounted = new Set(mounts.map((m) => m.dataset));
  const result = new Set<string>();
  for (const target of targets) {
    // A mounted ZFS filesystem exists: no `zfs list` for it (tens of ms on
    // every pre hook). Only one not mounted (a zvol, canmount=off) is asked.
    if (!mounted.has(target) && !(await zfs.exists(target))) {
      throw new UsageError(`dataset ${target} does not exist: check the dataset name (zfs list ${target})`);
    }
    const whole = recursive ?? (ini !== null && recursionOf(ini, target) === 'zfs');
    if (whole) {
      log.debug('snapshot covers the whole subtree (recursive = zfs)', { dataset: target });
      for (const ds of await zfs.subtree(target)) result.add(ds);
    } else {
      result.add(target);
    }
  }
  return [...result];
}

function realPathOrSelf(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/** The dataset of a path that may not exist yet: look at its nearest existing parent. */
function datasetOfDir(dir: string, mounts: Mount[]): string | null {
  let p = dir;
  while (!existsSync(p) && p !== '/') p = path.dirname(p);
  return datasetOfFile(realPathOrSelf(p), mounts)?.dataset ?? null;
}

export function resolveSources(domains: Domain[], mounts: Mount[], zvols: Map<string, string>): Map<string, string> {
  const result = new Map<string, string>();
  for (const domain of domains) {
    // Backing images too: a disk left on an overlay is known by the image below it.
    for (const p of domain.disks.flatMap((d) => [d.source, d.backing])) {
      if (p === null || result.has(p)) continue;
      const dataset = datasetOfZvolPath(p) ?? zvols.get(realPathOrSelf(p)) ?? datasetOfFile(realPathOrSelf(p), mounts)?.dataset;
      if (dataset !== undefined && dataset !== null) result.set(p, dataset);
    }
  }
  return result;
}

/** Every dataset a domain's disks live in, backing images included (a disk on an overlay still lives below it). */
export function datasetsOfDomain(domain: Domain, datasetOfSource: Map<string, string>): string[] {
  const found = domain.disks.flatMap((d) => [d.source, d.backing]).map((p) => (p === null ? undefined : datasetOfSource.get(p)));
  return [...new Set(found.filter((ds): ds is string => ds !== undefined))].sort();
}

/** datasetsOfDomain for every domain defined now, resolving paths against the current mounts. */
export function datasetsOfDomains(domains: Domain[]): Map<string, string[]> {
  const datasetOf = resolveSources(domains, readMounts(), zvolDeviceMap());
  return new Map(domains.map((d) => [d.uuid, datasetsOfDomain(d, datasetOf)]));
}

/**
 * virtsnap's own dirs that exist but are not private to it: refused before
 * anything is frozen, rather than found out when the dump is to be archived.
 */
function privateDirProblems(config: Config): string[] {
  const problems: string[] = [];
  const dirs: [string, string][] = [
    [config.archiveDir, 'VIRTSNAP_ARCHIVE_DIR'],
    [config.stateDir, 'VIRTSNAP_STATE_DIR'],
    [config.overlayDir, 'VIRTSNAP_OVERLAY_DIR'],
  ];
  for (const [dir, what] of dirs) {
    if (!existsSync(dir)) continue;
    try {
      assertOwnDir(dir, what);
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  return problems;
}

/**
 * The stack, where a domain with a disk in `datasets` runs (only a running
 * domain's save can be live): one `virsh version` more, and none for a run
 * with nothing to freeze. Unknown when libvirt does not answer it (the plan
 * then trusts no live save under TCG).
 */
async function stackIfSaving(domains: Domain[], datasets: readonly string[], datasetOfSource: Map<string, string>, virsh: Clients['virsh']): Promise<Stack> {
  const here = new Set(datasets);
  const saving = domains.some((d) => d.state === 'running' && d.disks.some((k) => k.source !== null && here.has(datasetOfSource.get(k.source) ?? '')));
  if (!saving) return UNKNOWN_STACK;
  try {
    return await virsh.stack();
  } catch (err) {
    log.warn(`cannot ask libvirt for its and QEMU's versions (${(err as Error).message}): live RAM saves of TCG guests are not trusted this run`);
    return UNKNOWN_STACK;
  }
}

export async function takeInventory(targets: string[], config: Config, clients: Clients, options: { recursive?: boolean; now?: Date } = {}): Promise<Inventory> {
  const mounts = readMounts();
  const datasets = await snapshottedDatasets(targets, config, clients.zfs, options.recursive, mounts);
  const domains = await clients.virsh.domains();
  const datasetOfSource = resolveSources(domains, mounts, zvolDeviceMap());
  return {
    stamp: stampOf(options.now ?? new Date()),
    datasets,
    domains,
    stack: await stackIfSaving(domains, datasets, datasetOfSource, clients.virsh),
    blockedEntries: blockedEntries(clients.journal),
    freeBytes: new Map([config.overlayDir, ...mounts.filter((m) => datasets.includes(m.dataset)).map((m) => m.mountpoint)].map((dir) => [dir, freeBytes(dir)])),
    datasetOfSource,
    mountpointOf: mountpointsOf(mounts),
    datasetOfOverlayDir: datasetOfDir(config.overlayDir, mounts),
    problems: privateDirProblems(config),
  };
}
