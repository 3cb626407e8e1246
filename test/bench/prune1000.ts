// node dist/test/bench/prune1000.js [DATASET_NAME]: the prune hook with
// 1,000 dumps in the archive, on the real bed.
//
// 1,000 dumps of two snapshots each (2,000 snapshots of one dataset). Times
// the hook for snapshots no dump names (most calls: sanoid prunes children
// without VMs, and snapshots of runs without one), then for 20 snapshots
// destroyed one at a time as sanoid does (10 dumps kept for their other
// snapshot, 10 deleted). Wall time of the whole hook process.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import path from 'node:path';
import { archiveDump, listDumps } from '../../lib/archive.js';
import { run } from '../../lib/exec.js';
import { ZfsClient } from '../../lib/zfs.js';
import { bed, destroyDataset, sh } from '../helpers/bed.js';
import { hooks, Setup } from '../helpers/virtsnap.js';

const DUMPS = 1000;
const HITS = 20;

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

async function timed(env: Record<string, string>): Promise<number> {
  const started = process.hrtime.bigint();
  await run(hooks.prune, [], { env });
  return Number(process.hrtime.bigint() - started) / 1e6;
}

const b = await bed();
const dataset = `${b.vmDataset}/${process.argv[2] ?? 'bench-1000'}`;
await destroyDataset(dataset);
await sh('zfs', ['create', dataset]);
const setup = await Setup.create(path.basename(dataset));
const names = Array.from({ length: 2 * DUMPS }, (_, i) => `b_${String(i).padStart(4, '0')}`);
for (const n of names) await sh('zfs', ['snapshot', `${dataset}@${n}`]);
const { props } = await new ZfsClient().snapshotProps([dataset]);
const scratch = mkdtempSync('/tmp/vsbed-bench-');
for (let i = 0; i < DUMPS; i++) {
  const mem = path.join(scratch, `${i}.save`);
  writeFileSync(mem, Buffer.concat([Buffer.from('LibvirtQemudSave'), Buffer.alloc(4096)]));
  const at = new Date(Date.UTC(2026, 0, 1) + i * 3_600_000);
  await archiveDump(setup.archiveDir, {
    id: `${at.toISOString().replace(/[-:]/g, '')}-${(0x10000000 + i).toString(16)}`,
    domain: { name: `vsbed-bench-${i % 4}`, uuid: `00000000-0000-0000-0000-00000000000${i % 4}` },
    snapshots: [names[2 * i]!, names[2 * i + 1]!].map((n) => {
      const name = `${dataset}@${n}`;
      const p = props.get(name)!;
      return { name, frozenAs: name, guid: p.guid, createtxg: p.createtxg, creation: p.creation, mountpoint: null };
    }),
    types: ['hourly', 'daily'],
    memoryFile: mem,
    metaDir: null,
    disks: [],
    startedAt: at.toISOString(),
    frozenAt: null,
    job: null,
    libvirtUri: 'qemu:///system',
    hostname: 'bench',
  });
}
rmSync(scratch, { recursive: true, force: true });

const env = (snapname: string) => setup.env({ SANOID_SCRIPT: 'prune', SANOID_TARGET: dataset, SANOID_SNAPNAME: snapname });
const noop: number[] = [];
for (let i = 0; i < 21; i++) noop.push(await timed(env(`nodump_${i}`)));
const hits: number[] = [];
for (const n of names.slice(0, HITS)) {
  await sh('zfs', ['destroy', `${dataset}@${n}`]);
  hits.push(await timed(env(n)));
}
const left = listDumps(setup.archiveDir).length;
await destroyDataset(dataset);
if (left !== DUMPS - HITS / 2) throw new Error(`bench: ${left} dumps left, expected ${DUMPS - HITS / 2}`);
console.log(`prune with ${DUMPS} dumps (${cpus().length} cores): no dump for the snapshot: median ${median(noop.slice(1)).toFixed(0)} ms/call (first call ${noop[0]!.toFixed(0)} ms);`);
console.log(`  a dump for it (${HITS} calls, half keep, half delete): median ${median(hits).toFixed(0)} ms/call, max ${Math.max(...hits).toFixed(0)} ms`);
