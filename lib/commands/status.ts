// `virtsnap status [DATASET]`: every domain, where its disks live, whether it
// is on one of our overlays right now, and its latest RAM dump.
import { scanArchive, snapshotNames } from '../archive.js';
import { currentManifests } from './list.js';
import type { Config } from '../config.js';
import { table } from '../format.js';
import { isInsideDir } from '../fsutil.js';
import { datasetsOfDomains } from '../inventory.js';
import { Journal } from '../journal.js';
import type { LibvirtClient } from '../libvirt/virsh.js';
import { assertDatasetName, isInSubtree, type ZfsClient } from '../zfs.js';

export interface DomainStatus {
  name: string;
  uuid: string;
  state: string;
  datasets: string[];
  /** Disks running on a virtsnap overlay now: a run in progress, or a leftover for `virtsnap recover`. */
  onOverlay: string[];
  /** The run holding the domain, if the journal has one. */
  heldBy: string | null;
  latestDump: { id: string; snapshots: string[]; takenAt: string; ageSeconds: number } | null;
}

export async function domainStatus(config: Config, virsh: LibvirtClient, zfs: ZfsClient, dataset?: string, now = new Date()): Promise<DomainStatus[]> {
  if (dataset !== undefined) assertDatasetName(dataset, 'virtsnap status');
  const domains = await virsh.domains();
  const datasetsOf = datasetsOfDomains(domains);
  const dumps = (await currentManifests(scanArchive(config.archiveDir).dumps, zfs)).map((manifest) => ({ manifest }));
  const journal = new Journal(config.stateDir);
  const result: DomainStatus[] = [];
  for (const d of [...domains].sort((a, b) => a.name.localeCompare(b.name))) {
    const datasets = datasetsOf.get(d.uuid) ?? [];
    if (dataset !== undefined && !datasets.some((ds) => isInSubtree(ds, dataset))) continue;
    const mine = dumps.filter((x) => x.manifest.domain.uuid === d.uuid);
    const latest = mine[mine.length - 1]?.manifest;
    const takenAt = latest ? (latest.times.frozenAt ?? latest.times.startedAt) : null;
    result.push({
      name: d.name,
      uuid: d.uuid,
      state: d.state,
      datasets,
      onOverlay: d.disks.filter((k) => k.source !== null && isInsideDir(k.source, config.overlayDir)).map((k) => k.target),
      heldBy: journal.read(d.uuid)?.runId ?? null,
      latestDump:
        latest && takenAt
          ? { id: latest.id, snapshots: snapshotNames(latest), takenAt, ageSeconds: Math.round((now.getTime() - Date.parse(takenAt)) / 1000) }
          : null,
    });
  }
  return result;
}

function age(seconds: number): string {
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)}h`;
  return `${Math.round(seconds / 86400)}d`;
}

export function formatStatus(rows: DomainStatus[]): string {
  if (rows.length === 0) return 'no domains\n';
  return table(
    ['DOMAIN', 'STATE', 'DATASETS', 'OVERLAY', 'LATEST DUMP'],
    rows.map((r) => [
      r.name,
      r.state,
      r.datasets.join(',') || '-',
      r.onOverlay.length > 0 ? `ON ${r.onOverlay.join(',')}${r.heldBy ? ` (run ${r.heldBy})` : ' (leftover: virtsnap recover)'}` : 'no',
      r.latestDump ? `${age(r.latestDump.ageSeconds)} ago ${r.latestDump.snapshots[0] ?? ''}` : '-',
    ]),
  );
}
