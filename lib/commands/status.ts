// `virtsnap status [DATASET]`: every domain, where its disks live, whether it
// is on one of our overlays right now, its latest RAM dump, and the dumps
// that wait in the spool for the archiver.
import { latestInSnapshots } from '../ram-in-dataset.js';
import { follow, locate } from '../snapshot-id.js';
import { isWaiting, snapshotNames } from '../manifest.js';
import { oldestWaitSeconds, scanSpool, statsOf } from '../spool.js';
import { knownDumps, type DumpStore } from '../stores/index.js';
import { currentManifests } from './list.js';
import type { Config } from '../config.js';
import { age, table } from '../format.js';
import { isInsideDir } from '../fsutil.js';
import { datasetsOfDomains } from '../inventory.js';
import { Journal } from '../journal.js';
import { abandoned } from '../stuck.js';
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
  /**
   * The run that froze it is over and no thaw could bring it back: what
   * happened, and the snapshots taken since, which hold its disk from before.
   */
  stuck: { since: string; step: string; staleSnapshots: string[] } | null;
  /** Its journal entry cannot be read (what was done to it is unknown): no run touches it until a person looks. */
  damagedEntry: string | null;
  latestDump: { id: string; snapshots: string[]; takenAt: string; ageSeconds: number; waiting: boolean } | null;
  /** Its dumps waiting in the spool for the archiver, and how long the oldest has waited; null when none waits. */
  waiting: { count: number; bytes: number; oldestSeconds: number } | null;
}

export async function domainStatus(config: Config, virsh: Pick<LibvirtClient, 'domains'>, zfs: ZfsClient, store: DumpStore, dataset?: string, now = new Date()): Promise<DomainStatus[]> {
  if (dataset !== undefined) assertDatasetName(dataset, 'virtsnap status');
  const domains = await virsh.domains();
  const datasetsOf = datasetsOfDomains(domains);
  const spool = scanSpool(config).dumps;
  const waitingOf = (uuid: string): DomainStatus['waiting'] => {
    const stats = statsOf(spool.filter((d) => d.manifest.domain.uuid === uuid));
    return stats.count === 0 ? null : { count: stats.count, bytes: stats.bytes, oldestSeconds: oldestWaitSeconds(stats, now.getTime()) };
  };
  // A dump none of whose snapshots exists any more restores nothing: it is not a VM's latest (gc deletes it).
  const dumps = (await currentManifests(knownDumps(store, config).dumps, zfs)).filter((m) => m.snapshots.length > 0).map((manifest) => ({ manifest }));
  dumps.sort((a, b) => a.manifest.times.startedAt.localeCompare(b.manifest.times.startedAt));
  // RAM inside snapshots (VIRTSNAP_STORE=dataset): the newest post recorded, while one of its snapshots exists.
  const inSnapshots = latestInSnapshots(config.stateDir);
  if (inSnapshots.length > 0) {
    const census = await zfs.censusFor(inSnapshots.flatMap((m) => m.snapshots));
    for (const m of inSnapshots) if (m.snapshots.some((r) => !['gone', 'unknown'].includes(locate(r, census)))) dumps.push({ manifest: { ...m, snapshots: follow(m.snapshots, census) } });
    dumps.sort((a, b) => a.manifest.times.startedAt.localeCompare(b.manifest.times.startedAt));
  }
  const journal = new Journal(config.stateDir);
  const { entries, damaged } = journal.scan();
  const damageOf = (uuid: string): string | null => damaged.find((x) => x.uuid === uuid)?.reason ?? null;
  const stuckOf = (uuid: string): DomainStatus['stuck'] => {
    const e = entries.find((x) => x.domain.uuid === uuid);
    return e !== undefined && abandoned(e) ? { since: e.frozenAt ?? e.startedAt, step: e.step, staleSnapshots: e.staleSnapshots ?? [] } : null;
  };
  const result: DomainStatus[] = [];
  // A domain undefined while frozen is in the journal only: it must not vanish from view.
  for (const e of entries.filter((x) => !domains.some((d) => d.uuid === x.domain.uuid))) {
    const datasets = [...new Set(e.overlays.map((o) => o.dataset))];
    if (dataset !== undefined && !datasets.some((ds) => isInSubtree(ds, dataset))) continue;
    result.push({
      name: e.domain.name,
      uuid: e.domain.uuid,
      state: 'undefined',
      datasets,
      onOverlay: e.overlays.filter((o) => o.overlay !== null).map((o) => o.target),
      heldBy: e.runId,
      stuck: stuckOf(e.domain.uuid),
      damagedEntry: null,
      latestDump: null,
      waiting: waitingOf(e.domain.uuid),
    });
  }
  // A damaged entry of a domain libvirt does not know: named, whatever the DATASET asked for (its datasets are unknown).
  for (const x of damaged.filter((x) => !domains.some((d) => d.uuid === x.uuid))) {
    result.push({ name: x.uuid, uuid: x.uuid, state: 'undefined', datasets: [], onOverlay: [], heldBy: null, stuck: null, damagedEntry: x.reason, latestDump: null, waiting: waitingOf(x.uuid) });
  }
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
      heldBy: entries.find((x) => x.domain.uuid === d.uuid)?.runId ?? null,
      stuck: stuckOf(d.uuid),
      damagedEntry: damageOf(d.uuid),
      latestDump:
        latest && takenAt
          ? { id: latest.id, snapshots: snapshotNames(latest), takenAt, ageSeconds: Math.round((now.getTime() - Date.parse(takenAt)) / 1000), waiting: isWaiting(latest) }
          : null,
      waiting: waitingOf(d.uuid),
    });
  }
  return result;
}

export function formatStatus(rows: DomainStatus[]): string {
  if (rows.length === 0) return 'no domains\n';
  const text = table(
    ['DOMAIN', 'STATE', 'DATASETS', 'OVERLAY', 'LATEST DUMP'],
    rows.map((r) => [
      r.name,
      r.state,
      r.datasets.join(',') || '-',
      r.damagedEntry !== null
        ? 'JOURNAL DAMAGED'
        : r.stuck !== null
        ? `STUCK ${r.onOverlay.join(',') || '-'} since ${r.stuck.since} (step ${r.stuck.step})`
        : r.onOverlay.length > 0
          ? `ON ${r.onOverlay.join(',')}${r.heldBy ? ` (run ${r.heldBy})` : ' (leftover: virtsnap recover)'}`
          : 'no',
      r.latestDump ? `${age(r.latestDump.ageSeconds)} ago ${r.latestDump.snapshots[0] ?? ''}${r.latestDump.waiting ? ' (in the spool)' : ''}` : '-',
    ]),
  );
  const waiting = rows.flatMap((r) => (r.waiting === null ? [] : [r.waiting]));
  const count = waiting.reduce((n, w) => n + w.count, 0);
  const spoolLine =
    count === 0
      ? ''
      : `\n${count} RAM dump(s) (${(waiting.reduce((n, w) => n + w.bytes, 0) / 1024 ** 2).toFixed(0)} MiB) wait in the spool for the archiver, the oldest for ${age(Math.max(...waiting.map((w) => w.oldestSeconds)))}: \`virtsnap list\` shows them, \`virtsnap archive\` stores them now\n`;
  const stuck = rows.filter((r) => r.stuck !== null);
  const damaged = rows.filter((r) => r.damagedEntry !== null);
  return (
    text +
    spoolLine +
    damaged.map((r) => `\n${r.name}: ${r.damagedEntry}`).join('') +
    (damaged.length > 0 && stuck.length === 0 ? '\n' : '') +
    stuck
      .map(
        (r) =>
          `\n${r.name}: could not be thawed since ${r.stuck!.since}; \`virtsnap recover\` retries, \`virtsnap recover --discard ${r.name}\` ends it.` +
          (r.stuck!.staleSnapshots.length > 0 ? `\n  these snapshots hold its disk from before that, not its newest writes: ${r.stuck!.staleSnapshots.join(', ')}` : ''),
      )
      .join('') +
    (stuck.length > 0 ? '\n' : '')
  );
}
