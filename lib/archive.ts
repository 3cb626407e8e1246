// The archive dir: `ARCHIVE_DIR/<domain>/<id>.save` (a libvirt save image,
// restorable with `virsh restore`, its stream gzip-compressed unless
// VIRTSNAP_COMPRESS=no), `<id>.json` (its manifest, lib/manifest.ts) and
// `<id>.meta/` (domain XML, NVRAM, TPM state): how dumps are hashed,
// compressed, put in place, found and deleted there. The dir store
// (lib/stores/dir.ts) keeps dumps here; the restic store its manifests.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, lstatSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, chmodSync, fsyncSync, openSync, closeSync, cpSync, rmSync, type Stats } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { createGunzip, createGzip, gzipSync } from 'node:zlib';
import path from 'node:path';
import { type CommandError, VirtsnapError } from './errors.js';
import { FORMAT_GZIP, FORMAT_RAW, FORMAT_ZSTD, readRegion, readSaveImageHeader, streamOffset, withFormat, type SaveImageHeader } from './libvirt/save-image.js';
import { filter, type Filter } from './exec.js';
import { assertOwnDir, ensureDirBelow, exists, fileSafe, fsyncDir, openExclusive, privacyProblem, PRIVATE_FILE, removeIfExists, writeJsonAtomic } from './fsutil.js';
import { withLock } from './lock.js';
import { buildManifest, DUMP_ID, readManifest, type ArchivedDump, type Compression, type DumpFacts, type Manifest, type ResticStore } from './manifest.js';
import type { SnapshotRef } from './snapshot-id.js';

export function domainDir(archiveDir: string, domainName: string): string {
  return path.join(archiveDir, fileSafe(domainName));
}

/**
 * gzip level 1. Measured on the bed (96 MiB guest, 2 cores, TCG): level 1
 * stores about 0.36 of the raw bytes at ~50 MB/s, level 6 about 0.34 at
 * half the speed. Compression is most of a post hook's time (the sanoid run
 * waits for it, and the dump waits in the overlay dir), so speed is worth
 * more than those 2 points.
 */
const GZIP_LEVEL = 1;

class HashingCounter extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  /** `seed`: bytes hashed before the stream's own (not counted). */
  constructor(seed?: Buffer) {
    super();
    if (seed !== undefined) this.hash.update(seed);
  }
  update(chunk: Buffer): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null, data?: Buffer) => void): void {
    this.update(chunk);
    done(null, chunk);
  }
}

async function drain(source: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of source) {
    // nothing to keep
  }
}

export async function sha256File(file: string): Promise<{ sha256: string; bytes: number }> {
  const counter = new HashingCounter();
  await pipeline(createReadStream(file), counter, drain);
  return { sha256: counter.hash.digest('hex'), bytes: counter.bytes };
}

/** The stored bytes of a dump, hashed, and for a gzip image also the image as libvirt wrote it. */
export interface StoredHashes {
  sha256: string;
  bytes: number;
  /** Only for a gzip image: its stream decompressed behind header and XML with the format word set back to raw. */
  raw?: { sha256: string; bytes: number };
}

/** How long a stream of `bytes` through zstd may take: an hour, and a second for each MiB (a slow archive on a busy host). */
function zstdTimeoutMs(bytes: number): number {
  return 3600_000 + Math.ceil(bytes / 2 ** 20) * 1000;
}

/**
 * Waits for the pipelines into and out of a filter (`pipes[0]` feeds it)
 * and for the filter itself. When the filter fails (zstd on a damaged
 * stream exits early), its own error is the one thrown, not the EPIPE of
 * the pipeline feeding it.
 */
async function throughFilter(f: Filter, pipes: [Promise<unknown>, ...Promise<unknown>[]]): Promise<void> {
  const [done, ...rest] = await Promise.allSettled([f.done, ...pipes]);
  const failed = rest.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as NodeJS.ErrnoException);
  const ownError = (e: NodeJS.ErrnoException) => e.code !== 'EPIPE' && e.code !== 'ERR_STREAM_PREMATURE_CLOSE';
  // Reading our own file failed (EIO): zstd only saw its input end early, and would call the stream damaged.
  const feed = rest[0]!;
  if (feed.status === 'rejected' && ownError(feed.reason as NodeJS.ErrnoException)) throw feed.reason;
  // A full or failing disk under our own end (ENOSPC, EIO) kills zstd by SIGPIPE: that disk error is the news, not zstd's death.
  const ours = failed.find(ownError);
  if (ours !== undefined && (done!.status === 'fulfilled' || (done!.reason as CommandError).status < 0)) throw ours;
  if (done!.status === 'rejected') throw done!.reason;
  if (failed[0] !== undefined) throw failed[0];
}

/**
 * Hashes a memory file in one read. A compressed image's stream is
 * decompressed on the way (zlib checks gzip's CRC and length, zstd its own
 * checksum), so a damaged stream throws here even where no sha256 was
 * recorded: a zlib error has a Z_* code, zstd's a CommandError.
 */
export async function hashStored(file: string, header: SaveImageHeader | null): Promise<StoredHashes> {
  if (header === null || (header.format !== FORMAT_GZIP && header.format !== FORMAT_ZSTD)) return sha256File(file);
  const offset = streamOffset(header);
  const stored = new HashingCounter();
  let raw: HashingCounter | null = null;
  const splitHead = async function* (source: AsyncIterable<Buffer>) {
    // The head (header and XML) is hashed as it was before compression, then left out.
    const head: Buffer[] = [];
    let seen = 0;
    for await (const chunk of source) {
      if (seen >= offset) {
        yield chunk;
        continue;
      }
      const take = Math.min(chunk.length, offset - seen);
      head.push(chunk.subarray(0, take));
      seen += take;
      if (seen === offset) raw = new HashingCounter(withFormat(Buffer.concat(head), header, FORMAT_RAW));
      if (take < chunk.length) yield chunk.subarray(take);
    }
  };
  const intoRaw = async function* (source: AsyncIterable<Buffer>) {
    for await (const chunk of source) raw!.update(chunk);
  };
  if (header.format === FORMAT_GZIP) {
    await pipeline(createReadStream(file), stored, splitHead, createGunzip(), intoRaw);
  } else {
    const z = await filter('zstd', ['-d', '-q', '-c'], { timeoutMs: zstdTimeoutMs(statSync(file).size) });
    await throughFilter(z, [pipeline(createReadStream(file), stored, splitHead, z.stdin), pipeline(z.stdout, intoRaw)]);
  }
  const r = raw as HashingCounter | null;
  return {
    sha256: stored.hash.digest('hex'),
    bytes: stored.bytes,
    ...(r !== null ? { raw: { sha256: r.hash.digest('hex'), bytes: offset + r.bytes } } : {}),
  };
}

function fsyncFile(file: string): void {
  const fd = openSync(file, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** A file hashed and ready to take its place in the archive with one rename. */
export interface Staged {
  /** What is stored: compressed or not. */
  sha256: string;
  bytes: number;
  compression: Compression | null;
  /** The source as it was, when it was compressed. */
  raw?: { sha256: string; bytes: number };
  /**
   * The copy that `commit` puts in place, read back: null when it holds what
   * was hashed on the way in. Before the source goes, its copy is checked.
   */
  check(): Promise<string | null>;
  /** Puts the file at its destination and removes the source. */
  commit(): void;
  /** Where the bytes went instead of the archive dir (a restic snapshot): `commit` then only removes the source. */
  store?: ResticStore;
}

/** Where `dest.part` becomes `dest` and only then the source goes: a crash keeps the source. */
function commitPart(src: string, tmp: string, dest: string): void {
  renameSync(tmp, dest);
  fsyncDir(path.dirname(dest));
  unlinkSync(src);
}

/**
 * The head (header and XML) of a save image that can be gzip-compressed:
 * complete, its stream raw. Null for anything else (an image libvirt
 * compressed itself, one cut short, not a save image): that is stored as it is.
 */
function compressibleHead(src: string): { header: SaveImageHeader; head: Buffer } | null {
  const header = readSaveImageHeader(src);
  if (header === null || !header.complete || header.version !== 2 || header.format !== FORMAT_RAW) return null;
  const head = readRegion(src, 0, streamOffset(header));
  if (head.length !== streamOffset(header) || !worthCompressing(src, head.length)) return null;
  return { header, head };
}

/** Sampled from the middle of the stream: a guest's page cache and free pages are what compress. */
const SAMPLE_BYTES = 4 * 1024 * 1024;
/**
 * Above this, gzip is not worth its time: a guest whose RAM holds random or
 * already compressed data (measured on the bed: 320 MiB of random data in a
 * 512 MiB guest stores at 0.86 and adds about 10 s to post) is kept raw.
 */
const MAX_WORTHWHILE_RATIO = 0.8;

/** Whether a sample of the stream compresses well enough to pay for compressing all of it. */
export function worthCompressing(src: string, streamStart: number): boolean {
  const size = statSync(src).size - streamStart;
  if (size <= SAMPLE_BYTES) return true;
  const sample = readRegion(src, streamStart + Math.floor((size - SAMPLE_BYTES) / 2), SAMPLE_BYTES);
  return gzipSync(sample, { level: GZIP_LEVEL }).length <= MAX_WORTHWHILE_RATIO * sample.length;
}

/**
 * Writes `src` into `dest.part` as the save image libvirt would have written
 * with save_image_format = "gzip": header (format word 1) and XML as they
 * are, then the stream through gzip. One read of the source: the stored
 * bytes and the source are hashed on the way. zlib runs on libuv's thread
 * pool, so the event loop (and other dumps) go on meanwhile.
 */
async function stageGzip(src: string, dest: string, { header, head }: { header: SaveImageHeader; head: Buffer }): Promise<Staged> {
  const tmp = `${dest}.part`;
  const raw = new HashingCounter(head);
  const stored = new HashingCounter();
  const fd = openExclusive(tmp); // never through a symlink planted at the temp name (O_EXCL|O_NOFOLLOW)
  await writePart(tmp, () =>
    pipeline(
      createReadStream(src, { start: head.length }),
      raw,
      createGzip({ level: GZIP_LEVEL }),
      async function* (source: AsyncIterable<Buffer>) {
        yield withFormat(head, header, FORMAT_GZIP);
        yield* source;
      },
      stored,
      createWriteStream(tmp, { fd }),
    ),
  );
  return stagedPart('gzip', { src, tmp, dest, head, raw, stored });
}

/** Runs `write` into `tmp` and fsyncs it; on failure the half-written copy goes (a full archive should not stay full of it until gc; the source is untouched). */
async function writePart(tmp: string, write: () => Promise<unknown>): Promise<void> {
  try {
    await write();
    fsyncFile(tmp);
  } catch (err) {
    removeIfExists(tmp);
    throw err;
  }
}

/** A written `tmp` as Staged: what was hashed on the way, its read-back check and its commit. */
function stagedPart(compression: 'gzip' | 'zstd', p: { src: string; tmp: string; dest: string; head: Buffer; raw: HashingCounter; stored: HashingCounter }): Staged {
  const sha256 = p.stored.hash.digest('hex');
  const bytes = p.stored.bytes;
  return {
    sha256,
    bytes,
    compression,
    raw: { sha256: p.raw.hash.digest('hex'), bytes: p.head.length + p.raw.bytes },
    check: () => partProblem(p.tmp, sha256, bytes),
    commit: () => commitPart(p.src, p.tmp, p.dest),
  };
}

/**
 * As stageGzip, with the zstd program (`zstd -1`; Node 20 has no zstd) and
 * format word 5: what libvirt 10.4 and later write with save_image_format =
 * "zstd", and read back by running zstd themselves.
 */
async function stageZstd(src: string, dest: string, { header, head }: { header: SaveImageHeader; head: Buffer }): Promise<Staged> {
  const tmp = `${dest}.part`;
  const raw = new HashingCounter(head);
  const stored = new HashingCounter();
  const out = createWriteStream(tmp, { fd: openExclusive(tmp) });
  await writePart(tmp, async () => {
    const z = await filter('zstd', ['-1', '-q', '-c'], { timeoutMs: zstdTimeoutMs(statSync(src).size) }).catch((err: unknown) => {
      out.destroy(); // its fd, which no pipeline will close now (a retrying archiver would pile them up)
      throw err;
    });
    await throughFilter(z, [
      pipeline(createReadStream(src, { start: head.length }), raw, z.stdin),
      pipeline(
        z.stdout,
        async function* (source: AsyncIterable<Buffer>) {
          yield withFormat(head, header, FORMAT_ZSTD);
          yield* source;
        },
        stored,
        out,
      ),
    ]);
  });
  return stagedPart('zstd', { src, tmp, dest, head, raw, stored });
}

/** What is wrong with a written copy (`<dest>.part`), read back, against what was hashed as it was written. */
async function partProblem(tmp: string, sha256: string, bytes: number): Promise<string | null> {
  const back = await sha256File(tmp);
  return back.sha256 === sha256 && back.bytes === bytes ? null : `the stored copy ${tmp} reads back as ${back.bytes} bytes, sha256 ${back.sha256}, not the ${bytes} bytes written`;
}

/**
 * Hashes `src` and gets it ready to become `dest`. Compressed (gzip or
 * zstd, a raw save image): one streaming pass into `dest.part` (stageGzip,
 * stageZstd).
 * Otherwise, same filesystem: the file is read once to hash it, and commit
 * is a rename; across filesystems: one streaming pass copies and hashes
 * into `dest.part`. Commit renames that and only then removes the source.
 * Either way, nothing is at `dest` until the caller has written what
 * refers to it.
 */
export async function stageFile(src: string, dest: string, compression: Compression | null = null): Promise<Staged> {
  const dir = path.dirname(dest);
  const compressible = compression !== null ? compressibleHead(src) : null;
  if (compressible !== null) return compression === 'zstd' ? stageZstd(src, dest, compressible) : stageGzip(src, dest, compressible);
  const sameFs = statSync(src).dev === statSync(dir).dev;
  if (sameFs) {
    chmodSync(src, PRIVATE_FILE);
    const { sha256, bytes } = await sha256File(src);
    return {
      sha256,
      bytes,
      compression: null,
      // A rename: the stored copy is the file that was hashed.
      check: async () => null,
      commit() {
        renameSync(src, dest);
        fsyncDir(dir);
      },
    };
  }
  const tmp = `${dest}.part`;
  const counter = new HashingCounter();
  // Never through a symlink planted at the temp name (O_EXCL|O_NOFOLLOW).
  const fd = openExclusive(tmp);
  await pipeline(createReadStream(src), counter, createWriteStream(tmp, { fd }));
  fsyncFile(tmp);
  const sha256 = counter.hash.digest('hex');
  return {
    sha256,
    bytes: counter.bytes,
    compression: null,
    check: () => partProblem(tmp, sha256, counter.bytes),
    commit: () => commitPart(src, tmp, dest),
  };
}

/** Moves a file into `dest` and hashes it (see stageFile). */
export async function moveAndHash(src: string, dest: string): Promise<{ sha256: string; bytes: number }> {
  const staged = await stageFile(src, dest);
  staged.commit();
  return { sha256: staged.sha256, bytes: staged.bytes };
}

/** A dump to archive: what it is, and its files as they are now (in the spool). */
export interface ArchiveInput extends DumpFacts {
  memoryFile: string;
  metaDir: string | null;
  /** VIRTSNAP_COMPRESS: how to store a raw save image (absent: as it is). */
  compression?: Compression | null;
}

/** A dump whose memory file is hashed (and compressed) into the archive, waiting for publishDump. */
export interface StagedDump {
  dir: string;
  input: ArchiveInput;
  memoryFile: string;
  staged: Staged;
}

/**
 * The slow half of archiving: hashes (and compresses) the memory file into
 * `<id>.save.part` in the archive, or, on the same filesystem, only hashes
 * it. Runs without the archive lock, so the dumps of a run are staged in
 * parallel: gc leaves a `.part` alone while the journal still names its id
 * (inFlightIds), and nothing refers to it before publishDump.
 */
export async function stageDump(archiveDir: string, input: ArchiveInput): Promise<StagedDump> {
  const dir = domainDir(archiveDir, input.domain.name);
  ensureDirBelow(dir, 'VIRTSNAP_ARCHIVE_DIR');
  const memoryFile = path.join(dir, `${input.id}.save`);
  return { dir, input, memoryFile, staged: await stageFile(input.memoryFile, memoryFile, input.compression ?? null) };
}

/**
 * The quick half, under the archive lock: copies the meta dir in, writes
 * the manifest, then puts the memory file in its place. The manifest is
 * written before the memory file takes its place: a crash in between leaves
 * the file where the journal still points (so `virtsnap recover` archives it
 * again), never an archived dump without its manifest (which gc would take
 * for a stray).
 */
export function publishDump(s: Pick<StagedDump, 'dir' | 'input' | 'memoryFile' | 'staged'>): ArchivedDump {
  const { dir, input, memoryFile, staged } = s;
  const { sha256, bytes } = staged;
  let metaDir: string | null = null;
  if (input.metaDir !== null && exists(input.metaDir)) {
    metaDir = path.join(dir, `${input.id}.meta`);
    // cpSync+rm rather than rename: the staging dir may be on another filesystem.
    rmSync(metaDir, { recursive: true, force: true }); // a half-copied one from a crashed attempt
    cpSync(input.metaDir, metaDir, { recursive: true });
    chmodSync(metaDir, 0o700);
  }
  const manifest = buildManifest(input, {
    memoryFile,
    bytes,
    sha256,
    compression: staged.compression,
    ...(staged.raw !== undefined ? { raw: staged.raw } : {}),
    ...(staged.store !== undefined ? { store: staged.store } : {}),
    metaDir,
  });
  const manifestFile = path.join(dir, `${input.id}.json`);
  writeJsonAtomic(manifestFile, manifest);
  staged.commit();
  if (input.metaDir !== null) rmSync(input.metaDir, { recursive: true, force: true });
  return { manifest, manifestFile };
}

/** Both halves at once (the caller holds the archive lock, or no gc can run). */
export async function archiveDump(archiveDir: string, input: ArchiveInput): Promise<ArchivedDump> {
  return publishDump(await stageDump(archiveDir, input));
}

/** The dump id of a half-written file of ours (path or name), or null. */
export function halfWrittenId(file: string): string | null {
  file = path.basename(file);
  const part = /^(.+)\.save\.part$/.exec(file); // stageFile's copy across filesystems
  if (part && DUMP_ID.test(part[1]!)) return part[1]!;
  const tmp = /^\.(.+)\.json\.\d+\.tmp$/.exec(file); // writeFileAtomic's temp manifest
  if (tmp && DUMP_ID.test(tmp[1]!)) return tmp[1]!;
  return null;
}

export interface ArchiveScan {
  dumps: ArchivedDump[];
  /** Manifests that cannot be read or are not ours: never a reason to delete anything. */
  broken: { file: string; reason: string }[];
  /** Half-written files of ours that nothing refers to (a crash left them): gc deletes these. */
  strays: string[];
  /** Everything else that is not ours: reported, never deleted. */
  foreign: { path: string; reason: string }[];
}

/**
 * The entries of the archive dir, once it is known to be ours alone (no one
 * else can swap files in under us); null when there is no archive yet.
 */
export function archiveDomainDirs(archiveDir: string): string[] | null {
  let domains: string[];
  try {
    domains = readdirSync(archiveDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new VirtsnapError(`cannot read archive ${archiveDir} (VIRTSNAP_ARCHIVE_DIR): ${(err as Error).message}`);
  }
  assertOwnDir(archiveDir, 'VIRTSNAP_ARCHIVE_DIR');
  return domains;
}

/**
 * Reads the whole archive. A missing archive dir is an empty archive. What
 * virtsnap did not write is listed in `foreign` and never deleted: the
 * archive may sit on a shared backup mount.
 */
export function scanArchive(archiveDir: string): ArchiveScan {
  const scan: ArchiveScan = { dumps: [], broken: [], strays: [], foreign: [] };
  const domains = archiveDomainDirs(archiveDir);
  if (domains === null) return scan;
  for (const d of domains.sort()) {
    const dir = path.join(archiveDir, d);
    const st = lstatSync(dir, { throwIfNoEntry: false });
    if (st === undefined) continue;
    if (!st.isDirectory()) {
      scan.foreign.push({ path: dir, reason: st.isSymbolicLink() ? 'a symlink, not a domain directory of ours' : 'not a domain directory of ours' });
      continue;
    }
    const problem = privacyProblem(st);
    if (problem !== null) {
      scan.foreign.push({ path: dir, reason: `a directory ${problem}, not private to virtsnap: nothing in it is read or deleted` });
      continue;
    }
    const files = readdirSync(dir).sort();
    const manifests = new Set<string>();
    for (const f of files) {
      if (!f.endsWith('.json') || f.startsWith('.')) continue;
      const manifestFile = path.join(dir, f);
      const id = f.slice(0, -'.json'.length);
      if (!lstatSync(manifestFile).isFile() || !looksLikeManifest(manifestFile, id)) continue; // another tool's JSON: foreign
      manifests.add(id);
      try {
        scan.dumps.push({ manifest: readManifest(manifestFile), manifestFile });
      } catch (err) {
        // Whatever shares a broken manifest's id is kept too: we cannot tell what it is for.
        scan.broken.push({ file: manifestFile, reason: (err as Error).message });
      }
    }
    for (const f of files) {
      const p = path.join(dir, f);
      const kind = classify(f, lstatSync(p), manifests);
      if (kind === 'dump') continue;
      if (kind === 'stray') scan.strays.push(p);
      else scan.foreign.push({ path: p, reason: kind });
    }
  }
  scan.dumps.sort((a, b) => a.manifest.times.startedAt.localeCompare(b.manifest.times.startedAt));
  return scan;
}

/** Ours (maybe damaged), or another tool's JSON: our naming, or our format named in it. */
export function looksLikeManifest(file: string, id: string): boolean {
  if (DUMP_ID.test(id)) return true;
  try {
    return readFileSync(file, 'utf8').slice(0, 4096).includes('"virtsnap-dump/');
  } catch {
    return false;
  }
}

/** What one entry of a domain dir is: part of a dump, a stray of ours, or (the reason it is) not ours. */
function classify(f: string, st: Stats, manifests: ReadonlySet<string>): 'dump' | 'stray' | string {
  const m = /^(.+)\.(json|save|meta)$/.exec(f);
  if (m !== null && manifests.has(m[1]!)) {
    if (st.isSymbolicLink()) return 'a symlink where a dump file should be: not written by virtsnap';
    return 'dump';
  }
  if (st.isSymbolicLink()) return 'a symlink: not written by virtsnap';
  const half = halfWrittenId(f);
  if (half !== null && st.isFile() && !manifests.has(half)) return 'stray';
  // A meta dir copied in before its manifest was written (archiveDump crashed in between).
  if (m !== null && m[2] === 'meta' && DUMP_ID.test(m[1]!) && st.isDirectory()) return 'stray';
  if (m !== null && m[2] === 'save' && DUMP_ID.test(m[1]!)) return 'a RAM dump of ours without its manifest: no snapshot is known for it, remove it by hand if you do not need it';
  return 'not written by virtsnap';
}

/** Every dump in the archive, oldest first. Throws on an unreadable manifest. */
export function listDumps(archiveDir: string): ArchivedDump[] {
  const scan = scanArchive(archiveDir);
  const first = scan.broken[0];
  if (first !== undefined) throw new VirtsnapError(first.reason);
  return scan.dumps;
}

/** Points a dump at its snapshots as they are now (fewer, or renamed), atomically. */
export function setSnapshots(dump: ArchivedDump, snapshots: SnapshotRef[]): ArchivedDump {
  const manifest = { ...dump.manifest, snapshots };
  writeJsonAtomic(dump.manifestFile, manifest);
  return { manifest, manifestFile: dump.manifestFile };
}

/**
 * Deletes a dump: memory file and meta dir first, the manifest last (a crash
 * leaves a stray for gc, never a dump without its manifest). Only the files
 * beside the manifest, and never through a symlink.
 */
export function deleteDump(dump: ArchivedDump): number {
  let freed = 0;
  const memory = lstatSync(dump.manifest.memoryFile, { throwIfNoEntry: false });
  if (memory !== undefined && !memory.isSymbolicLink()) {
    freed = memory.size;
    rmSync(dump.manifest.memoryFile, { force: true });
  }
  const meta = dump.manifest.metaDir === null ? undefined : lstatSync(dump.manifest.metaDir, { throwIfNoEntry: false });
  // rmSync does not follow symlinks inside the tree; the top must not be one either.
  if (meta !== undefined && meta.isDirectory()) rmSync(dump.manifest.metaDir!, { recursive: true, force: true });
  rmSync(dump.manifestFile, { force: true });
  fsyncDir(path.dirname(dump.manifestFile));
  return freed;
}

/** Serialises changes to the archive between virtsnap processes (post, prune, gc). */
export function withArchiveLock<T>(stateDir: string, timeoutMs: number, fn: () => T | Promise<T>): Promise<T> {
  return withLock(path.join(stateDir, 'locks'), 'archive', Date.now() + timeoutMs, fn);
}
