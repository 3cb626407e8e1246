// Where RAM dumps live: the one interface every store implements, so that
// freeze, thaw, the archiver, status, restore and retention never ask which
// store it is. One store per host's settings (VIRTSNAP_STORE), chosen once
// where the dependencies are built (lib/stores/index.ts storeFor).
//
//   dir      the archive dir: a libvirt save image (gzip), its manifest and meta dir
//   restic   a restic repository for the bytes, manifests in the archive dir
//   dataset  inside the snapshots of the VM's own dataset: written there by
//            the freeze, freed by sanoid's own pruning
import type { JournalEntry } from '../journal.js';
import type { ArchivedDump, Manifest } from '../manifest.js';
import type { SnapshotRef } from '../snapshot-id.js';

/** A dump's memory file as a local path, and how to let it go (a copy fetched from restic is removed). */
export interface LocalDump {
  /** The manifest with `memoryFile` a local file. */
  manifest: Manifest;
  release(): void;
}

/** What a store holds, as the archive dir's scan gives it. */
export interface StoreScan {
  dumps: ArchivedDump[];
  /** Manifests that cannot be read: never a reason to delete anything. */
  broken: { file: string; reason: string }[];
  /** Half-written files of ours that nothing refers to: gc deletes these. */
  strays: string[];
  /** Everything else: reported, never deleted. */
  foreign: { path: string; reason: string }[];
}

/** What gc's store-specific step did (restic: prune, and the snapshots no manifest here names). */
export interface StoreCollect {
  /** Left alone, with the reason. */
  kept: string[];
  /** Space given back (restic prune ran). */
  pruned: boolean;
}

export interface DumpStore {
  readonly kind: 'dir' | 'restic' | 'dataset';
  /** Whether a sealed dump waits in the spool for the archiver (dir, restic), or already is where it stays (dataset). */
  readonly spooled: boolean;
  /** For people: where the dumps go. */
  readonly where: string;
  /**
   * The dump of a domain back on its own disks, tied to `tied`: sealed into
   * the spool (renames), or recorded where it is (inside the snapshots).
   * Never hashes or copies: post and the next run never wait for a store.
   */
  seal(entry: JournalEntry, tied: SnapshotRef[]): ArchivedDump;
  /**
   * The archiver: a dump waiting in the spool into the store: hashed,
   * compressed as the settings say, stored, the stored copy checked; then
   * its spool files go. Done once even when killed half-way and done again.
   */
  keep(waiting: ArchivedDump): Promise<ArchivedDump>;
  /** prune, gc: a stored dump's bytes, then its manifest (a crash in between leaves a manifest for the next gc). Returns the bytes freed here. */
  drop(dump: ArchivedDump): Promise<number>;
  /**
   * prune, gc: a dump waiting in the spool that no snapshot needs (its own
   * lock held): what an archiver killed half-way left of it in the store
   * (a `.part`, a restic snapshot of this host), then its spool files.
   */
  discard(waiting: ArchivedDump): Promise<number>;
  /** verify, restore: the memory file as a local path. */
  fetch(m: Manifest): Promise<LocalDump>;
  /** The dumps it holds, with what else it found (list, gc, status, check, verify, restore). */
  scan(): StoreScan;
  /** The newest dump of each domain it knows (status, check). */
  newest(): Manifest[];
  /**
   * Dumps this host has no manifest of, tied to one of `guids`, read from the
   * store itself (a restic repository shared with the host that made them):
   * `host`'s only. Empty for stores that keep nothing elsewhere.
   */
  remote(options: { host: string; guids?: ReadonlySet<string>; exclude?: ReadonlySet<string> }): Promise<ArchivedDump[]>;
  /** gc's step of its own, after the dumps no snapshot needs are dropped (outside the archive lock). */
  collect(dryRun: boolean): Promise<StoreCollect>;
  /** `virtsnap verify --deep`: the store's own check of all it holds (what is wrong, or null); absent where there is none. */
  deepCheck?(): Promise<string | null>;
  /** What deepCheck runs, for people. */
  readonly deepCheckName?: string;
}

/** A store that has nothing to do for one of the steps above. */
export const NOTHING_TO_COLLECT: StoreCollect = { kept: [], pruned: false };
