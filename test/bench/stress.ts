// The long restore stress test (issue 19), a part of `npm run bench`
// (BENCH_ONLY=stress): BENCH_STRESS_ROUNDS (30) saves of a busy guest per
// variant on a CPU-starved host, each restored in place and watched by every
// oracle (test/helpers/stress.ts). Variants run interleaved, a round of each
// in turn, so the host's load falls on all of them alike. It counts, never
// retries: a variant that loses pages on this stack is reported as it is.
import { Guest, removeDomains, sh, type Bed } from '../helpers/bed.js';
import { starveCpus, STRESS_VARIANTS, stressRestores, tally, type StressResult, type StressVariant } from '../helpers/stress.js';
import { Setup } from '../helpers/virtsnap.js';
import { parseVirshVersion } from '../../lib/libvirt/stack.js';

export interface StressSample {
  stack: string;
  virtType: string;
  rounds: number;
  results: (StressResult & { tally: ReturnType<typeof tally> })[];
}

export async function benchStress(b: Bed, dataset: string, rounds: number, uri: string): Promise<StressSample> {
  const stack = parseVirshVersion(await sh('virsh', ['-c', uri, 'version', '--daemon']));
  const name = 'vsbed-b-stress';
  await removeDomains(name);
  const setup = await Setup.create('b-stress', { VIRTSNAP_LIBVIRT_URI: uri });
  // As in the integration test: the disk oracle never pauses, the memory oracle sweeps every 2 ms, 24 MiB of text rewritten.
  const guest = await Guest.create({ name, dataset, memoryMiB: 160, memPauseMs: 2, pace: 0, fillMiB: 24, fillKind: 'text' });
  const results = new Map<StressVariant, StressResult>(STRESS_VARIANTS.map((v) => [v, { variant: v, rounds: [], live: null }]));
  try {
    await guest.start();
    await guest.waitForFill();
    const starved = starveCpus();
    try {
      for (let n = 1; n <= rounds; n++) {
        for (const variant of STRESS_VARIANTS) {
          const r = await stressRestores({ guest, dataset, setup, variant, rounds: 1 });
          const into = results.get(variant)!;
          into.rounds.push(...r.rounds);
          into.live ??= r.live;
          const o = r.rounds[0]!;
          console.log(`  stress ${n}/${rounds} ${variant}: ${o.kind}${'detail' in o ? ` (${o.detail.slice(0, 160)})` : ''}`);
        }
      }
    } finally {
      starved.stop();
    }
  } finally {
    await guest.remove();
  }
  return {
    stack: `libvirt ${stack.libvirt?.text ?? '?'}, QEMU ${stack.qemu?.text ?? '?'}`,
    virtType: b.virtType,
    rounds,
    results: [...results.values()].map((r) => ({ ...r, tally: tally(r) })),
  };
}

export function renderStress(s: StressSample): string {
  const rows = s.results.map((r) => {
    const t = r.tally;
    const restored = r.rounds.length - t['save-failed'];
    const lost = t['lost-pages'] + t.kernel + t.hung + t.other;
    return `${r.variant.padEnd(18)}${String(r.live ?? '-').padEnd(7)}${String(restored).padEnd(10)}${String(t.whole).padEnd(7)}${String(t['lost-pages']).padEnd(12)}${String(t.lostPageTotal).padEnd(8)}${String(t.kernel).padEnd(8)}${String(t.hung).padEnd(6)}${String(t.other).padEnd(7)}${lost === 0 ? 'all whole' : `${lost} of ${restored} not whole`}`;
  });
  return [
    `Restore stress: ${s.rounds} saves per variant of a busy 160 MiB guest on a starved host (busy loops on every core), each restored in place (${s.stack}, ${s.virtType})`,
    `${'variant'.padEnd(18)}${'live'.padEnd(7)}${'restored'.padEnd(10)}${'whole'.padEnd(7)}${'lost pages'.padEnd(12)}${'pages'.padEnd(8)}${'kernel'.padEnd(8)}${'hung'.padEnd(6)}${'other'.padEnd(7)}verdict`,
    ...rows,
  ].join('\n');
}
