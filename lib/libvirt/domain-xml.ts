// Domain XML -> the few facts virtsnap needs about a domain and its disks.
import { createRequire } from 'node:module';
import { LibvirtError } from '../errors.js';

// The package's CommonJS build, one bundled file: imported as ESM, its ~60
// source files cost ~40 ms of CPU to load, required ~5 ms (Node 20, test bed).
const { XMLParser } = createRequire(import.meta.url)('fast-xml-parser') as typeof import('fast-xml-parser');

export type DiskDevice = 'disk' | 'cdrom' | 'floppy' | 'lun';

export interface Disk {
  /** Target device name, e.g. vda: how libvirt names the disk in every command. */
  target: string;
  device: DiskDevice;
  /** Source type: file, block, network, volume, dir, nvme, ... */
  type: string;
  /** File or block device path; null for network and empty drives. */
  source: string | null;
  /** Image format from <driver type=...>, e.g. qcow2 or raw. */
  format: string | null;
  readonly: boolean;
  shareable: boolean;
  /** Source of the image right below this one, when the disk has a backing chain. */
  backing: string | null;
}

export interface DomainDef {
  name: string;
  uuid: string;
  /** <domain type=...>: kvm, or qemu (TCG, QEMU's own emulation), ... */
  virtType: string;
  memoryKiB: number;
  disks: Disk[];
  /** UEFI variable store, if the domain has one. */
  nvram: string | null;
  /** The domain has an emulated TPM (swtpm), whose state lives outside the domain XML. */
  tpmEmulator: boolean;
  /**
   * The QEMU guest agent's channel: `connected` when an agent listens in the
   * guest (the live XML says so), `disconnected`, or `none` (no channel).
   * An inactive definition has no state: `unknown`.
   */
  agent: 'connected' | 'disconnected' | 'unknown' | 'none';
}

const AGENT_CHANNEL = 'org.qemu.guest_agent.0';

function agentOf(channels: unknown[]): DomainDef['agent'] {
  const target = channels.map((c) => node(node(c)?.target)).find((t) => attr(t, 'type') === 'virtio' && attr(t, 'name') === AGENT_CHANNEL);
  if (target === undefined) return 'none';
  const state = attr(target, 'state');
  return state === 'connected' || state === 'disconnected' ? state : 'unknown';
}

/**
 * What in a domain XML reaches past the guest into the host itself: QEMU
 * arguments of its own (`<qemu:commandline>`, `<qemu:override>`), run as
 * libvirt's QEMU user, and host directories passed through
 * (`<filesystem>`: 9p, virtiofs). A restore defines the XML as root: from a
 * dump it did not write (a shared repository), only when the user says so.
 */
export function hostAccessOf(xml: string): string[] {
  const found: string[] = [];
  if (/<qemu:(?:commandline|override)\b/.test(xml)) found.push('<qemu:commandline> or <qemu:override> (QEMU arguments of its own)');
  if (/<filesystem\b/.test(xml)) found.push('<filesystem> (a host directory passed through)');
  return found;
}

/** The image disk `target` is on now (null: no source, undefined: no such disk). */
export function sourceOf(domain: Pick<DomainDef, 'disks'>, target: string): string | null | undefined {
  return domain.disks.find((d) => d.target === target)?.source;
}

/** Device lists only hostResources reads: by path, so a disk's <serial> stays a string. */
const HOST_DEVICE_LISTS = ['interface', 'hostdev', 'serial', 'console', 'parallel'].map((n) => `domain.devices.${n}`);

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  parseAttributeValue: false,
  parseTagValue: false,
  trimValues: true,
  isArray: (name, jpath) => ['disk', 'tpm', 'backingStore', 'channel'].includes(name) || HOST_DEVICE_LISTS.includes(String(jpath)),
});

type Node = Record<string, unknown>;

function node(value: unknown): Node | undefined {
  return value !== null && typeof value === 'object' ? (value as Node) : undefined;
}

function text(value: unknown): string | null {
  if (typeof value === 'string') return value;
  const n = node(value);
  if (n && typeof n['#text'] === 'string') return n['#text'];
  return null;
}

function attr(value: unknown, name: string): string | null {
  const a = node(value)?.[`@${name}`];
  return typeof a === 'string' ? a : null;
}

function sourcePath(source: unknown): string | null {
  return attr(source, 'file') ?? attr(source, 'dev') ?? null;
}

function parseDisk(raw: unknown): Disk | null {
  const d = node(raw);
  if (!d) return null;
  const target = attr(d.target, 'dev');
  if (target === null) return null;
  const backingStore = (d.backingStore as unknown[] | undefined)?.[0];
  return {
    target,
    device: (attr(d, 'device') ?? 'disk') as DiskDevice,
    type: attr(d, 'type') ?? 'file',
    source: sourcePath(d.source),
    format: attr(d.driver, 'type'),
    readonly: d.readonly !== undefined,
    shareable: d.shareable !== undefined,
    backing: sourcePath(node(backingStore)?.source),
  };
}

function parseDoc(xml: string): Node {
  try {
    return parser.parse(xml) as Node;
  } catch (err) {
    throw new LibvirtError(`domain XML does not parse: ${(err as Error).message}`, String(err));
  }
}

export function parseDomainXml(xml: string): DomainDef {
  const doc = parseDoc(xml);
  const domain = node(doc.domain);
  const name = text(domain?.name);
  const uuid = text(domain?.uuid);
  if (!domain || name === null || uuid === null) {
    throw new LibvirtError('domain XML has no <domain> with <name> and <uuid>', xml.slice(0, 200));
  }
  const devices = node(domain.devices) ?? {};
  const disks = ((devices.disk as unknown[] | undefined) ?? []).map(parseDisk).filter((d): d is Disk => d !== null);
  const tpms = (devices.tpm as unknown[] | undefined) ?? [];
  return {
    name,
    uuid,
    virtType: attr(domain, 'type') ?? 'qemu',
    memoryKiB: memoryKiB(domain.memory),
    disks,
    nvram: text(node(domain.os)?.nvram),
    tpmEmulator: tpms.some((t) => attr(node(t)?.backend, 'type') === 'emulator'),
    agent: agentOf((devices.channel as unknown[] | undefined) ?? []),
  };
}

const unitKiB: Record<string, number> = {
  b: 1 / 1024, bytes: 1 / 1024, k: 1, kib: 1, kb: 1000 / 1024, m: 1024, mib: 1024, mb: 1e6 / 1024,
  g: 1024 ** 2, gib: 1024 ** 2, gb: 1e9 / 1024,
};

function memoryKiB(value: unknown): number {
  const amount = Number(text(value) ?? 0);
  const unit = (attr(value, 'unit') ?? 'KiB').toLowerCase();
  return Math.round(amount * (unitKiB[unit] ?? 1));
}

/** A network interface, as far as the host must provide something for it. */
export interface HostInterface {
  /** network, bridge, direct, user, ethernet, hostdev, vhostuser, ... */
  type: string;
  mac: string | null;
  /** type network: the libvirt network's name. */
  network: string | null;
  /** type bridge: the host bridge; type direct: the host device macvtap sits on. */
  hostDevice: string | null;
  /** <virtualport type=...>, e.g. openvswitch (whose bridges are not kernel bridges). */
  virtualport: string | null;
}

/**
 * What a domain definition needs from the host it runs on: emulator,
 * machine, CPU, firmware and boot files, image files, networks and bridges,
 * passthrough devices, and the files its character devices write. Read from
 * the same XML (a save image's, typically) that parseDomainXml reads.
 */
export interface HostResources {
  /** <domain type=...>: kvm, qemu, ... */
  virtType: string;
  arch: string | null;
  machine: string | null;
  emulator: string | null;
  /** <cpu mode=...> (custom when absent but a model is named); null: no <cpu>. */
  cpu: { mode: string; model: string | null } | null;
  /** <os firmware=...>: efi or bios, when libvirt picks the firmware itself. */
  firmware: string | null;
  loader: string | null;
  nvram: { path: string | null; template: string | null } | null;
  /** Direct kernel boot: kernel, initrd, dtb. */
  bootFiles: { what: 'kernel' | 'initrd' | 'dtb'; path: string }[];
  disks: (Disk & { optional: boolean })[];
  interfaces: HostInterface[];
  /** One description per <hostdev> (and interface type hostdev), e.g. `pci 0000:03:00.0`. */
  hostdevs: string[];
  /** Files written by serial, console, parallel and channel devices (`file` sources and `<log file=...>`). */
  charFiles: { device: string; path: string }[];
}

const HOST_DEVICE_NAMES = ['serial', 'console', 'parallel', 'channel'] as const;

function list(value: unknown): unknown[] {
  return Array.isArray(value) ? value : value === undefined ? [] : [value];
}

function hostdevText(raw: unknown): string {
  const h = node(raw);
  const a = node(node(h?.source)?.address);
  // an <interface type='hostdev'> names the bus in its source address
  const type = (attr(h, 'type') === 'hostdev' ? attr(a, 'type') : attr(h, 'type')) ?? '?';
  const vendor = attr(node(h?.source)?.vendor, 'id');
  const product = attr(node(h?.source)?.product, 'id');
  if (type === 'pci' && a) {
    const hex = (name: string, width: number) => (attr(a, name) ?? '0').replace(/^0x/i, '').padStart(width, '0');
    return `pci ${hex('domain', 4)}:${hex('bus', 2)}:${hex('slot', 2)}.${(attr(a, 'function') ?? '0').replace(/^0x/i, '')}`;
  }
  if (type === 'usb' && vendor !== null) return `usb ${vendor}:${product ?? '?'}`;
  if (type === 'usb' && a) return `usb bus ${attr(a, 'bus') ?? '?'} device ${attr(a, 'device') ?? '?'}`;
  const adapter = attr(node(h?.source)?.adapter, 'name');
  return adapter !== null ? `${type} ${adapter}` : type;
}

export function hostResources(xml: string): HostResources {
  const domain = node(parseDoc(xml).domain);
  if (!domain) throw new LibvirtError('domain XML has no <domain>', xml.slice(0, 200));
  const os = node(domain.os);
  const devices = node(domain.devices) ?? {};
  const cpu = node(domain.cpu);
  const nvram = os?.nvram;
  const disks = list(devices.disk).flatMap((raw) => {
    const d = parseDisk(raw);
    return d === null ? [] : [{ ...d, optional: attr(node(node(raw)?.source), 'startupPolicy') === 'optional' }];
  });
  const interfaces = list(devices.interface).map((raw): HostInterface => {
    const i = node(raw);
    const source = node(i?.source);
    const type = attr(i, 'type') ?? '?';
    return {
      type,
      mac: attr(i?.mac, 'address'),
      network: type === 'network' ? attr(source, 'network') : null,
      hostDevice: type === 'bridge' ? attr(source, 'bridge') : type === 'direct' ? attr(source, 'dev') : null,
      virtualport: attr(i?.virtualport, 'type'),
    };
  });
  const charFiles = HOST_DEVICE_NAMES.flatMap((name) =>
    list(devices[name]).flatMap((raw, index) => {
      const c = node(raw);
      const device = `${name}${attr(c?.target, 'port') ?? index}`;
      const files: { device: string; path: string }[] = [];
      const source = attr(c?.source, 'path');
      if (attr(c, 'type') === 'file' && source !== null) files.push({ device, path: source });
      const log = attr(c?.log, 'file');
      if (log !== null) files.push({ device: `${device} log`, path: log });
      return files;
    }),
  );
  return {
    virtType: attr(domain, 'type') ?? 'qemu',
    arch: attr(os?.type, 'arch'),
    machine: attr(os?.type, 'machine'),
    emulator: text(devices.emulator),
    cpu: cpu ? { mode: attr(cpu, 'mode') ?? 'custom', model: text(cpu.model) } : null,
    firmware: attr(os, 'firmware'),
    loader: text(os?.loader),
    nvram: nvram === undefined ? null : { path: text(nvram), template: attr(nvram, 'template') },
    bootFiles: (['kernel', 'initrd', 'dtb'] as const).flatMap((what) => {
      const path = text(os?.[what]);
      return path === null || path === '' ? [] : [{ what, path }];
    }),
    disks,
    interfaces,
    hostdevs: [
      ...list(devices.hostdev).map(hostdevText),
      ...list(devices.interface).filter((i) => attr(i, 'type') === 'hostdev').map((i) => `interface ${attr(node(i)?.mac, 'address') ?? '?'} (${hostdevText(i)})`),
    ],
    charFiles,
  };
}
