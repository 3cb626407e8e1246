import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { hostAccessOf, parseDomainXml } from '../../lib/libvirt/domain-xml.js';
import { LibvirtError } from '../../lib/errors.js';

function fixture(name: string): string {
  // tests run from dist/test/unit/
  return readFileSync(new URL(`../../../test/fixtures/${name}`, import.meta.url), 'utf8');
}

const UUID = '4aa4739f-40fb-4dd3-b355-8e408c5e68f7';

function domain(devices: string, extra = '', memory = "<memory unit='KiB'>1048576</memory>"): string {
  return `<domain type='kvm'>
  <name>inline</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  ${memory}
  ${extra}
  <devices>
${devices}
  </devices>
</domain>`;
}

describe('parseDomainXml on fixtures', () => {
  it('dumpxml-running-3disks.xml: vda qcow2, vdb raw, hdc cdrom read-only', () => {
    const d = parseDomainXml(fixture('dumpxml-running-3disks.xml'));
    assert.equal(d.name, 'vsbed-t1');
    assert.equal(d.uuid, UUID);
    assert.equal(d.memoryKiB, 131072);
    assert.equal(d.nvram, null);
    assert.equal(d.tpmEmulator, false);
    assert.deepEqual(d.disks, [
      { target: 'vda', device: 'disk', type: 'file', source: '/vsbed/vm/t1/disk.qcow2', format: 'qcow2', readonly: false, shareable: false, backing: null },
      { target: 'vdb', device: 'disk', type: 'file', source: '/vsbed/vm/t1/data.raw', format: 'raw', readonly: false, shareable: false, backing: null },
      { target: 'hdc', device: 'cdrom', type: 'file', source: '/vsbed/vm/t1/cd.iso', format: 'raw', readonly: true, shareable: false, backing: null },
    ]);
  });

  it('dumpxml-on-overlays.xml: disks on overlays, backing = the original image', () => {
    const d = parseDomainXml(fixture('dumpxml-on-overlays.xml'));
    assert.equal(d.uuid, UUID);
    assert.equal(d.disks.length, 3);
    const [vda, vdb, hdc] = d.disks;
    assert.equal(vda!.target, 'vda');
    assert.equal(vda!.source, '/var/lib/vsbed/overlay/a-vda.qcow2');
    assert.equal(vda!.format, 'qcow2');
    assert.equal(vda!.backing, '/vsbed/vm/t1/disk.qcow2');
    assert.equal(vdb!.target, 'vdb');
    assert.equal(vdb!.source, '/var/lib/vsbed/overlay/a-vdb.qcow2');
    assert.equal(vdb!.format, 'qcow2');
    assert.equal(vdb!.backing, '/vsbed/vm/t1/data.raw');
    assert.equal(hdc!.device, 'cdrom');
    assert.equal(hdc!.readonly, true);
    assert.equal(hdc!.backing, null);
  });

  it('dumpxml-inactive.xml: same disks, no runtime attributes', () => {
    const d = parseDomainXml(fixture('dumpxml-inactive.xml'));
    assert.equal(d.name, 'vsbed-t1');
    assert.equal(d.memoryKiB, 131072);
    assert.deepEqual(
      d.disks.map((x) => [x.target, x.device, x.source, x.format, x.readonly, x.backing]),
      [
        ['vda', 'disk', '/vsbed/vm/t1/disk.qcow2', 'qcow2', false, null],
        ['vdb', 'disk', '/vsbed/vm/t1/data.raw', 'raw', false, null],
        ['hdc', 'cdrom', '/vsbed/vm/t1/cd.iso', 'raw', true, null],
      ],
    );
  });
});

describe('parseDomainXml inline', () => {
  it('nvram (with template attribute) and a TPM emulator', () => {
    const d = parseDomainXml(
      domain(
        `    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>`,
        `<os><type arch='x86_64' machine='q35'>hvm</type>
      <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
      <nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/inline_VARS.fd</nvram></os>`,
      ),
    );
    assert.equal(d.nvram, '/var/lib/libvirt/qemu/nvram/inline_VARS.fd');
    assert.equal(d.tpmEmulator, true);
    assert.deepEqual(d.disks, []);
  });

  it('nvram without attributes', () => {
    const d = parseDomainXml(domain('', '<os><type>hvm</type><nvram>/var/lib/nv/x.fd</nvram></os>'));
    assert.equal(d.nvram, '/var/lib/nv/x.fd');
  });

  it('a passthrough TPM is not an emulator', () => {
    const d = parseDomainXml(domain(`<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>`));
    assert.equal(d.tpmEmulator, false);
  });

  it('network disk has no source path; block disk uses source dev; shareable is seen', () => {
    const d = parseDomainXml(
      domain(`
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/image'><host name='mon1' port='6789'/></source>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/zvol/tank/vm/disk0'/>
      <target dev='vdd' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/tank/shared/cluster.img'/>
      <target dev='vde' bus='virtio'/>
      <shareable/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>`),
    );
    assert.equal(d.disks.length, 4);
    const [net, blk, shared, emptyCd] = d.disks;
    assert.equal(net!.type, 'network');
    assert.equal(net!.source, null);
    assert.equal(net!.shareable, false);
    assert.equal(blk!.type, 'block');
    assert.equal(blk!.source, '/dev/zvol/tank/vm/disk0');
    assert.equal(blk!.format, 'raw');
    assert.equal(shared!.shareable, true);
    assert.equal(shared!.readonly, false);
    assert.equal(emptyCd!.source, null);
    assert.equal(emptyCd!.format, null);
    assert.equal(emptyCd!.readonly, true);
  });

  it('a single disk is still a list; a disk without target is dropped', () => {
    const d = parseDomainXml(
      domain(`<disk type='file' device='disk'><source file='/a.img'/><target dev='vda'/></disk>
    <disk type='file' device='disk'><source file='/b.img'/></disk>`),
    );
    assert.deepEqual(
      d.disks.map((x) => x.target),
      ['vda'],
    );
    const one = parseDomainXml(domain(`<disk type='file' device='disk'><source file='/a.img'/><target dev='vda'/></disk>`));
    assert.equal(one.disks.length, 1);
    assert.equal(one.disks[0]!.source, '/a.img');
  });

  it('device defaults to disk and type to file when absent', () => {
    const d = parseDomainXml(domain(`<disk><source file='/a.img'/><target dev='vda'/></disk>`));
    assert.equal(d.disks[0]!.device, 'disk');
    assert.equal(d.disks[0]!.type, 'file');
  });

  it('XML entities in paths and names are decoded', () => {
    const xml = `<domain><name>a &amp; b</name><uuid>u</uuid><memory>1</memory><devices>
      <disk type='file' device='disk'><source file='/tank/vm/it&apos;s &amp; &lt;x&gt;.img'/><target dev='vda'/></disk>
    </devices></domain>`;
    const d = parseDomainXml(xml);
    assert.equal(d.name, 'a & b');
    assert.equal(d.disks[0]!.source, "/tank/vm/it's & <x>.img");
  });

  it('numeric-looking names stay strings', () => {
    const d = parseDomainXml(`<domain><name>0123</name><uuid>1e5</uuid><memory>1</memory></domain>`);
    assert.equal(d.name, '0123');
    assert.equal(d.uuid, '1e5');
  });

  it('memory units: KiB default, MiB, GiB, bytes, KB', () => {
    assert.equal(parseDomainXml(domain('', '', '<memory>2048</memory>')).memoryKiB, 2048);
    assert.equal(parseDomainXml(domain('', '', "<memory unit='KiB'>2048</memory>")).memoryKiB, 2048);
    assert.equal(parseDomainXml(domain('', '', "<memory unit='MiB'>512</memory>")).memoryKiB, 512 * 1024);
    assert.equal(parseDomainXml(domain('', '', "<memory unit='M'>512</memory>")).memoryKiB, 512 * 1024);
    assert.equal(parseDomainXml(domain('', '', "<memory unit='GiB'>4</memory>")).memoryKiB, 4 * 1024 * 1024);
    assert.equal(parseDomainXml(domain('', '', "<memory unit='G'>2</memory>")).memoryKiB, 2 * 1024 * 1024);
    assert.equal(parseDomainXml(domain('', '', "<memory unit='b'>1048576</memory>")).memoryKiB, 1024);
    assert.equal(parseDomainXml(domain('', '', "<memory unit='bytes'>1048576</memory>")).memoryKiB, 1024);
    assert.equal(parseDomainXml(domain('', '', "<memory unit='KB'>1024</memory>")).memoryKiB, 1000);
    assert.equal(parseDomainXml(domain('', '', "<memory unit='GB'>1</memory>")).memoryKiB, Math.round(1e9 / 1024));
  });

  it('no <domain>, no <name> or no <uuid> -> LibvirtError', () => {
    assert.throws(() => parseDomainXml('<notadomain/>'), LibvirtError);
    assert.throws(() => parseDomainXml('<domain><uuid>x</uuid></domain>'), LibvirtError);
    assert.throws(() => parseDomainXml('<domain><name>x</name></domain>'), LibvirtError);
    assert.throws(() => parseDomainXml(''), LibvirtError);
  });
});

describe('the guest agent channel', () => {
  const xml = (channels: string) => `<domain><name>a</name><uuid>u</uuid><devices>${channels}</devices></domain>`;
  it('connected, disconnected, no state (inactive XML) or none', () => {
    const agent = (state: string) => `<channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'${state}/></channel>`;
    const spice = `<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>`;
    assert.equal(parseDomainXml(xml(spice + agent(" state='connected'"))).agent, 'connected');
    assert.equal(parseDomainXml(xml(agent(" state='disconnected'"))).agent, 'disconnected');
    assert.equal(parseDomainXml(xml(agent(''))).agent, 'unknown');
    assert.equal(parseDomainXml(xml(spice)).agent, 'none');
    assert.equal(parseDomainXml(xml('')).agent, 'none');
  });
});

describe('hostAccessOf: what a dump from a shared repository must not define as root unasked (--trust-dump-xml)', () => {
  it('names QEMU arguments of its own and host directories passed through; a plain guest has none', () => {
    const plain = "<domain type='kvm'><name>web</name><devices><disk type='file' device='disk'><source file='/tank/vm/web.qcow2'/><target dev='vda'/></disk></devices></domain>";
    assert.deepEqual(hostAccessOf(plain), []);
    const qemu = "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>web</name><qemu:commandline><qemu:arg value='-set'/></qemu:commandline></domain>";
    assert.deepEqual(hostAccessOf(qemu), ['<qemu:commandline> or <qemu:override> (QEMU arguments of its own)']);
    const fs = "<domain type='kvm'><devices><filesystem type='mount'><source dir='/'/><target dir='host'/></filesystem></devices></domain>";
    assert.deepEqual(hostAccessOf(fs), ['<filesystem> (a host directory passed through)']);
  });
});
