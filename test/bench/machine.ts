// The machine a bench ran on, saved with its numbers: a figure without the
// cores, the CPU and whether QEMU ran under KVM or TCG means little.
import { readFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { bed, sh, stackUri } from '../helpers/bed.js';

export interface Machine {
  cores: number;
  cpuModel: string;
  ramMiB: number;
  kernel: string;
  node: string;
  libvirt: string;
  qemu: string;
  sanoid: string;
  zfs: string;
  virtType: string;
  os: string;
}

async function firstLine(command: string, args: string[], pattern: RegExp = /./): Promise<string> {
  try {
    const out = await sh(command, args, { timeoutMs: 10_000 });
    return out.split('\n').find((l) => pattern.test(l))?.trim() ?? '?';
  } catch (err) {
    return `? (${(err as Error).message.split('\n')[0]})`;
  }
}

export async function describeMachine(): Promise<Machine> {
  const b = await bed();
  const os = /^PRETTY_NAME="?(.*?)"?$/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? '?';
  return {
    cores: cpus().length,
    cpuModel: cpus()[0]?.model ?? '?',
    ramMiB: Math.round(totalmem() / 2 ** 20),
    kernel: release(),
    node: process.version,
    libvirt: await firstLine('virsh', ['-c', stackUri(), 'version', '--daemon'], /Running against daemon/),
    // The stack's own (Debian 13's QEMU in its root is not the host's qemu-system-x86_64).
    qemu: await firstLine('virsh', ['-c', stackUri(), 'version', '--daemon'], /Running hypervisor/),
    sanoid: `${await firstLine(b.sanoid['2.1.0'], ['--version'])} (${b.sanoid['2.1.0']})`,
    zfs: await firstLine('dpkg-query', ['-W', '-f', '${Package} ${Version}\n', 'zfs-fuse']),
    virtType: b.virtType,
    os,
  };
}
