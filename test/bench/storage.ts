// The storage bench (issue 12): the same 24 consecutive raw dumps of one guest
// stored three ways, and each against one gzip-compressed dump:
//
//   archive dir   every dump gzip-compressed as post stores it (VIRTSNAP_COMPRESS=gzip, lib/archive's stageFile);
//   ZFS           the 24 raw files in a dataset with compression=gzip (RAM kept in the snapshot,
//                 the dataset's own compression): `zfs get used,compressratio`;
//   restic        one restic snapshot per dump in a repository-version 2 repo, as the restic
//                 backend backs them up (raw; restic chunks, dedups, compresses).
//
// The guest is the integration test's (test/integration/restic.test.ts):
// 160 MiB, 16 MiB of it random and rewritten round and round, so at most
// about a tenth of its memory changes between runs. Not a test: it prints.
//
// Standalone: `node dist/test/bench/storage.js` (names vsbed-rst-bench,
// vsbed/vm/rst-bench*), or `BENCH_ONLY=storage npm run bench` (the bench's names).
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { stageFile } from '../../lib/archive.js';
import { Restic } from '../../lib/restic.js';
import { bed, datasetExists, Guest, mountpointOf, removeDomains, sh, sleep, zfsRetry } from '../helpers/bed.js';
import { Setup, virtsnap } from '../helpers/virtsnap.js';

export interface StorageSample {
  dumps: number;
  rawBytesEach: number;
  oneGzipBytes: number;
  archiveDirBytes: number;
  zfs: { compression: string; usedBytes: number; compressratio: string };
  restic: { duBytes: number; rawDataBytes: number };
  secondsPerSnapshot: number;
  /** What the guest's fill rewrites: random bytes, or random letters a-p (gzip -1 keeps 0.58). */
  fillKind: 'random' | 'text';
  /** The guest's `VSBED FILL done` line: how fast it makes new data. */
  fillLine: string;
}

const MiB = 1024 ** 2;

async function duBytes(p: string): Promise<number> {
  return Number((await sh('du', ['-sb', p])).split(/\s/)[0]);
}

/** zfs-fuse's `zfs get` has no -p: `12.3M` -> bytes. */
function sizeOf(text: string): number {
  const m = /^([\d.]+)([KMGT]?)$/.exec(text.trim());
  if (m === null) return NaN;
  return Number(m[1]) * 1024 ** ' KMGT'.indexOf(m[2] || ' ');
}

export async function benchStorage(names: { domain: string; dataset: string; setup: string }, dumps = 24, fillKind: 'random' | 'text' = 'random'): Promise<StorageSample> {
  const b = await bed();
  const zfsDs = `${names.dataset}-gz`;
  await removeDomains(names.domain);
  for (const ds of [names.dataset, zfsDs]) if (await datasetExists(ds)) await zfsRetry(['destroy', '-r', ds], 60);
  const setup = await Setup.create(names.setup, { VIRTSNAP_COMPRESS: 'no', VIRTSNAP_LOG: 'warn' });
  const guest = await Guest.create({ name: names.domain, dataset: names.dataset, memoryMiB: 160, fillMiB: 16, fillKind });
  try {
    await guest.start();
    const fillLine = await guest.waitForFill(300_000);
    const started = Date.now();
    for (let i = 1; i <= dumps; i++) {
      const out = await virtsnap(setup, ['snapshot', names.dataset, '--name', `s${i}`]);
      if (out.code !== 0) throw new Error(`virtsnap snapshot: ${out.stderr}`);
    }
    const secondsPerSnapshot = (Date.now() - started) / 1000 / dumps;
    await guest.stop();
    const files = (await setup.dumps()).map((d) => d.manifest.memoryFile);
    // Archive dir: each compressed as post would (and the .part thrown away).
    let archiveDirBytes = 0;
    let oneGzipBytes = 0;
    const scratch = path.join(setup.root, 'gz');
    await sh('mkdir', ['-p', '-m', '0700', scratch]);
    for (const f of files) {
      const staged = await stageFile(f, path.join(scratch, path.basename(f)), 'gzip');
      archiveDirBytes += staged.bytes;
      oneGzipBytes = staged.bytes; // the last: the guest at its fullest
      rmSync(path.join(scratch, `${path.basename(f)}.part`), { force: true });
    }
    // ZFS: the raw files in a gzip-compressed dataset.
    await sh('zfs', ['create', '-o', 'compression=gzip', zfsDs]);
    const mnt = await mountpointOf(zfsDs);
    for (const f of files) await sh('cp', [f, mnt]);
    await sh('sync', []);
    await sleep(10_000); // zfs-fuse accounts for what it wrote a few seconds late
    const [used, ratio, compression] = (await sh('zfs', ['get', '-H', '-o', 'value', 'used,compressratio,compression', zfsDs])).trim().split('\n');
    // restic: one snapshot per dump, raw, as the backend backs them up.
    const repo = path.join(setup.root, 'repo');
    const pw = path.join(setup.root, 'restic.pw');
    writeFileSync(pw, 'bench\n', { mode: 0o600 });
    await sh('restic', ['init', '--repository-version', '2', '--repo', repo, '--password-file', pw]);
    const restic = new Restic({ repo, passwordFile: pw, env: {} });
    for (const f of files) await restic.backup(path.dirname(f), [path.basename(f)], ['virtsnap', 'bench'], 'bench');
    const sample: StorageSample = {
      dumps,
      rawBytesEach: (await setup.dumps()).at(-1)!.manifest.bytes,
      oneGzipBytes,
      archiveDirBytes,
      zfs: { compression: compression!, usedBytes: sizeOf(used!), compressratio: ratio! },
      restic: { duBytes: await duBytes(repo), rawDataBytes: await restic.rawSize() },
      secondsPerSnapshot,
      fillKind,
      fillLine,
    };
    return sample;
  } finally {
    await guest.remove().catch(() => undefined);
    for (const ds of [zfsDs, names.dataset]) await zfsRetry(['destroy', '-r', ds], 60).catch(() => undefined);
    rmSync(setup.root, { recursive: true, force: true });
  }
}

export function renderStorage(s: StorageSample): string {
  const x = (n: number) => `${(n / MiB).toFixed(1)} MiB (${(n / s.oneGzipBytes).toFixed(2)}x one gzip dump)`;
  return [
    `storage: ${s.dumps} consecutive dumps of a 160 MiB guest (16 MiB ${s.fillKind === 'text' ? 'random letters a-p' : 'random'}, rewritten; ${s.fillLine}), ${(s.rawBytesEach / MiB).toFixed(1)} MiB raw each, ${s.secondsPerSnapshot.toFixed(1)} s per snapshot; one gzip dump ${(s.oneGzipBytes / MiB).toFixed(1)} MiB`,
    `  archive dir (gzip -1 each):      ${x(s.archiveDirBytes)}`,
    `  ZFS dataset (compression=${s.zfs.compression}): ${x(s.zfs.usedBytes)}, compressratio ${s.zfs.compressratio}`,
    `  restic repo (du -sb):            ${x(s.restic.duBytes)}; stats raw-data ${(s.restic.rawDataBytes / MiB).toFixed(1)} MiB`,
    `  all raw:                         ${x(s.rawBytesEach * s.dumps)}`,
  ].join('\n');
}

// Standalone, with names of its own (so it never touches the whole bench's).
if (process.argv[1]?.endsWith('storage.js')) {
  const b = await bed();
  const kind = process.env.BENCH_FILL_KIND === 'text' ? 'text' : 'random';
  const s = await benchStorage({ domain: 'vsbed-rst-bench', dataset: `${b.vmDataset}/rst-bench`, setup: 'rst-bench' }, Number(process.env.BENCH_DUMPS ?? 24), kind);
  console.log(renderStorage(s));
  console.log(JSON.stringify(s));
}
