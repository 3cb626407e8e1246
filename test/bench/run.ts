// npm run bench: timings that matter to users, measured on the real bed.
//
// prune: sanoid calls the prune hook once per destroyed snapshot, one after
// the other, so a long retention list means hundreds of calls in a row. We
// destroy 200 snapshots the way sanoid does (zfs destroy, then the hook) with
// 100 dumps of two snapshots each in the archive, and time each hook call.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, cpus } from 'node:os';
import path from 'node:path';
import { ZfsClient } from '../../lib/zfs.js';
import { archiveDump, listDumps } from '../../lib/archive.js';
import { run } from '../../lib/exec.js';
import { bed, destroyDataset, sh } from '../helpers/bed.js';
import { hooks, Setup } from '../helpers/virtsnap.js';

const SNAPSHOTS = 200;

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

async function benchPrune(): Promise<void> {
  const b = await bed();
  const dataset = `${b.vmDataset}/bench`;
  await destroyDataset(dataset);
  await sh('zfs', ['create', dataset]);
  const setup = await Setup.create('bench');
  const names = Array.from({ length: SNAPSHOTS }, (_, i) => `bench_${String(i).padStart(4, '0')}`);
  for (const n of names) await sh('zfs', ['snapshot', `${dataset}@${n}`]);

  const { props } = await new ZfsClient().snapshotProps([dataset]);
  const scratch = mkdtempSync('/tmp/vsbed-bench-');
  for (let i = 0; i < SNAPSHOTS; i += 2) {
    const mem = path.join(scratch, `${i}.save`);
    writeFileSync(mem, Buffer.concat([Buffer.from('LibvirtQemudSave'), Buffer.alloc(4096)]));
    await archiveDump(setup.archiveDir, {
      id: `bench-${String(i).padStart(4, '0')}`,
      domain: { name: 'vsbed-bench', uuid: '00000000-0000-0000-0000-000000000000' },
      snapshots: [`${dataset}@${names[i]}`, `${dataset}@${names[i + 1]}`].map((name) => ({ name, frozenAs: name, guid: props.get(name)!.guid, createtxg: props.get(name)!.createtxg, creation: props.get(name)!.creation, mountpoint: null })),
      types: ['hourly', 'daily'],
      memoryFile: mem,
      metaDir: null,
      disks: [],
      startedAt: new Date(Date.now() + i).toISOString(),
      frozenAt: null,
      job: null,
      libvirtUri: 'qemu:///system',
      hostname: hostname(),
    });
  }
  rmSync(scratch, { recursive: true, force: true });

  const times: number[] = [];
  for (const n of names) {
    await sh('zfs', ['destroy', `${dataset}@${n}`]);
    const started = process.hrtime.bigint();
    await run(hooks.prune, [], { env: setup.env({ SANOID_SCRIPT: 'prune', SANOID_TARGET: dataset, SANOID_SNAPNAME: n }) });
    times.push(Number(process.hrtime.bigint() - started) / 1e6);
  }
  const left = listDumps(setup.archiveDir).length;
  await destroyDataset(dataset);
  if (left !== 0) throw new Error(`bench: ${left} dumps left after pruning every snapshot`);

  const total = times.reduce((a, t) => a + t, 0);
  console.log(`prune: ${SNAPSHOTS} calls in a row, 100 dumps of 2 snapshots each (${cpus().length} cores, ${cpus()[0]?.model ?? '?'})`);
  console.log(`  median ${median(times).toFixed(0)} ms/call, p90 ${percentile(times, 90).toFixed(0)} ms, max ${Math.max(...times).toFixed(0)} ms, total ${(total / 1000).toFixed(1)} s`);
}

await benchPrune();
