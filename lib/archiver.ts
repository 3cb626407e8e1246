// The archiver: drains the spool into the store, outside sanoid's run.
//
// Post seals each dump into the spool (renames only) and starts an archiver
// detached, as the pre hook starts the watchdog (lib/detached.ts); so do
// recover, the watchdog, and a pre hook that finds dumps waiting (after a
// reboot, or an archiver that gave up). It hashes, compresses and stores
// each waiting dump through the store (DumpStore.keep: the stored copy is
// checked before the spool's files go), oldest first, and retries with
// backoff while the store is away (a read-only or full archive dir, a
// restic repository locked by a long `restic prune` or unreachable).
//
// One archiver at a time (the `archiver` lock, taken without waiting: a
// second one leaves at once, the first picks up what came meanwhile), and
// one hand on each dump (`dump-<id>`, which prune and gc take before they
// delete a waiting dump). Killed half-way, the next archiver finishes the
// dump, once (each store's keep can be done again).
import path from 'node:path';
import type { Config } from './config.js';
import { alarm, startHelper } from './detached.js';
import { LockTimeoutError } from './errors.js';
import { sleep, withLock } from './lock.js';
import { log } from './log.js';
import { DUMP_ID, readManifest, type ArchivedDump } from './manifest.js';
import { recordArchived } from './metrics.js';
import { DumpGoneError, scanSpool, spoolDir } from './spool.js';
import type { DumpStore } from './stores/store.js';
import { existsSync, readdirSync } from 'node:fs';

export interface ArchiverDeps {
  config: Config;
  store: DumpStore;
}

export interface ArchiverOptions {
  /** First wait after a failed round; doubles up to `maxBackoffMs`. */
  backoffMs: number;
  maxBackoffMs: number;
  /** How long to keep trying while the store is away before leaving it to the next archiver. */
  patienceMs: number;
}

/**
 * Backoff from 2 s to 30 s: a store that comes back is used within half a
 * minute. After 6 h the archiver leaves; every later post, pre hook and
 * recover starts another, and `virtsnap check` warns after an hour.
 */
export const ARCHIVER_DEFAULTS: ArchiverOptions = { backoffMs: 2_000, maxBackoffMs: 30_000, patienceMs: 6 * 3600_000 };

/** How an archiver ended. */
export type ArchiverOutcome =
  /** The spool is empty (of dumps it could take). */
  | { kind: 'drained'; archived: ArchivedDump[] }
  /** Another archiver runs: it takes what waits. */
  | { kind: 'busy' }
  /** The store stayed away for all its patience: what waits is named. */
  | { kind: 'gave-up'; archived: ArchivedDump[]; waiting: number; reason: string };

function lockDir(config: Pick<Config, 'stateDir'>): string {
  return path.join(config.stateDir, 'locks');
}

/**
 * The lock a dump waiting in the spool is handled under: the archiver's
 * while it stores it, prune's and gc's while they delete it, a restore's
 * while it reads it. `waitMs`: how long to wait for it (0: throw
 * LockTimeoutError at once when another has it).
 */
export function withWaitingDump<T>(config: Pick<Config, 'stateDir'>, id: string, fn: () => T | Promise<T>, waitMs = 0): Promise<T> {
  return withLock(lockDir(config), `dump-${id}`, Date.now() + waitMs, fn);
}

/** Runs `fn` as the one archiver, or says another one is at work. */
async function asTheArchiver<T>(config: Pick<Config, 'stateDir'>, fn: () => Promise<T>): Promise<{ kind: 'ran'; value: T } | { kind: 'busy' }> {
  try {
    return { kind: 'ran', value: await withLock(lockDir(config), 'archiver', Date.now(), fn) };
  } catch (err) {
    if (err instanceof LockTimeoutError && /archiver\.lock/.test(err.message)) return { kind: 'busy' };
    throw err;
  }
}

/**
 * Drains the spool into the store, retrying with backoff while it fails.
 * Returns once nothing waits, another archiver has taken over, or the
 * store stayed away longer than `patienceMs`.
 */
export async function drainSpool(deps: ArchiverDeps, options: ArchiverOptions = ARCHIVER_DEFAULTS): Promise<ArchiverOutcome> {
  const archived: ArchivedDump[] = [];
  const started = Date.now();
  for (;;) {
    const round = await asTheArchiver(deps.config, () => drainRounds(deps, options, started, archived));
    if (round.kind === 'busy') return archived.length > 0 ? { kind: 'drained', archived } : round;
    if (round.value !== null) return { kind: 'gave-up', archived, waiting: scanSpool(deps.config).dumps.length, reason: round.value };
    // A post may have sealed a dump after our last look and found us busy: look once more with the lock let go.
    if (scanSpool(deps.config).dumps.length === 0) return { kind: 'drained', archived };
  }
}

/** Rounds over the spool until it is empty (null), or the reason the archiver gives up. */
async function drainRounds(deps: ArchiverDeps, options: ArchiverOptions, started: number, archived: ArchivedDump[]): Promise<string | null> {
  let backoff = options.backoffMs;
  for (;;) {
    const waiting = scanSpool(deps.config).dumps;
    if (waiting.length === 0) return null;
    let failure: string | null = null;
    let skipped = 0;
    for (const dump of waiting) {
      const outcome = await keepOne(deps, dump);
      if (outcome.kind === 'kept') {
        archived.push(outcome.dump);
        backoff = options.backoffMs;
      } else if (outcome.kind === 'skipped') skipped++;
      else if (outcome.kind === 'failed') failure = outcome.reason;
    }
    if (failure === null && skipped === 0) continue;
    if (failure !== null && Date.now() - started >= options.patienceMs) return failure;
    await sleep(failure === null ? 1_000 : backoff);
    if (failure !== null) backoff = Math.min(options.maxBackoffMs, backoff * 2);
  }
}

type KeepOutcome = { kind: 'kept'; dump: ArchivedDump } | { kind: 'gone' } | { kind: 'skipped' } | { kind: 'failed'; reason: string };

/** One waiting dump into the store, under its own lock, as its manifest says now (prune or gc may have changed it since the scan). */
async function keepOne(deps: ArchiverDeps, dump: ArchivedDump): Promise<KeepOutcome> {
  const m = dump.manifest;
  const ctx = { domain: m.domain.name };
  const t0 = Date.now();
  try {
    const kept = await withWaitingDump(deps.config, m.id, () => {
      if (!existsSync(dump.manifestFile)) return null; // dropped or stored meanwhile
      return deps.store.keep({ manifest: readManifest(dump.manifestFile, 'spool'), manifestFile: dump.manifestFile });
    });
    if (kept === null) return { kind: 'gone' };
    const waited = Math.round((Date.now() - Date.parse(m.times.archivedAt)) / 1000);
    log.info(`RAM dump ${m.id} stored in ${deps.store.where} in ${Date.now() - t0} ms, ${waited} s after it was sealed`, ctx);
    await recordArchived(deps.config, kept.manifest);
    return { kind: 'kept', dump: kept };
  } catch (err) {
    // prune, gc or a restore holds this dump right now: after them.
    if (err instanceof LockTimeoutError && err.message.includes(`dump-${m.id}.lock`)) return { kind: 'skipped' };
    // Its memory file is gone and no store holds it: retrying would fail for ever; said once, loudly.
    if (err instanceof DumpGoneError) {
      log.error(err.message, ctx);
      return { kind: 'gone' };
    }
    const reason = (err as Error).message;
    log.warn(`RAM dump ${m.id} waits in the spool: ${reason}; trying again`, ctx);
    return { kind: 'failed', reason };
  }
}

/** Whether any dump waits in the spool: one readdir (the pre hook), named as scanSpool names them. */
export function spoolHasDumps(config: Pick<Config, 'overlayDir'>): boolean {
  try {
    return readdirSync(spoolDir(config)).some((f) => f.endsWith('.json') && DUMP_ID.test(f.slice(0, -'.json'.length)));
  } catch {
    return false;
  }
}

/**
 * Starts an archiver detached. Never fails its caller: a dump that waits is
 * safe in the spool, said here, named by `virtsnap status` and `check`, and
 * the next post, pre hook or `virtsnap archive` drains it.
 */
export async function startArchiver(config: Config): Promise<void> {
  try {
    await startHelper('archiver', ['--wait'], config);
  } catch (err) {
    log.warn(`could not start the archiver (${(err as Error).message}): RAM dumps wait in ${spoolDir(config)}; \`virtsnap archive\` stores them`);
  }
}

/** The archiver's process (`virtsnap archive`): what it did, said where a person looks. */
export async function runArchiver(deps: ArchiverDeps, options: ArchiverOptions = ARCHIVER_DEFAULTS): Promise<ArchiverOutcome> {
  const outcome = await drainSpool(deps, options);
  if (outcome.kind === 'gave-up') {
    await alarm('archiver', `${outcome.waiting} RAM dump(s) still wait in ${spoolDir(deps.config)}: ${deps.store.where} failed for ${Math.round(options.patienceMs / 60_000)} min (${outcome.reason}); the next run or \`virtsnap archive\` tries again`, {});
  }
  return outcome;
}
