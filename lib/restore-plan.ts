// Planning a restore: which datasets to clone or roll back, which RAM dumps
// to restore, and the domain XML each one gets. Pure: lib/restore.ts
// gathers the facts and carries the plan out.
import type { Manifest } from './manifest.js';
import { stateDisks } from './disks.js';
import type { Disk } from './libvirt/domain-xml.js';
import { escapeXml } from './libvirt/snapshot-xml.js';
import { isInSubtree, splitSnapshot } from './zfs.js';

export type RestoreMode = { kind: 'clone'; dataset: string } | { kind: 'rollback' };

export interface RestoreRequest {
  /** dataset@snapname */
  snapshot: string;
  domain?: string;
  mode: RestoreMode;
  /** Allow `zfs rollback -r`, which destroys the snapshots taken after this one. */
  destroyNewer: boolean;
  paused: boolean;
  /** New name (and UUID) for a clone that runs beside its original. */
  as?: string;
  /** What this host lacks for a VM (lib/host-fit.ts) is a warning, not a reason to refuse. */
  ignoreHostGaps?: boolean;
  /** The host whose dumps a restore may take from a shared restic repository (default: this one). */
  repoHost?: string;
  /** Define a repository dump's XML even where it reaches into the host (domain-xml.ts hostAccessOf). */
  trustDumpXml?: boolean;
}

export interface RestoreFacts {
  /** Snapshots of the snapshot's dataset and its subtree, oldest first. */
  snapshots: string[];
  /**
   * Dumps tied (by guid) to the snapshot or to a child's snapshot of the same
   * name, their snapshot refs under their current names, with what is wrong
   * with each, if anything, and the disks of the domain XML inside the dump.
   */
  dumps: { manifest: Manifest; problem: string | null; disks?: Disk[]; hostGaps?: string[]; hostAccess?: string[] }[];
  /** Domains defined now: name, uuid, state, and the datasets their disks live in. */
  domains: { name: string; uuid: string; state: string; datasets: string[] }[];
  /** Why the RAM inside the snapshot could not be read (VIRTSNAP_STORE=dataset). */
  snapshotProblems?: string[];
  /** The RAM dumps inside the snapshot (dir relative to their dataset): gone from the restored dataset once the restore is done. */
  ramInSnapshot?: { dataset: string; dir: string; id: string }[];
  /** Where datasets are mounted now (for dumps that did not record it). */
  mounts?: Record<string, string>;
  /** An existing dataset at the clone target, if any. */
  cloneTargetExists: boolean;
  /** A domain with the --as name already exists. */
  asNameTaken: boolean;
  /** Domains a snapshot run holds right now (in the journal): on overlays, or about to be. */
  frozen?: { name: string; datasets: string[] }[];
  /** Why this host cannot restore a zstd save image (its libvirt, or no zstd program), or null when it can (lib/libvirt/stack.ts). */
  zstdUnreadable?: string | null;
}

export interface DomainRestore {
  name: string;
  uuid: string;
  /** The name and UUID it will have (differ with --as). */
  newName: string;
  newUuid: string;
  /** null: no RAM dump, disks and definition only. */
  dump: Manifest | null;
}

/** A restored dataset as the dump knew it: the disk paths inside the dump are under this name and mountpoint. */
export interface DatasetSource {
  dataset: string;
  mountpoint: string | null;
}

export interface RestorePlan {
  snapshot: string;
  snapname: string;
  mode: RestoreMode;
  /** Datasets to clone or roll back, parents first. */
  datasets: string[];
  /** clone: source dataset -> clone dataset. */
  cloneOf: Record<string, string>;
  /** Each dataset of `datasets` as the dumps knew it when they were taken (it may have been renamed or promoted since). */
  sources: Record<string, DatasetSource>;
  /** rollback: snapshots that `zfs rollback -r` would destroy. */
  newer: string[];
  /** Running domains that must be stopped first: rollback, only those with disks in the rolled-back datasets. */
  stop: string[];
  domains: DomainRestore[];
  paused: boolean;
  problems: string[];
  /** What this host lacks for the VMs, when --ignore-host-gaps lets the restore go on anyway. */
  warnings: string[];
  /** RAM dumps inside the snapshot, removed from the clone or rolled-back dataset after the restore. */
  ramInSnapshot: { dataset: string; dir: string; id: string }[];
}

/** `/dev/zvol/<dataset>` or one of its partitions (`-part1`), not a sibling zvol named `<dataset>-partner`. */
export function isZvolOf(source: string, dataset: string): boolean {
  const base = `/dev/zvol/${dataset}`;
  return source === base || (source.startsWith(`${base}-part`) && /^[0-9]+$/.test(source.slice(base.length + '-part'.length)));
}

/** A disk path lies in one of the restored datasets, as the dump knew them. */
export function inRestoredDatasets(source: string, sources: readonly DatasetSource[]): boolean {
  return sources.some(
    (s) =>
      (s.mountpoint !== null && source.startsWith(s.mountpoint === '/' ? '/' : `${s.mountpoint}/`)) ||
      isZvolOf(source, s.dataset),
  );
}

export function planRestore(request: RestoreRequest, facts: RestoreFacts, newUuid: () => string): RestorePlan {
  const { dataset, snapname } = splitSnapshot(request.snapshot);
  const problems: string[] = [];
  const plan: RestorePlan = {
    snapshot: request.snapshot,
    snapname,
    mode: request.mode,
    datasets: [],
    cloneOf: {},
    sources: {},
    newer: [],
    stop: [],
    domains: [],
    paused: request.paused,
    problems,
    warnings: [],
    ramInSnapshot: facts.ramInSnapshot ?? [],
  };
  if (!facts.snapshots.includes(request.snapshot)) {
    problems.push(`snapshot ${request.snapshot} does not exist: see \`zfs list -t snapshot -r ${dataset}\``);
    return plan;
  }
  const dumps = facts.dumps.filter((d) => request.domain === undefined || d.manifest.domain.name === request.domain);
  problems.push(...(facts.snapshotProblems ?? []));
  for (const d of dumps) if (d.problem !== null) problems.push(`RAM dump ${d.manifest.id} of ${JSON.stringify(d.manifest.domain.name)} is bad (${d.problem}): refusing to restore it`);
  for (const d of dumps) {
    if (d.problem === null && d.manifest.compression === 'zstd' && facts.zstdUnreadable) {
      problems.push(`RAM dump ${d.manifest.id} of ${JSON.stringify(d.manifest.domain.name)} is a zstd save image, and ${facts.zstdUnreadable}: restore it where it can be read; nothing was changed`);
    }
  }
  for (const d of dumps) {
    if ((d.hostAccess ?? []).length > 0 && !request.trustDumpXml) {
      problems.push(
        `RAM dump ${d.manifest.id} of ${JSON.stringify(d.manifest.domain.name)} comes from the restic repository (host ${JSON.stringify(d.manifest.hostname)}) and its domain XML reaches into this host: ${d.hostAccess!.join(', ')}; refusing to define it as root (read it with \`restic dump\`, then --trust-dump-xml if it is yours)`,
      );
    }
    const gaps = (d.hostGaps ?? []).map((g) => `this host cannot run ${JSON.stringify(d.manifest.domain.name)} as saved: ${g}${request.ignoreHostGaps ? '' : ' (or --ignore-host-gaps to try anyway)'}`);
    (request.ignoreHostGaps ? plan.warnings : problems).push(...gaps);
  }

  // The datasets: the snapshot's own, and the children holding the dumps' disks (recursive = zfs).
  const involved = new Set<string>([dataset]);
  for (const d of dumps) {
    for (const ref of d.manifest.snapshots) {
      const p = splitSnapshot(ref.name);
      if (p.snapname !== snapname || !isInSubtree(p.dataset, dataset)) continue;
      involved.add(p.dataset);
      plan.sources[p.dataset] ??= { dataset: splitSnapshot(ref.frozenAs).dataset, mountpoint: ref.mountpoint ?? facts.mounts?.[p.dataset] ?? null };
    }
  }
  plan.datasets = [...involved].sort();
  for (const ds of plan.datasets) plan.sources[ds] ??= { dataset: ds, mountpoint: facts.mounts?.[ds] ?? null };

  // RAM from the snapshot with any disk not restored with it would corrupt
  // that disk: checked here, before anything is stopped, rolled back or cloned.
  const restoredAsFrozen = new Set(Object.values(plan.sources).map((src) => src.dataset));
  for (const d of dumps) {
    for (const disk of stateDisks(d.disks ?? [])) {
      // The freeze recorded each disk it held still, with its dataset: the
      // path alone would take a child dataset mounted below for the parent.
      const frozen = d.manifest.disks.find((f) => f.target === disk.target);
      const where = frozen === undefined ? `was not in the snapshot with the RAM (outside ${plan.datasets.join(', ')} when it was saved)` : restoredAsFrozen.has(frozen.dataset) && inRestoredDatasets(disk.source!, Object.values(plan.sources)) ? null : `is not in ${plan.datasets.join(', ')}`;
      if (where === null) continue;
      problems.push(
        `disk ${disk.target} of ${JSON.stringify(d.manifest.domain.name)} (${disk.source}) ${where}: its RAM dump must not run on that disk as it is now; nothing was changed (move the disk into the snapshotted datasets for future snapshots)`,
      );
    }
  }

  const domainNames = new Set(dumps.map((d) => d.manifest.domain.name));
  plan.domains = dumps.map((d) => ({
    name: d.manifest.domain.name,
    uuid: d.manifest.domain.uuid,
    newName: request.as ?? d.manifest.domain.name,
    newUuid: request.as !== undefined ? newUuid() : d.manifest.domain.uuid,
    dump: d.manifest,
  }));
  if (request.domain !== undefined && dumps.length === 0) {
    const known = facts.domains.find((d) => d.name === request.domain);
    if (known === undefined) {
      problems.push(`no RAM dump of ${JSON.stringify(request.domain)} belongs to ${request.snapshot}, and no such domain is defined`);
    } else {
      plan.domains.push({ name: known.name, uuid: known.uuid, newName: request.as ?? known.name, newUuid: request.as !== undefined ? newUuid() : known.uuid, dump: null });
      domainNames.add(known.name);
    }
  }
  if (request.as !== undefined && plan.domains.length !== 1) {
    problems.push(`--as names one domain, but ${request.snapshot} holds ${plan.domains.length} (${plan.domains.map((d) => d.name).join(', ') || 'none'}): add --domain NAME`);
  }
  if (request.as !== undefined && facts.asNameTaken) problems.push(`a domain named ${JSON.stringify(request.as)} already exists: choose another --as`);

  // Exactly these datasets: `zfs rollback` of a parent leaves its children as they are.
  const touches = (d: { datasets: string[] }) => d.datasets.some((ds) => plan.datasets.includes(ds));
  for (const d of (facts.frozen ?? []).filter(touches)) {
    problems.push(`domain ${JSON.stringify(d.name)} is held by a snapshot run (see \`virtsnap status\`): wait for it, or \`virtsnap recover\` if it died, then restore`);
  }
  const running = facts.domains.filter((d) => d.state !== 'shut off');

  if (request.mode.kind === 'clone') {
    const target = request.mode.dataset;
    if (facts.cloneTargetExists) problems.push(`dataset ${target} already exists: give --clone a new dataset name`);
    if (isInSubtree(target, dataset)) problems.push(`--clone ${target} is inside ${dataset}: put the clone beside it`);
    for (const ds of plan.datasets) plan.cloneOf[ds] = target + ds.slice(dataset.length);
    if (request.as === undefined) {
      // Same name and UUID: libvirt allows one running instance.
      for (const d of running.filter((r) => domainNames.has(r.name))) {
        problems.push(`domain ${JSON.stringify(d.name)} is running: stop it, or give --as NEW_NAME to run the clone beside it`);
      }
    }
    return plan;
  }

  // Rollback: newer snapshots go, running domains on these datasets stop.
  // Newer per dataset: a child's copy of the same recursive snapshot is not newer.
  plan.newer = plan.datasets.flatMap((ds) => {
    const own = facts.snapshots.filter((s) => splitSnapshot(s).dataset === ds);
    const index = own.indexOf(`${ds}@${snapname}`);
    return index < 0 ? [] : own.slice(index + 1);
  });
  if (plan.newer.length > 0 && !request.destroyNewer) {
    problems.push(`zfs rollback would destroy ${plan.newer.length} newer snapshot(s): ${plan.newer.join(', ')}; add --destroy-newer to accept that, or use --clone`);
  }
  plan.stop = running.filter(touches).map((d) => d.name);
  // The VM of a dump, running on disks that are not rolled back (moved, or
  // the snapshot was promoted or renamed since): rolling back would not stop
  // it, and its RAM would replace it over other disks.
  for (const d of plan.domains) {
    const live = running.find((r) => r.uuid === d.uuid || r.name === d.newName);
    if (live !== undefined && !plan.stop.includes(live.name)) {
      problems.push(`domain ${JSON.stringify(live.name)} is running on disks outside ${plan.datasets.join(', ')}: stop it first, or restore with --clone NEW_DATASET --as NEW_NAME`);
    }
  }
  return plan;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Rewrites every disk path under `from` mountpoints/zvols to the clone's. */
export function rewriteDiskPaths(xml: string, mounts: { from: string; to: string }[], zvols: { from: string; to: string }[]): string {
  let out = xml;
  for (const m of mounts) out = out.split(`'${escapeXml(m.from)}/`).join(`'${escapeXml(m.to)}/`);
  for (const z of zvols) {
    out = out.split(`'/dev/zvol/${escapeXml(z.from)}'`).join(`'/dev/zvol/${escapeXml(z.to)}'`);
    const part = new RegExp(`'/dev/zvol/${escapeRegExp(escapeXml(z.from))}-part([0-9]+)'`, 'g');
    out = out.replace(part, (_m, n: string) => `'/dev/zvol/${escapeXml(z.to)}-part${n}'`);
  }
  return out;
}

/** Points the domain's UEFI variable store at `nvram`. */
export function setNvramPath(xml: string, nvram: string): string {
  return xml.replace(/(<nvram\b[^>]*>)[^<]*(<\/nvram>)/, `$1${escapeXml(nvram)}$2`);
}

/**
 * A domain XML for a clone running beside its original: new name and UUID,
 * its own NVRAM file and console logs, network links down (same MACs).
 */
export function renameDomainXml(xml: string, from: { name: string; uuid: string }, to: { name: string; uuid: string; nvram: string | null }): string {
  let out = xml.replace(/<name>[^<]*<\/name>/, `<name>${escapeXml(to.name)}</name>`);
  out = out.replace(/<uuid>[^<]*<\/uuid>/, `<uuid>${to.uuid}</uuid>`);
  if (to.nvram !== null) out = setNvramPath(out, to.nvram);
  const oldName = escapeXml(from.name);
  const newName = escapeXml(to.name);
  // Only the file name changes: the directories exist for the original already.
  const renamePath = (p: string): string => {
    const slash = p.lastIndexOf('/');
    const dir = p.slice(0, slash + 1);
    const base = p.slice(slash + 1);
    return base.includes(oldName) ? dir + base.split(oldName).join(newName) : `${p}.${newName}`;
  };
  // File-backed serial ports, consoles and logs: the clone writes its own.
  out = out.replace(/<(serial|console)\s+type='file'>[\s\S]*?<\/\1>/g, (block) =>
    block.replace(/(\bpath=')([^']*)(')/g, (_m, pre: string, p: string, post: string) => `${pre}${renamePath(p)}${post}`),
  );
  out = out.replace(/(<log\b[^>]*\bfile=')([^']*)(')/g, (_m, pre: string, p: string, post: string) => `${pre}${renamePath(p)}${post}`);
  return linksDown(out);
}

/**
 * Every network link down. A clone has the original's MAC and IP addresses:
 * beside its original, or on a backup host whose network reaches the
 * original's (which may still be running), it stays off the network until
 * the user says so (`virsh domif-setlink`).
 */
export function linksDown(xml: string): string {
  return xml.replace(/<interface\b[^>]*>[\s\S]*?<\/interface>/g, (block) =>
    /<link\b/.test(block) ? block.replace(/<link\b[^>]*\/>/, "<link state='down'/>") : block.replace(/^(<interface\b[^>]*>)/, "$1<link state='down'/>"),
  );
}
