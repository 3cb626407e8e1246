// A restic repository as a store (VIRTSNAP_STORE=restic:REPO): the
// archiver stores through here, prune forgets through here, verify and
// restore get the memory file as a local path from here, and a host without
// the manifests reads them from the repository.
//
// A dump in restic is one restic snapshot of the RAW save image (never
// gzip: compressed streams defeat restic's content-defined chunking, which
// stores the pages consecutive dumps share once; restic compresses and
// encrypts on its own) and the meta dir with the manifest in it, tagged
// `virtsnap`, `virtsnap-id=<id>` and `virtsnap-domain=<name>`. The archive
// dir keeps the manifest (with `store`) and the meta dir, no `.save`: prune,
// gc, list and status read local manifests as always, without starting restic.
import { chmodSync, existsSync, lstatSync, mkdtempSync, rmSync } from 'node:fs';
import path from 'node:path';
import { deleteDump, domainDir, publishDump, scanArchive, sha256File, withArchiveLock, type ArchiveInput, type StagedDump } from '../archive.js';
import type { Config, ResticBackend } from '../config.js';
import { VirtsnapError } from '../errors.js';
import { ensureDir, ensureDirBelow, PRIVATE_FILE, removeIfExists, writeJsonAtomic } from '../fsutil.js';
import type { JournalEntry } from '../journal.js';
import { log } from '../log.js';
import { buildManifest, DUMP_ID, factsOf, newestOf, readManifest, readManifestValue, resticStoreOf, resticStoreProblem, type ArchivedDump, type Manifest, type ResticStore } from '../manifest.js';
import { domainTag, guidTag, idTag, Restic, TAG, type ResticClient, type ResticSnapshot } from '../restic.js';
import type { SnapshotRef } from '../snapshot-id.js';
import { assertWaitingBytes, dropWaiting, sealIntoSpool } from '../spool.js';
import type { DumpStore, LocalDump, StoreCollect, StoreScan } from './store.js';

/** The manifest's name inside the meta dir of a restic snapshot. */
export const REPO_MANIFEST = 'virtsnap-manifest.json';

/** A restic tag cannot hold a comma (restic splits on it). */
function tagSafe(text: string): string {
  return text.replace(/,/g, '_');
}

/**
 * The slow half of archiving into restic, outside the archive lock: hashes
 * the memory file, writes the manifest into the meta dir, and backs both up
 * as one snapshot. A snapshot of this id already there (a post that died
 * after its backup, now run again by `virtsnap recover`) is used as it is:
 * backed up twice, the dump would be in the repo twice and pruned once.
 */
export async function stageResticDump(archiveDir: string, input: ArchiveInput, restic: ResticClient, host: string): Promise<StagedDump> {
  const dir = domainDir(archiveDir, input.domain.name);
  ensureDirBelow(dir, 'VIRTSNAP_ARCHIVE_DIR');
  const cwd = path.dirname(input.memoryFile);
  // Both in the overlay dir (plan.ts: `<base>.save`, `<base>.meta`): they go in at the top of the snapshot's tree.
  const metaDir = input.metaDir ?? `${input.memoryFile.replace(/\.save$/, '')}.meta`;
  if (path.dirname(metaDir) !== cwd) throw new VirtsnapError(`meta dir ${metaDir} is not beside ${input.memoryFile}: cannot back them up as one snapshot`);
  const save = `/${path.basename(input.memoryFile)}`;
  const meta = `/${path.basename(metaDir)}`;
  const { sha256, bytes } = await sha256File(input.memoryFile);
  const want = { host, sha256, bytes, save, meta };
  const existing = await storedAlready(restic, input, want);
  let snapshot: string;
  if (existing !== undefined) {
    snapshot = existing.id;
    log.info(`restic snapshot ${existing.short_id} holds RAM dump ${input.id} already (an earlier try got that far): not backed up again`, { domain: input.domain.name });
  } else {
    ensureDir(metaDir, 0o700);
    // What the repo says about the dump on its own (restore on another host reads it); `store` is the snapshot itself.
    writeJsonAtomic(path.join(metaDir, REPO_MANIFEST), repoManifest(input, sha256, bytes));
    chmodSync(input.memoryFile, PRIVATE_FILE);
    // The snapshots' guids as tags too: a restore on another host reads only the manifests of its snapshot's dumps.
    const guids = input.snapshots.flatMap((r) => (r.guid !== null ? [guidTag(r.guid)] : []));
    snapshot = await restic.backup(cwd, [save.slice(1), meta.slice(1)], [TAG, idTag(input.id), domainTag(tagSafe(input.domain.name)), ...guids], host);
    // backup's summary may give the short id; the manifest keeps the whole one (a short one can become ambiguous, and forget then ignores it).
    const made = (await restic.snapshots([TAG, idTag(input.id)])).find((s) => s.id.startsWith(snapshot));
    if (made !== undefined) snapshot = made.id;
  }
  const store: ResticStore = { kind: 'restic', repo: restic.repo, snapshot, save, meta };
  const memoryFile = path.join(dir, `${input.id}.save`);
  return {
    dir,
    // The meta dir (with the repo's manifest) is copied in beside the local manifest, as for the archive dir.
    input: { ...input, metaDir },
    memoryFile,
    staged: {
      sha256,
      bytes,
      compression: null,
      store,
      // What the repository holds, read back: its manifest, and the memory file's size as stored.
      check: () => wholeProblem(restic, { id: snapshot, short_id: snapshot.slice(0, 8), time: '', hostname: host, tags: [], paths: [] }, want),
      // The snapshot exists and the manifest names it: only now may the memory file go.
      commit: () => removeIfExists(input.memoryFile),
    },
  };
}

/**
 * A snapshot of this dump that an earlier try made (post died after its
 * backup, or the backup failed after making it): used only when it is
 * ours and whole, its host this one, its manifest this dump's sha256 and
 * size, its memory file that size as stored. One of ours that is not whole
 * (restic's exit 3 leaves an incomplete snapshot) is forgotten, so it is
 * backed up again; another host's is never touched.
 */
async function storedAlready(restic: ResticClient, input: ArchiveInput, want: { host: string; sha256: string; bytes: number; save: string; meta: string }): Promise<ResticSnapshot | undefined> {
  const tagged = (await restic.snapshots([TAG, idTag(input.id)])).filter((s) => s.paths.some((p) => path.basename(p) === want.save.slice(1)));
  for (const s of tagged) {
    if (s.hostname !== want.host) {
      log.warn(`restic snapshot ${s.short_id} carries RAM dump ${input.id}'s tag but was made by host ${JSON.stringify(s.hostname)}: not ours, left alone`, { domain: input.domain.name });
      continue;
    }
    const problem = await wholeProblem(restic, s, want);
    if (problem === null) return s;
    log.warn(`restic snapshot ${s.short_id} of RAM dump ${input.id} is not whole (${problem}): forgetting it, backing up again`, { domain: input.domain.name });
    await restic.forget([s.id]);
  }
  return undefined;
}

async function wholeProblem(restic: ResticClient, s: ResticSnapshot, want: { sha256: string; bytes: number; save: string; meta: string }): Promise<string | null> {
  let manifest: { sha256?: unknown; bytes?: unknown };
  try {
    manifest = JSON.parse(await restic.dumpText(s.id, `${want.meta}/${REPO_MANIFEST}`)) as { sha256?: unknown; bytes?: unknown };
  } catch (err) {
    return `its manifest cannot be read: ${(err as Error).message}`;
  }
  if (manifest.sha256 !== want.sha256 || manifest.bytes !== want.bytes) return 'its manifest names another memory file';
  const size = await restic.fileSize(s.id, want.save);
  if (size !== want.bytes) return `it holds ${size === null ? 'no' : `${size} bytes of`} ${want.save}, not ${want.bytes}`;
  return null;
}

/** The manifest publishDump will write, without `store` and with the archive's names (the copy in the repo). */
function repoManifest(input: ArchiveInput, sha256: string, bytes: number): Manifest {
  return buildManifest(input, { memoryFile: `${input.id}.save`, bytes, sha256, compression: null, metaDir: `${input.id}.meta` });
}

/**
 * Before a dump's manifest goes (prune, gc): its restic snapshot is
 * forgotten first. A crash in between leaves a manifest whose snapshots are
 * all gone, which the next prune or gc deletes again (forgetting a
 * forgotten snapshot is a no-op); the other order could leave a snapshot no
 * manifest knows, which gc never forgets (another host may own it).
 * The space comes back with `restic prune` (`virtsnap gc`).
 */
export async function forgetStored(m: Manifest, restic: ResticClient | null): Promise<void> {
  const store = resticStoreOf(m);
  if (store === null) return;
  if (restic === null || restic.repo !== store.repo) {
    throw new VirtsnapError(`RAM dump ${m.id} is in restic repository ${store.repo}, and VIRTSNAP_STORE does not name it: set VIRTSNAP_STORE=restic:${store.repo} to prune it`);
  }
  await restic.forget([store.snapshot]);
}

/**
 * Deletes a dump wherever its bytes are: its restic snapshot forgotten
 * first (forgetStored says why), then its files in the archive dir. Throws,
 * deleting nothing, when the forget fails. Returns the bytes freed here.
 */
export async function deleteStoredDump(dump: ArchivedDump, restic: ResticClient | null): Promise<number> {
  await forgetStored(dump.manifest, restic);
  return deleteDump(dump);
}

/** Private temp dirs holding fetched memory files: removed when done, and at exit whatever happens. */
const fetched = new Set<string>();
let exitHook = false;

function removeFetched(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  fetched.delete(dir);
}

/** Removes every memory file fetched so far (a restore, once done). */
export function releaseFetched(): void {
  for (const dir of [...fetched]) removeFetched(dir);
}


/**
 * The memory file as a local path. From the archive dir: the file itself.
 * From restic: restored into a private temp dir (0700) under the state
 * dir, the file 0600 (RAM dumps are secrets), removed by release(), or at
 * process exit at the latest.
 */
export async function localDump(m: Manifest, stateDir: string, restic: ResticClient | null): Promise<LocalDump> {
  const store = resticStoreOf(m);
  if (store === null) return { manifest: m, release: () => undefined };
  if (restic === null || restic.repo !== store.repo) {
    throw new VirtsnapError(`RAM dump ${m.id} is in restic repository ${store.repo}: set VIRTSNAP_STORE=restic:${store.repo} (and VIRTSNAP_RESTIC_PASSWORD_FILE) to read it`);
  }
  const parent = path.join(stateDir, 'fetch');
  ensureDir(parent, 0o700);
  const dir = mkdtempSync(path.join(parent, `${m.id}-`));
  fetched.add(dir);
  if (!exitHook) {
    exitHook = true;
    process.on('exit', () => [...fetched].forEach(removeFetched));
  }
  try {
    await restic.restoreFile(store.snapshot, store.save, dir);
    const file = path.join(dir, store.save);
    // What the repository holds there is restored as it is: only a regular file is read, never what a symlink names.
    const st = lstatSync(file, { throwIfNoEntry: false });
    if (st === undefined) throw new VirtsnapError(`restic snapshot ${store.snapshot} in ${store.repo} has no ${store.save}: it is not the dump its manifest names`);
    if (!st.isFile()) throw new VirtsnapError(`${store.save} in restic snapshot ${store.snapshot} of ${store.repo} is not a regular file: not reading it`);
    chmodSync(file, PRIVATE_FILE);
    const { store: _, ...rest } = m;
    return { manifest: { ...rest, memoryFile: file, compression: null }, release: () => removeFetched(dir) };
  } catch (err) {
    removeFetched(dir);
    throw err;
  }
}

/**
 * The dumps in the repository, as scanArchive gives the archive dir's:
 * for a host that has none of the manifests (restore anywhere the snapshot
 * went). One `restic dump` per snapshot for its manifest: `guids` keeps
 * to the dumps tagged with one of those ZFS snapshot guids. Snapshots whose
 * manifest cannot be read are left out, with a warning.
 *
 * Only `host`'s dumps: anyone with the repository's password can write a
 * snapshot tagged with any guid, and a restore defines the dump's XML as
 * root. A user who restores another host's dumps names that host.
 */
export async function repoDumps(restic: ResticClient, options: { host: string; exclude?: ReadonlySet<string>; guids?: ReadonlySet<string> }): Promise<ArchivedDump[]> {
  const dumps: ArchivedDump[] = [];
  const wanted = options.guids === undefined ? null : new Set([...options.guids].map(guidTag));
  const others = new Set<string>();
  for (const s of await restic.snapshots([TAG])) {
    const id = s.tags.find((t) => t.startsWith('virtsnap-id='))?.slice('virtsnap-id='.length);
    if (id === undefined || options.exclude?.has(id) === true) continue;
    if (wanted !== null && !s.tags.some((t) => wanted.has(t))) continue;
    if (s.hostname !== options.host) {
      others.add(s.hostname);
      continue;
    }
    try {
      dumps.push(await repoDump(restic, s, id));
    } catch (err) {
      log.warn(`restic snapshot ${s.short_id} in ${restic.repo}: ${(err as Error).message} (left out)`);
    }
  }
  if (others.size > 0) {
    log.warn(`restic repository ${restic.repo} holds matching RAM dumps of other hosts (${[...others].map((h) => JSON.stringify(h)).join(', ')}): left out; name one with --host to use its dumps`);
  }
  return dumps.sort((a, b) => a.manifest.times.startedAt.localeCompare(b.manifest.times.startedAt));
}

async function repoDump(restic: ResticClient, s: ResticSnapshot, id: string): Promise<ArchivedDump> {
  // Another host sharing the password may have written anything here: the id names files, so it must be ours.
  if (!DUMP_ID.test(id)) throw new VirtsnapError(`its tag virtsnap-id=${JSON.stringify(id)} is not a dump id of virtsnap`);
  const save = s.paths.map((p) => `/${path.basename(p)}`).find((p) => p.endsWith('.save'));
  const meta = s.paths.map((p) => `/${path.basename(p)}`).find((p) => p.endsWith('.meta'));
  if (save === undefined || meta === undefined) throw new VirtsnapError('not a virtsnap dump (no .save and .meta in it)');
  const store: ResticStore = { kind: 'restic', repo: restic.repo, snapshot: s.id, save, meta };
  const problem = resticStoreProblem(store);
  if (problem !== null) throw new VirtsnapError(`not a virtsnap dump: it ${problem}`);
  const manifestFile = `${meta}/${REPO_MANIFEST}`;
  const manifest = readManifestValue(JSON.parse(await restic.dumpText(s.id, manifestFile)), `restic:${restic.repo} ${s.short_id}:${manifestFile}`, id);
  // Its meta dir is in the repository, not beside anything here: a relative name would be read from the working directory.
  return { manifest: { ...manifest, metaDir: null, store }, manifestFile: `restic:${restic.repo} ${s.short_id}` };
}

/** `virtsnap gc` with restic: what it did and what it found there that no manifest here knows. */
export interface ResticGc {
  pruned: boolean;
  /** virtsnap's snapshots no local manifest names: never forgotten (another host may own them). */
  unknown: string[];
}

/**
 * `restic prune` (the space of forgotten dumps comes back), and the
 * virtsnap snapshots in the repo that no local manifest names, reported
 * with their host: another host's dumps, or ours from a manifest lost.
 */
export async function gcRestic(restic: ResticClient, dumps: ArchivedDump[], dryRun: boolean): Promise<ResticGc> {
  const known = dumps.map((d) => resticStoreOf(d.manifest)?.snapshot).filter((s): s is string => s !== undefined);
  const unknown = (await restic.snapshots([TAG]))
    .filter((s) => !known.some((k) => s.id.startsWith(k)))
    .map((s) => `restic snapshot ${s.short_id} (${s.tags.find((t) => t.startsWith('virtsnap-id=')) ?? 'no id'}, host ${s.hostname}) in ${restic.repo}: no manifest here names it (left alone; another host's, or \`restic forget ${s.short_id}\` by hand)`);
  if (!dryRun) await restic.prune();
  return { pruned: !dryRun, unknown };
}

export type ResticConfig = Pick<Config, 'archiveDir' | 'overlayDir' | 'stateDir' | 'lockTimeoutMs' | 'libvirtUri'>;

/** The restic repository as a store: its bytes in restic, its manifests (with `store`) and meta dirs in the archive dir. */
export class ResticDumpStore implements DumpStore {
  readonly kind = 'restic' as const;
  readonly spooled = true;
  readonly where: string;

  constructor(
    private readonly config: ResticConfig,
    readonly restic: ResticClient,
    private readonly host: string,
  ) {
    this.where = `restic:${restic.repo}`;
  }

  static of(config: ResticConfig, backend: ResticBackend, host: string): ResticDumpStore {
    return new ResticDumpStore(config, new Restic(backend), host);
  }

  seal(entry: JournalEntry, tied: SnapshotRef[]): ArchivedDump {
    return sealIntoSpool(entry, tied, this.config, this.host);
  }

  /**
   * From the spool into the repository: one snapshot of the raw image and the
   * meta dir (one an earlier try made is used only when it is ours and whole:
   * stageResticDump), the repository's copy checked, then the manifest here,
   * then the spool's files go.
   */
  async keep(waiting: ArchivedDump): Promise<ArchivedDump> {
    const m = waiting.manifest;
    const manifestFile = path.join(domainDir(this.config.archiveDir, m.domain.name), `${m.id}.json`);
    // Published by an archiver killed before the spool's files went: only they are left to go.
    if (existsSync(manifestFile)) {
      const prior = { manifest: readManifest(manifestFile), manifestFile };
      if (resticStoreOf(prior.manifest) !== null) {
        dropWaiting(waiting);
        return prior;
      }
    }
    assertWaitingBytes(waiting);
    const staged = await stageResticDump(this.config.archiveDir, { ...factsOf(m), memoryFile: m.memoryFile, metaDir: m.metaDir }, this.restic, this.host);
    const problem = await staged.staged.check();
    if (problem !== null) throw new VirtsnapError(`the repository's copy of RAM dump ${m.id} is not whole (${problem}): it stays in the spool`);
    const archived = await withArchiveLock(this.config.stateDir, this.config.lockTimeoutMs, () => publishDump(staged));
    dropWaiting(waiting);
    return archived;
  }

  async drop(dump: ArchivedDump): Promise<number> {
    return deleteStoredDump(dump, this.restic);
  }

  /**
   * An archiver killed after its backup left a snapshot of this dump (a
   * secret): forgotten with it, where the repository answers. Another host's
   * is never touched. The spool is freed either way: the repository is away
   * exactly when dumps pile up there.
   */
  async discard(waiting: ArchivedDump): Promise<number> {
    const id = waiting.manifest.id;
    try {
      const mine = (await this.restic.snapshots([TAG, idTag(id)])).filter((s) => s.hostname === this.host);
      if (mine.length > 0) await this.restic.forget(mine.map((s) => s.id));
    } catch (err) {
      log.warn(`could not look in ${this.where} for a half-stored copy of RAM dump ${id} (${(err as Error).message}): \`virtsnap gc\` names one if it is there`, { domain: waiting.manifest.domain.name });
    }
    return dropWaiting(waiting);
  }

  fetch(m: Manifest): Promise<LocalDump> {
    return localDump(m, this.config.stateDir, this.restic);
  }

  scan(): StoreScan {
    return scanArchive(this.config.archiveDir);
  }

  newest(): Manifest[] {
    return newestOf(this.scan().dumps);
  }

  remote(options: { host: string; guids?: ReadonlySet<string>; exclude?: ReadonlySet<string> }): Promise<ArchivedDump[]> {
    return repoDumps(this.restic, options);
  }

  readonly deepCheckName = 'restic check --read-data';

  async deepCheck(): Promise<string | null> {
    try {
      await this.restic.check('100%');
      return null;
    } catch (err) {
      return (err as Error).message;
    }
  }

  /**
   * `restic prune`, and the virtsnap snapshots no manifest here names,
   * reported (never forgotten: another host may own them). Called after
   * the archive lock is let go: a prune may take hours.
   */
  async collect(dryRun: boolean): Promise<StoreCollect> {
    try {
      const gc = await gcRestic(this.restic, this.scan().dumps, dryRun);
      return { kept: gc.unknown, pruned: gc.pruned };
    } catch (err) {
      return { kept: [`restic repository ${this.restic.repo}: ${(err as Error).message}; run \`virtsnap gc\` again`], pruned: false };
    }
  }
}
