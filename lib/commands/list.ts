// `virtsnap list [--json] [DATASET]`: the RAM dumps in the archive.
import { listDumps, type Manifest } from '../archive.js';
import type { Config } from '../config.js';
import { assertDatasetName, datasetOfSnapshot, isInSubtree } from '../zfs.js';
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
}

export function listArchived(config: Config, dataset?: string): ListedDump[] {
  if (dataset !== undefined) assertDatasetName(dataset, 'virtsnap list');
  return listDumps(config.archiveDir)
    .map((d) => d.manifest)
    .filter((m) => dataset === undefined || m.snapshots.some((s) => isInSubtree(datasetOfSnapshot(s), dataset)))
    .map(toListed);
}

function toListed(m: Manifest): ListedDump {
  return {
    id: m.id,
    domain: m.domain.name,
    uuid: m.domain.uuid,
    snapshots: m.snapshots,
    memoryFile: m.memoryFile,
    bytes: m.bytes,
    sha256: m.sha256,
    createdAt: m.times.frozenAt ?? m.times.startedAt,
    pauseMs: m.times.pauseMs,
  };
}

export function formatList(dumps: ListedDump[]): string {
  if (dumps.length === 0) return 'no RAM dumps in the archive\n';
  const rows = dumps.map((d) => [
    d.domain,
    d.createdAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
    `${(d.bytes / 1024 ** 2).toFixed(1)} MiB`,
    d.pauseMs === null ? '-' : `${d.pauseMs} ms`,
    d.snapshots.join(' '),
  ]);
  return table(['DOMAIN', 'TAKEN (UTC)', 'SIZE', 'PAUSE', 'SNAPSHOTS'], rows);
}
