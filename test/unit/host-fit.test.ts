// What a host lacks before a restore there (issue 12): hostGaps on fixture
// XMLs against the bed's real capabilities and domcapabilities (libvirt 9.0,
// QEMU 7.2 under TCG), and gatherHostFacts with a fake libvirt.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { LibvirtError } from '../../lib/errors.js';
import { gatherHostFacts, hostGaps, type HostFacts, type HostFitLibvirt } from '../../lib/host-fit.js';
import { parseCapabilities, parseDomCapabilities, type DomCaps, type GuestCaps } from '../../lib/libvirt/capabilities.js';
import { hostResources, parseDomainXml } from '../../lib/libvirt/domain-xml.js';
import { parseNetList } from '../../lib/libvirt/virsh.js';

function fixture(name: string): string {
  // tests run from dist/test/unit/
  return readFileSync(new URL(`../../../test/fixtures/${name}`, import.meta.url), 'utf8');
}

/** `virsh capabilities` and `virsh domcapabilities --virttype qemu --arch x86_64 --machine pc` on the bed. */
const GUESTS = parseCapabilities(fixture('capabilities.xml'));
const DOMCAPS = parseDomCapabilities(fixture('domcapabilities-qemu-x86_64-pc.xml'));
const OTHER = fixture('dumpxml-other-host.xml');
const BED = fixture('dumpxml-running-3disks.xml');

function facts(over: Partial<HostFacts> = {}): HostFacts {
  return { networks: [{ name: 'default', active: false }], guests: GUESTS, domCaps: DOMCAPS, paths: {}, netdevs: {}, unknown: [], ...over };
}

const inTank = (p: string) => p.startsWith('/tank/vm/');
const none = () => false;

/** A domain XML with `os` and `devices` inside, type `type`. */
function domain(os: string, devices = '', type = 'qemu', cpu = ''): string {
  return `<domain type='${type}'><name>x</name><uuid>11111111-2222-3333-4444-555555555555</uuid><os>${os}</os>${cpu}<devices>${devices}</devices></domain>`;
}

describe('virsh capabilities and domcapabilities, as libvirt 9.0 prints them', () => {
  it('capabilities: one entry per arch and virt type, machine names with their aliases', () => {
    assert.deepEqual(GUESTS.map((g) => `${g.arch}/${g.virtType} ${g.emulator}`), [
      'i686/qemu /usr/bin/qemu-system-i386',
      'i686/kvm /usr/bin/qemu-system-i386',
      'x86_64/qemu /usr/bin/qemu-system-x86_64',
      'x86_64/kvm /usr/bin/qemu-system-x86_64',
    ]);
    const x86 = GUESTS.find((g) => g.arch === 'x86_64' && g.virtType === 'qemu')!;
    for (const m of ['pc', 'q35', 'pc-i440fx-7.2', 'pc-q35-7.2', 'pc-q35-2.4', 'pc-q35-4.0.1']) assert.ok(x86.machines.includes(m), m);
    assert.ok(!x86.machines.includes('pc-q35-8.2'));
  });

  it('capabilities: a <domain> with its own emulator and machines keeps them', () => {
    const xml = `<capabilities><guest><arch name='x86_64'><emulator>/usr/bin/qemu-system-x86_64</emulator><machine>pc-i440fx-7.2</machine>
      <domain type='qemu'/><domain type='kvm'><emulator>/usr/libexec/qemu-kvm</emulator><machine>pc-q35-rhel9.2.0</machine><machine canonical='pc-q35-rhel9.2.0'>q35</machine></domain></arch></guest></capabilities>`;
    assert.deepEqual(parseCapabilities(xml), [
      { arch: 'x86_64', virtType: 'qemu', emulator: '/usr/bin/qemu-system-x86_64', machines: ['pc-i440fx-7.2'] },
      { arch: 'x86_64', virtType: 'kvm', emulator: '/usr/libexec/qemu-kvm', machines: ['pc-q35-rhel9.2.0', 'q35', 'pc-q35-rhel9.2.0'] },
    ]);
  });

  it('domcapabilities under TCG: canonical machine, CPU modes, usable and unusable models, no firmware descriptors', () => {
    assert.equal(DOMCAPS.virtType, 'qemu');
    assert.equal(DOMCAPS.arch, 'x86_64');
    assert.equal(DOMCAPS.machine, 'pc-i440fx-7.2');
    assert.equal(DOMCAPS.emulator, '/usr/bin/qemu-system-x86_64');
    assert.deepEqual(DOMCAPS.cpuModes, { hostPassthrough: false, hostModel: true, maximum: true, custom: true });
    assert.equal(DOMCAPS.usableModels.length, 18);
    assert.equal(DOMCAPS.unusableModels.length, 35);
    assert.ok(DOMCAPS.usableModels.includes('qemu64'));
    assert.ok(DOMCAPS.unusableModels.includes('EPYC-Rome'));
    assert.deepEqual(DOMCAPS.firmware, []);
  });

  it('net-list --all under -q: name and state, read from the right', () => {
    assert.deepEqual(parseNetList(' default   inactive   no   yes\n lan       active     yes  yes\n my net    active     no   no\n\n'), [
      { name: 'default', active: false },
      { name: 'lan', active: true },
      { name: 'my net', active: true },
    ]);
    assert.deepEqual(parseNetList(''), []);
  });
});

describe('hostResources: what a domain XML needs from its host', () => {
  it('reads the other host fixture', () => {
    const r = hostResources(OTHER);
    assert.equal(r.virtType, 'kvm');
    assert.equal(r.arch, 'x86_64');
    assert.equal(r.machine, 'pc-q35-8.2');
    assert.equal(r.emulator, '/usr/libexec/qemu-kvm');
    assert.deepEqual(r.cpu, { mode: 'custom', model: 'EPYC-Rome' });
    assert.equal(r.loader, '/usr/share/OVMF/OVMF_CODE_4M.fd');
    assert.deepEqual(r.nvram, { path: '/tank/vm/web/web_VARS.fd', template: '/usr/share/OVMF/OVMF_VARS_4M.fd' });
    assert.deepEqual(r.disks.map((d) => [d.target, d.source, d.backing, d.optional]), [
      ['vda', '/tank/vm/web/root.qcow2', '/var/lib/libvirt/images/debian-12-base.qcow2', false],
      ['sda', '/iso/debian-12.8.0-amd64-netinst.iso', null, false],
      ['sdb', '/iso/drivers.iso', null, true],
      ['sdc', null, null, false],
    ]);
    assert.deepEqual(r.interfaces, [
      { type: 'network', mac: '52:54:00:6b:3c:01', network: 'lan', hostDevice: null, virtualport: null },
      { type: 'bridge', mac: '52:54:00:6b:3c:02', network: null, hostDevice: 'br0', virtualport: null },
      { type: 'bridge', mac: '52:54:00:6b:3c:03', network: null, hostDevice: 'ovsbr0', virtualport: 'openvswitch' },
      { type: 'direct', mac: '52:54:00:6b:3c:04', network: null, hostDevice: 'enp3s0', virtualport: null },
      { type: 'user', mac: '52:54:00:6b:3c:05', network: null, hostDevice: null, virtualport: null },
    ]);
    assert.deepEqual(r.hostdevs, ['pci 0000:03:00.1', 'usb 0x0781:0x5583']);
    assert.deepEqual(r.charFiles, [
      { device: 'serial0', path: '/var/log/vmconsole/web.log' },
      { device: 'console0', path: '/var/log/vmconsole/web.log' },
      { device: 'channel0 log', path: '/var/log/vmchannel/web-agent.log' },
    ]);
  });

  it('the device lists it adds leave parseDomainXml as it was (a disk <serial> is no serial port)', () => {
    const d = parseDomainXml(OTHER);
    assert.equal(d.disks.length, 4);
    assert.equal(d.nvram, '/tank/vm/web/web_VARS.fd');
    assert.equal(d.agent, 'connected');
  });

  it('direct kernel boot files, a single <interface>, hostdev interface', () => {
    const r = hostResources(domain("<type arch='x86_64' machine='pc'>hvm</type><kernel>/boot/k</kernel><initrd>/boot/i</initrd>",
      "<interface type='hostdev'><mac address='52:54:00:00:00:09'/><source><address type='pci' domain='0x0000' bus='0x05' slot='0x10' function='0x2'/></source></interface>"));
    assert.deepEqual(r.bootFiles, [{ what: 'kernel', path: '/boot/k' }, { what: 'initrd', path: '/boot/i' }]);
    assert.equal(r.interfaces.length, 1);
    assert.deepEqual(r.hostdevs, ['interface 52:54:00:00:00:09 (pci 0000:05:10.2)']);
    assert.equal(r.cpu, null);
  });
});

describe('hostGaps', () => {
  it('the bed guest on the bed: no gaps (its disks are in the restored datasets)', () => {
    const paths = { '/usr/bin/qemu-system-x86_64': true, '/var/lib/vsbed/kernel/vmlinuz': true, '/var/lib/vsbed/kernel/initrd.img': true, '/var/lib/vsbed/console': true };
    assert.deepEqual(hostGaps(BED, facts({ paths }), (p) => p.startsWith('/vsbed/vm/')), []);
  });

  it('a VM from another host: one line per missing thing, each naming it and what to do', () => {
    const f = facts({
      networks: [{ name: 'default', active: true }],
      paths: {
        '/usr/libexec/qemu-kvm': false,
        '/usr/share/OVMF/OVMF_CODE_4M.fd': false,
        '/usr/share/OVMF/OVMF_VARS_4M.fd': false,
        '/tank/vm/web/web_VARS.fd': false, // in the restored datasets: the restore brings it
        '/tank/vm/web/root.qcow2': false,
        '/var/lib/libvirt/images/debian-12-base.qcow2': false,
        '/iso/debian-12.8.0-amd64-netinst.iso': false,
        '/var/log/vmconsole': false,
        '/var/log/vmchannel': true,
      },
      netdevs: { br0: 'missing', ovsbr0: 'device', enp3s0: 'missing' },
    });
    assert.deepEqual(hostGaps(OTHER, f, inTank), [
      "machine type pc-q35-8.2 is not supported by this host's QEMU (its newest pc-q35 is pc-q35-7.2): a saved VM keeps its machine type, restore on a host whose QEMU has it",
      'CPU model "EPYC-Rome" is not usable on this host (its CPU lacks some of the model\'s features under virt type kvm): restore on a host whose CPU has them',
      "emulator /usr/libexec/qemu-kvm is missing on this host: install QEMU for this arch, or edit <emulator> to this host's QEMU of the same version",
      'UEFI loader /usr/share/OVMF/OVMF_CODE_4M.fd is missing on this host: install the firmware package (ovmf for x86_64), or edit <loader>',
      'backing image /var/lib/libvirt/images/debian-12-base.qcow2 of disk vda is outside the restored datasets and missing on this host: copy it there',
      'disk sda (/iso/debian-12.8.0-amd64-netinst.iso) is outside the restored datasets and missing on this host: copy it there, or eject it after the restore',
      'network "lan" (interface 52:54:00:6b:3c:01) is not defined on this host: define and start it, or edit the interface after the restore',
      'bridge "br0" (interface 52:54:00:6b:3c:02) does not exist on this host: create it, or edit the interface after the restore',
      'network device "enp3s0" (macvtap interface 52:54:00:6b:3c:04) does not exist on this host: name another one, or edit the interface after the restore',
      'passthrough device pci 0000:03:00.1 cannot be checked: remove it, or check by hand that this host has it and that it is free',
      'passthrough device usb 0x0781:0x5583 cannot be checked: remove it, or check by hand that this host has it and that it is free',
      'directory /var/log/vmconsole (files of serial0, console0) does not exist on this host: create it, or edit the device',
    ]);
  });

  it('an inactive network, and a kernel bridge that is a plain device', () => {
    const xml = domain("<type arch='x86_64' machine='pc'>hvm</type>",
      "<interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface><interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='eth0'/></interface>");
    assert.deepEqual(hostGaps(xml, facts({ netdevs: { eth0: 'device' } }), none), [
      'network "default" (interface 52:54:00:00:00:01) is not active on this host: start it (virsh net-start default), or edit the interface after the restore',
      '"eth0" (interface 52:54:00:00:00:02) is not a bridge on this host: make it one, or edit the interface after the restore',
    ]);
    assert.deepEqual(hostGaps(xml, facts({ networks: [{ name: 'default', active: true }], netdevs: { eth0: 'bridge' } }), none), []);
  });

  it('virt type kvm where the host has none; an arch without QEMU', () => {
    const qemuOnly: GuestCaps[] = GUESTS.filter((g) => g.virtType === 'qemu');
    assert.deepEqual(hostGaps(domain("<type arch='x86_64' machine='pc'>hvm</type>", '', 'kvm'), facts({ guests: qemuOnly }), none), [
      'virt type kvm is not available on this host for x86_64 (it has qemu): enable KVM (the kvm module and /dev/kvm), or restore on a host that has it',
    ]);
    assert.deepEqual(hostGaps(domain("<type arch='aarch64' machine='virt-7.2'>hvm</type>"), facts(), none), [
      'no QEMU for architecture aarch64 on this host: install it (qemu-system-aarch64), or restore on a host that has it',
    ]);
  });

  it('machine aliases are machine types; a family the host lacks altogether', () => {
    assert.deepEqual(hostGaps(domain("<type arch='x86_64' machine='q35'>hvm</type>"), facts(), none), []);
    assert.deepEqual(hostGaps(domain("<type arch='x86_64' machine='pc-q35-rhel9.2.0'>hvm</type>"), facts(), none), [
      "machine type pc-q35-rhel9.2.0 is not supported by this host's QEMU (it has no pc-q35-rhel9.2.0 machine): a saved VM keeps its machine type, restore on a host whose QEMU has it",
    ]);
  });

  it('CPU: usable, unknown, and modes the host cannot give (host-passthrough under TCG)', () => {
    const os = "<type arch='x86_64' machine='pc'>hvm</type>";
    const cpu = (c: string) => hostGaps(domain(os, '', 'qemu', c), facts(), none);
    assert.deepEqual(cpu("<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>"), []);
    assert.deepEqual(cpu("<cpu match='exact'><model>Westmere</model></cpu>"), []);
    assert.deepEqual(cpu("<cpu mode='custom'><model>GraniteRapids</model></cpu>"), ['CPU model "GraniteRapids" is not known to this host\'s QEMU: restore on a host whose QEMU knows it']);
    assert.deepEqual(cpu("<cpu mode='host-passthrough' check='none' migratable='on'/>"), ['CPU mode host-passthrough is not supported on this host (virt type qemu): restore on a host that supports it']);
    assert.deepEqual(cpu("<cpu mode='host-model' check='partial'/>"), []);
  });

  it('NVRAM outside the restored datasets: a template makes it; without either, a gap', () => {
    const os = (nvram: string) => domain(`<type arch='x86_64' machine='pc'>hvm</type>${nvram}`);
    const withTemplate = os("<nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram>");
    const paths = (vars: boolean, template: boolean) => facts({ paths: { '/var/lib/libvirt/qemu/nvram/x_VARS.fd': vars, '/usr/share/OVMF/OVMF_VARS.fd': template } });
    assert.deepEqual(hostGaps(withTemplate, paths(false, true), none), []);
    assert.deepEqual(hostGaps(withTemplate, paths(true, false), none), []);
    assert.deepEqual(hostGaps(withTemplate, paths(false, false), none), [
      'NVRAM template /usr/share/OVMF/OVMF_VARS.fd is missing on this host, and so is NVRAM /var/lib/libvirt/qemu/nvram/x_VARS.fd: install the firmware package (ovmf for x86_64), or copy the NVRAM there',
    ]);
    assert.deepEqual(hostGaps(withTemplate, paths(false, false), (p) => p.startsWith('/var/lib/libvirt/qemu/nvram/')), []);
    assert.deepEqual(hostGaps(os('<nvram>/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram>'), paths(false, true), none), [
      'NVRAM /var/lib/libvirt/qemu/nvram/x_VARS.fd is outside the restored datasets and missing on this host, with no template to make it from: copy it there',
    ]);
  });

  it("firmware='efi' on a host without firmware descriptors", () => {
    const xml = domain("<type arch='x86_64' machine='pc'>hvm</type>").replace('<os>', "<os firmware='efi'>");
    assert.deepEqual(hostGaps(xml, facts(), none), [
      'firmware efi cannot be chosen on this host (libvirt finds no UEFI firmware descriptor): install the firmware package (ovmf for x86_64)',
    ]);
    const withEfi: DomCaps = { ...DOMCAPS, firmware: ['efi'] };
    assert.deepEqual(hostGaps(xml, facts({ domCaps: withEfi }), none), []);
  });

  it('facts that could not be gathered are gaps; no gap is guessed from them', () => {
    const f = facts({ networks: null, guests: null, domCaps: null, unknown: ['cannot check the networks on this host: libvirt is down'] });
    const xml = OTHER.replace(/<hostdev [\s\S]*?<\/hostdev>/g, ''); // passthrough is a gap whatever the facts
    assert.deepEqual(hostGaps(xml, f, inTank), ['cannot check the networks on this host: libvirt is down']);
  });

  it('a path not checked is no gap (the facts come from the same XML)', () => {
    assert.deepEqual(hostGaps(OTHER, facts({ networks: [{ name: 'lan', active: true }], guests: null, domCaps: null }), inTank), [
      'passthrough device pci 0000:03:00.1 cannot be checked: remove it, or check by hand that this host has it and that it is free',
      'passthrough device usb 0x0781:0x5583 cannot be checked: remove it, or check by hand that this host has it and that it is free',
    ]);
  });
});

describe('gatherHostFacts', () => {
  function fakeVirsh(fail: Set<string> = new Set()) {
    const calls: string[] = [];
    const domCapsArgs: unknown[] = [];
    const refuse = (what: string) => {
      calls.push(what);
      if (fail.has(what)) throw new LibvirtError(`cannot reach libvirt at qemu:///system`, 'error: failed to connect');
    };
    const virsh: HostFitLibvirt = {
      networks: async () => (refuse('networks'), [{ name: 'default', active: true }]),
      capabilities: async () => (refuse('capabilities'), GUESTS),
      domCapabilities: async (of) => (refuse('domCapabilities'), domCapsArgs.push(of), DOMCAPS),
    };
    return { virsh, calls, domCapsArgs };
  }

  it('asks each kind of fact once; domcapabilities for the XML emulator and machine when this host has them', async () => {
    const { virsh, calls, domCapsArgs } = fakeVirsh();
    const xml = domain("<type arch='x86_64' machine='pc-q35-7.2'>hvm</type>",
      "<emulator>/usr/bin/qemu-system-x86_64</emulator><interface type='network'><source network='default'/></interface><interface type='network'><source network='default'/></interface>",
      'qemu', "<cpu mode='custom'><model>qemu64</model></cpu>");
    const f = await gatherHostFacts(virsh, xml);
    assert.deepEqual(calls.sort(), ['capabilities', 'domCapabilities', 'networks']);
    assert.deepEqual(domCapsArgs, [{ virtType: 'qemu', arch: 'x86_64', emulator: '/usr/bin/qemu-system-x86_64', machine: 'pc-q35-7.2' }]);
    assert.deepEqual(f.networks, [{ name: 'default', active: true }]);
    assert.equal(f.paths['/usr/bin/qemu-system-x86_64'], true);
    assert.deepEqual(hostGaps(xml, f, none), []);
  });

  it('no networks asked without a network interface; this host\'s defaults where the XML\'s emulator or machine is missing', async () => {
    const { virsh, calls, domCapsArgs } = fakeVirsh();
    const f = await gatherHostFacts(virsh, OTHER.replace("type='kvm'", "type='qemu'").replace(/<interface type='network'>[\s\S]*?<\/interface>/, ''));
    assert.deepEqual(calls.sort(), ['capabilities', 'domCapabilities']);
    assert.deepEqual(domCapsArgs, [{ virtType: 'qemu', arch: 'x86_64' }]);
    assert.equal(f.networks, null);
    assert.equal(f.paths['/usr/libexec/qemu-kvm'], false);
    assert.equal(f.paths['/iso/debian-12.8.0-amd64-netinst.iso'], false);
    assert.equal(f.netdevs['br0'], 'missing');
    assert.equal(f.netdevs['lo'], undefined);
  });

  it('a virsh call that fails becomes a gap, not an exception', async () => {
    const { virsh, calls } = fakeVirsh(new Set(['networks', 'capabilities']));
    const f = await gatherHostFacts(virsh, OTHER);
    assert.deepEqual(calls.sort(), ['capabilities', 'networks']); // no domcapabilities without capabilities
    assert.deepEqual(f.unknown, [
      'cannot check the networks on this host: cannot reach libvirt at qemu:///system',
      'cannot check arch, virt type and machine type on this host: cannot reach libvirt at qemu:///system',
    ]);
    assert.deepEqual(hostGaps(OTHER, f, inTank).slice(0, 2), f.unknown);
  });

  it('domcapabilities failing too', async () => {
    const { virsh } = fakeVirsh(new Set(['domCapabilities']));
    const f = await gatherHostFacts(virsh, BED);
    assert.deepEqual(f.unknown, ['cannot check the CPU model and firmware on this host: cannot reach libvirt at qemu:///system']);
    assert.equal(f.domCaps, null);
  });

  it('network device names from XML stay inside /sys/class/net', async () => {
    const { virsh } = fakeVirsh();
    const xml = domain("<type arch='x86_64' machine='pc'>hvm</type>", "<interface type='bridge'><source bridge='../../../etc'/></interface><interface type='direct'><source dev='lo'/></interface>");
    const f = await gatherHostFacts(virsh, xml);
    assert.deepEqual(f.netdevs, { '../../../etc': 'missing', lo: 'device' });
  });
});
