// Finishing what an interrupted run left behind (`virtsnap recover`, the
// watchdog, and the pre hook before every freeze): every domain still in the
// journal whose run is over is committed back onto its own disks; its RAM
// dump is sealed if it is complete and its snapshots exist.
//
// A domain that cannot be brought back (undefined, shut down on its
// overlays, a commit that keeps failing) is *stuck*: every later run names
// it, and `virtsnap recover --discard DOMAIN` ends its entry once a person
// has dealt with it.
import type { Deps } from './deps.js';
import { UsageError, VirtsnapError } from './errors.js';
import type { JournalEntry } from './journal.js';
import { log } from './log.js';
import { abandoned } from './stuck.js';
import { startArchiver } from './archiver.js';
import { isWaiting } from './manifest.js';
// thaw.js (and the archive, save-image and XML code under it) loads only when
// there is something to recover: every pre hook calls recover, and the
// hooks' start-up is most of what a run with nothing to do costs.
import { exists, isInsideDir } from './fsutil.js';
import { withLock } from './lock.js';
import { recordRun } from './metrics.js';
import type { ArchivedDump } from './manifest.js';

export interface RecoverResult {
  recovered: string[];
  skipped: string[];
  failed: string[];
  /** Failed for a reason no retry fixes (see StuckError): a person must act. */
  stuck: string[];
  /** Dumps sealed (waiting for the archiver, or inside their snapshots). */
  sealed: ArchivedDump[];
}

export interface RecoverOptions {
  /** Also take over entries whose run still looks alive. */
  force: boolean;
  quietIfLive?: boolean;
  /** Only this run's entries (the watchdog). */
  runId?: string;
}

export async function recover(deps: Deps, options: RecoverOptions): Promise<RecoverResult> {
  const result: RecoverResult = { recovered: [], skipped: [], failed: [], stuck: [], sealed: [] };
  const withoutDump: { name: string; uuid: string }[] = [];
  const entries = deps.journal.list();
  if (entries.length === 0) return result;
  const { StuckError, thawDomain } = await import('./thaw.js');
  for (const entry of entries) {
    if (options.runId !== undefined && entry.runId !== options.runId) continue;
    const ctx = { domain: entry.domain.name };
    if (!options.force && !abandoned(entry)) {
      if (!options.quietIfLive) log.warn(`run ${entry.runId} (pid ${entry.owner.pid}) is still going: left alone (use --force if it is stuck)`, ctx);
      result.skipped.push(entry.domain.name);
      continue;
    }
    try {
      log.info(`recovering from run ${entry.runId}, left at step ${entry.step}`, ctx);
      const { back, dump } = await thawDomain(entry, deps, { keepDump: true });
      if (back.kind === 'elsewhere') continue;
      result.recovered.push(entry.domain.name);
      if (dump.kind === 'sealed') result.sealed.push(dump.dump);
      else if (dump.kind === 'discarded') withoutDump.push(entry.domain);
    } catch (err) {
      log.error((err as Error).message, ctx);
      result.failed.push(entry.domain.name);
      withoutDump.push(entry.domain);
      if (err instanceof StuckError) result.stuck.push(entry.domain.name);
    }
  }
  if (result.sealed.length + withoutDump.length > 0) await recordRun(deps.config, { dumps: result.sealed.map((d) => d.manifest), failed: withoutDump });
  if (result.sealed.some((d) => isWaiting(d.manifest))) await startArchiver(deps.config);
  return result;
}

export interface DiscardResult {
  domain: string;
  /** Files of the entry kept because they may hold the VM's newest writes. */
  leftBehind: string[];
  /** Snapshots taken while it was stuck: they hold its disk from before the freeze. */
  staleSnapshots: string[];
}

/**
 * Ends the journal entry of a domain that can never be thawed. Deletes only
 * the RAM dump (it belongs to no snapshot now); the overlays are left where
 * they are and named: after a shut-down or an undefine they hold the VM's
 * newest writes.
 */
export async function discardEntry(deps: Deps, domain: string): Promise<DiscardResult> {
  const found = deps.journal.list().find((e) => e.domain.name === domain || e.domain.uuid === domain);
  if (found === undefined) throw new UsageError(`no journal entry for domain ${JSON.stringify(domain)}: see \`virtsnap status\``);
  // Under the thaw lock, like every thaw: never beside a recover, the watchdog or a post.
  return withLock(deps.journal.lockDir, `thaw-${found.domain.uuid}`, Date.now() + deps.config.lockTimeoutMs, async () => {
    const entry = deps.journal.read(found.domain.uuid);
    if (entry === null || entry.tag !== found.tag) throw new VirtsnapError(`the journal entry of ${JSON.stringify(found.domain.name)} changed meanwhile: look at \`virtsnap status\` again`);
    if (!abandoned(entry)) {
      throw new VirtsnapError(`run ${entry.runId} (pid ${entry.owner.pid}) still holds domain ${JSON.stringify(entry.domain.name)}: wait for it to end`);
    }
    if (entry.step === 'committed') {
      throw new VirtsnapError(
        `domain ${JSON.stringify(entry.domain.name)} is back on its own disks; its entry only keeps the RAM dump of ${entry.snapshots.join(', ')} until it is sealed into the spool: see why in \`virtsnap status\`, fix it and run \`virtsnap recover\``,
      );
    }
    if (await deps.virsh.exists(entry.domain.uuid)) {
      const now = await deps.virsh.domain(entry.domain.uuid);
      const onOverlay = now.disks.filter((d) => d.source !== null && isInsideDir(d.source, deps.config.overlayDir));
      if (now.state !== 'shut off' && onOverlay.length > 0) {
        throw new VirtsnapError(
          `domain ${JSON.stringify(entry.domain.name)} runs on overlays (${onOverlay.map((d) => d.source).join(', ')}): run \`virtsnap recover\` to commit it back instead of discarding`,
        );
      }
    }
    (await import('./thaw.js')).dropDump(entry);
    deps.journal.remove(entry.domain.uuid);
    const leftBehind = entry.overlays.map((o) => o.overlay).filter((f): f is string => f !== null && exists(f));
    log.warn(
      `ended the journal entry of run ${entry.runId}; its RAM dump is deleted` +
        (leftBehind.length > 0 ? `; left behind, with the VM's writes since ${entry.frozenAt ?? entry.startedAt}: ${leftBehind.join(', ')}` : ''),
      { domain: entry.domain.name },
    );
    return { domain: entry.domain.name, leftBehind, staleSnapshots: entry.staleSnapshots ?? [] };
  });
}
