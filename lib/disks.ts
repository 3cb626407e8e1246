// Which disks hold what the guest writes: the one rule behind which disks a
// freeze snapshots (lib/plan.ts), which ones it cannot place (storage
// volumes), and which ones a restore must find in the restored datasets
// before it pairs them with RAM (lib/restore-plan.ts, lib/restore.ts).
import type { Disk } from './libvirt/domain-xml.js';

/**
 * Why a disk holds nothing the guest writes that a snapshot must freeze, or
 * null when it does. Media drives, read-only and shared disks, SCSI
 * passthrough and drives without a source are left alone everywhere.
 */
export function notGuestState(disk: Disk): string | null {
  if (disk.device === 'cdrom' || disk.device === 'floppy') return disk.device;
  if (disk.device === 'lun') return 'lun (SCSI passthrough)';
  if (disk.readonly) return 'read-only';
  if (disk.shareable) return 'shareable';
  if (disk.type === 'volume') return null; // guest state, but with no path to place it (see unplaceable)
  if (disk.source === null) return disk.type === 'network' ? 'network disk' : 'empty';
  if (disk.type !== 'file' && disk.type !== 'block') return `${disk.type} disk`;
  return null;
}

/**
 * A disk that holds guest state but whose dataset virtsnap cannot tell: a
 * libvirt storage-pool volume has no path in the domain XML.
 */
export function unplaceable(disk: Disk): boolean {
  return disk.type === 'volume' && notGuestState(disk) === null;
}

/** Disks that hold guest state and have a path: these must lie in the snapshot's datasets. */
export function stateDisks(disks: readonly Disk[]): Disk[] {
  return disks.filter((d) => notGuestState(d) === null && !unplaceable(d));
}
