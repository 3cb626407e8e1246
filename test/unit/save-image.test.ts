import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { HEADER_BYTES, readSaveImageHeader } from '../../lib/libvirt/save-image.js';

let dir: string;
let n = 0;

before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-saveimg-'));
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

interface Fields {
  magic?: string;
  version?: number;
  dataLen?: number;
  wasRunning?: number;
  format?: number;
  bigEndian?: boolean;
}

/** A virQEMUSaveHeader: magic[16], then u32 version, data_len, was_running, format, cookieOffset, unused[14]. */
function header(f: Fields = {}): Buffer {
  const buf = Buffer.alloc(HEADER_BYTES);
  buf.write(f.magic ?? 'LibvirtQemudSave', 0, 16, 'latin1');
  const w = (v: number, o: number) => (f.bigEndian ? buf.writeUInt32BE(v, o) : buf.writeUInt32LE(v, o));
  w(f.version ?? 2, 16);
  w(f.dataLen ?? 4096, 20);
  w(f.wasRunning ?? 1, 24);
  w(f.format ?? 0, 28);
  w(0, 32);
  return buf;
}

function file(data: Buffer): string {
  const p = path.join(dir, `img${n++}.save`);
  writeFileSync(p, data);
  return p;
}

describe('readSaveImageHeader', () => {
  it('header is 92 bytes', () => {
    assert.equal(HEADER_BYTES, 92);
  });

  it('complete image (LibvirtQemudSave), followed by XML', () => {
    const xml = Buffer.from('<domstatus>...</domstatus>\0');
    const h = readSaveImageHeader(file(Buffer.concat([header({ dataLen: 12345, wasRunning: 1, format: 0 }), xml])));
    assert.deepEqual(h, { complete: true, version: 2, dataLength: 12345, wasRunning: true, format: 0, cookieOffset: 0, bigEndian: false });
  });

  it('incomplete image (LibvirtQemudPart)', () => {
    const h = readSaveImageHeader(file(header({ magic: 'LibvirtQemudPart', dataLen: 777, wasRunning: 0, format: 5 })));
    assert.deepEqual(h, { complete: false, version: 2, dataLength: 777, wasRunning: false, format: 5, cookieOffset: 0, bigEndian: false });
  });

  it('exactly 92 bytes is enough', () => {
    const h = readSaveImageHeader(file(header()));
    assert.ok(h !== null);
    assert.equal(h.complete, true);
    assert.equal(h.dataLength, 4096);
  });

  it('a big-endian header is read by its swapped version', () => {
    const h = readSaveImageHeader(file(header({ bigEndian: true, dataLen: 0x01020304 })));
    assert.ok(h !== null);
    assert.equal(h.version, 2);
    assert.equal(h.dataLength, 0x01020304);
  });

  it('garbage -> null', () => {
    assert.equal(readSaveImageHeader(file(Buffer.alloc(4096, 0x41))), null);
    assert.equal(readSaveImageHeader(file(Buffer.concat([Buffer.from('QFI\xfb', 'latin1'), Buffer.alloc(200)]))), null);
    assert.equal(readSaveImageHeader(file(header({ magic: 'LibvirtQemudSavX' }))), null);
    assert.equal(readSaveImageHeader(file(header({ magic: 'libvirtqemudsave' }))), null);
  });

  it('short file -> null, even with the right magic', () => {
    assert.equal(readSaveImageHeader(file(header().subarray(0, 91))), null);
    assert.equal(readSaveImageHeader(file(Buffer.from('LibvirtQemudSave'))), null);
    assert.equal(readSaveImageHeader(file(Buffer.alloc(0))), null);
  });

  it('a missing file throws', () => {
    assert.throws(() => readSaveImageHeader(path.join(dir, 'missing.save')), /ENOENT/);
  });
});
