// Copies of what a domain needs to be brought back besides its disks and RAM:
// its XML (live and persistent), its UEFI variable store and its swtpm state.
// They go into `<dataset mountpoint>/.virtsnap/<domain>/` so they travel in
// the ZFS snapshot, and into the dump's meta dir in the archive (a zvol has
// no files of its own to carry them).
//
// A dataset's mountpoint may be writable by others: every write goes through
// SafeDir, which never follows a symlink planted there.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileSafe } from './fsutil.js';
import type { LibvirtClient } from './libvirt/virsh.js';
import { SafeDir, withSafeDir } from './safe-dir.js';

export interface DomainFiles {
  uuid: string;
  nvram: string | null;
  tpmEmulator: boolean;
}

/** libvirt keeps an emulated TPM's state here (qemu.conf swtpm_storage default). */
export function swtpmDir(uuid: string): string {
  return path.join('/var/lib/libvirt/swtpm', uuid);
}

/** `<mountpoint>/.virtsnap/<domain>`: the two last components are virtsnap's own. */
export function datasetMetaDir(mountpoint: string, domainName: string): string {
  return path.join(mountpoint, '.virtsnap', fileSafe(domainName));
}
export const DATASET_META_DEPTH = 2;

/** Where the copies go: a dir and how many of its last components virtsnap makes (see SafeDir.open). */
export interface MetaTarget {
  dir: string;
  ours: number;
}

export async function saveDomainFiles(domain: DomainFiles, virsh: Pick<LibvirtClient, 'dumpxml'>, targets: MetaTarget[]): Promise<void> {
  if (targets.length === 0) return;
  const live = await virsh.dumpxml(domain.uuid);
  const inactive = await virsh.dumpxml(domain.uuid, true);
  const tpm = swtpmDir(domain.uuid);
  for (const t of targets) {
    withSafeDir(t.dir, { ours: t.ours, create: true }, (dir) => {
      const d = dir as SafeDir;
      d.writeFile('domain.xml', live);
      d.writeFile('domain-inactive.xml', inactive);
      if (domain.nvram !== null && existsSync(domain.nvram)) d.copyFileIn(domain.nvram, 'nvram.fd');
      if (domain.tpmEmulator && existsSync(tpm)) d.copyTreeIn(tpm, 'swtpm');
    });
  }
}

/** A saved copy from `<mountpoint>/.virtsnap/<domain>/` (in a clone or rolled-back dataset), never through a symlink. */
export function readSavedFile(metaDir: string, file: string): Buffer | null {
  return withSafeDir(metaDir, { ours: DATASET_META_DEPTH, create: false }, (d) => d?.readFile(file) ?? null);
}
