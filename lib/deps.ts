// What a run works with, built in one place. The libvirt and ZFS clients are
// narrowed to the calls runs make, so freeze, thaw, recover and the watchdog
// can be tested with in-memory fakes that fail on command (test/unit/fakes.ts).
import type { Config } from './config.js';
import { Journal } from './journal.js';
import { QemuImgClient } from './libvirt/qemu-img.js';
import { LibvirtClient } from './libvirt/virsh.js';
import { hookOwnerPid, ownerOf, type Owner } from './owner.js';
import { noStop, stopOnSignals, type StopSignal } from './signals.js';
import { storeFor, type DumpStore } from './stores/index.js';
import { ZfsClient } from './zfs.js';

/** The libvirt calls of freeze, thaw, recover and the watchdog. */
export type RunLibvirt = Pick<
  LibvirtClient,
  | 'stack'
  | 'domains'
  | 'domain'
  | 'dumpxml'
  | 'state'
  | 'stateReason'
  | 'exists'
  | 'fsFreeze'
  | 'fsThaw'
  | 'createSnapshot'
  | 'maxDowntime'
  | 'setMaxDowntime'
  | 'completedJob'
  | 'activeJob'
  | 'abortJob'
  | 'activeCommit'
  | 'hasBlockJob'
  | 'pivot'
  | 'abortBlockJob'
  | 'resume'
>;

/** The ZFS calls of a run (inventory, freeze, thaw, `virtsnap snapshot`). */
export type RunZfs = Pick<ZfsClient, 'exists' | 'subtree' | 'snapshotProps' | 'snapshot' | 'listSnapshots'>;

/** qemu-img: the overlays a freeze makes before the RAM save. */
export type RunImages = Pick<QemuImgClient, 'createOverlay'>;

export interface Deps {
  virsh: RunLibvirt;
  zfs: RunZfs;
  images: RunImages;
  config: Config;
  journal: Journal;
  /** The process that owns the run (sanoid for the hooks, see owner.hookOwnerPid). */
  owner: Owner;
  /** This process: the one doing the work. */
  worker: Owner;
  /** SIGINT/SIGTERM/SIGHUP received: freeze stops and undoes, thaw goes on (lib/signals.ts). */
  stop: StopSignal;
  /** Where RAM dumps go (VIRTSNAP_STORE): chosen here, once; nothing else asks which store it is. */
  store: DumpStore;
}

export interface Clients {
  virsh: LibvirtClient;
  zfs: ZfsClient;
  store: DumpStore;
}

export function makeClients(config: Config): Clients {
  return { virsh: new LibvirtClient({ uri: config.libvirtUri }), zfs: new ZfsClient(), store: storeFor(config) };
}

/**
 * `ownerPid`: the process whose death ends the run; the hooks' is sanoid.
 * `signals`: take over SIGINT/SIGTERM/SIGHUP (every entry point that changes VMs does).
 */
export function makeDeps(config: Config, options: { ownerPid?: number; signals?: boolean } = {}): Deps {
  return {
    ...makeClients(config),
    images: new QemuImgClient(),
    config,
    journal: new Journal(config.stateDir),
    owner: ownerOf(options.ownerPid ?? hookOwnerPid()),
    worker: ownerOf(process.pid),
    stop: options.signals === false ? noStop : stopOnSignals(),
  };
}
