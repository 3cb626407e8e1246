// Prune with a full archive: 1,000 dumps tied to real ZFS snapshots, and
// sanoid's way of pruning (destroy one snapshot, call the hook, next).
// Half of the timed calls destroy a snapshot whose dump still has another
// (the hook must keep it), half the last snapshot of a dump (it must go).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import { archiveDump, listDumps } from '../../lib/archive.js';
import { ZfsClient } from '../../lib/zfs.js';
import { sh } from '../helpers/bed.js';
import { hooks, Setup } from '../helpers/virtsnap.js';
import { timed } from './cost.js';

const DUMPS = 1000;
/** Dumps tied to two snapshots (an hourly and a daily taken together); the others have one. */
const PAIRED = 30;
const DOMAINS = 10;

export interface PruneSample {
  call: number;
  /** Whether the call had to delete a dump (the destroyed snapshot was its last). */
  deletes: boolean;
  wallMs: number;
  cpuMs: number;
}

/** `dataset` is created here and holds the snapshots the dumps are tied to. */
export async function benchPrune(dataset: string): Promise<{ dumps: number; samples: PruneSample[] }> {
  await sh('zfs', ['create', dataset]);
  const setup = await Setup.create('b-bench-prune');
  const tie: string[][] = Array.from({ length: DUMPS }, (_, i) => {
    const n = `bench_${String(i).padStart(4, '0')}`;
    return i < PAIRED ? [`${n}_hourly`, `${n}_daily`] : [`${n}_hourly`];
  });
  for (const names of tie) for (const n of names) await sh('zfs', ['snapshot', `${dataset}@${n}`]);

  const { props } = await new ZfsClient().snapshotProps([dataset]);
  const scratch = mkdtempSync('/tmp/vsbed-b-bench-');
  try {
    for (const [i, names] of tie.entries()) {
      // A fake save image: only the magic matters to the archive.
      const mem = path.join(scratch, `${i}.save`);
      writeFileSync(mem, Buffer.concat([Buffer.from('LibvirtQemudSave'), Buffer.alloc(4096)]));
      const d = i % DOMAINS;
      await archiveDump(setup.archiveDir, {
        id: `20260101T${String(Math.floor(i / 60)).padStart(4, '0')}${String(i % 60).padStart(2, '0')}.000Z-0000${String(d).padStart(4, '0')}`,
        domain: { name: `vsbed-b-fake${d}`, uuid: `00000000-0000-0000-0000-00000000${String(d).padStart(4, '0')}` },
        snapshots: names.map((n) => `${dataset}@${n}`).map((name) => ({ name, frozenAs: name, guid: props.get(name)!.guid, createtxg: props.get(name)!.createtxg, creation: props.get(name)!.creation, mountpoint: null })),
        types: names.map((n) => n.slice(n.lastIndexOf('_') + 1)),
        memoryFile: mem,
        metaDir: null,
        disks: [],
        startedAt: new Date(Date.UTC(2026, 0, 1) + i * 60_000).toISOString(),
        frozenAt: null,
        job: null,
        libvirtUri: 'qemu:///system',
        hostname: hostname(),
      });
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const dumps = listDumps(setup.archiveDir).length;
  if (dumps !== DUMPS) throw new Error(`prune bench: ${dumps} dumps in the archive, not ${DUMPS}`);

  const samples: PruneSample[] = [];
  for (const [call, n] of tie.slice(0, PAIRED).flat().entries()) {
    await sh('zfs', ['destroy', `${dataset}@${n}`]);
    const cost = await timed(hooks.prune, [], { env: setup.env({ SANOID_SCRIPT: 'prune', SANOID_TARGET: dataset, SANOID_SNAPNAME: n }) });
    samples.push({ call: call + 1, deletes: n.endsWith('_daily'), ...cost });
  }
  const left = listDumps(setup.archiveDir).length;
  if (left !== DUMPS - PAIRED) throw new Error(`prune bench: ${left} dumps left after pruning both snapshots of ${PAIRED}, expected ${DUMPS - PAIRED}`);
  return { dumps: DUMPS, samples };
}
