// The RAM archive: `ARCHIVE_DIR/<domain>/<id>.save` (a libvirt save image,
// restorable with `virsh restore`), `<id>.json` (its manifest) and
// `<id>.meta/` (domain XML, NVRAM, TPM state). The manifest names every ZFS
// snapshot the dump belongs to; a dump is only useful together with one of
// them.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, readdirSync, readFileSync, renameSync, statSync, unlinkSync, chmodSync, fsyncSync, openSync, closeSync, cpSync, rmSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import path from 'node:path';
import { VirtsnapError } from './errors.js';
import { ensureDir, exists, fileSafe, fsyncDir, PRIVATE_FILE, writeJsonAtomic } from './fsutil.js';
import { withLock } from './lock.js';
import type { CompletedJob } from './libvirt/virsh.js';

export interface DumpDisk {
  target: string;
  /** The disk's own image (in the snapshot), as the domain uses it. */
  source: string;
  dataset: string;
  format: string | null;
  bytes: number | null;
}

export interface Manifest {
  format: 'virtsnap-dump/1';
  id: string;
  domain: { name: string; uuid: string };
  /** Every ZFS snapshot the dump belongs to, as dataset@snapname. */
  snapshots: string[];
  types: string[];
  /** Absolute path of the memory file. */
  memoryFile: string;
  bytes: number;
  sha256: string;
  /** Directory with domain XML, NVRAM and TPM state copies. */
  metaDir: string | null;
  disks: DumpDisk[];
  times: {
    startedAt: string;
    frozenAt: string | null;
    archivedAt: string;
    /** How long the guest's vCPUs were stopped, as libvirt reports it. */
    pauseMs: number | null;
    /** How long the RAM save took. */
    saveMs: number | null;
  };
  libvirtUri: string;
  hostname: string;
}

export interface ArchivedDump {
  manifest: Manifest;
  manifestFile: string;
}

export function domainDir(archiveDir: string, domainName: string): string {
  return path.join(archiveDir, fileSafe(domainName));
}

class HashingCounter extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null, data?: Buffer) => void): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    done(null, chunk);
  }
}

export async function sha256File(file: string): Promise<{ sha256: string; bytes: number }> {
  const counter = new HashingCounter();
  await pipeline(createReadStream(file), counter, async function* (source) {
    for await (const _ of source) {
      // drain
    }
  });
  return { sha256: counter.hash.digest('hex'), bytes: counter.bytes };
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
  sha256: string;
  bytes: number;
  /** Puts the file at its destination and removes the source. */
  commit(): void;
}

/**
 * Hashes `src` and gets it ready to become `dest`. Same filesystem: the
 * file is read once to hash it, and commit is a rename. Across filesystems:
 * one streaming pass copies and hashes into `dest.part`, and commit renames
 * that and only then removes the source. Either way, nothing is at `dest`
 * until the caller has written what refers to it.
 */
export async function stageFile(src: string, dest: string): Promise<Staged> {
  const dir = path.dirname(dest);
  const sameFs = statSync(src).dev === statSync(dir).dev;
  if (sameFs) {
    chmodSync(src, PRIVATE_FILE);
    const { sha256, bytes } = await sha256File(src);
    return {
      sha256,
      bytes,
      commit() {
        renameSync(src, dest);
        fsyncDir(dir);
      },
    };
  }
  const tmp = `${dest}.part`;
  const counter = new HashingCounter();
  await pipeline(createReadStream(src), counter, createWriteStream(tmp, { mode: PRIVATE_FILE }));
  fsyncFile(tmp);
  return {
    sha256: counter.hash.digest('hex'),
    bytes: counter.bytes,
    commit() {
      renameSync(tmp, dest);
      fsyncDir(dir);
      unlinkSync(src);
    },
  };
}

/** Moves a file into `dest` and hashes it (see stageFile). */
export async function moveAndHash(src: string, dest: string): Promise<{ sha256: string; bytes: number }> {
  const staged = await stageFile(src, dest);
  staged.commit();
  return { sha256: staged.sha256, bytes: staged.bytes };
}

export interface ArchiveInput {
  id: string;
  domain: { name: string; uuid: string };
  snapshots: string[];
  types: string[];
  memoryFile: string;
  metaDir: string | null;
  disks: DumpDisk[];
  startedAt: string;
  frozenAt: string | null;
  job: CompletedJob | null;
  libvirtUri: string;
  hostname: string;
}

/**
 * Moves a finished memory file (and its meta dir) into the archive and
 * writes its manifest. The manifest is written before the memory file takes
 * its place: a crash in between leaves the file where the journal still
 * points (so `virtsnap recover` archives it again), never an archived dump
 * without its manifest (which gc would take for a stray).
 */
export async function archiveDump(archiveDir: string, input: ArchiveInput): Promise<ArchivedDump> {
  ensureDir(archiveDir);
  const dir = domainDir(archiveDir, input.domain.name);
  ensureDir(dir);
  const memoryFile = path.join(dir, `${input.id}.save`);
  const staged = await stageFile(input.memoryFile, memoryFile);
  const { sha256, bytes } = staged;
  let metaDir: string | null = null;
  if (input.metaDir !== null && exists(input.metaDir)) {
    metaDir = path.join(dir, `${input.id}.meta`);
    // cpSync+rm rather than rename: the staging dir may be on another filesystem.
    cpSync(input.metaDir, metaDir, { recursive: true });
    chmodSync(metaDir, 0o700);
  }
  const manifest: Manifest = {
    format: 'virtsnap-dump/1',
    id: input.id,
    domain: input.domain,
    snapshots: input.snapshots,
    types: input.types,
    memoryFile,
    bytes,
    sha256,
    metaDir,
    disks: input.disks,
    times: {
      startedAt: input.startedAt,
      frozenAt: input.frozenAt,
      archivedAt: new Date().toISOString(),
      pauseMs: input.job?.downtimeMs ?? null,
      saveMs: input.job?.elapsedMs ?? null,
    },
    libvirtUri: input.libvirtUri,
    hostname: input.hostname,
  };
  const manifestFile = path.join(dir, `${input.id}.json`);
  writeJsonAtomic(manifestFile, manifest);
  staged.commit();
  if (input.metaDir !== null) rmSync(input.metaDir, { recursive: true, force: true });
  return { manifest, manifestFile };
}

function readManifest(file: string): Manifest {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new VirtsnapError(`manifest ${file} is not readable JSON (${(err as Error).message}): run \`virtsnap gc\` or remove it`);
  }
  const m = value as Partial<Manifest>;
  if (m.format !== 'virtsnap-dump/1' || !Array.isArray(m.snapshots) || typeof m.memoryFile !== 'string') {
    throw new VirtsnapError(`manifest ${file} is not a virtsnap dump manifest: remove it or move it out of the archive`);
  }
  return m as Manifest;
}

export interface ArchiveScan {
  dumps: ArchivedDump[];
  /** Manifests that cannot be read or are not ours: never a reason to delete anything. */
  broken: { file: string; reason: string }[];
  /** Files in domain dirs that belong to no readable manifest (.save, .part, .meta, temp files). */
  strays: string[];
}

/** Reads the whole archive. A missing archive dir is an empty archive. */
export function scanArchive(archiveDir: string): ArchiveScan {
  let domains: string[];
  try {
    domains = readdirSync(archiveDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { dumps: [], broken: [], strays: [] };
    throw new VirtsnapError(`cannot read archive ${archiveDir} (VIRTSNAP_ARCHIVE_DIR): ${(err as Error).message}`);
  }
  const scan: ArchiveScan = { dumps: [], broken: [], strays: [] };
  for (const d of domains.sort()) {
    const dir = path.join(archiveDir, d);
    let files: string[];
    try {
      files = readdirSync(dir);
    } catch {
      continue; // not a directory
    }
    const owned = new Set<string>();
    for (const f of files.sort()) {
      if (!f.endsWith('.json') || f.startsWith('.')) continue;
      const manifestFile = path.join(dir, f);
      const id = f.slice(0, -'.json'.length);
      // Whatever shares a broken manifest's id is kept: we cannot tell what it is for.
      for (const suffix of ['.json', '.save', '.meta']) owned.add(id + suffix);
      try {
        scan.dumps.push({ manifest: readManifest(manifestFile), manifestFile });
      } catch (err) {
        scan.broken.push({ file: manifestFile, reason: (err as Error).message });
      }
    }
    for (const f of files) if (!owned.has(f)) scan.strays.push(path.join(dir, f));
  }
  scan.dumps.sort((a, b) => a.manifest.times.startedAt.localeCompare(b.manifest.times.startedAt));
  return scan;
}

/** Every dump in the archive, oldest first. Throws on an unreadable manifest. */
export function listDumps(archiveDir: string): ArchivedDump[] {
  const scan = scanArchive(archiveDir);
  const first = scan.broken[0];
  if (first !== undefined) throw new VirtsnapError(first.reason);
  return scan.dumps;
}

/** Points a dump at fewer snapshots (atomically). */
export function setSnapshots(dump: ArchivedDump, snapshots: string[]): ArchivedDump {
  const manifest = { ...dump.manifest, snapshots };
  writeJsonAtomic(dump.manifestFile, manifest);
  return { manifest, manifestFile: dump.manifestFile };
}

/** Deletes a dump: memory file and meta dir first, the manifest last (a crash leaves a stray for gc, never a dump without its manifest). */
export function deleteDump(dump: ArchivedDump): number {
  let freed = 0;
  try {
    freed = statSync(dump.manifest.memoryFile).size;
  } catch {
    // already gone
  }
  rmSync(dump.manifest.memoryFile, { force: true });
  if (dump.manifest.metaDir !== null) rmSync(dump.manifest.metaDir, { recursive: true, force: true });
  rmSync(dump.manifestFile, { force: true });
  fsyncDir(path.dirname(dump.manifestFile));
  return freed;
}

/** Serialises changes to the archive between virtsnap processes (post, prune, gc). */
export function withArchiveLock<T>(stateDir: string, timeoutMs: number, fn: () => T | Promise<T>): Promise<T> {
  return withLock(path.join(stateDir, 'locks'), 'archive', Date.now() + timeoutMs, fn);
}
