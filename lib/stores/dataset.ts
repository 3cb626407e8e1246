// RAM inside the snapshot as a store (VIRTSNAP_STORE=dataset): the freeze
// has libvirt write the RAM into the VM's own dataset (lib/ram-in-dataset.ts),
// sanoid's snapshot holds it with the disks, syncoid sends it, sanoid's own
// pruning frees it. Nothing waits in a spool and nothing is archived; what
// `virtsnap status` and `check` know of it is the newest dump each VM has
// inside snapshots, as post recorded it (STATE_DIR/in-snapshots/). Dumps the
// archive dir still holds from before (VIRTSNAP_STORE=dir then) are listed,
// restored and pruned as the dir store does.
import { rmSync } from 'node:fs';
import { DirStore, type DirConfig } from './dir.js';
import { VirtsnapError } from '../errors.js';
import { dropWaiting, NothingToSealError } from '../spool.js';
import { factsOfEntry, type JournalEntry } from '../journal.js';
import { log } from '../log.js';
import { buildManifest, newestOf, type ArchivedDump, type Manifest } from '../manifest.js';
import { latestInSnapshots, ramFiles, recordLatestInSnapshots } from '../ram-in-dataset.js';
import type { SnapshotRef } from '../snapshot-id.js';
import { NOTHING_TO_COLLECT, type DumpStore, type LocalDump, type StoreCollect, type StoreScan } from './store.js';

export type DatasetConfig = DirConfig;

export class DatasetStore implements DumpStore {
  readonly kind = 'dataset' as const;
  readonly spooled = false;
  readonly where = 'inside the snapshots of each VM\'s dataset';

  /** The archive dir, for what it holds from before. */
  private readonly archive: DirStore;

  constructor(
    private readonly config: DatasetConfig,
    private readonly host: string,
  ) {
    this.archive = new DirStore(config, host);
  }

  /**
   * The snapshots carry the RAM already: what post reports (and status and
   * the metrics know) is the dump as they hold it. Its staging meta dir goes.
   */
  seal(entry: JournalEntry, tied: SnapshotRef[]): ArchivedDump {
    const where = entry.ramInDataset;
    if (where === undefined) throw new NothingToSealError(`RAM dump ${entry.tag} was saved in the overlay dir, not inside its dataset (VIRTSNAP_STORE changed to dataset since it was frozen): no snapshot holds it`);
    rmSync(entry.metaDir, { recursive: true, force: true });
    const inside = ramFiles(where.dir, entry.tag);
    const manifest = buildManifest(
      factsOfEntry(entry, tied, { libvirtUri: this.config.libvirtUri, hostname: this.host }),
      {
        memoryFile: `${tied[0]!.name}:${inside.save.slice(where.mountpoint.length)}`,
        bytes: where.bytes ?? entry.job?.memoryBytes ?? 0,
        sha256: '',
        compression: null,
        metaDir: null,
      },
    );
    log.info(`RAM dump ${entry.tag} is inside ${tied.map((t) => t.name).join(', ')} (${inside.save.slice(where.mountpoint.length + 1)})`, { domain: entry.domain.name });
    try {
      recordLatestInSnapshots(this.config.stateDir, manifest);
    } catch (err) {
      log.warn(`cannot record the dump for \`virtsnap status\` (${(err as Error).message})`, { domain: entry.domain.name });
    }
    return { manifest, manifestFile: `${tied[0]!.name}:${inside.manifest.slice(where.mountpoint.length)}` };
  }

  async keep(waiting: ArchivedDump): Promise<ArchivedDump> {
    throw new VirtsnapError(`RAM dump ${waiting.manifest.id} waits in the spool, and VIRTSNAP_STORE=dataset keeps RAM inside the snapshots: set VIRTSNAP_STORE to the store it was sealed for (dir or restic:REPO) so that the archiver takes it`);
  }

  /** Nothing of a waiting dump is in the snapshots: its spool files only (left from when the store was another). */
  async discard(waiting: ArchivedDump): Promise<number> {
    return dropWaiting(waiting);
  }

  /** A dump inside snapshots is never dropped by us (sanoid's pruning frees it); one in the archive dir from before, as the dir store does. */
  drop(dump: ArchivedDump): Promise<number> {
    return this.archive.drop(dump);
  }

  /** restore reads RAM inside a snapshot from a clone of it (lib/restore.ts); the archive dir's and the spool's are local. */
  fetch(m: Manifest): Promise<LocalDump> {
    return this.archive.fetch(m);
  }

  scan(): StoreScan {
    return this.archive.scan();
  }

  newest(): Manifest[] {
    return newestOf([...this.archive.scan().dumps, ...latestInSnapshots(this.config.stateDir).map((manifest) => ({ manifest }))]);
  }

  async remote(): Promise<ArchivedDump[]> {
    return [];
  }

  async collect(): Promise<StoreCollect> {
    return NOTHING_TO_COLLECT;
  }
}
