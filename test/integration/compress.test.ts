// Compressed RAM dumps on the bed (VIRTSNAP_COMPRESS): a real freeze/thaw
// stores a gzip save image that is at most half the raw dump, verifies, fails
// verify with one byte of its stream changed, restores as a clone with
// `virtsnap restore` and with plain `virsh restore` (libvirt decompresses it
// itself), and turns back into the raw image with the commands of
// doc/operations.md "Compressed RAM dumps".
// A raw dump (VIRTSNAP_COMPRESS=no) still verifies and restores.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { snapshotNames, type Manifest } from '../../lib/manifest.js';
import { FORMAT_GZIP, FORMAT_RAW, FORMAT_ZSTD, readSaveImageHeader, streamOffset } from '../../lib/libvirt/save-image.js';
import { assertWhole, bed, consoleMark, datasetExists, destroyDataset, Guest, lastTick, removeDomains, restoreOnClone, sh, wantedStack, watchDomain, zfsRetry, type Bed } from '../helpers/bed.js';
import { Setup, virtsnap } from '../helpers/virtsnap.js';

/** Flips one byte of `file` at `offset` (flipping it again puts it back). */
function flip(file: string, offset: number): void {
  const fd = openSync(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, offset);
    b[0] = b[0]! ^ 0xff;
    writeSync(fd, b, 0, 1, offset);
  } finally {
    closeSync(fd);
  }
}

describe('compressed RAM dumps (VIRTSNAP_COMPRESS)', () => {
  let b: Bed;
  let setup: Setup;
  let guest: Guest;
  const dataset = () => `${b.vmDataset}/c-gz`;
  const clone = () => `${b.vmDataset}/c-gz-clone`;
  const snapshot = async (name: string): Promise<Manifest> => {
    const out = await virtsnap(setup, ['snapshot', dataset(), '--name', name, '--json']);
    assert.equal(out.code, 0, out.stderr);
    const [m] = JSON.parse(out.stdout) as Manifest[];
    assert.ok(m !== undefined, out.stdout);
    assert.equal(await guest.state(), 'running');
    return (await setup.dumps()).find((d) => d.manifest.id === m.id)!.manifest;
  };

  before(async () => {
    b = await bed();
    await removeDomains('vsbed-c-gz', 'vsbed-c-gz-clone');
    await destroyDataset(clone());
    await destroyDataset(dataset());
    setup = await Setup.create('c-compress', { VIRTSNAP_COMPRESS: 'gzip' });
    guest = await Guest.create({ name: 'vsbed-c-gz', dataset: dataset() });
    await guest.start();
  });
  after(async () => {
    await removeDomains('vsbed-c-gz-clone');
    await guest?.remove();
    await destroyDataset(clone(), 180);
    await destroyDataset(dataset(), 180);
  });

  let gz: Manifest;
  let counterAtSnapshot = -1;

  it('post stores a gzip save image of at most half the raw bytes, and verify passes', async (t) => {
    counterAtSnapshot = lastTick(guest.consoleSince(0));
    gz = await snapshot('gz1');
    assert.equal(gz.compression, 'gzip');
    assert.ok(gz.raw !== undefined);
    const ratio = gz.bytes / gz.raw.bytes;
    t.diagnostic(`96 MiB guest: raw ${gz.raw.bytes} bytes, stored ${gz.bytes} (${ratio.toFixed(3)}), pause ${gz.times.pauseMs} ms, save ${gz.times.saveMs} ms, commit ${gz.times.commitMs} ms`);
    assert.ok(ratio <= 0.5, `stored ${gz.bytes} of ${gz.raw.bytes}`);
    assert.equal(readSaveImageHeader(gz.memoryFile)!.format, FORMAT_GZIP);
    const verify = await virtsnap(setup, ['verify']);
    assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  });

  it('virtsnap restore --clone --as: the clone runs from the compressed dump beside the original, oracle silent', async () => {
    const mark = await consoleMark('vsbed-c-gz-clone');
    const out = await virtsnap(setup, ['restore', `${dataset()}@gz1`, '--clone', clone(), '--as', 'vsbed-c-gz-clone']);
    assert.equal(out.code, 0, out.stderr);
    const w = await watchDomain('vsbed-c-gz-clone', mark);
    assertWhole(w, 'the clone from the compressed dump');
    assert.ok(Number(/TICK (\d+)/.exec(w.text)![1]) >= counterAtSnapshot);
    assert.equal(await guest.state(), 'running', 'the original is untouched');
    await removeDomains('vsbed-c-gz-clone');
    await destroyDataset(clone(), 180);
  });

  it("the documented commands turn it back into the raw image libvirt wrote (the manifest's raw sha256)", async () => {
    const out = path.join(setup.root, 'raw.save');
    // As in doc/operations.md "Compressed RAM dumps", word for word.
    const script = `
      f=${JSON.stringify(gz.memoryFile)}; out=${JSON.stringify(out)}
      off=$(( 92 + $(od -A n -t u4 -j 20 -N 4 "$f") ))
      { head -c "$off" "$f"; tail -c +$((off + 1)) "$f" | gzip -dc; } > "$out"
      printf '\\000\\000\\000\\000' | dd of="$out" bs=1 seek=28 conv=notrunc status=none
      sha256sum "$out"`;
    const sum = (await sh('bash', ['-c', script])).split(' ')[0];
    assert.equal(sum, gz.raw!.sha256);
    assert.equal(readSaveImageHeader(out)!.format, FORMAT_RAW);
    rmSync(out);
  });

  it('one byte changed inside the gzip stream: verify fails naming the stream; put back, it passes', async () => {
    const at = streamOffset(readSaveImageHeader(gz.memoryFile)!) + Math.floor((gz.bytes - streamOffset(readSaveImageHeader(gz.memoryFile)!)) / 2);
    flip(gz.memoryFile, at);
    try {
      const bad = await virtsnap(setup, ['verify']);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stdout, /^BAD .*sha256 .*: its gzip stream does not decompress/m);
    } finally {
      flip(gz.memoryFile, at);
    }
    assert.equal((await virtsnap(setup, ['verify'])).code, 0);
  });

  it('VIRTSNAP_COMPRESS=no: the raw dump is stored as libvirt wrote it and verifies', async () => {
    setup.writeEnv({ VIRTSNAP_COMPRESS: 'no' });
    const raw = await snapshot('raw1');
    assert.equal(raw.compression, null);
    assert.equal(raw.raw, undefined);
    assert.equal(readSaveImageHeader(raw.memoryFile)!.format, FORMAT_RAW);
    assert.ok(raw.bytes > gz.bytes * 2, `raw ${raw.bytes}, compressed ${gz.bytes}`);
    assert.equal(createHash('sha256').update(readFileSync(raw.memoryFile)).digest('hex'), raw.sha256);
    const verify = await virtsnap(setup, ['verify']);
    assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  });

  it('plain `virsh restore` of the compressed dump onto a clone: libvirt decompresses it, oracle silent', async () => {
    assertWhole(await restoreOnClone(guest, gz.memoryFile, snapshotNames(gz)[0]!), 'the compressed dump through plain virsh restore');
  });
});

// Debian 13's libvirt (11.3) reads zstd save images: VIRTSNAP_COMPRESS's
// default (auto) stores zstd there, 4x gzip -1's speed for the same size.
if (wantedStack() === 'trixie') {
  describe('zstd save images where libvirt reads them (VIRTSNAP_COMPRESS=auto on libvirt 10.4 and later)', () => {
    let b: Bed;
    let setup: Setup;
    let guest: Guest;
    const dataset = () => `${b.vmDataset}/c-zst`;

    before(async () => {
      b = await bed();
      await removeDomains('vsbed-c-zst');
      await destroyDataset(dataset());
      setup = await Setup.create('c-zstd');
      guest = await Guest.create({ name: 'vsbed-c-zst', dataset: dataset() });
      await guest.start();
    });
    after(async () => {
      await guest?.remove();
      await destroyDataset(dataset(), 180);
    });

    it('the archiver stores a zstd save image; doctor says so; verify decompresses it; plain `virsh restore` reads it, oracle silent', async () => {
      const doctor = await virtsnap(setup, ['doctor']);
      assert.match(doctor.stdout, /^OK +compression: dumps are stored zstd-compressed \(this libvirt restores zstd save images\)/m);
      const out = await virtsnap(setup, ['snapshot', dataset(), '--name', 'z1', '--json']);
      assert.equal(out.code, 0, out.stderr);
      const [m] = JSON.parse(out.stdout) as Manifest[];
      const dump = (await setup.dumps()).find((d) => d.manifest.id === m!.id)!.manifest;
      assert.equal(dump.compression, 'zstd');
      assert.equal(readSaveImageHeader(dump.memoryFile)!.format, FORMAT_ZSTD);
      assert.ok(dump.bytes <= dump.raw!.bytes / 2, `${dump.bytes} of ${dump.raw!.bytes}`);
      const verify = await virtsnap(setup, ['verify']);
      assert.equal(verify.code, 0, verify.stdout + verify.stderr);
      assertWhole(await restoreOnClone(guest, dump.memoryFile, snapshotNames(dump)[0]!), 'a zstd dump through plain virsh restore');
    });
  });
}
