// The archive dir as a store (VIRTSNAP_STORE=dir, the default): each dump a
// libvirt save image `virsh restore` reads (gzip unless VIRTSNAP_COMPRESS=no),
// its manifest and its meta dir, under `ARCHIVE_DIR/<domain>/` (lib/archive.ts).
import { existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { deleteDump, domainDir, publishDump, scanArchive, stageFile, withArchiveLock } from '../archive.js';
import type { Config } from '../config.js';
import { hasProgram } from '../exec.js';
import { compressionFor, UNKNOWN_STACK } from '../libvirt/stack.js';
import { LibvirtClient } from '../libvirt/virsh.js';
import { log } from '../log.js';
import { VirtsnapError } from '../errors.js';
import { ensureDirBelow, removeIfExists } from '../fsutil.js';
import type { JournalEntry } from '../journal.js';
import { factsOf, newestOf, readManifest, type ArchivedDump, type Compression, type Manifest } from '../manifest.js';
import type { SnapshotRef } from '../snapshot-id.js';
import { assertWaitingBytes, dropWaiting, sealIntoSpool } from '../spool.js';
import { checkDump } from '../dump-check.js';
import { NOTHING_TO_COLLECT, type DumpStore, type LocalDump, type StoreCollect, type StoreScan } from './store.js';

export type DirConfig = Pick<Config, 'archiveDir' | 'overlayDir' | 'stateDir' | 'compression' | 'lockTimeoutMs' | 'libvirtUri'>;

export class DirStore implements DumpStore {
  readonly kind = 'dir' as const;
  readonly spooled = true;
  readonly where: string;
  /** VIRTSNAP_COMPRESS on this stack, asked once (libvirt's version, whether zstd is installed). */
  private compression: Promise<Compression | null> | null = null;

  constructor(
    private readonly config: DirConfig,
    private readonly host: string,
  ) {
    this.where = config.archiveDir;
  }

  seal(entry: JournalEntry, tied: SnapshotRef[]): ArchivedDump {
    return sealIntoSpool(entry, tied, this.config, this.host);
  }

  /**
   * From the spool into the archive dir. Each step can be done again (the
   * archiver holds the dump's own lock, so only one does it at a time): a
   * dump an earlier archiver stored whole (its manifest and memory file
   * there, the sha256 right) only leaves the spool; a manifest whose stored
   * copy is missing or wrong (killed between the two) is written again from
   * the spool's copy, which goes only once the stored copy is checked.
   * Hashing and compressing run outside the archive lock: prune and gc wait
   * only for the renames.
   */
  async keep(waiting: ArchivedDump): Promise<ArchivedDump> {
    const m = waiting.manifest;
    const dir = domainDir(this.config.archiveDir, m.domain.name);
    ensureDirBelow(dir, 'VIRTSNAP_ARCHIVE_DIR');
    const dest = path.join(dir, `${m.id}.save`);
    const manifestFile = path.join(dir, `${m.id}.json`);
    const locked = <T>(fn: () => T | Promise<T>) => withArchiveLock(this.config.stateDir, this.config.lockTimeoutMs, fn);
    if (existsSync(manifestFile)) {
      const prior = { manifest: readManifest(manifestFile), manifestFile };
      if ((await checkDump(prior.manifest)) === null) {
        dropWaiting(waiting);
        return prior;
      }
      // Cut short before its memory file was in place: only the spool's copy counts.
      if (!existsSync(m.memoryFile)) {
        throw new VirtsnapError(`RAM dump ${m.id} is in the archive (${manifestFile}) but does not verify, and its spool copy is gone: check it with \`virtsnap verify\``);
      }
      await locked(() => rmSync(manifestFile, { force: true }));
    }
    assertWaitingBytes(waiting);
    removeIfExists(`${dest}.part`); // a copy an archiver killed mid-way left
    const compression = await this.compressionHere();
    const staged = await stageFile(m.memoryFile, dest, compression);
    const problem = await staged.check();
    if (problem !== null) {
      removeIfExists(`${dest}.part`);
      throw new VirtsnapError(`${problem}: RAM dump ${m.id} stays in the spool`);
    }
    const archived = await locked(() => publishDump({ dir, input: { ...factsOf(m), memoryFile: m.memoryFile, metaDir: m.metaDir, compression }, memoryFile: dest, staged }));
    dropWaiting(waiting);
    return archived;
  }

  /** How dumps are compressed here (libvirt/stack.ts compressionFor); said once when the setting cannot be followed. */
  private compressionHere(): Promise<Compression | null> {
    this.compression ??= (async () => {
      const setting = this.config.compression;
      if (setting === null || setting === 'gzip') return setting;
      const stack = await new LibvirtClient({ uri: this.config.libvirtUri }).stack().catch(() => UNKNOWN_STACK);
      const zstd = await hasProgram('zstd');
      const { compression, note } = compressionFor(setting, stack, zstd);
      if (note !== null) log.warn(note);
      return compression;
    })();
    return this.compression;
  }

  async discard(waiting: ArchivedDump): Promise<number> {
    removeIfExists(path.join(domainDir(this.config.archiveDir, waiting.manifest.domain.name), `${waiting.manifest.id}.save.part`));
    return dropWaiting(waiting);
  }

  async drop(dump: ArchivedDump): Promise<number> {
    if (dump.manifest.store !== undefined) throw new VirtsnapError(`RAM dump ${dump.manifest.id} is in ${dump.manifest.store.kind === 'restic' ? `restic repository ${dump.manifest.store.repo}` : 'another store'}: set VIRTSNAP_STORE to it to drop it`);
    return deleteDump(dump);
  }

  /** The archive dir's and the spool's files are local already. */
  async fetch(m: Manifest): Promise<LocalDump> {
    if (m.store !== undefined && m.store.kind !== 'spool') {
      throw new VirtsnapError(`RAM dump ${m.id} is in ${m.store.kind === 'restic' ? `restic repository ${m.store.repo}: set VIRTSNAP_STORE=restic:${m.store.repo} (and VIRTSNAP_RESTIC_PASSWORD_FILE)` : 'another store'} to read it`);
    }
    return { manifest: m, release: () => undefined };
  }

  scan(): StoreScan {
    return scanArchive(this.config.archiveDir);
  }

  newest(): Manifest[] {
    return newestOf(this.scan().dumps);
  }

  async remote(): Promise<ArchivedDump[]> {
    return [];
  }

  async collect(): Promise<StoreCollect> {
    return NOTHING_TO_COLLECT;
  }
}
