import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { archiveDump, domainDir, listDumps, moveAndHash, scanArchive, sha256File, type ArchiveInput } from '../../lib/archive.js';
import { snapshotNames } from '../../lib/manifest.js';
import { legacyRef } from '../../lib/snapshot-id.js';
import { VirtsnapError } from '../../lib/errors.js';

let dir: string;

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-archive-'));
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function mode(p: string): number {
  return statSync(p).mode & 0o777;
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A fake memory file and meta dir in an "overlay dir", world-readable on purpose. */
function stage(name: string, data: Buffer): { memoryFile: string; metaDir: string } {
  const overlay = path.join(dir, 'overlay');
  mkdirSync(overlay, { recursive: true });
  const memoryFile = path.join(overlay, `${name}.save`);
  writeFileSync(memoryFile, data, { mode: 0o644 });
  chmodSync(memoryFile, 0o644);
  const metaDir = path.join(overlay, `${name}.meta`);
  mkdirSync(path.join(metaDir, 'swtpm'), { recursive: true });
  writeFileSync(path.join(metaDir, 'domain.xml'), '<domain><name>web</name></domain>', { mode: 0o600 });
  writeFileSync(path.join(metaDir, 'swtpm', 'tpm2-00.permall'), 'tpm state', { mode: 0o600 });
  return { memoryFile, metaDir };
}

function input(id: string, memoryFile: string, metaDir: string | null, startedAt = '2024-01-02T03:04:05.000Z'): ArchiveInput {
  return {
    id,
    domain: { name: 'web', uuid: '4aa4739f-40fb-4dd3-b355-8e408c5e68f7' },
    snapshots: ['tank/vm@autosnap_x_monthly', 'tank/vm@autosnap_x_daily'].map(legacyRef),
    types: ['monthly', 'daily'],
    memoryFile,
    metaDir,
    disks: [{ target: 'vda', source: '/tank/vm/a.qcow2', dataset: 'tank/vm', format: 'qcow2', bytes: null }],
    startedAt,
    frozenAt: '2024-01-02T03:04:06.000Z',
    job: { elapsedMs: 1500, downtimeMs: 40, memoryBytes: 1024 },
    libvirtUri: 'qemu:///system',
    hostname: 'host1',
  };
}

describe('archiveDump', () => {
  it('moves the memory file into ARCHIVE/<domain>/<id>.save with a correct manifest', async () => {
    const data = randomBytes(300_000);
    const { memoryFile, metaDir } = stage('web.tag', data);
    const archive = path.join(dir, 'archive');
    const id = '20240102T030405.000Z-4aa4739f';
    const { manifest, manifestFile } = await archiveDump(archive, input(id, memoryFile, metaDir));

    const save = path.join(archive, 'web', `${id}.save`);
    assert.equal(manifestFile, path.join(archive, 'web', `${id}.json`));
    assert.equal(existsSync(memoryFile), false, 'source is moved, not copied');
    assert.ok(readFileSync(save).equals(data));
    assert.equal(manifest.memoryFile, save);
    assert.equal(manifest.bytes, data.length);
    assert.equal(manifest.sha256, sha256(data));
    assert.equal(manifest.format, 'virtsnap-dump/2');
    assert.equal(manifest.id, id);
    assert.deepEqual(snapshotNames(manifest), ['tank/vm@autosnap_x_monthly', 'tank/vm@autosnap_x_daily']);
    assert.equal(manifest.times.pauseMs, 40);
    assert.equal(manifest.times.saveMs, 1500);
    assert.equal(manifest.times.startedAt, '2024-01-02T03:04:05.000Z');
    assert.ok(!Number.isNaN(Date.parse(manifest.times.archivedAt)));

    // the manifest on disk is the one returned
    assert.deepEqual(JSON.parse(readFileSync(manifestFile, 'utf8')), manifest);

    // modes: 0600 files, 0700 dirs
    assert.equal(mode(archive), 0o700);
    assert.equal(mode(path.join(archive, 'web')), 0o700);
    assert.equal(mode(save), 0o600);
    assert.equal(mode(manifestFile), 0o600);

    // meta dir copied into the archive, staging dir gone
    const meta = path.join(archive, 'web', `${id}.meta`);
    assert.equal(manifest.metaDir, meta);
    assert.equal(mode(meta), 0o700);
    assert.equal(readFileSync(path.join(meta, 'domain.xml'), 'utf8'), '<domain><name>web</name></domain>');
    assert.equal(readFileSync(path.join(meta, 'swtpm', 'tpm2-00.permall'), 'utf8'), 'tpm state');
    assert.equal(mode(path.join(meta, 'domain.xml')), 0o600);
    assert.equal(existsSync(metaDir), false);

    // nothing else (no temp files) in the domain dir
    assert.deepEqual(readdirSync(path.join(archive, 'web')).sort(), [`${id}.json`, `${id}.meta`, `${id}.save`]);
  });

  it('no meta dir (null or missing) -> manifest metaDir null', async () => {
    const data = Buffer.from('ram');
    const { memoryFile } = stage('a', data);
    const archive = path.join(dir, 'archive');
    const r1 = await archiveDump(archive, input('id1', memoryFile, null));
    assert.equal(r1.manifest.metaDir, null);
    const { memoryFile: m2 } = stage('b', data);
    const r2 = await archiveDump(archive, input('id2', m2, path.join(dir, 'no-such-meta')));
    assert.equal(r2.manifest.metaDir, null);
    assert.equal(r2.manifest.sha256, sha256(data));
  });

  it('a domain name with / stays inside the archive', async () => {
    const { memoryFile } = stage('x', Buffer.from('x'));
    const archive = path.join(dir, 'archive');
    const inp = { ...input('id', memoryFile, null), domain: { name: '../evil/name', uuid: 'u' } };
    const { manifestFile } = await archiveDump(archive, inp);
    assert.equal(path.dirname(path.dirname(manifestFile)), archive);
    assert.equal(domainDir(archive, '../evil/name'), path.dirname(manifestFile));
  });
});

describe('moveAndHash', () => {
  it('same filesystem: renames, hashes, makes the file 0600', async () => {
    const data = randomBytes(70_000);
    const src = path.join(dir, 'src.save');
    writeFileSync(src, data, { mode: 0o644 });
    chmodSync(src, 0o644);
    const dest = path.join(dir, 'dest.save');
    const r = await moveAndHash(src, dest);
    assert.deepEqual(r, { sha256: sha256(data), bytes: data.length });
    assert.equal(existsSync(src), false);
    assert.ok(readFileSync(dest).equals(data));
    assert.equal(mode(dest), 0o600);
  });

  it('across filesystems (/dev/shm -> tmpdir): copies, hashes, removes the source', async (t) => {
    let shm: string;
    try {
      shm = mkdtempSync('/dev/shm/virtsnap-test-');
    } catch {
      t.skip('no /dev/shm');
      return;
    }
    try {
      if (statSync(shm).dev === statSync(dir).dev) {
        t.skip('/dev/shm is on the same filesystem as the temp dir');
        return;
      }
      const data = randomBytes(200_000);
      const src = path.join(shm, 'src.save');
      writeFileSync(src, data);
      const dest = path.join(dir, 'dest.save');
      const r = await moveAndHash(src, dest);
      assert.deepEqual(r, { sha256: sha256(data), bytes: data.length });
      assert.equal(existsSync(src), false);
      assert.equal(existsSync(`${dest}.part`), false);
      assert.ok(readFileSync(dest).equals(data));
      assert.equal(mode(dest), 0o600);
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it('sha256File of an empty file', async () => {
    const f = path.join(dir, 'empty');
    writeFileSync(f, '');
    assert.deepEqual(await sha256File(f), { sha256: sha256(Buffer.alloc(0)), bytes: 0 });
  });
});

describe('listDumps', () => {
  it('a missing archive dir -> []', () => {
    assert.deepEqual(listDumps(path.join(dir, 'nope')), []);
  });

  it('returns archived dumps, oldest first, across domains', async () => {
    const archive = path.join(dir, 'archive');
    const a = stage('a', Buffer.from('a'));
    const b = stage('b', Buffer.from('b'));
    await archiveDump(archive, input('newer', a.memoryFile, null, '2024-02-01T00:00:00.000Z'));
    await archiveDump(archive, { ...input('older', b.memoryFile, null, '2024-01-01T00:00:00.000Z'), domain: { name: 'zz', uuid: 'u2' } });
    // files that are not manifests are ignored
    writeFileSync(path.join(archive, 'stray-file'), 'x');
    writeFileSync(path.join(archive, 'web', '.hidden.json'), 'not json');
    const dumps = listDumps(archive);
    assert.deepEqual(
      dumps.map((d) => d.manifest.id),
      ['older', 'newer'],
    );
    assert.equal(dumps[1]!.manifestFile, path.join(archive, 'web', 'newer.json'));
    assert.equal(dumps[1]!.manifest.sha256, sha256(Buffer.from('a')));
  });

  it('a non-JSON manifest makes listDumps throw a VirtsnapError naming the file', async () => {
    const archive = path.join(dir, 'archive');
    const a = stage('a', Buffer.from('a'));
    await archiveDump(archive, input('good', a.memoryFile, null));
    const bad = path.join(archive, 'web', 'broken.json');
    writeFileSync(bad, '{"format": "virtsnap-dump/1", trunc');
    assert.throws(() => listDumps(archive), (err: unknown) => {
      assert.ok(err instanceof VirtsnapError);
      assert.ok(err.message.includes(bad), err.message);
      return true;
    });
  });

  it("another tool's JSON is not a manifest: listed as foreign, never an error or a reason to delete", () => {
    const archive = path.join(dir, 'archive');
    mkdirSync(path.join(archive, 'web'), { recursive: true });
    const other = path.join(archive, 'web', 'other.json');
    writeFileSync(other, '{"hello": "world"}');
    assert.deepEqual(listDumps(archive), []);
    assert.deepEqual(scanArchive(archive).foreign.map((f) => f.path), [other]);
  });

  it('a manifest of ours that is damaged (our naming, or our format in it) is broken: kept, and an error for list', () => {
    const archive = path.join(dir, 'archive');
    mkdirSync(path.join(archive, 'web'), { recursive: true });
    const ours = path.join(archive, 'web', '20240101T000000.000Z-aaaaaaaa.json');
    writeFileSync(ours, '{"hello": "world"}');
    assert.deepEqual(scanArchive(archive).broken.map((b) => b.file), [ours]);
    assert.throws(() => listDumps(archive), (err: unknown) => err instanceof VirtsnapError && err.message.includes(ours));
  });
});
