// Copies of what a domain needs to be brought back besides its disks and RAM:
// its XML (live and persistent), its UEFI variable store and its swtpm state.
// They go into `<dataset mountpoint>/.virtsnap/<domain>/` so they travel in
// the ZFS snapshot, and into the dump's meta dir in the archive (a zvol has
// no files of its own to carry them).
import { cpSync, existsSync, copyFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { ensureDir, writeFileAtomic, PRIVATE_FILE } from './fsutil.js';
import type { LibvirtClient } from './libvirt/virsh.js';

export interface DomainFiles {
  uuid: string;
  nvram: string | null;
  tpmEmulator: boolean;
}

/** libvirt keeps an emulated TPM's state here (qemu.conf swtpm_storage default). */
export function swtpmDir(uuid: string): string {
  return path.join('/var/lib/libvirt/swtpm', uuid);
}

export async function saveDomainFiles(domain: DomainFiles, virsh: LibvirtClient, dirs: string[]): Promise<void> {
  if (dirs.length === 0) return;
  const live = await virsh.dumpxml(domain.uuid);
  const inactive = await virsh.dumpxml(domain.uuid, true);
  for (const dir of dirs) {
    ensureDir(dir);
    writeFileAtomic(path.join(dir, 'domain.xml'), live);
    writeFileAtomic(path.join(dir, 'domain-inactive.xml'), inactive);
    if (domain.nvram !== null && existsSync(domain.nvram)) {
      const copy = path.join(dir, 'nvram.fd');
      copyFileSync(domain.nvram, copy);
      chmodSync(copy, PRIVATE_FILE);
    }
    const tpm = swtpmDir(domain.uuid);
    if (domain.tpmEmulator && existsSync(tpm)) {
      cpSync(tpm, path.join(dir, 'swtpm'), { recursive: true });
    }
  }
}
