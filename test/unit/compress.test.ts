// Compressed RAM dumps (VIRTSNAP_COMPRESS=gzip): the header rewrite, what
// archiveDump stores and records, and what check and verify make of it.
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { archiveDump, hashStored, listDumps, worthCompressing, type ArchiveInput } from '../../lib/archive.js';
import { type Compression, type Manifest } from '../../lib/manifest.js';
import { FORMAT_GZIP, FORMAT_OFFSET, FORMAT_ZSTD, HEADER_BYTES, readSaveImageHeader, readSaveImageXml, rewriteSaveImageXml, streamOffset, withFormat } from '../../lib/libvirt/save-image.js';
import { legacyRef } from '../../lib/snapshot-id.js';
import { checkDump, checkStructure } from '../../lib/dump-check.js';

const UUID = '4aa4739f-40fb-4dd3-b355-8e408c5e68f7';
const XML = `<domain type='kvm'><name>web</name><uuid>${UUID}</uuid></domain>`;
const DATA_LEN = 2048;

let dir: string;
let n = 0;

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-compress-'));
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * A save image as libvirt writes it: header, XML region, then a "migration
 * stream" of 1.5 MiB that compresses like RAM does (zero pages, repeated
 * pages, some noise).
 */
function saveImage(format = 0, bigEndian = false): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  header.write('LibvirtQemudSave', 0, 16, 'latin1');
  const w = (v: number, o: number) => (bigEndian ? header.writeUInt32BE(v, o) : header.writeUInt32LE(v, o));
  w(2, 16);
  w(DATA_LEN, 20);
  w(1, 24);
  w(format, 28);
  const region = Buffer.alloc(DATA_LEN);
  region.write(XML, 0, 'utf8');
  const page = randomBytes(4096);
  const pages = Array.from({ length: 384 }, (_, i) => (i % 3 === 0 ? Buffer.alloc(4096) : i % 3 === 1 ? page : randomBytes(4096)));
  return Buffer.concat([header, region, ...pages]);
}

function input(memoryFile: string, compression: Compression | null): ArchiveInput {
  return {
    id: `20240102T030405.${String(n++).padStart(3, '0')}Z-4aa4739f`,
    domain: { name: 'web', uuid: UUID },
    snapshots: ['tank/vm@autosnap_x_hourly'].map(legacyRef),
    types: ['hourly'],
    memoryFile,
    metaDir: null,
    disks: [],
    startedAt: '2024-01-02T03:04:05.000Z',
    frozenAt: null,
    job: null,
    libvirtUri: 'qemu:///system',
    hostname: 'host1',
    compression,
  };
}

/** Archives `image` (written to a fake overlay dir first) and returns the dump. */
async function archive(image: Buffer, compression: Compression | null): Promise<{ manifest: Manifest; source: string }> {
  mkdirSync(path.join(dir, 'overlay'), { recursive: true });
  const source = path.join(dir, 'overlay', `web.${n}.save`);
  writeFileSync(source, image, { mode: 0o644 });
  await archiveDump(path.join(dir, 'archive'), input(source, compression));
  // As every reader gets it: through the manifest on disk.
  const dumps = listDumps(path.join(dir, 'archive'));
  return { manifest: dumps[dumps.length - 1]!.manifest, source };
}

function flipByte(file: string, offset: number): void {
  const data = readFileSync(file);
  data[offset] = data[offset]! ^ 0xff;
  writeFileSync(file, data);
}

describe('withFormat', () => {
  it('sets only the format word, in the image byte order', () => {
    for (const bigEndian of [false, true]) {
      const image = saveImage(0, bigEndian);
      const head = image.subarray(0, HEADER_BYTES + DATA_LEN);
      const out = withFormat(head, { bigEndian }, FORMAT_GZIP);
      assert.equal(bigEndian ? out.readUInt32BE(FORMAT_OFFSET) : out.readUInt32LE(FORMAT_OFFSET), 1);
      assert.ok(out.subarray(0, FORMAT_OFFSET).equals(head.subarray(0, FORMAT_OFFSET)));
      assert.ok(out.subarray(FORMAT_OFFSET + 4).equals(head.subarray(FORMAT_OFFSET + 4)));
      assert.equal(head.readUInt32LE(FORMAT_OFFSET), 0, 'the input is not changed');
    }
  });
});

describe('archiveDump with gzip', () => {
  it('stores header and XML as they were (format gzip), the stream through gzip; records both sizes and hashes', async () => {
    const image = saveImage();
    const { manifest, source } = await archive(image, 'gzip');
    const stored = readFileSync(manifest.memoryFile);
    const offset = HEADER_BYTES + DATA_LEN;
    assert.equal(existsSync(source), false, 'the raw file is gone once archived');
    assert.equal(statSync(manifest.memoryFile).mode & 0o777, 0o600);
    assert.equal(existsSync(`${manifest.memoryFile}.part`), false);
    assert.ok(stored.length < image.length * 0.8, `${stored.length} of ${image.length}`);
    // What libvirt reads: the header with format 1, the same XML, then `gzip -dc` of the rest.
    const header = readSaveImageHeader(manifest.memoryFile)!;
    assert.equal(header.format, FORMAT_GZIP);
    assert.equal(header.dataLength, DATA_LEN);
    assert.equal(readSaveImageXml(manifest.memoryFile).xml, XML);
    assert.ok(gunzipSync(stored.subarray(offset)).equals(image.subarray(offset)));
    assert.ok(withFormat(stored.subarray(0, offset), header, 0).equals(image.subarray(0, offset)));
    assert.equal(manifest.compression, 'gzip');
    assert.equal(manifest.bytes, stored.length);
    assert.equal(manifest.sha256, sha256(stored));
    assert.deepEqual(manifest.raw, { bytes: image.length, sha256: sha256(image) });
  });

  it('hashStored gives back the raw image hash from the compressed file', async () => {
    const image = saveImage();
    const { manifest } = await archive(image, 'gzip');
    const hashes = await hashStored(manifest.memoryFile, readSaveImageHeader(manifest.memoryFile));
    assert.deepEqual(hashes.raw, { bytes: image.length, sha256: sha256(image) });
    assert.equal(hashes.sha256, manifest.sha256);
  });

  it('big-endian image: the format word is written big-endian', async () => {
    const { manifest } = await archive(saveImage(0, true), 'gzip');
    assert.equal(readFileSync(manifest.memoryFile).readUInt32BE(FORMAT_OFFSET), FORMAT_GZIP);
    assert.equal(await checkDump(manifest), null);
  });

  it('what is not a raw save image is stored as it is: an image libvirt compressed itself, a file that is none', async () => {
    for (const image of [saveImage(3), randomBytes(100_000)]) {
      const { manifest } = await archive(image, 'gzip');
      assert.equal(manifest.compression, null);
      assert.equal(manifest.raw, undefined);
      assert.ok(readFileSync(manifest.memoryFile).equals(image));
    }
  });

  it('VIRTSNAP_COMPRESS=no: stored as libvirt wrote it', async () => {
    const image = saveImage();
    const { manifest } = await archive(image, null);
    assert.equal(manifest.compression, null);
    assert.ok(readFileSync(manifest.memoryFile).equals(image));
    assert.equal(await checkDump(manifest), null);
  });

  it('the XML of a compressed image is rewritten in place as before (restore --as)', async () => {
    const { manifest } = await archive(saveImage(), 'gzip');
    const other = XML.replace('<name>web</name>', '<name>web-clone</name>');
    rewriteSaveImageXml(manifest.memoryFile, other);
    assert.equal(readSaveImageXml(manifest.memoryFile).xml, other);
    assert.equal(readSaveImageHeader(manifest.memoryFile)!.format, FORMAT_GZIP);
  });
});

describe('check and verify of compressed dumps', () => {
  it('a sound compressed dump passes both', async () => {
    const { manifest } = await archive(saveImage(), 'gzip');
    assert.equal(checkStructure(manifest), null);
    assert.equal(await checkDump(manifest), null);
  });

  it('one byte changed inside the gzip stream: check cannot see it, verify fails on the sha256 and names the stream', async () => {
    const { manifest } = await archive(saveImage(), 'gzip');
    flipByte(manifest.memoryFile, streamOffset({ dataLength: DATA_LEN }) + 5000);
    assert.equal(checkStructure(manifest), null);
    assert.match((await checkDump(manifest))!, /^sha256 [0-9a-f]{64} differs from the manifest's [0-9a-f]{64}: its gzip stream does not decompress \(/);
  });

  it('a stream damaged before it was hashed (the sha256 fits): verify still fails on the stream', async () => {
    const { manifest } = await archive(saveImage(), 'gzip');
    flipByte(manifest.memoryFile, streamOffset({ dataLength: DATA_LEN }) + 5000);
    const stored = { ...manifest, sha256: sha256(readFileSync(manifest.memoryFile)) };
    assert.match((await checkDump(stored))!, /^stored damaged: its gzip stream does not decompress \(/);
  });

  it('one byte changed in the gzip trailer (CRC): verify fails', async () => {
    const { manifest } = await archive(saveImage(), 'gzip');
    flipByte(manifest.memoryFile, manifest.bytes - 6);
    assert.match((await checkDump(manifest))!, /^sha256 .*gzip stream does not decompress/);
  });

  it('no gzip stream where the header says gzip: check fails', async () => {
    const { manifest } = await archive(saveImage(), 'gzip');
    flipByte(manifest.memoryFile, streamOffset({ dataLength: DATA_LEN }));
    assert.match(checkStructure(manifest)!, /no gzip stream starts at byte 2140/);
  });

  it("a trailer that does not match the manifest's raw size (another dump's file): check fails", async () => {
    const { manifest } = await archive(saveImage(), 'gzip');
    const other = { ...manifest, raw: { ...manifest.raw!, bytes: manifest.raw!.bytes + 4096 } };
    assert.match(checkStructure(other)!, /gzip trailer says \d+ bytes/);
  });

  it('cut short: check fails on the size', async () => {
    const { manifest } = await archive(saveImage(), 'gzip');
    writeFileSync(manifest.memoryFile, readFileSync(manifest.memoryFile).subarray(0, manifest.bytes - 100));
    assert.match(checkStructure(manifest)!, /^size \d+ differs/);
  });

  it('the manifest says gzip, the header raw: check fails', async () => {
    const { manifest } = await archive(saveImage(), 'gzip');
    const data = readFileSync(manifest.memoryFile);
    data.writeUInt32LE(0, FORMAT_OFFSET);
    writeFileSync(manifest.memoryFile, data);
    assert.match(checkStructure(manifest)!, /header says format raw, the manifest says gzip/);
  });

  it('decompressed, not what libvirt wrote (the raw sha256 differs): verify fails', async () => {
    const { manifest } = await archive(saveImage(), 'gzip');
    const other = { ...manifest, raw: { ...manifest.raw!, sha256: '0'.repeat(64) } };
    assert.match((await checkDump(other))!, /^decompressed, it is not the image libvirt wrote/);
  });

  it('a manifest from before compression (no compression, no raw) is a raw dump and verifies', async () => {
    const image = saveImage();
    const { manifest } = await archive(image, null);
    const file = manifest.memoryFile.replace(/\.save$/, '.json');
    const old = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    delete old.compression;
    delete old.raw;
    writeFileSync(file, JSON.stringify(old));
    const [again] = listDumps(path.join(dir, 'archive'));
    assert.equal(again!.manifest.compression, null);
    assert.equal(await checkDump(again!.manifest), null);
  });
});

describe('a dump that does not compress is stored raw', () => {
  it('random RAM (a sample from the middle of the stream) is not worth gzip; zeros and text are', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-worth-'));
    try {
      const random = path.join(dir, 'random');
      writeFileSync(random, Buffer.concat([Buffer.alloc(4096), randomBytes(12 * 1024 * 1024)]));
      assert.equal(worthCompressing(random, 4096), false);
      const zeros = path.join(dir, 'zeros');
      writeFileSync(zeros, Buffer.alloc(12 * 1024 * 1024));
      assert.equal(worthCompressing(zeros, 4096), true);
      const small = path.join(dir, 'small');
      writeFileSync(small, randomBytes(8192));
      assert.equal(worthCompressing(small, 4096), true, 'below the sample size: always tried');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('zstd (VIRTSNAP_COMPRESS=zstd or auto, libvirt 10.4 and later)', () => {
  it('header and XML as they were (format word 5), the stream through `zstd -1`; verify decompresses it back to the raw image', async () => {
    const image = saveImage();
    const { manifest } = await archive(image, 'zstd');
    assert.equal(manifest.compression, 'zstd');
    assert.equal(readSaveImageHeader(manifest.memoryFile)!.format, FORMAT_ZSTD);
    assert.ok(manifest.bytes < image.length / 2, `${manifest.bytes} of ${image.length}`);
    assert.deepEqual(manifest.raw, { sha256: sha256(image), bytes: image.length });
    assert.equal(checkStructure(manifest), null);
    assert.equal(await checkDump(manifest), null);
    const hashes = await hashStored(manifest.memoryFile, readSaveImageHeader(manifest.memoryFile));
    assert.equal(hashes.raw?.sha256, sha256(image));
  });

  it('one byte changed inside the zstd stream: verify fails and names it; no zstd frame where the header says zstd: check fails', async () => {
    const { manifest } = await archive(saveImage(), 'zstd');
    flipByte(manifest.memoryFile, streamOffset({ dataLength: DATA_LEN }) + 5000);
    const stored = { ...manifest, sha256: sha256(readFileSync(manifest.memoryFile)) };
    assert.match((await checkDump(stored))!, /^stored damaged: its zstd stream does not decompress \(/);
    flipByte(manifest.memoryFile, streamOffset({ dataLength: DATA_LEN }));
    assert.match(checkStructure(manifest)!, /no zstd frame starts at byte 2140/);
  });
});
