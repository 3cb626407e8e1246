// `virtsnap verify [--deep] [DATASET|DOMAIN]`: is each RAM dump still what
// `virsh restore` needs? Every dump of the store (fetched to a private temp
// file when its bytes are elsewhere, lib/stores/) and every dump waiting in
// the spool (its structure: it has no sha256 until the archiver stores it).
import { existsSync } from 'node:fs';
import type { Config } from '../config.js';
import { checkDump } from '../dump-check.js';
import { snapshotNames, storedAt, type ArchivedDump, type Manifest } from '../manifest.js';
import { knownDumps, type DumpStore } from '../stores/index.js';
import { datasetOfSnapshot, isDatasetName, isInSubtree } from '../zfs.js';

export interface Verdict {
  id: string;
  domain: string;
  file: string;
  ok: boolean;
  /** What is wrong, or 'ok'. */
  detail: string;
}

function matches(m: Manifest, target: string | undefined): boolean {
  if (target === undefined || m.domain.name === target) return true;
  return isDatasetName(target) && snapshotNames(m).some((s) => isInSubtree(datasetOfSnapshot(s), target));
}

/**
 * `target`: a dataset (its subtree's dumps) or a domain name; all dumps
 * when absent. `deep`: the store's own check of everything it holds too
 * (restic: `restic check --read-data`, which reads the whole repository).
 */
async function problemOf(store: DumpStore, manifest: Manifest): Promise<string | null> {
  try {
    const local = await store.fetch(manifest);
    try {
      return await checkDump(local.manifest);
    } finally {
      local.release();
    }
  } catch (err) {
    return `cannot read it from ${store.where}: ${(err as Error).message}`;
  }
}

export async function verifyDumps(config: Pick<Config, 'overlayDir'>, store: DumpStore, target?: string, options: { deep?: boolean } = {}): Promise<Verdict[]> {
  const known = knownDumps(store, config);
  const verdicts: Verdict[] = known.broken.map((b) => ({ id: b.file, domain: '?', file: b.file, ok: false, detail: b.reason }));
  const dumps: ArchivedDump[] = known.dumps.filter((d) => matches(d.manifest, target));
  for (const dump of dumps) {
    let { manifest } = dump;
    let problem = await problemOf(store, manifest);
    // Read without its lock: a waiting dump the archiver stored meanwhile is gone from the spool. Its stored copy is checked instead.
    const moved = problem !== null && !existsSync(dump.manifestFile) ? knownDumps(store, config).dumps.find((d) => d.manifest.id === manifest.id) : undefined;
    if (moved !== undefined) {
      manifest = moved.manifest;
      problem = await problemOf(store, manifest);
    }
    verdicts.push({ id: manifest.id, domain: manifest.domain.name, file: storedAt(manifest), ok: problem === null, detail: problem ?? 'ok' });
  }
  if (options.deep === true && store.deepCheck !== undefined) {
    const problem = await store.deepCheck();
    verdicts.push({ id: store.deepCheckName ?? 'deep check', domain: '-', file: store.where, ok: problem === null, detail: problem ?? 'ok' });
  }
  return verdicts;
}
