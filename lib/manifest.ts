// A RAM dump's manifest: what a dump is, which snapshots it belongs to, and
// where its bytes are. The one place that builds one (buildManifest) and the
// one that reads one back (readManifest, readManifestValue), for every store:
// the spool, the archive dir, a restic repository, inside a snapshot.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { VirtsnapError } from './errors.js';
import type { CompletedJob } from './libvirt/virsh.js';
import { legacyRef, type SnapshotRef } from './snapshot-id.js';

export interface DumpDisk {
  target: string;
  /** The disk's own image (in the snapshot), as the domain uses it. */
  source: string;
  dataset: string;
  format: string | null;
  bytes: number | null;
}

export interface Manifest {
  format: 'virtsnap-dump/2';
  id: string;
  domain: { name: string; uuid: string };
  /**
   * Every ZFS snapshot the dump belongs to, by guid. Only snapshots taken
   * while the disks stood still at the RAM's instant (lib/snapshot-id.ts).
   */
  snapshots: SnapshotRef[];
  types: string[];
  /**
   * The memory file: always `<id>.save` beside the manifest. What a manifest
   * on disk says here is never followed (see readManifest).
   */
  memoryFile: string;
  /** The memory file as stored (compressed or not). */
  bytes: number;
  /** Its sha256: '' for a dump waiting in the spool (the archiver hashes it as it stores it). */
  sha256: string;
  /**
   * How the stream after header and XML is stored: gzip or zstd (compressed
   * by the archiver, the header's format word says so too), or null, as
   * libvirt wrote it. Absent in dumps from before 0.3: null.
   */
  compression?: Compression | null;
  /** The image as libvirt wrote it, before compression: what QEMU reads on restore. Only for compressed dumps. */
  raw?: { bytes: number; sha256: string };
  /** Directory with domain XML, NVRAM and TPM state copies: `<id>.meta` beside the manifest, or null. */
  metaDir: string | null;
  disks: DumpDisk[];
  times: {
    startedAt: string;
    frozenAt: string | null;
    /** When this manifest was written: the dump sealed into the spool, or stored. */
    archivedAt: string;
    /** How long the guest's vCPUs were stopped, as libvirt reports it. */
    pauseMs: number | null;
    /** How long the RAM save took. */
    saveMs: number | null;
    /** How long committing the overlays back took (absent in dumps from before 0.2). */
    commitMs?: number | null;
  };
  libvirtUri: string;
  hostname: string;
  /**
   * Where the memory file's bytes are: waiting in the spool for the archiver
   * (lib/spool.ts), a restic snapshot (lib/stores/restic.ts), or inside a
   * ZFS snapshot of the VM's dataset (VIRTSNAP_STORE=dataset; only in
   * manifests read from a snapshot, lib/ram-in-dataset.ts). Absent: `<id>.save`
   * beside the manifest in the archive dir.
   */
  store?: SpoolStore | ResticStore | DatasetStore;
}

/** A dump sealed into the spool: back on its disks, tied to its snapshots, waiting for the archiver. */
export interface SpoolStore {
  kind: 'spool';
}

/** Whether a dump waits in the spool (not yet in its store). */
export function isWaiting(m: Pick<Manifest, 'store'>): boolean {
  return m.store?.kind === 'spool';
}

/** Whether the manifest records the memory file's sha256: not while it waits in the spool, nor for RAM inside a snapshot. */
export function hashKnown(m: Pick<Manifest, 'sha256'>): boolean {
  return m.sha256 !== '';
}

/** The newest dump of each domain among `dumps`. */
export function newestOf(dumps: readonly Pick<ArchivedDump, 'manifest'>[]): Manifest[] {
  const byDomain = new Map<string, Manifest>();
  for (const { manifest } of dumps) {
    const known = byDomain.get(manifest.domain.uuid);
    if (known === undefined || known.times.startedAt < manifest.times.startedAt) byDomain.set(manifest.domain.uuid, manifest);
  }
  return [...byDomain.values()];
}

/** A dump inside a snapshot of the VM's dataset: the dataset and mountpoint it was saved in, and its file relative to the dataset. */
export interface DatasetStore {
  kind: 'dataset';
  dataset: string;
  mountpoint: string;
  file?: string;
}

/** A dump kept in a restic repository: the snapshot, and the names of its files at the top of that snapshot's tree. */
export interface ResticStore {
  kind: 'restic';
  repo: string;
  /** The restic snapshot's id. */
  snapshot: string;
  /** The raw save image, e.g. `/web.20261123T….save`. */
  save: string;
  /** The meta dir in the snapshot (holding the manifest as `virtsnap-manifest.json`, for hosts without this one). */
  meta: string;
}

/**
 * What is wrong with the `store` of a manifest read from disk or from a
 * repository, or null. Its fields are followed (a restic argument, a path
 * under a private dir), so they must be what virtsnap writes: a restic
 * snapshot id in hex, `/<name>.save` and `/<name>.meta`. A `dataset` store
 * is only ever made in memory, from inside a snapshot (lib/restore.ts).
 */
export function resticStoreProblem(store: unknown): string | null {
  const s = store as Partial<ResticStore> | null;
  if (s === null || typeof s !== 'object' || s.kind !== 'restic') return 'names a store that is not a restic snapshot';
  if (typeof s.repo !== 'string' || s.repo === '') return 'names no restic repository';
  if (typeof s.snapshot !== 'string' || !/^[0-9a-f]{8,64}$/.test(s.snapshot)) return `names restic snapshot ${JSON.stringify(s.snapshot)}, not a snapshot id`;
  const file = /^\/[A-Za-z0-9._+@%=:,-]+$/;
  if (typeof s.save !== 'string' || !file.test(s.save) || !s.save.endsWith('.save') || s.save.includes('..')) return `names ${JSON.stringify(s.save)} as its memory file in restic`;
  if (typeof s.meta !== 'string' || !file.test(s.meta) || !s.meta.endsWith('.meta') || s.meta.includes('..')) return `names ${JSON.stringify(s.meta)} as its meta dir in restic`;
  return null;
}

/** A dump kept in restic: its snapshot and file names (lib/stores/restic.ts answers every question of its bytes). */
export function resticStoreOf(m: Pick<Manifest, 'store'>): ResticStore | null {
  return m.store?.kind === 'restic' ? m.store : null;
}

/** The memory file's place inside a ZFS snapshot (relative to its dataset), for a dump read from one; else null. */
export function fileInSnapshotOf(m: Pick<Manifest, 'store'>): string | null {
  return m.store?.kind === 'dataset' ? (m.store.file ?? null) : null;
}

/** Where a dump's bytes are, for people: the memory file, or `restic:REPO SNAPSHOT:/file`. */
export function storedAt(m: Pick<Manifest, 'store' | 'memoryFile'>): string {
  const store = resticStoreOf(m);
  return store === null ? m.memoryFile : `restic:${store.repo} ${store.snapshot.slice(0, 8)}:${store.save}`;
}

/** The current names of a dump's snapshots (dataset@snapname). */
export function snapshotNames(m: Pick<Manifest, 'snapshots'>): string[] {
  return m.snapshots.map((r) => r.name);
}

export interface ArchivedDump {
  manifest: Manifest;
  manifestFile: string;
}

/** How virtsnap compresses a dump (VIRTSNAP_COMPRESS). */
/** How the stream of a stored save image is compressed: gzip (every libvirt reads it), zstd (libvirt 10.4 and later). */
export type Compression = 'gzip' | 'zstd';

/** The names virtsnap gives a dump's files: `<stamp>-<uuid8>` (see plan.ts). */
export const DUMP_ID = /^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}$/;

/** What a dump is, as its freeze recorded it (the journal entry): every manifest starts from this. */
export interface DumpFacts {
  id: string;
  domain: { name: string; uuid: string };
  snapshots: SnapshotRef[];
  types: string[];
  disks: DumpDisk[];
  startedAt: string;
  frozenAt?: string | null;
  job?: CompletedJob | null;
  commitMs?: number | null;
  libvirtUri: string;
  hostname: string;
}

/** Where its bytes are and what they are. */
export interface DumpBytes {
  memoryFile: string;
  bytes: number;
  sha256: string;
  compression: Compression | null;
  raw?: { bytes: number; sha256: string };
  metaDir: string | null;
  store?: Manifest['store'];
}

/** The one builder of a manifest, for every store (the spool, the archive dir, restic, inside a snapshot). Written now. */
export function buildManifest(facts: DumpFacts, bytes: DumpBytes): Manifest {
  return {
    format: 'virtsnap-dump/2',
    id: facts.id,
    domain: facts.domain,
    snapshots: facts.snapshots,
    types: facts.types,
    memoryFile: bytes.memoryFile,
    bytes: bytes.bytes,
    sha256: bytes.sha256,
    compression: bytes.compression,
    ...(bytes.raw !== undefined ? { raw: bytes.raw } : {}),
    ...(bytes.store !== undefined ? { store: bytes.store } : {}),
    metaDir: bytes.metaDir,
    disks: facts.disks,
    times: dumpTimes(facts),
    libvirtUri: facts.libvirtUri,
    hostname: facts.hostname,
  };
}

/** A manifest's facts again, to build the next one from (the archiver, from a spooled dump's). */
export function factsOf(m: Manifest): DumpFacts {
  return {
    id: m.id,
    domain: m.domain,
    snapshots: m.snapshots,
    types: m.types,
    disks: m.disks,
    startedAt: m.times.startedAt,
    frozenAt: m.times.frozenAt,
    job: { elapsedMs: m.times.saveMs, downtimeMs: m.times.pauseMs, memoryBytes: null },
    commitMs: m.times.commitMs ?? null,
    libvirtUri: m.libvirtUri,
    hostname: m.hostname,
  };
}

/** A manifest's times, from what the journal recorded of the freeze; written now. */
function dumpTimes(t: { startedAt: string; frozenAt?: string | null; job?: CompletedJob | null; commitMs?: number | null }): Manifest['times'] {
  return {
    startedAt: t.startedAt,
    frozenAt: t.frozenAt ?? null,
    archivedAt: new Date().toISOString(),
    pauseMs: t.job?.downtimeMs ?? null,
    saveMs: t.job?.elapsedMs ?? null,
    commitMs: t.commitMs ?? null,
  };
}

/**
 * Reads a manifest. Its own `memoryFile` and `metaDir` fields are never
 * followed: the files are always `<id>.save` and `<id>.meta` beside it, so a
 * tampered manifest cannot point gc, prune or restore anywhere else.
 */
export function readManifest(file: string, place: ManifestPlace = 'archive'): Manifest {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new VirtsnapError(`manifest ${file} is not readable JSON (${(err as Error).message}): run \`virtsnap gc\` or remove it`);
  }
  const m = readManifestValue(value, file, path.basename(file).replace(/\.json$/, ''), place);
  const dir = path.dirname(file);
  return {
    ...m,
    memoryFile: path.join(dir, `${m.id}.save`),
    metaDir: m.metaDir === null ? null : path.join(dir, `${m.id}.meta`),
  };
}

/**
 * A manifest's content checked (`file` names where it came from, `id` the
 * id its place gives it); its file names are the caller's to set.
 */
/**
 * Where a manifest was read: the archive dir, the spool (its dumps wait
 * there, `store` spool and nothing else), or a restic repository.
 */
export type ManifestPlace = 'archive' | 'spool' | 'repository';

export function readManifestValue(value: unknown, file: string, id: string, place: ManifestPlace = 'archive'): Manifest {
  const m = value as Omit<Partial<Manifest>, 'format' | 'snapshots'> & { format?: string; snapshots?: unknown[] };
  const ours = (m.format === 'virtsnap-dump/1' || m.format === 'virtsnap-dump/2') && Array.isArray(m.snapshots) && typeof m.id === 'string';
  if (!ours || m.id !== id) {
    throw new VirtsnapError(`manifest ${file} is not a virtsnap dump manifest: remove it or move it out of the archive`);
  }
  // virtsnap-dump/1 named snapshots only; their refs have no guid and are found by name.
  const snapshots = m.snapshots!.map((r) => (typeof r === 'string' ? legacyRef(r) : (r as SnapshotRef)));
  if (snapshots.some((r) => r === null || typeof r !== 'object' || typeof r.name !== 'string' || !r.name.includes('@'))) {
    throw new VirtsnapError(`manifest ${file} lists a snapshot without a dataset@name: it is damaged; restore it from a backup or remove it with its dump`);
  }
  for (const r of snapshots) r.frozenAs ??= r.name;
  if (!Array.isArray(m.disks)) throw new VirtsnapError(`manifest ${file} has no list of disks: it is damaged; restore it from a backup or remove it with its dump`);
  // A store is followed (a restic argument, a file name): only what virtsnap writes in that place passes.
  const storeProblem =
    place === 'spool' ? (m.store?.kind === 'spool' ? null : 'is in the spool but says its dump is elsewhere') : m.store === undefined ? null : resticStoreProblem(m.store);
  if (storeProblem !== null) throw new VirtsnapError(`manifest ${file} ${storeProblem}: it is damaged or not ours; restore it from a backup or remove it`);
  return {
    ...(m as Manifest),
    compression: m.compression ?? null, // older manifests: stored as libvirt wrote it
    format: 'virtsnap-dump/2',
    snapshots,
    metaDir: m.metaDir === null || m.metaDir === undefined ? null : (m.metaDir as string),
  };
}

