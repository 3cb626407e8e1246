// What a host lacks to run a domain definition: before a restore on a host
// that received the snapshot by `zfs recv` (issue 12), one line per missing
// thing, naming it and what to do, and before anything is changed. A RAM
// restore cannot trade a missing part for another (a machine type, a CPU
// model, a virt type are fixed in the saved state), so these are said up
// front rather than left to fail in `virsh restore`, one at a time.
//
// hostGaps is pure; gatherHostFacts asks libvirt (one virsh call per kind of
// fact) and the filesystem for what the XML names.
import { statSync } from 'node:fs';
import path from 'node:path';
import type { DomCaps, GuestCaps } from './libvirt/capabilities.js';
import { hostResources, type HostInterface, type HostResources } from './libvirt/domain-xml.js';
import type { LibvirtClient, NetworkState } from './libvirt/virsh.js';

export type NetDevKind = 'bridge' | 'device' | 'missing';

export interface HostFacts {
  /** libvirt's networks; null when not asked (no interface on a network) or not answered (see `unknown`). */
  networks: NetworkState[] | null;
  /** `virsh capabilities`: arch, virt type and machine types; null when not answered. */
  guests: GuestCaps[] | null;
  /** `virsh domcapabilities` for the XML's virt type, arch, emulator and machine; null when not asked or not answered. */
  domCaps: DomCaps | null;
  /** Each file the XML names (and each directory a character device writes into): does it exist here. */
  paths: Record<string, boolean>;
  /** Each host network device an interface names (bridge, macvtap parent). */
  netdevs: Record<string, NetDevKind>;
  /** Facts that could not be gathered, each as a gap line. */
  unknown: string[];
}

/** The virsh calls gatherHostFacts makes. */
export type HostFitLibvirt = Pick<LibvirtClient, 'networks' | 'capabilities' | 'domCapabilities'>;

/** `interface 52:54:00:12:34:56`: how a line names the interface a gap is about. */
function ifaceName(i: HostInterface): string {
  return `interface ${i.mac ?? `of type ${i.type}`}`;
}

/** Directories character devices write into, with the devices that write there (serial and console often share a file). */
function charDirs(r: HostResources, isRestored: (p: string) => boolean): Map<string, string[]> {
  const dirs = new Map<string, string[]>();
  for (const c of r.charFiles) {
    if (isRestored(c.path)) continue;
    const dir = path.dirname(c.path);
    const devices = dirs.get(dir) ?? [];
    if (!devices.includes(c.device)) devices.push(c.device);
    dirs.set(dir, devices);
  }
  return dirs;
}

/** Files the domain opens (emulator, firmware, boot files, images), each with its gap line: gathered and checked from this one list. */
function namedFiles(r: HostResources): { path: string; gap: string }[] {
  const files: { path: string; gap: string }[] = [];
  const missing = (what: string, p: string, fix: string) => files.push({ path: p, gap: `${what} ${p} is missing on this host: ${fix}` });
  if (r.emulator !== null) missing('emulator', r.emulator, "install QEMU for this arch, or edit <emulator> to this host's QEMU of the same version");
  if (r.loader !== null) missing('UEFI loader', r.loader, 'install the firmware package (ovmf for x86_64), or edit <loader>');
  for (const b of r.bootFiles) missing(b.what, b.path, `copy it there, or edit <${b.what}>`);
  for (const d of r.disks) {
    if (d.optional) continue; // libvirt drops a missing optional source itself
    const media = d.device === 'cdrom' || d.device === 'floppy';
    if (d.source !== null) files.push({ path: d.source, gap: `disk ${d.target} (${d.source}) is outside the restored datasets and missing on this host: copy it there${media ? ', or eject it after the restore' : ''}` });
    if (d.backing !== null) files.push({ path: d.backing, gap: `backing image ${d.backing} of disk ${d.target} is outside the restored datasets and missing on this host: copy it there` });
  }
  return files;
}

/** `pc-q35-7.2` -> `pc-q35`: the machine family, whose versions a host may have other ones of. */
function machineFamily(machine: string): string {
  return machine.replace(/-\d+(?:\.\d+)*$/, '');
}

function versionKey(machine: string): number[] {
  return (/-(\d+(?:\.\d+)*)$/.exec(machine)?.[1] ?? '').split('.').map(Number);
}

function newest(machines: string[]): string | undefined {
  return [...machines].sort((a, b) => {
    const x = versionKey(a);
    const y = versionKey(b);
    for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
    return 0;
  }).at(-1);
}

function guestGaps(r: HostResources, guests: GuestCaps[]): string[] {
  if (r.arch === null) return [];
  const forArch = guests.filter((g) => g.arch === r.arch);
  if (forArch.length === 0) return [`no QEMU for architecture ${r.arch} on this host: install it (qemu-system-${r.arch === 'x86_64' || r.arch === 'i686' ? 'x86' : r.arch}), or restore on a host that has it`];
  const guest = forArch.find((g) => g.virtType === r.virtType);
  if (guest === undefined) {
    const has = forArch.map((g) => g.virtType).join(', ');
    const fix = r.virtType === 'kvm' ? 'enable KVM (the kvm module and /dev/kvm), or restore on a host that has it' : 'restore on a host that has it';
    return [`virt type ${r.virtType} is not available on this host for ${r.arch} (it has ${has}): ${fix}`];
  }
  if (r.machine === null || guest.machines.includes(r.machine)) return [];
  const family = machineFamily(r.machine);
  const latest = newest(guest.machines.filter((m) => machineFamily(m) === family && m !== family));
  const has = latest !== undefined ? `its newest ${family} is ${latest}` : `it has no ${family} machine`;
  return [`machine type ${r.machine} is not supported by this host's QEMU (${has}): a saved VM keeps its machine type, restore on a host whose QEMU has it`];
}

function cpuGaps(r: HostResources, caps: DomCaps): string[] {
  if (r.cpu === null) return [];
  const { mode, model } = r.cpu;
  // A save image's XML holds host-model already expanded to a custom model (what the guest saw): that model is what must fit.
  if (mode === 'custom' && model !== null) {
    if (caps.unusableModels.includes(model)) return [`CPU model "${model}" is not usable on this host (its CPU lacks some of the model's features under virt type ${r.virtType}): restore on a host whose CPU has them`];
    if (!caps.usableModels.includes(model)) return [`CPU model "${model}" is not known to this host's QEMU: restore on a host whose QEMU knows it`];
    return [];
  }
  const supported: Record<string, boolean> = { 'host-passthrough': caps.cpuModes.hostPassthrough, 'host-model': caps.cpuModes.hostModel, maximum: caps.cpuModes.maximum };
  if (supported[mode] === false) return [`CPU mode ${mode} is not supported on this host (virt type ${r.virtType}): restore on a host that supports it`];
  return [];
}

function interfaceGaps(r: HostResources, facts: HostFacts): string[] {
  const gaps: string[] = [];
  const after = 'or edit the interface after the restore';
  for (const i of r.interfaces) {
    if (i.type === 'network' && i.network !== null && facts.networks !== null) {
      const net = facts.networks.find((n) => n.name === i.network);
      if (net === undefined) gaps.push(`network "${i.network}" (${ifaceName(i)}) is not defined on this host: define and start it, ${after}`);
      else if (!net.active) gaps.push(`network "${i.network}" (${ifaceName(i)}) is not active on this host: start it (virsh net-start ${i.network}), ${after}`);
    }
    const kind = i.hostDevice === null ? undefined : facts.netdevs[i.hostDevice];
    if (i.type === 'bridge' && kind === 'missing') gaps.push(`bridge "${i.hostDevice}" (${ifaceName(i)}) does not exist on this host: create it, ${after}`);
    // An Open vSwitch bridge is no kernel bridge: /sys/class/net has it without a bridge/ dir.
    if (i.type === 'bridge' && kind === 'device' && i.virtualport !== 'openvswitch') gaps.push(`"${i.hostDevice}" (${ifaceName(i)}) is not a bridge on this host: make it one, ${after}`);
    if (i.type === 'direct' && kind === 'missing') gaps.push(`network device "${i.hostDevice}" (macvtap ${ifaceName(i)}) does not exist on this host: name another one, ${after}`);
  }
  return gaps;
}

/**
 * What this host lacks to run the domain of `xml` (a save image's XML,
 * typically), one line each, naming the thing and what to do; empty when
 * nothing is missing. Paths `isRestored` says the restore brings (disks and
 * NVRAM in the restored datasets, which it rewrites) are left to it.
 */
export function hostGaps(xml: string, facts: HostFacts, isRestored: (path: string) => boolean): string[] {
  const r = hostResources(xml);
  const gaps = [...facts.unknown];
  if (facts.guests !== null) gaps.push(...guestGaps(r, facts.guests));
  if (facts.domCaps !== null) gaps.push(...cpuGaps(r, facts.domCaps));
  if (r.firmware === 'efi' && r.loader === null && facts.domCaps !== null && !facts.domCaps.firmware.includes('efi')) {
    gaps.push("firmware efi cannot be chosen on this host (libvirt finds no UEFI firmware descriptor): install the firmware package (ovmf for x86_64)");
  }
  for (const f of namedFiles(r)) {
    if (!isRestored(f.path) && facts.paths[f.path] === false) gaps.push(f.gap);
  }
  const nvram = r.nvram;
  // libvirt makes a missing NVRAM from its template; only both missing stops the start.
  if (nvram !== null && (nvram.path === null || (!isRestored(nvram.path) && facts.paths[nvram.path] === false))) {
    if (nvram.template !== null && !isRestored(nvram.template) && facts.paths[nvram.template] === false) {
      gaps.push(`NVRAM template ${nvram.template} is missing on this host${nvram.path !== null ? `, and so is NVRAM ${nvram.path}` : ''}: install the firmware package (ovmf for x86_64), or copy the NVRAM there`);
    } else if (nvram.template === null && nvram.path !== null) {
      gaps.push(`NVRAM ${nvram.path} is outside the restored datasets and missing on this host, with no template to make it from: copy it there`);
    }
  }
  gaps.push(...interfaceGaps(r, facts));
  for (const h of r.hostdevs) gaps.push(`passthrough device ${h} cannot be checked: remove it, or check by hand that this host has it and that it is free`);
  for (const [dir, devices] of charDirs(r, isRestored)) {
    if (facts.paths[dir] === false) gaps.push(`directory ${dir} (files of ${devices.join(', ')}) does not exist on this host: create it, or edit the device`);
  }
  return gaps;
}

function exists(p: string): boolean {
  try {
    return statSync(p, { throwIfNoEntry: false }) !== undefined;
  } catch {
    return true; // there, but not ours to look into (EACCES): not a gap we can tell
  }
}

function netdevKind(name: string): NetDevKind {
  // A name from XML: no path tricks into /sys (Linux device names have no / and are not . or ..).
  if (name === '' || name.includes('/') || name === '.' || name === '..') return 'missing';
  const dir = path.join('/sys/class/net', name);
  if (!exists(dir)) return 'missing';
  return exists(path.join(dir, 'bridge')) ? 'bridge' : 'device';
}

function cannot(what: string, err: unknown): string {
  return `cannot check ${what} on this host: ${(err as Error).message}`;
}

/**
 * The facts hostGaps needs about this host for `xml`: networks (when an
 * interface is on one), capabilities, domcapabilities (when the XML has a
 * CPU or asks for efi firmware), and the files and network devices it names.
 * A virsh call that fails becomes a gap line, not an exception.
 */
export async function gatherHostFacts(virsh: HostFitLibvirt, xml: string): Promise<HostFacts> {
  const r = hostResources(xml);
  const unknown: string[] = [];
  const wantsNetworks = r.interfaces.some((i) => i.type === 'network');
  const [networks, guests] = await Promise.all([
    wantsNetworks ? virsh.networks().catch((err: unknown) => (unknown.push(cannot('the networks', err)), null)) : Promise.resolve(null),
    virsh.capabilities().catch((err: unknown) => (unknown.push(cannot('arch, virt type and machine type', err)), null)),
  ]);

  const paths: Record<string, boolean> = {};
  for (const f of namedFiles(r)) paths[f.path] = exists(f.path);
  for (const p of [r.nvram?.path, r.nvram?.template]) if (p != null) paths[p] = exists(p);
  for (const dir of charDirs(r, () => false).keys()) paths[dir] = exists(dir);
  const netdevs: Record<string, NetDevKind> = {};
  for (const i of r.interfaces) if (i.hostDevice !== null && (i.type === 'bridge' || i.type === 'direct')) netdevs[i.hostDevice] = netdevKind(i.hostDevice);

  // domcapabilities only where capabilities says the virt type and arch exist (otherwise that is the gap).
  const guest = guests?.find((g) => g.arch === r.arch && g.virtType === r.virtType);
  let domCaps: DomCaps | null = null;
  if (guest !== undefined && r.arch !== null && (r.cpu !== null || r.firmware === 'efi')) {
    try {
      domCaps = await virsh.domCapabilities({
        virtType: r.virtType,
        arch: r.arch,
        // this host's default for the arch when the XML's emulator is missing here (a gap of its own)
        ...(r.emulator !== null && paths[r.emulator] === true ? { emulator: r.emulator } : {}),
        ...(r.machine !== null && guest.machines.includes(r.machine) ? { machine: r.machine } : {}),
      });
    } catch (err) {
      unknown.push(cannot('the CPU model and firmware', err));
    }
  }
  return { networks, guests, domCaps, paths, netdevs, unknown };
}
