// Planning a freeze: which domains, which disks, which files. Pure: it takes
// the facts gathered by lib/inventory and returns a plain object that
// `--dry-run` prints and lib/freeze carries out.
import path from 'node:path';
import type { Config } from './config.js';
import type { Disk } from './libvirt/domain-xml.js';
import { snapshotXml } from './libvirt/snapshot-xml.js';
import { liveSaveTrust, type Stack } from './libvirt/stack.js';
import { dumpNeed, fitDumps, type RamCandidate } from './space.js';
import { poolOf } from './zfs.js';
import { notGuestState, unplaceable } from './disks.js';
import { datasetMetaDir } from './domain-files.js';
import type { Domain, DomainState } from './libvirt/virsh.js';
import { fileSafe, isInsideDir } from './fsutil.js';
import type { Inventory } from './inventory.js';
import { modeOfRun, type Mode } from './mode.js';
import { ramInDatasetOf, ramInDatasetProblem, type RamInDataset } from './ram-in-dataset.js';

export interface RunRequest {
  targets: string[];
  snapnames: string[];
  types: string[];
}

export interface DiskPlan {
  target: string;
  device: string;
  source: string | null;
  format: string | null;
  /** The ZFS dataset the source lives in, if any. */
  dataset: string | null;
  /** Overlay the disk switches to while frozen; null when the disk is left alone. */
  overlay: string | null;
  /**
   * Frozen without an overlay (libvirt's snapshot='manual'): for a paused
   * domain, whose disks do not change while it stays paused. An overlay
   * would be stuck there: after the RAM save QEMU keeps a paused domain's
   * images inactive, and block-commit fails with "Block node is read-only".
   */
  manual: boolean;
  /** Why the disk is left alone. */
  skip: string | null;
}

/** freeze: external snapshot of RAM + disks. record: shut off, only its XML/NVRAM are saved. */
export type DomainAction = 'freeze' | 'record';

export interface DomainPlan {
  name: string;
  uuid: string;
  state: DomainState;
  action: DomainAction;
  /**
   * How it is frozen (lib/mode.ts). A paused domain is always saved with its
   * disks left alone (its vCPUs cannot answer an agent, its images cannot
   * take a commit) and stays paused.
   */
  mode: Mode;
  /** quiesce: what happens if the guest agent does not answer (ram: the other fields say how). */
  fallback: 'ram' | 'fail' | null;
  /** Why the mode differs from the run's, if it does. */
  modeNote: string | null;
  /**
   * The RAM is saved while the guest runs (--live). Not for a paused domain
   * (it stays paused), with VIRTSNAP_LIVE=no, or where the stack may lose
   * pages in a live save (liveNote says why).
   */
  live: boolean;
  /**
   * Why a running domain's save is not live (`info`), or why it is live
   * although it may miss pages (`warn`: VIRTSNAP_LIVE=yes); null otherwise.
   * The log says it once per run, `--dry-run` shows it.
   */
  liveNote: LiveNote | null;
  tag: string;
  disks: DiskPlan[];
  /** In-flight memory file for action freeze: in the overlay dir, or in the dataset (ramInDataset). */
  memoryFile: string | null;
  /** VIRTSNAP_STORE=dataset: the RAM goes into this dataset, inside the snapshot. */
  ramInDataset: RamInDataset | null;
  /** Staging dir for XML/NVRAM copies that go into the archive with the dump. */
  metaDir: string;
  /** `<mountpoint>/.virtsnap/<domain>` in each snapshotted dataset holding its disks. */
  datasetMetaDirs: string[];
  /** Every `dataset@snapname` that will hold this domain's disks as they were frozen. */
  snapshots: string[];
  /** Where those datasets are mounted: the disk paths in the RAM dump are under these. */
  mountpoints: Record<string, string>;
  nvram: string | null;
  tpmEmulator: boolean;
  snapshotXml: string | null;
  /**
   * virtsnap makes the overlays (lib/libvirt/qemu-img.ts) before the RAM
   * save and libvirt only opens them (--reuse-external). libvirt makes the
   * overlays it is asked for after the save, while the guest is paused.
   * False when no disk switches to an overlay, or when a disk's format is
   * unknown (the overlay must name its backing image's format): libvirt makes them then.
   */
  reuseOverlays: boolean;
  /**
   * The migration downtime limit (ms) the live save runs with, or null to
   * leave QEMU's (300 ms by default): QEMU stops the guest for the save's
   * last pass once what is left fits into the limit. Only where the guest
   * runs on right after the save (ram mode, a running domain, live).
   */
  downtimeLimitMs: number | null;
  /**
   * Flush the memory file to disk while the save writes it: libvirt's
   * iohelper fdatasyncs the whole file after the last pass, while the guest
   * is still paused. Where the guest runs on right after the save (ram mode,
   * a running domain), live or not: a save with the guest paused waits for
   * that fdatasync too.
   */
  syncDumpWhileSaving: boolean;
}

export interface FreezePlan {
  runId: string;
  targets: string[];
  snapnames: string[];
  types: string[];
  /** The run's mode, from its snapshot types and VIRTSNAP_MODE. */
  mode: Mode;
  modeWhy: string;
  /** Every dataset the run snapshots: the targets, and their subtrees under `recursive = zfs`. */
  datasets: string[];
  domains: DomainPlan[];
  /**
   * Domains with disks here that still run on one of our overlays (another
   * run, or one that could not be thawed): not frozen by this run, named by it.
   */
  onOverlays: { name: string; uuid: string; reason: string }[];
  /**
   * Domains with disks here that this run leaves alone, each named in an
   * ERROR line (not a reason to leave the others unfrozen): its journal
   * entry is damaged (nobody knows what was done to it) or keeps an earlier
   * dump the spool could not take, or its RAM dump
   * would not fit where it is written (lib/space.ts). Their snapshots are
   * only crash-consistent.
   */
  notFrozen: { name: string; uuid: string; reason: string }[];
  /** Reasons not to start at all. Nothing is touched when this is not empty. */
  problems: string[];
}

export interface LiveNote {
  level: 'info' | 'warn';
  text: string;
}

/**
 * The one rule for a live RAM save: a running domain's RAM is saved live
 * where the stack keeps every page the guest writes (lib/libvirt/stack.ts),
 * unless VIRTSNAP_LIVE says otherwise. Saved with the guest paused, a TCG
 * guest on QEMU < 9.0 stalls for the whole RAM write (about 0.1 s for
 * 96 MiB, 0.45 s for 512 MiB on the bed) instead of tens of ms, and its
 * image is whole.
 */
export function liveSaveOf(domain: Pick<Domain, 'state' | 'virtType'>, stack: Stack, setting: Config['live']): { live: boolean; note: LiveNote | null } {
  if (domain.state !== 'running' || setting === 'no') return { live: false, note: null };
  const trust = liveSaveTrust(stack, domain.virtType);
  if (trust.trusted) return { live: true, note: null };
  if (setting === 'yes') return { live: true, note: { level: 'warn', text: `${trust.why}: saved live all the same (VIRTSNAP_LIVE=yes), its RAM dump may miss pages` } };
  return { live: false, note: { level: 'info', text: `${trust.why}: its RAM is saved with the guest paused (VIRTSNAP_LIVE=yes forces a live save)` } };
}

export function runIdOf(request: Pick<RunRequest, 'targets' | 'snapnames'>): string {
  return `${request.targets.join(',')}@${request.snapnames[0] ?? ''}`;
}

/**
 * The downtime limit of a live save. With QEMU's default of 300 ms, the
 * save's last pass paused the test bed's 512 MiB guest (320 MiB being
 * rewritten) 24-350 ms, once 1880 ms (QEMU's "downtime", 19 saves); at
 * 20 ms it paused it 8-65 ms (12 saves), after 3-5 passes instead of 3-4.
 * A save that does not converge at this limit gets the old one back (lib/freeze.ts).
 */
export const SAVE_DOWNTIME_LIMIT_MS = 20;

const FREEZABLE: readonly DomainState[] = ['running', 'paused', 'blocked', 'idle'];

function skipReason(disk: Disk, dataset: string | null, datasets: ReadonlySet<string>): string | null {
  const ignored = notGuestState(disk);
  if (ignored !== null) return ignored;
  if (unplaceable(disk)) return 'storage volume (see problems)';
  if (dataset === null || !datasets.has(dataset)) return 'outside the snapshotted datasets';
  return null;
}

function planDisks(domain: Domain, inv: Inventory, datasets: ReadonlySet<string>, overlayBase: string): DiskPlan[] {
  return domain.disks.map((disk) => {
    const dataset = disk.source === null ? null : (inv.datasetOfSource.get(disk.source) ?? null);
    const skip = skipReason(disk, dataset, datasets);
    return {
      target: disk.target,
      device: disk.device,
      source: disk.source,
      format: disk.format,
      dataset,
      overlay: skip === null ? `${overlayBase}.${fileSafe(disk.target)}.qcow2` : null,
      manual: false,
      skip,
    };
  });
}

function metaDirIn(dataset: string, inv: Inventory, domainName: string): string | null {
  const mountpoint = inv.mountpointOf.get(dataset);
  return mountpoint === undefined ? null : datasetMetaDir(mountpoint, domainName);
}

interface DomainMode {
  mode: Mode;
  fallback: DomainPlan['fallback'];
  note: string | null;
}

/** The mode one domain gets in a run of `runMode`: the rule for paused domains and for quiesce without an agent. */
function modeOfDomain(domain: Domain, runMode: Mode, config: Config): DomainMode {
  if (domain.state === 'paused') {
    return runMode === 'quiesce' ? { mode: 'ram', fallback: null, note: 'paused: its vCPUs cannot answer the guest agent, so its RAM is saved instead' } : { mode: runMode, fallback: null, note: null };
  }
  if (runMode !== 'quiesce') return { mode: runMode, fallback: null, note: null };
  if (domain.agent === 'none' || domain.agent === 'disconnected') {
    const why = domain.agent === 'none' ? 'no guest agent channel (org.qemu.guest_agent.0)' : 'its guest agent is not connected';
    return config.quiesceFallback === 'ram'
      ? { mode: 'ram', fallback: null, note: `${why}: RAM snapshot instead (VIRTSNAP_QUIESCE_FALLBACK=ram)` }
      : { mode: 'quiesce', fallback: 'fail', note: why };
  }
  return { mode: 'quiesce', fallback: config.quiesceFallback, note: null };
}

/**
 * A dump's id (its tag): the run's stamp and the domain's first 8 UUID
 * digits, the one form every manifest has (manifest.ts DUMP_ID). Two
 * domains of one run whose UUIDs share those digits (hand-made UUIDs) get
 * the stamp a millisecond apart: in the flat spool, a lock or a restic tag,
 * one id is one dump.
 */
export function tagFor(stamp: string, uuid: string, taken: Set<string>): string {
  let ms = Date.parse(`${stamp.slice(0, 4)}-${stamp.slice(4, 6)}-${stamp.slice(6, 8)}T${stamp.slice(9, 11)}:${stamp.slice(11, 13)}:${stamp.slice(13)}`);
  for (;;) {
    const tag = `${new Date(ms).toISOString().replace(/[-:]/g, '')}-${uuid.slice(0, 8)}`;
    if (!taken.has(tag)) {
      taken.add(tag);
      return tag;
    }
    ms += 1;
  }
}

function planDomain(domain: Domain, request: RunRequest, inv: Inventory, config: Config, datasets: ReadonlySet<string>, runMode: Mode, tags: Set<string>): DomainPlan | null {
  const tag = tagFor(inv.stamp, domain.uuid, tags);
  const base = path.join(config.overlayDir, `${fileSafe(domain.name)}.${tag}`);
  const disks = planDisks(domain, inv, datasets, base);
  const frozen = disks.filter((d) => d.skip === null);
  if (frozen.length === 0) return null;
  const holding = [...new Set(frozen.map((d) => d.dataset as string))].sort();
  const action: DomainAction = domain.state === 'shut off' ? 'record' : 'freeze';
  const how = modeOfDomain(domain, runMode, config);
  const keep = (d: DiskPlan): DiskPlan => ({ ...d, overlay: null });
  const manual = (d: DiskPlan): DiskPlan => (d.skip === null ? { ...d, overlay: null, manual: true } : d);
  // Disks stay where they are when the guest stays paused until the ZFS snapshot (a paused domain, pause mode).
  const stays = domain.state === 'paused' || how.mode === 'pause';
  const planned = action === 'record' ? disks.map(keep) : stays ? disks.map(manual) : disks;
  const ramDataset = action === 'freeze' && config.store.kind === 'dataset' && holding.length === 1 && inv.mountpointOf.has(holding[0]!) ? holding[0]! : null;
  const ramInDataset = ramDataset === null ? null : ramInDatasetOf(ramDataset, inv.mountpointOf.get(ramDataset)!, domain.name);
  const memoryFile = action !== 'freeze' ? null : ramInDataset !== null ? path.join(ramInDataset.dir, `${tag}.save`) : `${base}.save`;
  const switching = planned.filter((d) => d.overlay !== null);
  const save = liveSaveOf(domain, inv.stack, config.live);
  // Where the guest runs on right after the save: its stall is the save's end and what libvirt does after it.
  const resumesAfterSave = action === 'freeze' && !stays && domain.state === 'running';
  const plan: DomainPlan = {
    name: domain.name,
    uuid: domain.uuid,
    state: domain.state,
    action,
    mode: how.mode,
    fallback: action === 'freeze' ? how.fallback : null,
    modeNote: action === 'freeze' ? how.note : null,
    live: action === 'freeze' && save.live,
    liveNote: action === 'freeze' ? save.note : null,
    tag,
    disks: planned,
    memoryFile,
    ramInDataset,
    metaDir: `${base}.meta`,
    datasetMetaDirs: holding.map((ds) => metaDirIn(ds, inv, domain.name)).filter((d): d is string => d !== null),
    mountpoints: Object.fromEntries(holding.flatMap((ds) => (inv.mountpointOf.has(ds) ? [[ds, inv.mountpointOf.get(ds)!]] : []))),
    snapshots: holding.flatMap((ds) => request.snapnames.map((s) => `${ds}@${s}`)),
    nvram: domain.nvram,
    tpmEmulator: domain.tpmEmulator,
    snapshotXml: null,
    reuseOverlays: action === 'freeze' && switching.length > 0 && switching.every((d) => d.source !== null && d.format !== null),
    downtimeLimitMs: resumesAfterSave && save.live ? SAVE_DOWNTIME_LIMIT_MS : null,
    syncDumpWhileSaving: resumesAfterSave,
  };
  // quiesce keeps the RAM plan ready: it is what a fallback to ram runs.
  if (memoryFile !== null) {
    plan.snapshotXml = snapshotXml({
      name: `virtsnap-${tag}`,
      description: `virtsnap freeze for ${request.targets.join(',')}@${request.snapnames.join(',')}`,
      memoryFile,
      disks: plan.disks.map((d) => ({ target: d.target, overlay: d.overlay, manual: d.manual })),
    });
  }
  return plan;
}

/** The one-line refusal when a VM cannot be quiesced and VIRTSNAP_QUIESCE_FALLBACK=fail. */
export function cannotQuiesce(name: string, why: string): string {
  return `domain ${JSON.stringify(name)} cannot be quiesced: ${why}; install and start qemu-guest-agent in it, or set VIRTSNAP_QUIESCE_FALLBACK=ram`;
}

/** A storage-pool volume has no path in the domain XML: we cannot tell which dataset holds it. */
function volumeProblems(domain: Domain): string[] {
  return domain.disks
    .filter(unplaceable)
    .map(
      (d) =>
        `domain ${JSON.stringify(domain.name)} disk ${d.target} is a libvirt storage volume: virtsnap cannot tell which dataset holds it, so it cannot freeze it with the rest; give it a file or block source`,
    );
}

/** VIRTSNAP_STORE=dataset, for a VM whose RAM may be saved (not one quiesced without a fallback to ram). */
function ramStoreProblems(domain: Domain, plan: DomainPlan, inv: Inventory, config: Config): string[] {
  const mayKeepRam = plan.action === 'freeze' && (plan.mode !== 'quiesce' || plan.fallback === 'ram');
  if (!mayKeepRam || config.store.kind !== 'dataset' || plan.ramInDataset !== null) return [];
  const datasets = [...new Set(plan.disks.filter((d) => d.skip === null).map((d) => d.dataset as string))].sort();
  const problem = ramInDatasetProblem(domain.name, datasets, datasets.length === 1 ? inv.mountpointOf.get(datasets[0]!) : undefined);
  return problem === null ? [] : [problem];
}

function stateProblems(domain: Domain, plan: DomainPlan): string[] {
  if (plan.action === 'freeze' && plan.fallback === 'fail' && plan.modeNote !== null) {
    return [cannotQuiesce(domain.name, plan.modeNote)];
  }
  if (plan.action !== 'freeze' || FREEZABLE.includes(domain.state)) return [];
  return [`domain ${JSON.stringify(domain.name)} is ${domain.state}: its RAM cannot be saved; resume or shut it down before the snapshot`];
}

/**
 * A domain still on one of our overlays (a run that crashed or whose commit
 * failed) has its sources in the overlay dir, so it has nothing to freeze;
 * what matters is whether the image below the overlay is in these datasets.
 */
function leftovers(domain: Domain, inv: Inventory, datasets: ReadonlySet<string>, config: Config): string[] {
  return domain.disks
    .filter((d) => d.source !== null && isInsideDir(d.source, config.overlayDir))
    .filter((d) => {
      const below = d.backing === null ? undefined : inv.datasetOfSource.get(d.backing);
      return below === undefined || datasets.has(below);
    })
    .map(
      (d) =>
        `domain ${JSON.stringify(domain.name)} disk ${d.target} still runs on overlay ${d.source} from an earlier run, so this snapshot holds its disk as it was then: run \`virtsnap recover\``,
    );
}

/** Where a domain's RAM is written, and what shares that space: the VM's pool (RAM in the dataset), or the overlay dir. */
function ramPlace(dp: DomainPlan, config: Config): { dir: string; key: string } {
  return dp.ramInDataset !== null ? { dir: dp.ramInDataset.mountpoint, key: `pool ${poolOf(dp.ramInDataset.dataset)}` } : { dir: config.overlayDir, key: 'overlay dir' };
}

/** The dumps this run writes (a quiesce writes none), in plan order. */
function ramCandidates(domains: DomainPlan[], inv: Inventory, config: Config): RamCandidate[] {
  return domains.flatMap((dp) => {
    if (dp.action !== 'freeze' || dp.mode === 'quiesce' || dp.memoryFile === null) return [];
    const memoryKiB = inv.domains.find((d) => d.uuid === dp.uuid)?.memoryKiB ?? 0;
    return [{ name: dp.name, uuid: dp.uuid, need: dumpNeed(memoryKiB, dp.live), ...ramPlace(dp, config) }];
  });
}

/** Free bytes where the run's dumps go: the first look at each place stands for it. */
function freeByKey(domains: DomainPlan[], inv: Inventory, config: Config): Map<string, number | null> {
  const free = new Map<string, number | null>();
  for (const dp of domains) {
    const { dir, key } = ramPlace(dp, config);
    if (!free.has(key)) free.set(key, inv.freeBytes.get(dir) ?? null);
  }
  return free;
}

export function planFreeze(request: RunRequest, inv: Inventory, config: Config): FreezePlan {
  const datasets = new Set(inv.datasets);
  const problems: string[] = [...inv.problems];
  const overlayDataset = inv.datasetOfOverlayDir;
  if (overlayDataset !== null && datasets.has(overlayDataset)) {
    problems.push(
      `VIRTSNAP_OVERLAY_DIR ${config.overlayDir} is inside dataset ${overlayDataset}, which this run snapshots: move it to a directory or dataset outside it`,
    );
  }
  const runMode = modeOfRun(request.types, config.mode);
  const domains: DomainPlan[] = [];
  const onOverlays: FreezePlan['onOverlays'] = [];
  const notFrozen: FreezePlan['notFrozen'] = [];
  const tags = new Set<string>();
  for (const domain of [...inv.domains].sort((a, b) => a.name.localeCompare(b.name))) {
    const onOverlay = leftovers(domain, inv, datasets, config);
    if (onOverlay.length > 0) {
      // Not a reason to leave the other VMs unfrozen: this one is named, they are dumped.
      onOverlays.push({ name: domain.name, uuid: domain.uuid, reason: onOverlay.join('; ') });
      continue;
    }
    const plan = planDomain(domain, request, inv, config, datasets, runMode.mode, tags);
    if (plan === null) continue;
    const damage = inv.blockedEntries.get(domain.uuid);
    if (damage !== undefined) {
      // Not a reason to leave the other VMs unfrozen: this one is named, they are dumped.
      notFrozen.push({ name: domain.name, uuid: domain.uuid, reason: `domain ${JSON.stringify(domain.name)} is not frozen: ${damage}` });
      continue;
    }
    problems.push(...stateProblems(domain, plan), ...ramStoreProblems(domain, plan, inv, config), ...volumeProblems(domain));
    domains.push(plan);
  }
  const fit = fitDumps(ramCandidates(domains, inv, config), freeByKey(domains, inv, config));
  const fitting = domains.filter((d) => {
    const f = fit.get(d.uuid);
    if (f === undefined || f.fits) return true;
    notFrozen.push({ name: d.name, uuid: d.uuid, reason: f.why });
    return false;
  });
  return {
    runId: runIdOf(request),
    targets: request.targets,
    snapnames: request.snapnames,
    types: request.types,
    mode: runMode.mode,
    modeWhy: runMode.why,
    datasets: [...datasets].sort(),
    domains: fitting,
    onOverlays,
    notFrozen,
    problems,
  };
}
