// `virtsnap list [--json] [DATASET]`: the RAM dumps in the store, and those
// waiting in the spool for the archiver.
import { isWaiting, snapshotNames, storedAt, type ArchivedDump, type Manifest } from '../manifest.js';
import { VirtsnapError } from '../errors.js';
import { knownDumps, type DumpStore } from '../stores/index.js';
import { hostname } from 'node:os';
import { log } from '../log.js';
import { follow, locate } from '../snapshot-id.js';
import type { Config } from '../config.js';
import { assertDatasetName, datasetOfSnapshot, isInSubtree, type ZfsClient } from '../zfs.js';
import { table } from '../format.js';

export interface ListedDump {
  id: string;
  domain: string;
  uuid: string;
  snapshots: string[];
  memoryFile: string;
  bytes: number;
  sha256: string;
  createdAt: string;
  pauseMs: number | null;
  /** Waiting in the spool for the archiver (restore and verify use it all the same). */
  waiting: boolean;
}

/** The dumps, their snapshots under their current names (renamed or promoted ones are followed by guid). */
export async function listArchived(config: Pick<Config, 'overlayDir'>, store: DumpStore, zfs: ZfsClient, dataset?: string): Promise<ListedDump[]> {
  if (dataset !== undefined) assertDatasetName(dataset, 'virtsnap list');
  const known = knownDumps(store, config);
  const broken = known.broken[0];
  if (broken !== undefined) throw new VirtsnapError(broken.reason);
  let dumps = known.dumps;
  // No manifest here (another host that shares the restic repository): the repository's own.
  if (dumps.length === 0) dumps = await store.remote({ host: hostname() });
  const manifests = await currentManifests(dumps, zfs);
  return manifests
    .filter((m) => dataset === undefined || snapshotNames(m).some((s) => isInSubtree(datasetOfSnapshot(s), dataset)))
    .map(toListed);
}

/** Manifests with their snapshots' current names; as recorded when ZFS cannot be asked (said on stderr). */
export async function currentManifests(dumps: ArchivedDump[], zfs: ZfsClient): Promise<Manifest[]> {
  const manifests = dumps.map((d) => d.manifest);
  if (manifests.length === 0) return manifests;
  try {
    const census = await zfs.censusFor(manifests.flatMap((m) => m.snapshots));
    // Under their current names; a snapshot gone for good (its dump kept for another) is not one of its snapshots any more.
    return manifests.map((m) => ({ ...m, snapshots: follow(m.snapshots.filter((r) => locate(r, census) !== 'gone'), census) }));
  } catch (err) {
    log.warn(`cannot ask ZFS where the snapshots are now (${(err as Error).message}): showing the names recorded in the manifests`);
    return manifests;
  }
}

function toListed(m: Manifest): ListedDump {
  return {
    id: m.id,
    domain: m.domain.name,
    uuid: m.domain.uuid,
    snapshots: snapshotNames(m),
    memoryFile: storedAt(m),
    bytes: m.bytes,
    sha256: m.sha256,
    createdAt: m.times.frozenAt ?? m.times.startedAt,
    pauseMs: m.times.pauseMs,
    waiting: isWaiting(m),
  };
}

export function formatList(dumps: ListedDump[]): string {
  if (dumps.length === 0) return 'no RAM dumps\n';
  const rows = [...dumps].sort((a, b) => a.createdAt.localeCompare(b.createdAt)).map((d) => [
    d.domain,
    d.createdAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
    `${(d.bytes / 1024 ** 2).toFixed(1)} MiB`,
    d.pauseMs === null ? '-' : `${d.pauseMs} ms`,
    d.waiting ? 'spool' : 'stored',
    d.snapshots.join(' '),
  ]);
  return table(['DOMAIN', 'TAKEN (UTC)', 'SIZE', 'PAUSE', 'WHERE', 'SNAPSHOTS'], rows);
}
