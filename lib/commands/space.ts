// Where the RAM dumps of the VMs our hooks snapshot go, and whether they fit:
// the next run's, and what sanoid's retention will keep. One report for
// `virtsnap doctor` and `virtsnap check` (lib/space.ts has the rule).
//
//   the overlay dir    every dump is written there first, and waits in its
//                      spool for the archiver: it must hold the next run's
//                      (a live save may write twice the RAM) besides those
//   the archive dir    (VIRTSNAP_STORE=dir) keeps a dump per run kept
//   each pool          (VIRTSNAP_STORE=dataset) every snapshot holds its
//                      RAM: a dump per run kept, in the VM's own pool
// A restic repository's space is restic's to tell.
import type { Config } from '../config.js';
import type { ArchivedDump, Manifest } from '../manifest.js';
import { freeBytes } from '../fsutil.js';
import { datasetsOfDomains } from '../inventory.js';
import type { Domain } from '../libvirt/virsh.js';
import { liveSaveOf } from '../plan.js';
import { autosnaps, nearestSection, recursionOf, runsKept, runsOurHooks, type Ini } from '../sanoid/conf.js';
import { dumpNeed, judgeSpace, type SpaceNeed, type SpaceVerdict } from '../space.js';
import type { Stack } from '../libvirt/stack.js';
import { mountpointsOf, poolOf, readMounts } from '../zfs.js';

export interface SpaceFacts {
  config: Config;
  ini: Ini;
  /** Running and paused VMs. */
  running: Domain[];
  stack: Stack;
  /** The store's dumps (their sizes tell the next ones'). */
  archived: ArchivedDump[];
  /** The newest dump each VM has inside snapshots (VIRTSNAP_STORE=dataset). */
  inSnapshots: Manifest[];
}

/** One verdict per place the dumps go, named. */
export function spaceReport(f: SpaceFacts, free: (dir: string) => number | null = freeBytes): SpaceVerdict[] {
  const sections = [...f.ini.keys()].filter((s) => autosnaps(f.ini, s)).map((s) => ({ dataset: s, subtree: recursionOf(f.ini, s) !== 'no', kept: runsOurHooks(f.ini, s) ? runsKept(f.ini, s) : 0 }));
  const datasetsOf = datasetsOfDomains(f.running);
  const ours = f.running.flatMap((d) => {
    const datasets = datasetsOf.get(d.uuid) ?? [];
    const kept = Math.max(0, ...datasets.map((ds) => nearestSection(ds, sections)?.kept ?? 0));
    return kept === 0 ? [] : [{ d, kept, datasets }];
  });
  if (ours.length === 0) return [];
  const verdicts: SpaceVerdict[] = [];
  // The next run's dumps are written where the RAM goes first: the overlay dir (or, in dataset mode, the pool).
  const inOverlayDir = f.config.store.kind === 'dataset' ? [] : ours;
  const spool = free(f.config.overlayDir);
  if (spool !== null && inOverlayDir.length > 0) {
    verdicts.push(judgeSpace(`the spool's filesystem (VIRTSNAP_OVERLAY_DIR ${f.config.overlayDir})`, spool, inOverlayDir.map(({ d }) => ({ domain: d.name, dumpBytes: dumpNeed(d.memoryKiB, liveSaveOf(d, f.stack, f.config.live).live), kept: 1, heldBytes: 0 }))));
  }
  if (f.config.store.kind === 'dir') {
    const room = free(f.config.archiveDir);
    const needs: SpaceNeed[] = ours.map(({ d, kept }) => {
      const own = f.archived.filter((x) => x.manifest.domain.uuid === d.uuid);
      return { domain: d.name, dumpBytes: own.at(-1)?.manifest.bytes ?? d.memoryKiB * 1024, kept, heldBytes: own.reduce((sum, x) => sum + x.manifest.bytes, 0) };
    });
    if (room !== null) verdicts.push(judgeSpace(`VIRTSNAP_ARCHIVE_DIR ${f.config.archiveDir}`, room, needs));
  }
  if (f.config.store.kind === 'dataset') {
    // Per pool: its datasets share what is free; the snapshots there hold a dump per run kept.
    const mounts = readMounts();
    const byPool = new Map<string, { dir: string; needs: SpaceNeed[] }>();
    for (const { d, kept, datasets } of ours) {
      const ds = datasets[0]!;
      const mount = mountpointsOf(mounts).get(ds);
      if (mount === undefined) continue;
      const pool = byPool.get(poolOf(ds)) ?? { dir: mount, needs: [] };
      const newest = f.inSnapshots.find((m) => m.domain.uuid === d.uuid)?.bytes;
      pool.needs.push({ domain: d.name, dumpBytes: Math.max(newest ?? 0, dumpNeed(d.memoryKiB, liveSaveOf(d, f.stack, f.config.live).live)), kept, heldBytes: 0 });
      byPool.set(poolOf(ds), pool);
    }
    for (const [pool, { dir, needs }] of byPool) {
      const room = free(dir);
      if (room !== null) verdicts.push(judgeSpace(`pool ${pool} (RAM inside the snapshots)`, room, needs));
    }
  }
  return verdicts;
}
