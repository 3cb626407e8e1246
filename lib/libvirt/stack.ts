// What this libvirt and QEMU can do: the one place that knows which version
// brought what, and which version is known to break what. Everything else
// asks here (`can`, `liveSaveTrust`, `stackLines`) instead of comparing
// versions itself.
//
// Read from `virsh version --daemon` (one call): the daemon's libvirt and the
// hypervisor's QEMU. The QEMU is the host's default emulator; a domain with an
// <emulator> of its own may run another one, which libvirt does not report.
import type { Compression } from '../manifest.js';

/** A dotted version as libvirt prints it. */
export interface Version {
  major: number;
  minor: number;
  micro: number;
  text: string;
}

export function parseVersion(text: string): Version | null {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(text.trim());
  if (m === null) return null;
  return { major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3] ?? 0), text: m[0] };
}

export function atLeast(v: Version | null, major: number, minor = 0): boolean {
  return v !== null && (v.major > major || (v.major === major && v.minor >= minor));
}

/** The stack virtsnap talks to. null: libvirt did not say. */
export interface Stack {
  libvirt: Version | null;
  qemu: Version | null;
}

export const UNKNOWN_STACK: Stack = { libvirt: null, qemu: null };

/** `virsh version --daemon`: `Running against daemon: 9.0.0`, `Running hypervisor: QEMU 7.2.22`. */
export function parseVirshVersion(out: string): Stack {
  const daemon = /Running against daemon: (\S+)/.exec(out)?.[1];
  const hypervisor = /Running hypervisor: QEMU (\S+)/.exec(out)?.[1];
  return { libvirt: daemon === undefined ? null : parseVersion(daemon), qemu: hypervisor === undefined ? null : parseVersion(hypervisor) };
}

/** The features virtsnap uses or reports, with the libvirt that brought each. */
export const FEATURES = {
  /** snapshot='manual': a disk libvirt leaves to the storage (pause mode, a domain that is paused). */
  manualSnapshot: { libvirt: [8, 2], what: "snapshot='manual' disks (pause mode, paused domains)" },
  /** Reverting and deleting external snapshots with memory (virtsnap commits its own overlays away and needs neither). */
  externalRevert: { libvirt: [9, 9], what: 'reverting external snapshots' },
  /** zstd as a save image format (save_image_format in qemu.conf, format word 5). */
  zstdImage: { libvirt: [10, 4], what: 'zstd save images' },
  /** The `sparse` (mapped-ram) save image format and parallel save channels, through virDomainSaveParams. */
  sparseImage: { libvirt: [11, 2], what: 'sparse (mapped-ram) save images' },
} as const satisfies Record<string, { libvirt: readonly [number, number]; what: string }>;

export type Feature = keyof typeof FEATURES;

export function can(stack: Stack, feature: Feature): boolean {
  const [major, minor] = FEATURES[feature].libvirt;
  return atLeast(stack.libvirt, major, minor);
}

/** Why this libvirt cannot restore a zstd save image (libvirt runs the zstd program to read one), or null when it can. */
export function readsZstd(stack: Stack, zstdInstalled: boolean): string | null {
  if (!can(stack, 'zstdImage')) return `libvirt ${stack.libvirt?.text ?? '(unknown version)'} cannot restore zstd save images (10.4 can)`;
  return zstdInstalled ? null : 'the zstd program, which libvirt runs to read them, is not installed (apt install zstd)';
}

/**
 * How the archiver compresses dumps on this stack, for VIRTSNAP_COMPRESS
 * `setting`: zstd where this libvirt restores zstd save images and the zstd
 * program (which libvirt runs to read them) is installed; gzip, which every
 * libvirt reads, elsewhere. zstd -1 ran 4x as fast as gzip -1 for the same
 * size on the bed (96 MiB guest: 259 vs 68 MiB/s, 0.38 vs 0.36 of the raw
 * bytes). A dump is read where it is restored: a replica on an older
 * libvirt needs gzip (VIRTSNAP_COMPRESS=gzip).
 */
export function compressionFor(setting: Compression | 'auto' | null, stack: Stack, zstdInstalled: boolean): { compression: Compression | null; note: string | null } {
  if (setting === null || setting === 'gzip') return { compression: setting, note: null };
  const why = readsZstd(stack, zstdInstalled);
  if (why === null) return { compression: 'zstd', note: null };
  return { compression: 'gzip', note: setting === 'zstd' ? `VIRTSNAP_COMPRESS=zstd, but ${why}: storing gzip instead` : null };
}

/**
 * QEMU fixed its TCG dirty-page tracking for live migration in 9.0 (commit
 * 03bfc2188f06 "physmem: Fix migration dirty bitmap coherency with TCG
 * memory access"; not backported to 7.2 or 8.2): before it, a store through
 * a TLB entry already marked dirty stops setting the dirty bitmap after a
 * sync, and the page is never sent again. KVM guests use the kernel's dirty
 * log and are not affected.
 */
export const TCG_DIRTY_FIX = [9, 0] as const;

/** Whether a live RAM save of a domain of `virtType` on this stack keeps every page the guest wrote. */
export type LiveSaveTrust = { trusted: true } | { trusted: false; why: string };

export function liveSaveTrust(stack: Stack, virtType: string): LiveSaveTrust {
  if (virtType !== 'qemu') return { trusted: true };
  if (atLeast(stack.qemu, TCG_DIRTY_FIX[0], TCG_DIRTY_FIX[1])) return { trusted: true };
  const qemu = stack.qemu === null ? 'a QEMU of unknown version' : `QEMU ${stack.qemu.text}`;
  return {
    trusted: false,
    why: `${qemu} under TCG (<domain type='qemu'>) can lose guest writes during a live RAM save (fixed in QEMU ${TCG_DIRTY_FIX.join('.')})`,
  };
}

/** For doctor and the bench: the stack and what of it virtsnap uses, one line each. */
export function stackLines(stack: Stack): string[] {
  const lines = [`libvirt ${stack.libvirt?.text ?? 'unknown'}, QEMU ${stack.qemu?.text ?? 'unknown'}`];
  const have = (Object.keys(FEATURES) as Feature[]).filter((f) => can(stack, f)).map((f) => FEATURES[f].what);
  if (have.length > 0) lines.push(`this libvirt has ${have.join(', ')}`);
  return lines;
}
