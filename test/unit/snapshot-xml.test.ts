import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { escapeXml, snapshotXml, type SnapshotSpec } from '../../lib/libvirt/snapshot-xml.js';

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  parseAttributeValue: false,
  parseTagValue: false,
  isArray: (name) => name === 'disk',
});

type Node = Record<string, any>;

function parse(xml: string): Node {
  const valid = XMLValidator.validate(xml);
  assert.equal(valid, true, `not well-formed: ${JSON.stringify(valid)}`);
  return parser.parse(xml) as Node;
}

describe('escapeXml', () => {
  it('escapes the five XML specials, & first', () => {
    assert.equal(escapeXml(`a&b<c>d"e'f`), 'a&amp;b&lt;c&gt;d&quot;e&apos;f');
    assert.equal(escapeXml('&lt;'), '&amp;lt;');
    assert.equal(escapeXml('plain /path/x.qcow2'), 'plain /path/x.qcow2');
  });
});

describe('snapshotXml', () => {
  const spec: SnapshotSpec = {
    name: 'virtsnap-20240102T030405.000Z-4aa4739f',
    description: 'virtsnap freeze for tank/vm@autosnap_x_daily',
    memoryFile: '/var/lib/virtsnap/overlay/vm.tag.save',
    disks: [
      { target: 'vda', overlay: '/var/lib/virtsnap/overlay/vm.tag.vda.qcow2' },
      { target: 'vdb', overlay: '/var/lib/virtsnap/overlay/vm.tag.vdb.qcow2' },
      { target: 'hdc', overlay: null },
    ],
  };

  it('names every disk: external with an overlay, snapshot=no without', () => {
    const doc = parse(snapshotXml(spec)).domainsnapshot;
    assert.equal(doc.name, spec.name);
    assert.equal(doc.description, spec.description);
    assert.equal(doc.memory['@snapshot'], 'external');
    assert.equal(doc.memory['@file'], spec.memoryFile);
    const disks = doc.disks.disk as Node[];
    assert.deepEqual(
      disks.map((d) => d['@name']),
      ['vda', 'vdb', 'hdc'],
    );
    assert.equal(disks[0]!['@snapshot'], 'external');
    assert.equal(disks[0]!['@type'], 'file');
    assert.equal(disks[0]!.driver['@type'], 'qcow2');
    assert.equal(disks[0]!.source['@file'], spec.disks[0]!.overlay);
    assert.equal(disks[1]!.source['@file'], spec.disks[1]!.overlay);
    assert.equal(disks[2]!['@snapshot'], 'no');
    assert.equal(disks[2]!.source, undefined);
  });

  it('a domain with only snapshot=no disks still lists them', () => {
    const doc = parse(snapshotXml({ ...spec, disks: [{ target: 'sda', overlay: null }] })).domainsnapshot;
    assert.equal(doc.disks.disk.length, 1);
    assert.equal(doc.disks.disk[0]['@snapshot'], 'no');
  });

  it("escapes quotes, & and < in paths and names, and stays well-formed", () => {
    const nasty: SnapshotSpec = {
      name: `snap "1" & <2> 'x'`,
      description: `for tank/a&b@<x> "q" 'y'`,
      memoryFile: `/ov/it's "a" & <b>.save`,
      disks: [
        { target: `vd'a`, overlay: `/ov/o'ne & "two" <three>.qcow2` },
        { target: `vd"b&<`, overlay: null },
      ],
    };
    const xml = snapshotXml(nasty);
    const doc = parse(xml).domainsnapshot;
    assert.equal(doc.name, nasty.name);
    assert.equal(doc.description, nasty.description);
    assert.equal(doc.memory['@file'], nasty.memoryFile);
    assert.equal(doc.disks.disk[0]['@name'], `vd'a`);
    assert.equal(doc.disks.disk[0].source['@file'], nasty.disks[0]!.overlay);
    assert.equal(doc.disks.disk[1]['@name'], `vd"b&<`);
    assert.equal(doc.disks.disk[1]['@snapshot'], 'no');
    // nothing unescaped made it through
    assert.ok(!xml.includes(`it's`));
    assert.ok(!xml.includes('<three>'));
  });
});
