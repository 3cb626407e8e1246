// Reference points for the RAM dumps: what standard compressors make of a
// raw save image, and how fast this filesystem takes a plain sequential
// write of the same size (`dd … conv=fsync`), the physical limit of a save.
import { copyFileSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { timed } from './cost.js';

export interface CompressorSample {
  tool: string;
  rawBytes: number;
  bytes: number;
  ms: number;
}

/** `gzip -1` and `zstd -1` of a copy of `rawFile`, in a private scratch dir beside `scratchParent`. */
export async function referenceCompression(rawFile: string, scratchParent: string): Promise<CompressorSample[]> {
  const dir = mkdtempSync(path.join(scratchParent, 'b-bench-ref-'));
  try {
    const copy = path.join(dir, 'raw.save');
    copyFileSync(rawFile, copy);
    const rawBytes = statSync(copy).size;
    const gz = await timed('gzip', ['-1', '-k', '-f', copy], { timeoutMs: 600_000 });
    const zst = await timed('zstd', ['-1', '-q', '-f', copy, '-o', `${copy}.zst`], { timeoutMs: 600_000 });
    return [
      { tool: 'gzip -1', rawBytes, bytes: statSync(`${copy}.gz`).size, ms: gz.wallMs },
      { tool: 'zstd -1', rawBytes, bytes: statSync(`${copy}.zst`).size, ms: zst.wallMs },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface DdSample {
  dir: string;
  mib: number;
  ms: number;
  bytesPerSec: number;
}

/** A plain write of `mib` MiB, fsync'd, into `dir` (the overlay dir: where libvirt writes the RAM). */
export async function ddWrite(dir: string, mib: number): Promise<DdSample> {
  const file = path.join(dir, 'vsbed-b-bench.dd');
  try {
    const cost = await timed('dd', ['if=/dev/zero', `of=${file}`, 'bs=1M', `count=${mib}`, 'conv=fsync'], { timeoutMs: 600_000 });
    return { dir, mib, ms: cost.wallMs, bytesPerSec: (mib * 2 ** 20) / (cost.wallMs / 1000) };
  } finally {
    rmSync(file, { force: true });
  }
}
