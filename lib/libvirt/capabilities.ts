// What libvirt says this host can run: `virsh capabilities` (every
// architecture's machine types and virt types) and `virsh domcapabilities`
// (for one emulator, arch, machine and virt type: CPU modes and models,
// firmware). Read by lib/host-fit.ts before a restore on another host.
import { createRequire } from 'node:module';
import { LibvirtError } from '../errors.js';

// As in domain-xml.ts: the CommonJS build loads in a fraction of the time.
const { XMLParser } = createRequire(import.meta.url)('fast-xml-parser') as typeof import('fast-xml-parser');

/** One `<guest>` of `virsh capabilities`, for one virt type. */
export interface GuestCaps {
  arch: string;
  /** kvm, qemu, ... */
  virtType: string;
  emulator: string | null;
  /** Machine type names and their aliases (pc, q35): a domain's XML may name either. */
  machines: string[];
}

export interface DomCaps {
  virtType: string | null;
  arch: string | null;
  machine: string | null;
  emulator: string | null;
  cpuModes: { hostPassthrough: boolean; hostModel: boolean; maximum: boolean; custom: boolean };
  /** Custom CPU models QEMU can give a guest on this host, and those it knows but cannot (the host CPU lacks features). */
  usableModels: string[];
  unusableModels: string[];
  /** `<os firmware=...>` values libvirt can resolve here (efi needs firmware descriptors, e.g. from ovmf). */
  firmware: string[];
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  parseAttributeValue: false,
  parseTagValue: false,
  trimValues: true,
  isArray: (name) => ['guest', 'machine', 'domain', 'mode', 'model', 'value', 'enum'].includes(name),
});

type Node = Record<string, unknown>;

function node(value: unknown): Node | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Node) : undefined;
}

function nodes(value: unknown): Node[] {
  return (Array.isArray(value) ? value : value === undefined ? [] : [value]).map((v) => (typeof v === 'string' ? { '#text': v } : node(v))).filter((v): v is Node => v !== undefined);
}

function text(value: unknown): string | null {
  if (Array.isArray(value)) return text(value[0]);
  if (typeof value === 'string') return value;
  const n = node(value);
  return n && typeof n['#text'] === 'string' ? n['#text'] : null;
}

function attr(value: unknown, name: string): string | null {
  const a = node(value)?.[`@${name}`];
  return typeof a === 'string' ? a : null;
}

function parse(xml: string, root: string, what: string): Node {
  let doc: Node;
  try {
    doc = parser.parse(xml) as Node;
  } catch (err) {
    throw new LibvirtError(`${what} does not parse: ${(err as Error).message}`, String(err));
  }
  const top = node(doc[root]);
  if (!top) throw new LibvirtError(`${what} has no <${root}>`, xml.slice(0, 200));
  return top;
}

function machineNames(list: unknown): string[] {
  return nodes(list).flatMap((m) => [text(m), attr(m, 'canonical')]).filter((m): m is string => m !== null && m !== '');
}

export function parseCapabilities(xml: string): GuestCaps[] {
  const caps = parse(xml, 'capabilities', 'virsh capabilities output');
  return nodes(caps.guest).flatMap((guest) => {
    const arch = node(guest.arch);
    const name = attr(arch, 'name');
    if (!arch || name === null) return [];
    const machines = machineNames(arch.machine);
    const emulator = text(arch.emulator);
    // A <domain> may bring its own emulator and machines (kvm through another binary); otherwise the arch's apply.
    return nodes(arch.domain).flatMap((d) => {
      const virtType = attr(d, 'type');
      if (virtType === null) return [];
      const own = machineNames(d.machine);
      return [{ arch: name, virtType, emulator: text(d.emulator) ?? emulator, machines: own.length > 0 ? own : machines }];
    });
  });
}

export function parseDomCapabilities(xml: string): DomCaps {
  const caps = parse(xml, 'domainCapabilities', 'virsh domcapabilities output');
  const modes = nodes(node(caps.cpu)?.mode);
  const mode = (name: string) => modes.find((m) => attr(m, 'name') === name);
  const supported = (name: string) => attr(mode(name), 'supported') === 'yes';
  const custom = nodes(mode('custom')?.model);
  const models = (usable: string) => custom.filter((m) => attr(m, 'usable') === usable).map(text).filter((m): m is string => m !== null);
  const firmwareEnum = nodes(node(caps.os)?.enum).find((e) => attr(e, 'name') === 'firmware');
  return {
    virtType: text(caps.domain),
    arch: text(caps.arch),
    machine: text(caps.machine),
    emulator: text(caps.path),
    cpuModes: { hostPassthrough: supported('host-passthrough'), hostModel: supported('host-model'), maximum: supported('maximum'), custom: supported('custom') },
    usableModels: models('yes'),
    unusableModels: models('no'),
    firmware: nodes(firmwareEnum?.value).map(text).filter((v): v is string => v !== null),
  };
}
