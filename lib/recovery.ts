// Finishing what a crashed run left behind (`virtsnap recover`, and the pre
// hook before every freeze): every domain still in the journal whose run is
// dead is committed back onto its own disks; its RAM dump is archived if it
// is complete and its snapshots exist.
import type { Deps } from './freeze.js';
import { thawDomain } from './freeze.js';
import { ownerIsAlive } from './owner.js';
import { log } from './log.js';

export interface RecoverResult {
  recovered: string[];
  skipped: string[];
  failed: string[];
}

export async function recover(deps: Deps, options: { force: boolean; quietIfLive?: boolean }): Promise<RecoverResult> {
  const result: RecoverResult = { recovered: [], skipped: [], failed: [] };
  for (const entry of deps.journal.list()) {
    const ctx = { domain: entry.domain.name };
    if (!options.force && ownerIsAlive(entry.owner)) {
      if (!options.quietIfLive) log.warn(`run ${entry.runId} (pid ${entry.owner.pid}) is still going: left alone (use --force if it is stuck)`, ctx);
      result.skipped.push(entry.domain.name);
      continue;
    }
    try {
      log.info(`recovering from run ${entry.runId}, left at step ${entry.step}`, ctx);
      await thawDomain(entry, deps, { keepDump: true });
      result.recovered.push(entry.domain.name);
    } catch (err) {
      log.error((err as Error).message, ctx);
      result.failed.push(entry.domain.name);
    }
  }
  return result;
}
