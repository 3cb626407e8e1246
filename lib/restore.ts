// `virtsnap restore`: bring VMs back, running, as they were at a snapshot.
//
// --clone: zfs clone the snapshot (and the children holding the VM's disks),
//   point the saved domain XML at the clone, restore the RAM dump. The
//   original keeps running untouched when --as gives the clone its own name.
// --rollback: stop the VMs on those datasets, zfs rollback, put back NVRAM,
//   restore the RAM dump.
// Everything is checked before the first change: the snapshot exists, each
// dump verifies (header, XML, sha256; a gzip dump decompressed to the raw
// image's sha256), every disk the RAM was running on is restored with it,
// nothing newer is lost without --destroy-newer. A gzip dump goes to
// `virsh restore` as it is: libvirt decompresses it (lib/libvirt/save-image.ts),
// and its XML region, uncompressed, is rewritten for --as as a raw one's.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, readFileSync, realpathSync, renameSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import path from 'node:path';
import { buildManifest, fileInSnapshotOf, isWaiting, type ArchivedDump, type Manifest } from './manifest.js';
import { withWaitingDump } from './archiver.js';
import { scanSpool } from './spool.js';
import type { DumpStore, LocalDump } from './stores/store.js';
import { knownDumps } from './stores/index.js';
import { inDatasetDumps, inDatasetProblem, ramFileName, removeLiveRam } from './ram-in-dataset.js';
import type { Config } from './config.js';
import { LibvirtError, VirtsnapError, ZfsError } from './errors.js';
import type { StopSignal } from './signals.js';
import { ensureDirBelow, fileSafe, writeFileAtomic } from './fsutil.js';
import { ownerOf } from './owner.js';
import { datasetMetaDir, readSavedFile } from './domain-files.js';
import { stateDisks } from './disks.js';
import { isSnapshotAt, refsAt } from './snapshot-id.js';
import type { Disk } from './libvirt/domain-xml.js';
import { datasetsOfDomains } from './inventory.js';
import { hostAccessOf, parseDomainXml } from './libvirt/domain-xml.js';
import { readSaveImageXml, rewriteSaveImageXml } from './libvirt/save-image.js';
import type { LibvirtClient } from './libvirt/virsh.js';
import { sleep, waitUntil } from './lock.js';
import { hasProgram } from './exec.js';
import { readsZstd, UNKNOWN_STACK } from './libvirt/stack.js';
import { log } from './log.js';
import { inRestoredDatasets, isZvolOf, linksDown, planRestore, renameDomainXml, rewriteDiskPaths, setNvramPath, type DomainRestore, type RestoreFacts, type RestorePlan, type RestoreRequest } from './restore-plan.js';
import { checkDump } from './dump-check.js';
import { Journal } from './journal.js';
import { datasetOfFile, isInSubtree, mountpointsOf, poolOf, readMounts, splitSnapshot, type Mount, type ZfsClient } from './zfs.js';

export interface RestoreDeps {
  virsh: LibvirtClient;
  zfs: ZfsClient;
  config: Config;
  /** Where the dumps are (VIRTSNAP_STORE), besides those waiting in the spool. */
  store: DumpStore;
  /** A signal stops a clone restore between domains (the clone is then removed); a rollback restore finishes. */
  stop?: StopSignal;
}

/**
 * A timeout is not a result: libvirt may finish a define or a restore after
 * virsh was killed (seen: a define taking 45 s). Wait for what libvirt
 * reports before calling it failed, so a failed restore never leaves a
 * definition behind that nobody knows of.
 */
async function settled(call: Promise<void>, done: () => Promise<boolean>, what: string, graceMs: number, ctx: { domain: string }): Promise<void> {
  try {
    await call;
  } catch (err) {
    if (!(err instanceof LibvirtError) || !err.timedOut) throw err;
    if (!(await waitUntil(done, graceMs, 1000))) throw err;
    log.warn(`${what} outlived virsh's time limit, and libvirt finished it anyway`, ctx);
  }
}

/**
 * The dumps of `DS@SNAP`: those tied by guid to it or to a child's snapshot
 * of the same name, whatever name the dump knew them by (renamed, promoted,
 * or received on another host by `zfs recv`).
 */
async function dumpsOf(request: RestoreRequest, deps: RestoreDeps, fetched: LocalDump[]): Promise<RestoreFacts['dumps']> {
  const { dataset, snapname } = splitSnapshot(request.snapshot);
  // Stored, or waiting in the spool for the archiver: a restore takes either.
  const local = knownDumps(deps.store, deps.config).dumps;
  const census = await deps.zfs.guidCensus([poolOf(dataset)]);
  const tiedHere = (dumps: ArchivedDump[]): Manifest[] =>
    dumps.flatMap(({ manifest }) => {
      const here = refsAt(manifest.snapshots, census, dataset, snapname);
      if (here.length === 0 || (request.domain !== undefined && manifest.domain.name !== request.domain)) return [];
      return [{ ...manifest, snapshots: here }];
    });
  let tied = tiedHere(local);
  let fromRepo = false;
  // None here (another host, or the manifests lost): the store's own manifests (a restic repository's), found by the same guids.
  if (tied.length === 0) {
    // Only the dumps tagged with a guid of DS@SNAP or a child's snapshot of that name: one `restic dump` each, not one per dump in the repo.
    const guids = new Set([...census.byGuid].filter(([, at]) => at.some((a) => isSnapshotAt(a.name, dataset, snapname))).map(([g]) => g));
    try {
      tied = tiedHere(await deps.store.remote({ host: request.repoHost ?? hostname(), exclude: new Set(local.map((d) => d.manifest.id)), guids }));
      fromRepo = tied.length > 0;
    } catch (err) {
      // The RAM may still be inside the snapshot (VIRTSNAP_STORE=dataset): looked for next, whatever the repository says.
      log.warn(`cannot read RAM dumps from ${deps.store.where}: ${(err as Error).message}`, { dataset });
    }
  }
  const dumps: RestoreFacts['dumps'] = [];
  for (const current of tied) {
    let problem: string | null;
    let fetchedManifest = current;
    try {
      // A dump whose bytes are elsewhere (restic) is fetched once, to a private temp file that the restore then reads (released after it).
      const local = await deps.store.fetch(current);
      fetched.push(local);
      fetchedManifest = local.manifest;
      problem = await checkDump(fetchedManifest);
    } catch (err) {
      problem = (err as Error).message;
    }
    if (problem !== null) {
      dumps.push({ manifest: fetchedManifest, problem });
      continue;
    }
    const xml = readSaveImageXml(fetchedManifest.memoryFile).xml;
    // A manifest read from the repository is what whoever writes there says: its XML is checked before it is defined as root.
    dumps.push({ manifest: fetchedManifest, problem, ...(await whatTheXmlNeeds(xml, fetchedManifest, deps)), ...(fromRepo ? { hostAccess: hostAccessOf(xml) } : {}) });
  }
  return dumps;
}

/** What reading the RAM inside a snapshot found: dumps, and why it could not look, if so. */
interface InSnapshot {
  dumps: RestoreFacts['dumps'];
  problems: string[];
  /** Every dump the snapshot holds (relative dir in the dataset, id): removed from the restored dataset after the restore. */
  seen: { dataset: string; dir: string; id: string }[];
}

/**
 * The RAM dumps inside the snapshot itself (VIRTSNAP_STORE=dataset).
 * zfs-fuse has no `.zfs` dir, so the snapshot is cloned to be read: a clone
 * of our own name, mounted read-only on a private dir in the state dir (not
 * in anybody's tree), destroyed again before planning goes on. Each dump's
 * memory file is named relative to its dataset (`store.file`): the restore
 * resolves it once it has cloned or rolled back.
 */
async function dumpsInSnapshot(request: RestoreRequest, deps: RestoreDeps): Promise<InSnapshot> {
  const { dataset, snapname } = splitSnapshot(request.snapshot);
  const none: InSnapshot = { dumps: [], problems: [], seen: [] };
  // Only a mounted filesystem can hold RAM (zvols have no files), and only one the plan will restore.
  if (!readMounts().some((m) => m.dataset === dataset)) return none;
  if (request.mode.kind === 'clone' && (isInSubtree(request.mode.dataset, dataset) || (await deps.zfs.exists(request.mode.dataset)))) return none;
  const id = randomUUID().slice(0, 8);
  const probe = dataset.includes('/') ? `${dataset}-virtsnap-probe-${id}` : `${dataset}/virtsnap-probe-${id}`;
  const mountDir = path.join(deps.config.stateDir, 'probe', id);
  mkdirSync(mountDir, { recursive: true, mode: 0o700 });
  const props = (await deps.zfs.snapshotProps([dataset])).props.get(request.snapshot);
  try {
    await deps.zfs.clone(request.snapshot, probe, { mountpoint: mountDir, readonly: 'on' });
    const probeMount = mountpointsOf(readMounts()).get(probe);
    if (probeMount === undefined) return { dumps: [], seen: [], problems: [`cannot read ${request.snapshot}: its clone ${probe} did not mount at ${mountDir}, so whether it holds RAM is unknown; nothing was changed`] };
    const result: InSnapshot = { dumps: [], problems: [], seen: [] };
    for (const found of inDatasetDumps(probeMount)) {
      result.seen.push({ dataset, dir: path.relative(probeMount, found.domainDir), id: found.id });
      const m = found.manifest;
      const where = `${request.snapshot}:${path.relative(probeMount, found.domainDir)}`;
      if (m === null) {
        result.problems.push(`a RAM manifest in ${where} is damaged (${found.problem}): not restoring from it; remove it from the restored dataset by hand, or restore with --domain NAME`);
        continue;
      }
      if (request.domain !== undefined && m.domain.name !== request.domain) continue;
      const file = path.join(path.relative(probeMount, found.domainDir), ramFileName(m.id, 'save'));
      const from = m.store.mountpoint;
      const problem = inDatasetProblem(m, path.join(probeMount, file), (source) => (source.startsWith(`${from}/`) ? path.join(probeMount, source.slice(from.length)) : null));
      const manifest: Manifest = {
        ...buildManifest(
          {
            id: m.id,
            domain: m.domain,
            snapshots: [{ name: request.snapshot, frozenAs: `${m.store.dataset}@${snapname}`, guid: props?.guid ?? null, createtxg: props?.createtxg ?? null, creation: props?.creation ?? null, mountpoint: from }],
            types: m.types,
            disks: m.disks,
            startedAt: m.times.startedAt,
            libvirtUri: m.libvirtUri,
            hostname: m.hostname,
          },
          // resolved once cloned or rolled back (restoreDomainOnce)
          { memoryFile: `${request.snapshot}:/${file}`, bytes: m.bytes, sha256: '', compression: null, store: { ...m.store, file }, metaDir: null },
        ),
        times: m.times, // as the manifest inside the snapshot recorded them
      };
      const shown = problem === null ? null : `${problem.split(probeMount).join(`${request.snapshot}:`)}`;
      result.dumps.push({ manifest, problem: shown, ...(problem === null ? await whatTheXmlNeeds(readSaveImageXml(path.join(probeMount, file)).xml, manifest, deps) : {}) });
    }
    return result;
  } finally {
    // Only a clone of this snapshot is ours to destroy.
    if ((await deps.zfs.property(probe, 'origin').catch(() => null)) === request.snapshot) {
      await retryBusy(() => deps.zfs.destroy(probe)).catch((err: Error) => log.warn(`could not remove ${probe}, made to read ${request.snapshot}: ${err.message}; remove it with \`zfs destroy ${probe}\``, { dataset }));
    }
    rmSync(mountDir, { recursive: true, force: true });
  }
}

/**
 * What the domain XML inside a dump needs: its disks, and what this host
 * lacks to run it (lib/host-fit.ts); paths in the restored datasets are
 * rewritten to the clone's and do not count.
 */
async function whatTheXmlNeeds(xml: string, manifest: Manifest, deps: RestoreDeps): Promise<{ disks: Disk[]; hostGaps: string[] }> {
  const restored = manifest.snapshots.map((r) => ({ dataset: splitSnapshot(r.frozenAs).dataset, mountpoint: r.mountpoint }));
  const { gatherHostFacts, hostGaps } = await import('./host-fit.js');
  return { disks: parseDomainXml(xml).disks, hostGaps: hostGaps(xml, await gatherHostFacts(deps.virsh, xml), (p) => inRestoredDatasets(p, restored)) };
}

/** The facts that can change while a person reads the plan: snapshots, domains and their states, what runs hold, the clone target. */
type LiveFacts = Pick<RestoreFacts, 'snapshots' | 'domains' | 'mounts' | 'frozen' | 'cloneTargetExists' | 'asNameTaken'>;

/** Why libvirt here cannot read a zstd save image, or null (asked only when a dump is one). */
async function zstdUnreadable(deps: RestoreDeps): Promise<string | null> {
  const stack = await deps.virsh.stack().catch(() => UNKNOWN_STACK);
  return readsZstd(stack, await hasProgram('zstd'));
}

/** `ownRun`: this restore's own holds, which are not another run's. */
async function liveFacts(request: RestoreRequest, deps: RestoreDeps, ownRun: string | null = null): Promise<LiveFacts> {
  const { dataset } = splitSnapshot(request.snapshot);
  const snapshots = await deps.zfs.listSnapshotsByCreation(dataset);
  const all = await deps.virsh.domains();
  const datasetsOf = datasetsOfDomains(all);
  const domains = all.map((d) => ({
    name: d.name,
    uuid: d.uuid,
    state: d.state,
    datasets: datasetsOf.get(d.uuid) ?? [],
  }));
  const inJournal = new Set(new Journal(deps.config.stateDir).list().filter((e) => e.runId !== ownRun).map((e) => e.domain.uuid));
  return {
    snapshots,
    domains,
    mounts: Object.fromEntries(mountpointsOf(readMounts())),
    frozen: domains.filter((d) => inJournal.has(d.uuid)).map((d) => ({ name: d.name, datasets: d.datasets })),
    cloneTargetExists: request.mode.kind === 'clone' ? await deps.zfs.exists(request.mode.dataset) : false,
    asNameTaken: request.as !== undefined && all.some((d) => d.name === request.as),
  };
}

async function gatherFacts(request: RestoreRequest, deps: RestoreDeps, fetched: LocalDump[]): Promise<RestoreFacts> {
  const live = await liveFacts(request, deps);
  let dumps = live.snapshots.includes(request.snapshot) ? await dumpsOf(request, deps, fetched) : [];
  let snapshotProblems: string[] = [];
  let ramInSnapshot: InSnapshot['seen'] = [];
  if (dumps.length === 0 && live.snapshots.includes(request.snapshot)) ({ dumps, problems: snapshotProblems, seen: ramInSnapshot } = await dumpsInSnapshot(request, deps));
  const zstd = dumps.some((d) => d.manifest.compression === 'zstd') ? await zstdUnreadable(deps) : null;
  return { ...live, dumps, snapshotProblems, ramInSnapshot, zstdUnreadable: zstd };
}

/** A plan, with the request and facts it was made from: executeRestore looks at the facts again before it acts. */
export interface PreparedRestore {
  request: RestoreRequest;
  plan: RestorePlan;
  facts: RestoreFacts;
  /** Lets go of the memory files fetched for it (restic's temp copies): executeRestore does, or the caller of a dry run. */
  release(): void;
}

export async function prepareRestore(request: RestoreRequest, deps: RestoreDeps): Promise<PreparedRestore> {
  const fetched: LocalDump[] = [];
  const release = () => fetched.splice(0).forEach((f) => f.release());
  try {
    const facts = await gatherFacts(request, deps, fetched);
    return { request, facts, plan: planRestore(request, facts, randomUUID), release };
  } catch (err) {
    release();
    throw err;
  }
}

/**
 * The domains a restore must hold against snapshot runs (and other
 * restores) while it acts: for a rollback every domain it stops or
 * restores; for a clone the domains restored under their own name and UUID
 * (the original, shut off). A clone under a new name touches no one else.
 */
export function domainsToHold(plan: RestorePlan, facts: Pick<RestoreFacts, 'domains'>): { name: string; uuid: string }[] {
  const held = new Map<string, string>();
  for (const d of plan.domains) if (plan.mode.kind === 'rollback' || d.newUuid === d.uuid) held.set(d.uuid, d.name);
  for (const name of plan.stop) {
    const d = facts.domains.find((x) => x.name === name);
    if (d !== undefined) held.set(d.uuid, d.name);
  }
  return [...held].map(([uuid, name]) => ({ uuid, name })).sort((a, b) => a.uuid.localeCompare(b.uuid));
}

/** What differs between the plan a person saw and one made now: any of it, and the restore refuses. Pure. */
export function planChanges(before: RestorePlan, now: RestorePlan): string[] {
  const changes: string[] = [];
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  if (!same(before.newer, now.newer)) changes.push(`the snapshots newer than ${before.snapshot} are now ${now.newer.join(', ') || 'none'} (were ${before.newer.join(', ') || 'none'})`);
  if (!same(before.stop, now.stop)) changes.push(`the VMs to stop are now ${now.stop.join(', ') || 'none'} (were ${before.stop.join(', ') || 'none'})`);
  if (!same(before.datasets, now.datasets) || !same(before.cloneOf, now.cloneOf)) changes.push(`the datasets to restore are now ${now.datasets.join(', ')}`);
  const domains = (p: RestorePlan) => p.domains.map((d) => `${d.newName}:${d.dump?.id ?? '-'}`);
  if (!same(domains(before), domains(now))) changes.push(`the VMs to restore are now ${domains(now).join(', ') || 'none'}`);
  changes.push(...now.problems.filter((p) => !before.problems.includes(p)));
  return changes;
}

/**
 * A private dir for the restore's copies (XML, a save image under a new
 * name) under the state dir: libvirt opens a save image by path, so it must
 * be where the daemon sees it (not a private /tmp of ours or of libvirtd's).
 */
function privateWorkDir(config: Config): string {
  const parent = path.join(config.stateDir, 'restore');
  ensureDirBelow(parent, 'VIRTSNAP_STATE_DIR');
  return mkdtempSync(path.join(parent, 'work-'));
}

/** zfs-fuse says "dataset is busy" for a moment after QEMU lets go of a file. */
async function retryBusy(what: () => Promise<void>): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      return await what();
    } catch (err) {
      if (i >= 20 || !(err instanceof ZfsError) || !/busy/.test(err.zfsMessage)) throw err;
      await sleep(500);
    }
  }
}

interface Paths {
  mounts: { from: string; to: string }[];
  zvols: { from: string; to: string }[];
  /** The mount table as it is after the clone or rollback, read once. */
  table: Mount[];
}

/** Where the datasets' files are once cloned or rolled back, from where the dump knew them. */
function pathsAfter(plan: RestorePlan): Paths {
  const table = readMounts();
  const mountpoints = mountpointsOf(table);
  const paths: Paths = { mounts: [], zvols: [], table };
  for (const ds of plan.datasets) {
    const target = plan.cloneOf[ds] ?? ds;
    const source = plan.sources[ds] ?? { dataset: ds, mountpoint: null };
    const from = source.mountpoint ?? mountpoints.get(ds);
    const to = mountpoints.get(target);
    if (from !== undefined && to !== undefined) paths.mounts.push({ from, to });
    paths.zvols.push({ from: source.dataset, to: target });
  }
  // Deepest first, so a child's mountpoint is not rewritten as its parent's subdirectory.
  paths.mounts.sort((a, b) => b.from.length - a.from.length);
  return paths;
}

/** A saved copy: from `.virtsnap/<domain>/` in a restored dataset (never through a symlink), else from the dump's meta dir. */
function savedFile(d: DomainRestore, paths: Paths, file: string): Buffer | null {
  for (const { to } of paths.mounts) {
    const data = readSavedFile(datasetMetaDir(to, d.name), file);
    if (data !== null) return data;
  }
  const meta = d.dump?.metaDir;
  if (meta && existsSync(path.join(meta, file))) return readFileSync(path.join(meta, file));
  return null;
}

/**
 * The NVRAM file the restored domain uses. A clone never takes the
 * original's: with --as it gets `<new name>_VARS.fd`, without --as (same
 * name, the original shut off) a file of its own beside the original's.
 */
function nvramPathFor(d: DomainRestore, xml: string, plan: RestorePlan): string | null {
  const current = parseDomainXml(xml).nvram;
  if (current === null) return null;
  if (d.newName !== d.name) return path.join(path.dirname(current), `${fileSafe(d.newName)}_VARS.fd`);
  if (plan.mode.kind === 'clone') {
    const leaf = fileSafe(plan.mode.dataset.replace(/\//g, '_'));
    return current.replace(/(\.fd)?$/, `.${leaf}$1`);
  }
  return current;
}

/**
 * Every writable disk must exist and lie in what was cloned or rolled back:
 * RAM from the snapshot on any other disk (one reached through a symlink we
 * did not rewrite, one in another dataset) would corrupt it. The plan
 * checked the paths before anything changed; this checks what they are.
 */
function assertDisksRestorable(d: DomainRestore, xml: string, paths: Paths): void {
  for (const disk of stateDisks(parseDomainXml(xml).disks)) {
    const source = disk.source!;
    if (!existsSync(source)) {
      throw new VirtsnapError(`disk ${disk.target} of ${JSON.stringify(d.name)} is not in the snapshot (${source} missing): not restoring it`);
    }
    if (d.dump === null) continue; // no RAM: its disks may live anywhere, as they did before
    const real = realpathSync(source);
    // The deepest dataset holding the file, so that a child mounted below a restored dataset does not pass for it.
    const holder = datasetOfFile(real, paths.table)?.dataset;
    const targets = new Set(paths.zvols.map((z) => z.to));
    const inside = (holder !== undefined && targets.has(holder)) || paths.zvols.some((z) => isZvolOf(source, z.to));
    if (!inside) {
      throw new VirtsnapError(
        `disk ${disk.target} of ${JSON.stringify(d.name)} (${source}) is not in ${paths.mounts.map((m) => m.to).join(', ')}: restoring its RAM onto that disk would corrupt it; not restoring`,
      );
    }
  }
}

function prepareXml(d: DomainRestore, xml: string, paths: Paths, plan: RestorePlan): { xml: string; nvram: string | null } {
  let out = rewriteDiskPaths(xml, paths.mounts, paths.zvols);
  const nvram = nvramPathFor(d, out, plan);
  if (d.newName !== d.name) out = renameDomainXml(out, d, { name: d.newName, uuid: d.newUuid, nvram });
  else if (nvram !== null) out = setNvramPath(out, nvram);
  if (plan.mode.kind === 'clone') out = linksDown(out);
  return { xml: out, nvram };
}

/** What a restore changed outside the datasets, so that a failed clone restore can put it back. */
interface Undo {
  /** NVRAM files written: the file, and where what it replaced was moved (null: there was none). */
  nvram: { dest: string; aside: string | null }[];
}

/**
 * Restores one domain. If it fails, the NVRAM it replaced goes back for a
 * clone (the original's state must stay as it was); after a rollback the
 * snapshot's NVRAM stays with the rolled-back disks and the old one is named.
 */
async function restoreDomain(d: DomainRestore, plan: RestorePlan, deps: RestoreDeps, paths: Paths, work: string, created: Created): Promise<string> {
  const undo: Undo = { nvram: [] };
  try {
    return await restoreDomainOnce(d, plan, deps, paths, work, undo, created);
  } catch (err) {
    if (plan.mode.kind === 'clone') undoNvram(undo);
    else if (undo.nvram.some((n) => n.aside !== null)) {
      log.error(`the NVRAM that was there before is kept at ${undo.nvram.flatMap((n) => n.aside ?? []).join(', ')}`, { domain: d.newName });
    }
    throw err;
  }
}

async function restoreDomainOnce(d: DomainRestore, plan: RestorePlan, deps: RestoreDeps, paths: Paths, work: string, undo: Undo, created: Created): Promise<string> {
  const ctx = { domain: d.newName, dataset: splitSnapshot(plan.snapshot).dataset };
  const inactive = savedFile(d, paths, 'domain-inactive.xml')?.toString('utf8') ?? null;
  const renamed = d.newName !== d.name;
  // Define the clone first, so the restored domain is persistent under its new name.
  if (renamed || d.dump === null) {
    if (inactive === null) throw new VirtsnapError(`no saved definition of ${JSON.stringify(d.name)} in ${plan.snapshot}: cannot define it`);
    const def = prepareXml(d, inactive, paths, plan);
    const defFile = path.join(work, `${fileSafe(d.newName)}-define.xml`);
    writeFileSync(defFile, def.xml, { mode: 0o600 });
    assertDisksRestorable(d, def.xml, paths);
    await settled(
      deps.virsh.define(defFile, deps.config.defineTimeoutMs),
      () => definedAs(d, def.xml, deps),
      'the define',
      deps.config.defineTimeoutMs,
      { domain: d.newName },
    );
    if (renamed) created.defined.push(d.newUuid);
    log.info(`defined ${JSON.stringify(d.newName)} from the snapshot's saved XML`, ctx);
  }
  const nvramCopy = savedFile(d, paths, 'nvram.fd');
  if (d.dump === null) {
    if (nvramCopy !== null && inactive !== null) putNvram(nvramCopy, prepareXml(d, inactive, paths, plan).nvram, undo);
    return `${d.newName}: no RAM dump in ${plan.snapshot} (the VM was shut off, the snapshot was quiesced, or it is older than virtsnap): disks and definition restored; start it with \`virsh start ${d.newName}\` (it boots)`;
  }
  const inSnapshot = fileInSnapshotOf(d.dump) !== null;
  const memoryFile = inSnapshot ? ramInRestored(d.dump, plan, paths) : d.dump.memoryFile;
  // RAM from inside the snapshot runs paused until its file is gone from the live dataset (see dropRam).
  const paused = plan.paused || inSnapshot;
  const image = readSaveImageXml(memoryFile);
  const live = prepareXml(d, image.xml, paths, plan);
  assertDisksRestorable(d, live.xml, paths);
  if (nvramCopy !== null) putNvram(nvramCopy, live.nvram, undo);
  if (renamed) {
    // libvirt's ABI check refuses a new UUID, so the copy's embedded XML is rewritten instead.
    const copy = path.join(work, `${fileSafe(d.newName)}.save`);
    copyFileSync(memoryFile, copy);
    rewriteSaveImageXml(copy, live.xml);
    await settled(deps.virsh.restore(copy, { paused }, deps.config.restoreTimeoutMs), () => isUp(d.newUuid, deps), 'the restore', deps.config.restoreTimeoutMs, { domain: d.newName });
    created.started.push(d.newUuid);
    rmSync(copy, { force: true });
  } else {
    const xmlFile = path.join(work, `${fileSafe(d.newName)}.xml`);
    writeFileSync(xmlFile, live.xml, { mode: 0o600 });
    await settled(
      deps.virsh.restore(memoryFile, { paused, xmlFile }, deps.config.restoreTimeoutMs),
      () => isUp(d.newUuid, deps),
      'the restore',
      deps.config.restoreTimeoutMs,
      { domain: d.newName },
    );
    created.started.push(d.newUuid);
  }
  if (inSnapshot) {
    dropRam(path.dirname(memoryFile), d.dump.id);
    if (!plan.paused) await deps.virsh.resume(d.newUuid);
  }
  log.info(`restored ${plan.paused ? 'paused' : 'running'} from RAM dump ${d.dump.id}`, ctx);
  const links = plan.mode.kind === 'clone' && /<interface\b/.test(live.xml) ? ` (network links down: \`virsh domif-setlink ${d.newName} IFACE up\` once it may meet the network)` : '';
  return `${d.newName}: ${plan.paused ? 'paused' : 'running'}, as at ${plan.snapshot}${links}`;
}

/** The define we asked for is what libvirt has now: our name and UUID, and our disks (a same-name domain had others before). */
async function definedAs(d: DomainRestore, xml: string, deps: RestoreDeps): Promise<boolean> {
  if ((await deps.virsh.uuidOf(d.newName)) !== d.newUuid) return false;
  const sources = (x: string) => JSON.stringify(parseDomainXml(x).disks.map((k) => k.source));
  return sources(await deps.virsh.dumpxml(d.newUuid, true)) === sources(xml);
}

async function isUp(uuid: string, deps: RestoreDeps): Promise<boolean> {
  if (!(await deps.virsh.exists(uuid))) return false;
  return ['running', 'paused'].includes(await deps.virsh.state(uuid));
}

/** Puts the saved NVRAM in place; what was there is kept beside it, not overwritten. */
function putNvram(copy: Buffer, dest: string | null, undo: Undo): void {
  if (dest === null) return;
  let aside: string | null = null;
  if (existsSync(dest)) {
    aside = `${dest}.before-restore-${new Date().toISOString().replace(/[-:]/g, '')}`;
    renameSync(dest, aside);
  }
  undo.nvram.push({ dest, aside });
  writeFileAtomic(dest, copy);
}

/** Puts back the NVRAM files a failed restore replaced. */
function undoNvram(undo: Undo): void {
  for (const { dest, aside } of undo.nvram.reverse()) {
    try {
      rmSync(dest, { force: true });
      if (aside !== null) renameSync(aside, dest);
    } catch (err) {
      log.error(`could not put back ${dest}${aside ? ` from ${aside}` : ''}: ${(err as Error).message}`);
    }
  }
}

/**
 * A clone restore failed: take back what it made (created, recorded as it
 * went) and nothing else: a dataset at the clone target or a domain started
 * by someone else meanwhile is not ours.
 */
async function undoClone(plan: RestorePlan, deps: RestoreDeps, created: Created): Promise<void> {
  for (const uuid of created.started) await deps.virsh.destroy(uuid).catch(() => undefined);
  for (const uuid of created.defined) await deps.virsh.undefine(uuid).catch(() => undefined);
  const removed: string[] = [];
  for (const clone of [...created.clones].reverse()) {
    // Cleanup goes on past a zfs that cannot answer: the restore's own error is the one to report.
    if (!(await deps.zfs.exists(clone).catch(() => true))) continue;
    await retryBusy(() => deps.zfs.destroy(clone)).then(
      () => removed.push(clone),
      (err: Error) => log.warn(`could not remove clone ${clone}: ${err.message}`, { dataset: clone }),
    );
  }
  log.info(`restore failed: removed ${removed.join(', ') || 'no clone'}`, { dataset: splitSnapshot(plan.snapshot).dataset });
}

/** Where the memory file of a RAM dump read from inside the snapshot is, now that its dataset is cloned or rolled back. */
function ramInRestored(dump: Manifest, plan: RestorePlan, paths: Paths): string {
  const ds = splitSnapshot(dump.snapshots[0]!.name).dataset;
  const mount = restoredMount(ds, plan, paths);
  if (mount === undefined) throw new VirtsnapError(`${plan.cloneOf[ds] ?? ds} is not mounted: cannot read the RAM inside ${plan.snapshot}`);
  return path.join(mount, fileInSnapshotOf(dump)!);
}

/** Where a dataset of the plan is mounted now that it is cloned (its clone) or rolled back (itself). */
function restoredMount(dataset: string, plan: RestorePlan, paths: Paths): string | undefined {
  const target = plan.cloneOf[dataset] ?? dataset;
  return mountpointsOf(paths.table).get(target);
}

/**
 * A RAM dump inside a snapshot (VIRTSNAP_STORE=dataset) is live again
 * in the clone or the rolled-back dataset: a snapshot of it must never pair
 * it with what the VM writes. Removed while the VM is still paused, and for
 * every dump the snapshot held (those of domains not restored too) once the
 * restores are done or failed. Only the files of the dumps read from it.
 */
function dropRam(dir: string, id: string): void {
  try {
    removeLiveRam(dir, id);
  } catch (err) {
    log.error(`cannot remove RAM dump ${id} from ${dir} (${(err as Error).message}): remove ${id}.save and ${id}.json there by hand before the next snapshot of it`);
  }
}

function dropAllRam(plan: RestorePlan, paths: Paths): void {
  for (const r of plan.ramInSnapshot) {
    const mount = restoredMount(r.dataset, plan, paths);
    if (mount !== undefined) dropRam(path.join(mount, r.dir), r.id);
  }
}

export interface RestoreResult {
  plan: RestorePlan;
  messages: string[];
}

/**
 * Holds `domains` for this restore as a snapshot run holds what it
 * freezes: a journal entry each (step `restoring`), claimed in UUID order
 * and waiting at most VIRTSNAP_LOCK_TIMEOUT for a run that holds one. A
 * sanoid run that comes meanwhile waits for the restore; a restore that
 * dies leaves entries `recover` releases (lib/thaw.ts).
 */
async function holdDomains(domains: { name: string; uuid: string }[], plan: RestorePlan, config: Config): Promise<{ runId: string; release(): void }> {
  const journal = new Journal(config.stateDir);
  const runId = `restore of ${plan.snapshot} (pid ${process.pid})`;
  const me = ownerOf(process.pid);
  const held: string[] = [];
  const release = (): void => {
    for (const uuid of held.splice(0)) if (journal.read(uuid)?.runId === runId) journal.remove(uuid);
  };
  const now = new Date().toISOString();
  const { dataset } = splitSnapshot(plan.snapshot);
  try {
    for (const d of domains) {
      await journal.claim(
        {
          format: 'virtsnap-journal/1',
          runId,
          targets: [dataset],
          snapnames: [plan.snapname],
          types: [],
          domain: d,
          step: 'restoring',
          tag: `restore-${process.pid}-${d.uuid.slice(0, 8)}`,
          memoryFile: '',
          metaDir: '',
          overlays: [],
          snapshots: [],
          owner: me,
          worker: me,
          startedAt: now,
          updatedAt: now,
        },
        config.lockTimeoutMs,
      );
      held.push(d.uuid);
    }
  } catch (err) {
    release();
    throw new VirtsnapError(`${(err as Error).message} (nothing was changed)`);
  }
  return { runId, release };
}

/** What this restore made, recorded as it goes: a failed clone restore undoes exactly this, nothing it found. */
export interface Created {
  /** Clones made (`zfs clone` succeeded). */
  clones: string[];
  /** Domains defined under a new name and UUID. */
  defined: string[];
  /** Domains this restore started (restored from RAM). */
  started: string[];
}

/**
 * Carries out a checked plan (refused on its problems). First it holds the
 * domains it touches against snapshot runs, then looks again at what may
 * have changed since the plan was made (snapshots, domains, holds, the
 * clone target) and refuses on any difference: nothing was changed then.
 */
export async function executeRestore(prepared: PreparedRestore, deps: RestoreDeps): Promise<RestoreResult> {
  const { plan, request, facts } = prepared;
  if (plan.problems.length > 0) throw new VirtsnapError(plan.problems[0]!);
  const hold = await holdDomains(domainsToHold(plan, facts), plan, deps.config);
  try {
    // The same UUIDs for clones under new names: only what changed outside counts.
    const newUuids = plan.domains.map((d) => d.newUuid);
    const now = planRestore(request, { ...facts, ...(await liveFacts(request, deps, hold.runId)) }, () => newUuids.shift() ?? randomUUID());
    const changes = planChanges(plan, now);
    if (changes.length > 0) throw new VirtsnapError(`${plan.snapshot}: what the restore would do changed since its plan was made: ${changes.join('; ')}; nothing was changed, look at the plan again (--dry-run)`);
    return await withWaitingDumps(plan, deps, (pinned) => carryOut(pinned, deps));
  } finally {
    hold.release();
    prepared.release();
  }
}

/**
 * A dump of the plan that waits in the spool is held under its own lock
 * for the whole restore, so the archiver does not move it away under
 * `virsh restore`. One stored meanwhile (the archiver was at it when the
 * plan was made) is read from the store instead: the same dump, checked by
 * the archiver as it stored it.
 */
async function withWaitingDumps<T>(plan: RestorePlan, deps: RestoreDeps, fn: (plan: RestorePlan) => Promise<T>): Promise<T> {
  const waiting = plan.domains.flatMap((d) => (d.dump !== null && isWaiting(d.dump) ? [d.dump.id] : []));
  const hold = async (i: number): Promise<T> => {
    if (i < waiting.length) return withWaitingDump(deps.config, waiting[i]!, () => hold(i + 1), deps.config.lockTimeoutMs);
    const stored = new Map(deps.store.scan().dumps.map((d) => [d.manifest.id, d.manifest]));
    const domains = await Promise.all(
      plan.domains.map(async (d) => {
        if (d.dump === null || !isWaiting(d.dump) || existsSync(d.dump.memoryFile)) return d;
        const now = stored.get(d.dump.id);
        if (now === undefined) throw new VirtsnapError(`RAM dump ${d.dump.id} of ${JSON.stringify(d.name)} left the spool since the plan was made and is not in ${deps.store.where}: nothing was changed; see \`virtsnap list\``);
        const local = await deps.store.fetch({ ...now, snapshots: d.dump.snapshots });
        return { ...d, dump: local.manifest };
      }),
    );
    return fn({ ...plan, domains });
  };
  return hold(0);
}

async function carryOut(plan: RestorePlan, deps: RestoreDeps): Promise<RestoreResult> {
  const messages: string[] = [];
  const ctx = { dataset: splitSnapshot(plan.snapshot).dataset };
  const domains = await deps.virsh.domains();
  for (const name of plan.stop) {
    const d = domains.find((x) => x.name === name);
    if (d === undefined || d.state === 'shut off') continue;
    log.info(`stopping ${JSON.stringify(name)}: its disks are about to be rolled back`, ctx);
    await deps.virsh.destroy(d.uuid);
  }
  if (plan.mode.kind === 'rollback') {
    // The newer snapshots the plan showed, by name, then a plain rollback: one that appeared since is never destroyed (the rollback fails).
    for (const s of plan.newer) {
      await retryBusy(() => deps.zfs.destroySnapshot(s));
      log.info(`destroyed ${s}, newer than ${plan.snapname} (--destroy-newer)`, { dataset: splitSnapshot(s).dataset });
    }
    for (const ds of plan.datasets) {
      const snap = `${ds}@${plan.snapname}`;
      await retryBusy(() => deps.zfs.rollback(snap, false));
      log.info(`rolled back to ${snap}`, { dataset: ds });
    }
  }
  const work = privateWorkDir(deps.config);
  const created: Created = { clones: [], defined: [], started: [] };
  try {
    if (plan.mode.kind === 'clone') {
      for (const ds of plan.datasets) {
        await deps.zfs.clone(`${ds}@${plan.snapname}`, plan.cloneOf[ds]!);
        created.clones.push(plan.cloneOf[ds]!);
        log.info(`cloned ${ds}@${plan.snapname} to ${plan.cloneOf[ds]}`, { dataset: ds });
      }
    }
    const paths = pathsAfter(plan);
    try {
      for (const d of plan.domains) {
        if (plan.mode.kind === 'clone') deps.stop?.check(`before restoring ${JSON.stringify(d.newName)}`);
        messages.push(await restoreDomain(d, plan, deps, paths, work, created));
      }
    } finally {
      dropAllRam(plan, paths);
    }
  } catch (err) {
    if (plan.mode.kind === 'clone') await undoClone(plan, deps, created);
    throw err;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const restored = new Set(plan.domains.map((d) => d.name));
  for (const name of plan.stop.filter((n) => !restored.has(n))) {
    messages.push(`${name}: stopped for the rollback and left shut off (no RAM dump of it in ${plan.snapshot})`);
  }
  return { plan, messages };
}
