// The journal: what virtsnap has done to each domain that is not yet undone.
//
// One file per domain, `STATE_DIR/journal/<uuid>.json`, written *before* each
// step that changes the VM. While it exists the domain belongs to the run
// named in it: another run waits for it to go away (bounded), and after a
// crash it says exactly what to undo (`virtsnap recover`). Updates of a
// domain's journal happen under a short mutex, `STATE_DIR/locks/<uuid>.lock`.
import type { DumpDisk, DumpFacts } from './manifest.js';
import type { RamInDataset } from './ram-in-dataset.js';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { asFsError, FsError, LockTimeoutError, VirtsnapError } from './errors.js';
import { sleep, withLock } from './lock.js';
import { log } from './log.js';
import type { Owner } from './owner.js';
import { ensureDirBelow, removeIfExists, writeJsonAtomic } from './fsutil.js';
import type { CompletedJob } from './libvirt/virsh.js';
import type { SnapshotRef } from './snapshot-id.js';
import type { Mode } from './mode.js';

export type Step =
  /** snapshot-create is about to run: overlays and memory file may exist. */
  | 'snapshotting'
  /** The domain runs on overlays; the memory file is complete. */
  | 'frozen'
  /** Block commits are running or about to. */
  | 'committing'
  /** The domain is back on its own disks; the memory file still waits in the overlay dir. */
  | 'committed'
  /**
   * A restore holds the domain (it stops, rolls back or restores it): no run
   * freezes it meanwhile. Nothing of a run to undo; the restore removes the
   * entry when done, `recover` one whose restore died.
   */
  | 'restoring';

/** The disks a freeze held still, as a dump's manifest names them. */
function dumpDisksOf(entry: Pick<JournalEntry, 'overlays'>): DumpDisk[] {
  return entry.overlays.map((o) => ({ target: o.target, source: o.original, dataset: o.dataset, format: o.format, bytes: o.bytes }));
}

/** What a frozen domain's dump is, from its journal entry, tied to `tied`: what every manifest of it is built from (buildManifest). */
export function factsOfEntry(entry: JournalEntry, tied: SnapshotRef[], where: { libvirtUri: string; hostname: string }): DumpFacts {
  return {
    id: entry.tag,
    domain: entry.domain,
    snapshots: tied,
    types: entry.types,
    disks: dumpDisksOf(entry),
    startedAt: entry.startedAt,
    frozenAt: entry.frozenAt ?? null,
    job: entry.job ?? null,
    commitMs: entry.commitMs ?? null,
    libvirtUri: where.libvirtUri,
    hostname: where.hostname,
  };
}

export interface OverlayRecord {
  target: string;
  /** The disk's own image, in a snapshotted dataset. */
  original: string;
  /** Its format (qcow2, raw), as the domain uses it. */
  format: string | null;
  /** Its size when frozen (null for a block device). */
  bytes: number | null;
  dataset: string;
  /** null: frozen without an overlay (a paused domain, snapshot='manual'); nothing to commit. */
  overlay: string | null;
}

export interface JournalEntry {
  format: 'virtsnap-journal/1';
  runId: string;
  targets: string[];
  snapnames: string[];
  types: string[];
  domain: { name: string; uuid: string };
  /** How it was frozen (lib/mode.ts); absent in entries from before modes: ram. */
  mode?: Mode;
  step: Step;
  /** Unique tag of this freeze, used in every file name it makes. */
  tag: string;
  memoryFile: string;
  /** VIRTSNAP_STORE=dataset: the memory file is in this dataset, removed from it before the disks move on. */
  ramInDataset?: RamInDataset;
  /** Domain XML, NVRAM and TPM copies waiting to go into the archive with the dump. */
  metaDir: string;
  overlays: OverlayRecord[];
  /** Every `dataset@snapname` that holds this domain's frozen disks. */
  snapshots: string[];
  /** Where those datasets were mounted at the freeze (the dump's disk paths are under these). */
  mountpoints?: Record<string, string>;
  /**
   * guids of those names that already existed right after the RAM was saved:
   * such a snapshot holds older disks and the dump is never tied to it.
   */
  existedAtFreeze?: Record<string, string>;
  /** The snapshots the dump is tied to, decided before the first commit (lib/snapshot-id.ts). */
  tied?: SnapshotRef[];
  /** The process that owns this run (sanoid, or virtsnap itself); its death makes the entry stale. */
  owner: Owner;
  /** The virtsnap process doing the freeze (the pre hook): while it lives, nobody else judges the domain. */
  worker?: Owner;
  /** The domain's state when frozen: a thaw resumes it only if it ran, and only from a pause of ours. */
  stateBefore?: string;
  /**
   * Snapshots taken while this domain could not be thawed: they hold its disk
   * as it was when it was frozen, not as the VM has it now (it writes to the overlay).
   */
  staleSnapshots?: string[];
  /**
   * The domain's migration downtime limit before the freeze lowered it for
   * its save (lib/freeze.ts); present only while it may still be lowered:
   * a thaw sets it back.
   */
  downtimeLimitBefore?: number;
  startedAt: string;
  frozenAt?: string;
  job?: CompletedJob;
  /** How long the commits took, once they are done. */
  commitMs?: number;
  updatedAt: string;
}

/** A journal file that is not an entry: named by status, check and doctor; it blocks nothing but its own domain. */
export interface DamagedEntry {
  file: string;
  /** The domain's UUID, from the file's name. */
  uuid: string;
  reason: string;
}

/** A journal file that cannot be read as an entry: what its domain's freeze refuses on (nobody knows what state it is in). */
export class DamagedJournalError extends VirtsnapError {
  override name = 'DamagedJournalError';
}

/** What is wrong with a journal file's text as an entry, or null. */
export function entryProblem(text: string): string | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return 'not JSON';
  }
  const e = value as Partial<JournalEntry> | null;
  if (e === null || typeof e !== 'object' || e.format !== 'virtsnap-journal/1') return 'not a virtsnap journal entry';
  if (typeof e.domain?.uuid !== 'string' || typeof e.runId !== 'string' || typeof e.step !== 'string' || !Array.isArray(e.overlays) || typeof e.owner?.pid !== 'number') {
    return 'fields missing';
  }
  return null;
}

export class Journal {
  readonly dir: string;
  readonly lockDir: string;

  constructor(stateDir: string) {
    this.dir = path.join(stateDir, 'journal');
    this.lockDir = path.join(stateDir, 'locks');
  }

  private file(uuid: string): string {
    return path.join(this.dir, `${uuid}.json`);
  }

  read(uuid: string): JournalEntry | null {
    let text: string;
    try {
      text = readFileSync(this.file(uuid), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    const problem = entryProblem(text);
    if (problem !== null) throw new DamagedJournalError(`journal entry ${this.file(uuid)} is damaged (${problem}): its domain is left alone; check it with \`virsh domblklist\` (on an overlay? \`virtsnap recover\` cannot tell), then delete the file`);
    return JSON.parse(text) as JournalEntry;
  }

  write(entry: JournalEntry): void {
    ensureDirBelow(this.dir, 'VIRTSNAP_STATE_DIR');
    const file = this.file(entry.domain.uuid);
    try {
      writeJsonAtomic(file, { ...entry, updatedAt: new Date().toISOString() });
    } catch (err) {
      throw asFsError(err) === null ? err : new FsError(err as NodeJS.ErrnoException, file, 'cannot write the journal (VIRTSNAP_STATE_DIR)');
    }
  }

  update(entry: JournalEntry, changes: Partial<JournalEntry>): JournalEntry {
    const next = { ...entry, ...changes };
    this.write(next);
    return next;
  }

  /**
   * An update that must not stop a thaw: the thaw is the undo, and a full or
   * read-only state dir must not leave the VM on its overlays. Returns whether
   * the entry on disk now says what `entry` says.
   */
  tryUpdate(entry: JournalEntry, changes: Partial<JournalEntry>): { entry: JournalEntry; written: boolean } {
    const next = { ...entry, ...changes };
    try {
      this.write(next);
      return { entry: next, written: true };
    } catch (err) {
      log.warn(`cannot write the journal in ${this.dir} (${(err as Error).message}): going on without it`, { domain: entry.domain.name });
      return { entry: next, written: false };
    }
  }

  remove(uuid: string): void {
    removeIfExists(this.file(uuid));
  }

  /**
   * Every entry that can be read. A damaged one (a torn write, a disk
   * error, a hand edit) is left out: one domain's entry must never stop
   * another's thaw. `damaged()` names them.
   */
  list(): JournalEntry[] {
    return this.scan().entries;
  }

  /** Journal files that are not entries. */
  damaged(): DamagedEntry[] {
    return this.scan().damaged;
  }

  scan(): { entries: JournalEntry[]; damaged: DamagedEntry[] } {
    const result: { entries: JournalEntry[]; damaged: DamagedEntry[] } = { entries: [], damaged: [] };
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return result;
      throw err;
    }
    for (const name of names.sort()) {
      if (!name.endsWith('.json') || name.startsWith('.')) continue;
      const uuid = name.slice(0, -'.json'.length);
      try {
        const entry = this.read(uuid);
        if (entry) result.entries.push(entry);
      } catch (err) {
        result.damaged.push({ file: this.file(uuid), uuid, reason: (err as Error).message });
      }
    }
    return result;
  }

  /**
   * Makes `entry` the domain's journal once no other run holds the domain,
   * waiting at most `timeoutMs`. Two runs on one domain never interleave.
   */
  async claim(entry: JournalEntry, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const holder = await this.withMutex(entry.domain.uuid, deadline, () => {
        const current = this.read(entry.domain.uuid);
        if (current === null) this.write(entry);
        return current;
      });
      if (holder === null) return;
      if (Date.now() >= deadline) {
        throw new LockTimeoutError(
          `domain ${JSON.stringify(entry.domain.name)} is held by run ${holder.runId} (step ${holder.step}, since ${holder.startedAt}); ` +
            `waited ${Math.round(timeoutMs / 1000)}s: if no sanoid or virtsnap is running, run \`virtsnap recover\``,
        );
      }
      await sleep(250);
    }
  }

  /** Runs `fn` holding the domain's mutex. */
  withMutex<T>(uuid: string, deadline: number, fn: () => T): Promise<T> {
    return withLock(this.lockDir, uuid, deadline, fn);
  }
}

