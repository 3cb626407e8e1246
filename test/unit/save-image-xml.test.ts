import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { HEADER_BYTES, readSaveImageXml, rewriteSaveImageXml } from '../../lib/libvirt/save-image.js';

let dir: string;
let n = 0;

before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-saveimg-xml-'));
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

const XML = "<domain type='kvm'><name>web</name><uuid>11111111-1111-4111-8111-111111111111</uuid></domain>";
const COOKIE = '<cookie>x</cookie>';
const DATA_LEN = 1024;
/** Guest RAM after the XML region: every byte value, a few times over. */
const PAYLOAD = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7 + 3) % 256));

interface Image {
  xml?: string;
  cookie?: string | null;
  dataLen?: number;
  bigEndian?: boolean;
}

/** A synthetic save image: 92-byte header, data_len bytes of XML + cookie + padding, then the payload. */
function image(f: Image = {}): { file: string; bytes: Buffer } {
  const xml = f.xml ?? XML;
  const cookie = f.cookie === undefined ? COOKIE : f.cookie;
  const dataLen = f.dataLen ?? DATA_LEN;
  const header = Buffer.alloc(HEADER_BYTES);
  header.write('LibvirtQemudSave', 0, 16, 'latin1');
  const w = (v: number, o: number) => (f.bigEndian ? header.writeUInt32BE(v, o) : header.writeUInt32LE(v, o));
  const xmlBytes = Buffer.from(xml + '\0', 'utf8');
  w(2, 16);
  w(dataLen, 20);
  w(1, 24);
  w(0, 28);
  w(cookie === null ? 0 : xmlBytes.length, 32);
  const region = Buffer.alloc(dataLen);
  xmlBytes.copy(region, 0);
  if (cookie !== null) Buffer.from(cookie + '\0', 'utf8').copy(region, xmlBytes.length);
  const bytes = Buffer.concat([header, region, PAYLOAD]);
  const file = path.join(dir, `img${n++}.save`);
  writeFileSync(file, bytes);
  return { file, bytes };
}

function word(buf: Buffer, offset: number, bigEndian = false): number {
  return bigEndian ? buf.readUInt32BE(offset) : buf.readUInt32LE(offset);
}

/** Checks what a rewrite must keep: size, payload, header words but the cookie offset. */
function assertIntact(before: Buffer, after: Buffer, bigEndian = false): void {
  assert.equal(after.length, before.length, 'file size');
  assert.ok(after.subarray(0, 32).equals(before.subarray(0, 32)), 'header up to cookieOffset');
  assert.ok(after.subarray(36, HEADER_BYTES).equals(before.subarray(36, HEADER_BYTES)), 'header after cookieOffset');
  assert.equal(word(after, 20, bigEndian), word(before, 20, bigEndian), 'data_len');
  const end = HEADER_BYTES + word(before, 20, bigEndian);
  assert.ok(after.subarray(end).equals(before.subarray(end)), 'payload after the XML region');
  assert.ok(after.subarray(end).equals(PAYLOAD));
}

describe('readSaveImageXml', () => {
  it('returns the header, the XML and the cookie', () => {
    const { file } = image();
    const r = readSaveImageXml(file);
    assert.equal(r.xml, XML);
    assert.equal(r.cookie, COOKIE);
    assert.deepEqual(r.header, { complete: true, version: 2, dataLength: DATA_LEN, wasRunning: true, format: 0, cookieOffset: Buffer.byteLength(XML + '\0'), bigEndian: false });
  });

  it('cookieOffset 0: no cookie', () => {
    const r = readSaveImageXml(image({ cookie: null }).file);
    assert.equal(r.xml, XML);
    assert.equal(r.cookie, null);
  });

  it('a big-endian image is read too', () => {
    const r = readSaveImageXml(image({ bigEndian: true }).file);
    assert.equal(r.xml, XML);
    assert.equal(r.cookie, COOKIE);
    assert.equal(r.header.dataLength, DATA_LEN);
  });

  it('not a save image: throws', () => {
    const file = path.join(dir, `garbage${n++}.save`);
    writeFileSync(file, Buffer.alloc(4096, 0x41));
    assert.throws(() => readSaveImageXml(file), /is not a libvirt save image/);
  });
});

describe('rewriteSaveImageXml', () => {
  for (const [what, xml] of [
    ['a longer XML', XML.replace('<name>web</name>', '<name>web-clone-with-a-much-longer-name</name><description>restored by virtsnap</description>')],
    ['a shorter XML', '<domain><name>w</name></domain>'],
  ] as const) {
    it(`${what}: same size, payload byte-identical, data_len kept, cookie moved behind it`, () => {
      const { file, bytes } = image();
      rewriteSaveImageXml(file, xml);
      const after = readFileSync(file);
      assertIntact(bytes, after);
      assert.equal(word(after, 32), Buffer.byteLength(xml) + 1, 'cookieOffset');
      const r = readSaveImageXml(file);
      assert.equal(r.xml, xml);
      assert.equal(r.cookie, COOKIE);
      assert.equal(r.header.dataLength, DATA_LEN);
      // The region holds exactly xml NUL cookie NUL, then zeroes (no trace of the old, longer XML).
      const region = after.subarray(HEADER_BYTES, HEADER_BYTES + DATA_LEN);
      const used = Buffer.byteLength(xml) + 1 + Buffer.byteLength(COOKIE) + 1;
      assert.ok(region.subarray(used).equals(Buffer.alloc(DATA_LEN - used)));
    });
  }

  it('multi-byte UTF-8: the cookie offset counts bytes', () => {
    const { file, bytes } = image();
    const xml = '<domain><name>web</name><description>Übersicht – ünïcødé</description></domain>';
    rewriteSaveImageXml(file, xml);
    const after = readFileSync(file);
    assertIntact(bytes, after);
    assert.equal(word(after, 32), Buffer.byteLength(xml, 'utf8') + 1);
    assert.notEqual(Buffer.byteLength(xml, 'utf8'), xml.length);
    const r = readSaveImageXml(file);
    assert.equal(r.xml, xml);
    assert.equal(r.cookie, COOKIE);
  });

  it('an XML that exactly fills the region (with the cookie) fits', () => {
    const { file, bytes } = image();
    const room = DATA_LEN - (Buffer.byteLength(COOKIE) + 1) - 1;
    const xml = `<domain>${'x'.repeat(room - '<domain></domain>'.length)}</domain>`;
    assert.equal(Buffer.byteLength(xml), room);
    rewriteSaveImageXml(file, xml);
    assertIntact(bytes, readFileSync(file));
    const r = readSaveImageXml(file);
    assert.equal(r.xml, xml);
    assert.equal(r.cookie, COOKIE);
  });

  it('an XML too long for the region throws and leaves the file unchanged', () => {
    const { file, bytes } = image();
    const room = DATA_LEN - (Buffer.byteLength(COOKIE) + 1) - 1;
    for (const xml of [`<domain>${'x'.repeat(room)}</domain>`, `<domain>${'x'.repeat(room - '<domain></domain>'.length + 1)}</domain>`]) {
      assert.throws(() => rewriteSaveImageXml(file, xml), /does not fit the save image's 1024-byte XML region/);
      assert.ok(readFileSync(file).equals(bytes));
    }
  });

  it('an image without cookie (cookieOffset 0) stays without one', () => {
    const { file, bytes } = image({ cookie: null });
    const xml = XML.replace('web', 'web-clone');
    rewriteSaveImageXml(file, xml);
    const after = readFileSync(file);
    assertIntact(bytes, after);
    assert.equal(word(after, 32), 0);
    const r = readSaveImageXml(file);
    assert.equal(r.xml, xml);
    assert.equal(r.cookie, null);
    // Without a cookie, the XML may use the whole region but its NUL.
    const full = `<domain>${'y'.repeat(DATA_LEN - 1 - '<domain></domain>'.length)}</domain>`;
    rewriteSaveImageXml(file, full);
    assert.equal(readSaveImageXml(file).xml, full);
    assert.throws(() => rewriteSaveImageXml(file, full + 'z'), /does not fit/);
  });

  it('a big-endian image: the cookie offset is written big-endian', () => {
    const { file, bytes } = image({ bigEndian: true });
    const xml = XML.replace('web', 'web-clone');
    rewriteSaveImageXml(file, xml);
    const after = readFileSync(file);
    assertIntact(bytes, after, true);
    assert.equal(word(after, 32, true), Buffer.byteLength(xml) + 1);
    assert.equal(readSaveImageXml(file).cookie, COOKIE);
  });

  it('rewriting twice is the same as rewriting once', () => {
    const a = image();
    const b = image();
    const xml = XML.replace('web', 'other');
    rewriteSaveImageXml(a.file, '<domain><name>intermediate-with-a-longer-name</name></domain>');
    rewriteSaveImageXml(a.file, xml);
    rewriteSaveImageXml(b.file, xml);
    assert.ok(readFileSync(a.file).equals(readFileSync(b.file)));
    assert.equal(statSync(a.file).size, a.bytes.length);
  });
});
