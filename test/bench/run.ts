// npm run bench: virtsnap against the shell pair every blog post shows, side
// by side on the real bed, under real sanoid. Not a test: it asserts no
// timing, it measures and prints (and saves) what it measured.
//
//   guest stall per snapshot (libvirt lifecycle events), per variant, for a
//     96 MiB guest and a 512 MiB guest holding 320 MiB of live data;
//   the wall time of a whole sanoid run over 1 and over 4 guests;
//   bytes per dump (raw, stored, gzip -1 / zstd -1) and the RAM save rate
//     against a plain dd of the same size;
//   prune per call with 1,000 dumps; hook start-up with nothing to do;
//   how a run grows with 1, 4 and 8 guests; how long the spool takes to
//   empty once an archive that was away comes back.
//
// Repetitions are interleaved (rep 1 of every variant, then rep 2, …) so a
// disturbance from whatever else runs on the machine spreads over all
// variants instead of landing on one. BENCH_REPS (default 3); BENCH_QUICK=1
// for one repetition and no 4-guest run; BENCH_ONLY=stall,four,scale,drain,prune,startup
// for some parts (storage: lib/restic backend against the archive dir and ZFS, test/bench/storage.ts);
// BENCH_VARIANTS=shell,virtsnap for some variants of the stall part. Everything it creates is named vsbed-b-* / vsbed/vm/b-*
// and removed at the end, also after a failure.
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { bed, removeDomains, sh, sleep, stackUri, virsh, wantedStack, type Bed } from '../helpers/bed.js';
import { destroyPatiently, earlierRuns, tryDestroy } from './cleanup.js';
import { repoRoot, Setup } from '../helpers/virtsnap.js';
import { EventWatcher } from './events.js';
import { bootGuest, BenchError, problemWith, type BenchGuest } from './guests.js';
import { describeMachine, type Machine } from './machine.js';
import { benchPrune } from './prune.js';
import { ddWrite, referenceCompression } from './reference.js';
import { BIG, DEFAULTS, render, sections, SMALL, targets, type DrainSample, type Samples } from './report.js';
import { snapshotRun } from './snapshot-run.js';
import { benchStartup } from './startup.js';
import { benchStorage, renderStorage, type StorageSample } from './storage.js';
import { benchStress, renderStress, type StressSample } from './stress.js';
import { BYTES_VARIANTS, RUN_VARIANTS, STALL_VARIANTS, Variant, type VariantSpec } from './variants.js';

const URI = stackUri();
const QUICK = process.env.BENCH_QUICK === '1';
const REPS = QUICK ? 1 : positiveInt(process.env.BENCH_REPS ?? '3', 'BENCH_REPS');
const STARTUP_REPS = 10;
const SETTLE_MS = 10_000;
const PARTS = ['startup', 'prune', 'stall', 'four', 'scale', 'drain', 'storage', 'stress'] as const;
/** Saves per variant in the stress part (the issue's floor is 30). */
const STRESS_ROUNDS = positiveInt(process.env.BENCH_STRESS_ROUNDS ?? '30', 'BENCH_STRESS_ROUNDS');
type Part = (typeof PARTS)[number];
/** BENCH_ONLY=stall,prune runs only those parts (for working on one of them); the 4-guest run is `four`. */
const ONLY = onlyParts(process.env.BENCH_ONLY);
const doing = (part: Part): boolean => ONLY.has(part) && !(part === 'four' && QUICK);
/** One results file per stack (VSBED_STACK): the README sets them side by side. */
const RESULTS = path.join(repoRoot, `test/bench/results/latest-${wantedStack()}.json`);

const DOMAINS = { [SMALL]: 'vsbed-b-g96', [BIG]: 'vsbed-b-g512', four: [1, 2, 3, 4].map((i) => `vsbed-b-four${i}`), scale: [1, 2, 3, 4, 5, 6, 7, 8].map((i) => `vsbed-b-scale${i}`) };
/**
 * All datasets of this run live under one root named after its start, so a
 * dataset zfs-fuse keeps "busy" after a run (seen: for more than 15 minutes)
 * cannot block the next run; the next run removes it if it can.
 */
const ROOT = `b-bench-${new Date().toISOString().replace(/[-:]/g, '').slice(0, 15)}`;
/** Parents with one child dataset per guest: sanoid runs over the parent with recursive = zfs. */
const PARENTS = { [SMALL]: `${ROOT}/one`, [BIG]: `${ROOT}/big`, four: `${ROOT}/quad` };
/**
 * The scale part's 8 guests, nested so that one `recursive = zfs` run over
 * a level covers 1, 4 or 8 of them: L8/g1..g4, L8/L4/g5..g7, L8/L4/L1/g8.
 */
const SCALE = { 8: `${ROOT}/L8`, 4: `${ROOT}/L8/L4`, 1: `${ROOT}/L8/L4/L1` } as const;
const SCALE_HOMES = ['L8/g1', 'L8/g2', 'L8/g3', 'L8/g4', 'L8/L4/g5', 'L8/L4/g6', 'L8/L4/g7', 'L8/L4/L1/g8'].map((d) => `${ROOT}/${d}`);

function positiveInt(text: string, name: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`bench: ${name} must be a whole number ≥ 1, not ${JSON.stringify(text)}`);
    process.exit(2);
  }
  return n;
}

function onlyParts(text: string | undefined): Set<Part> {
  if (text === undefined || text === '') return new Set(PARTS);
  const parts = text.split(',').map((p) => p.trim());
  const bad = parts.filter((p) => !(PARTS as readonly string[]).includes(p));
  if (bad.length > 0) {
    console.error(`bench: BENCH_ONLY names ${bad.join(', ')}; the parts are ${PARTS.join(', ')}`);
    process.exit(2);
  }
  return new Set(parts as Part[]);
}

let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    // Never mid-snapshot: the run under way finishes (sanoid and its hooks are in their own process group), then cleanup.
    if (!interrupted) console.log(`\nbench: ${sig}: stopping after the run under way, then cleaning up`);
    interrupted = true;
  });
}
function checkInterrupted(): void {
  if (interrupted) throw new BenchError('interrupted');
}

const allDomains = (): string[] => [DOMAINS[SMALL], DOMAINS[BIG], ...DOMAINS.four, ...DOMAINS.scale, 'vsbed-b-stress'];
const SETUPS = ['b-bench-startup', 'b-bench-prune', 'b-stress', 'b-bench-drain', ...[...STALL_VARIANTS, ...BYTES_VARIANTS].map((v) => `b-bench-${v.name}`)];

/** Removes all the bench makes (and only that): its domains, datasets, setups and files in the overlay dir. */
async function cleanup(b: Bed): Promise<void> {
  const hadGuests = (await Promise.all(allDomains().map((d) => virsh('domstate', d).then(() => true, () => false)))).some(Boolean);
  await removeDomains(...allDomains());
  // zfs-fuse: a dataset unmounted by `zfs destroy` while QEMU's last file
  // handles are still being released stayed "busy" for good (until zfs-fuse
  // restarts). Give the releases a moment before the first destroy.
  if (hadGuests) await sleep(SETTLE_MS);
  await destroyPatiently(`${b.vmDataset}/${ROOT}`);
  for (const name of SETUPS) rmSync(path.join(b.dir, 'tests', name), { recursive: true, force: true });
  for (const f of readdirSync(b.overlayDir)) {
    if (f === 'vsbed-b-bench.dd' || allDomains().some((d) => f.startsWith(`${d}.`))) rmSync(path.join(b.overlayDir, f), { recursive: true, force: true });
  }
  for (const d of allDomains()) rmSync(path.join(b.consoleDir, `${d}.log`), { force: true });
}

/** BENCH_VARIANTS=shell,virtsnap: only these variants in the stall part (for working on one comparison). */
/**
 * BENCH_MERGE=1: what this run did not measure (an empty part) keeps its
 * samples from the stack's results file, and the table is rendered from
 * both: for measuring one part again (BENCH_ONLY=drain) without the rest.
 */
const MERGE = process.env.BENCH_MERGE === '1';

function mergeEarlier(samples: Samples, stress: StressSample | null): StressSample | null {
  let earlier: { samples?: Partial<Samples>; stress?: StressSample | null };
  try {
    earlier = JSON.parse(readFileSync(RESULTS, 'utf8')) as typeof earlier;
  } catch {
    return stress;
  }
  const mine = samples as unknown as Record<string, unknown>;
  for (const [key, value] of Object.entries(earlier.samples ?? {})) {
    const now = mine[key];
    if (now === null || (Array.isArray(now) && now.length === 0)) mine[key] = value;
  }
  return stress ?? earlier.stress ?? null;
}

const VARIANTS = process.env.BENCH_VARIANTS ? new Set(process.env.BENCH_VARIANTS.split(',').map((v) => v.trim())) : null;

function specsFor(guest: string): VariantSpec[] {
  // Bytes variants store the same snapshot raw and compressed: the small guest says enough.
  const all = guest === SMALL ? [...STALL_VARIANTS, ...BYTES_VARIANTS] : STALL_VARIANTS;
  return VARIANTS === null ? all : all.filter((v) => VARIANTS.has(v.name));
}

/** Boots a guest and makes sure the event watcher hears it start: without that, every stall would read 0. */
async function bootHeard(watcher: EventWatcher, options: Parameters<typeof bootGuest>[0]): Promise<BenchGuest> {
  const since = Date.now() - 1000;
  const g = await bootGuest(options);
  if (!(await watcher.waitFor(g.guest.name, 'Started', since, 10_000))) throw new BenchError(`virsh event reported no Started event for ${g.guest.name}: stalls cannot be measured`);
  return g;
}

/** Guest stall, bytes and the 1-guest sanoid run: the 96 MiB and the 512 MiB guest, every variant, interleaved. */
async function stallPart(b: Bed, variants: Map<string, Variant>, watcher: EventWatcher, samples: Samples): Promise<void> {
  console.log('booting the 96 MiB and the 512 MiB guest …');
  const small = await bootHeard(watcher, { name: DOMAINS[SMALL], dataset: `${b.vmDataset}/${PARENTS[SMALL]}/g1`, memoryMiB: 96 });
  const big = await bootHeard(watcher, { name: DOMAINS[BIG], dataset: `${b.vmDataset}/${PARENTS[BIG]}/g1`, memoryMiB: 512, fillMiB: 320 });
  samples.guests.push(...([[SMALL, small], [BIG, big]] as const).map(([key, g]) => ({ key, name: g.guest.name, memoryMiB: g.memoryMiB, filledMiB: g.filledMiB })));

  // The first raw save image of each guest gives the reference compressors and the dd baseline.
  const referenced = new Set<string>();
  const reference = (key: string) => async (g: BenchGuest, file: string) => {
    if (referenced.has(key)) return;
    referenced.add(key);
    const compressors = await referenceCompression(file, path.join(b.dir, 'tests'));
    samples.compressors.push(...compressors.map((c) => ({ guest: key, ...c })));
    samples.dd.push({ guest: key, ...(await ddWrite(b.overlayDir, Math.ceil(compressors[0]!.rawBytes / 2 ** 20))) });
  };

  for (let rep = 1; rep <= REPS; rep++) {
    for (const [key, g] of [[SMALL, small], [BIG, big]] as const) {
      for (const spec of specsFor(key)) {
        checkInterrupted();
        const s = await snapshotRun(variants.get(spec.name)!, `${b.vmDataset}/${PARENTS[key]}`, [g], watcher, rep, URI, reference(key));
        samples.stall.push({ guest: key, ...s });
        const pg = s.perGuest[0];
        console.log(`  rep ${rep} ${key} ${spec.name}: ${s.ok ? `stall ${pg?.stallMs} ms in ${pg?.pausesMs.length} pause(s), sanoid run ${s.wallMs} ms` : `failed: ${s.error}`}`);
      }
    }
  }
  // Two cores: the next part's guests need them. (Their datasets go at the end, long after they stopped: see cleanup.)
  for (const g of [small, big]) await g.guest.stop();
}

/** The whole sanoid run over 4 guests, one child dataset each, shell pair against virtsnap. */
async function fourPart(b: Bed, variants: Map<string, Variant>, watcher: EventWatcher, samples: Samples): Promise<void> {
  console.log('booting 4 guests of 96 MiB …');
  const four: BenchGuest[] = [];
  for (const [i, name] of DOMAINS.four.entries()) four.push(await bootHeard(watcher, { name, dataset: `${b.vmDataset}/${PARENTS.four}/g${i + 1}`, memoryMiB: 96 }));
  for (let rep = 1; rep <= REPS; rep++) {
    for (const spec of RUN_VARIANTS) {
      checkInterrupted();
      const s = await snapshotRun(variants.get(spec.name)!, `${b.vmDataset}/${PARENTS.four}`, four, watcher, rep, URI);
      samples.four.push(s);
      console.log(`  rep ${rep} 4 guests ${spec.name}: ${s.ok ? `sanoid run ${s.wallMs} ms, stalls ${s.perGuest.map((g) => g.stallMs).join('/')} ms` : `failed: ${s.error}`}`);
    }
  }
  for (const g of four) await g.guest.stop();
}

/**
 * How the run grows: 1, 4 and 8 guests in one sanoid run of virtsnap's
 * defaults (wall time, and per guest); then, with 4 of them, how long the
 * spool takes to empty once an archive that was read-only for the run is
 * writable again.
 */
async function scalePart(b: Bed, variants: Map<string, Variant>, watcher: EventWatcher, samples: Samples): Promise<void> {
  console.log('booting 8 guests of 96 MiB …');
  const guests: BenchGuest[] = [];
  for (const [i, name] of DOMAINS.scale.entries()) guests.push(await bootHeard(watcher, { name, dataset: `${b.vmDataset}/${SCALE_HOMES[i]}`, memoryMiB: 96 }));
  const below = (n: 1 | 4 | 8) => guests.slice(8 - n);
  try {
    if (doing('scale')) {
      for (let rep = 1; rep <= REPS; rep++) {
        for (const n of [1, 4, 8] as const) {
          checkInterrupted();
          const s = await snapshotRun(variants.get(DEFAULTS)!, `${b.vmDataset}/${SCALE[n]}`, below(n), watcher, rep, URI);
          samples.scale.push(s);
          console.log(`  rep ${rep} ${n} guest(s): ${s.ok ? `sanoid run ${s.wallMs} ms, ${Math.round(s.wallMs / n)} ms per guest` : `failed: ${s.error}`}`);
        }
      }
    }
    if (doing('drain')) {
      for (let rep = 1; rep <= REPS; rep++) {
        checkInterrupted();
        const d = await drainRun(b, `${b.vmDataset}/${SCALE[4]}`, below(4), rep);
        samples.drain.push(d);
        console.log(`  rep ${rep} 4 guests, archive read-only for the run: sanoid run ${d.runMs} ms, ${d.waiting} dumps waited, spool empty ${d.drainMs} ms after the archive came back`);
      }
    }
  } finally {
    for (const g of guests) await g.guest.stop();
  }
}

/** One sanoid run with the archive dir read-only (a tmpfs remounted), then writable: how long until the spool is empty. */
async function drainRun(b: Bed, dataset: string, guests: BenchGuest[], rep: number): Promise<DrainSample> {
  const setup = await Setup.create('b-bench-drain', { VIRTSNAP_LOG: 'warn' });
  const archive = path.join(setup.root, 'archive-tmpfs');
  mkdirSync(archive, { recursive: true });
  await sh('mount', ['-t', 'tmpfs', '-o', 'size=1g,mode=0700', 'tmpfs', archive]);
  try {
    setup.writeEnv({ VIRTSNAP_ARCHIVE_DIR: archive, VIRTSNAP_LOG: 'warn' });
    await sh('mount', ['-o', 'remount,ro', archive]);
    const offsets = guests.map((g) => g.guest.consoleSize());
    const started = Date.now();
    // Far ahead of the other parts' clocks: every type is due.
    const out = await setup.sanoid('2.1.0', setup.section(dataset, { recursive: 'zfs' }), ['--take-snapshots'], 1000 + rep);
    const runMs = Date.now() - started;
    if (out.code !== 0) throw new BenchError(`drain: sanoid failed: ${out.stderr}`);
    for (const [i, g] of guests.entries()) {
      const problem = await problemWith(g, offsets[i]!, []);
      if (problem !== null) throw new BenchError(`drain: ${problem}`);
    }
    const waiting = setup.waiting().length;
    await sh('mount', ['-o', 'remount,rw', archive]);
    const back = Date.now();
    await setup.spoolDrained(300_000);
    return { rep, guests: guests.length, runMs, waiting, drainMs: Date.now() - back };
  } finally {
    await sh('umount', [archive]).catch(() => sh('umount', ['-l', archive]));
  }
}

async function main(): Promise<number> {
  const b = await bed();
  const started = new Date();
  const samples: Samples = { guests: [], stall: [], four: [], scale: [], drain: [], compressors: [], dd: [], prune: null, startup: [] };
  let machine: Machine | null = null;
  let stoppedBy: string | null = null;
  let watcher: EventWatcher | null = null;
  /** The storage part for each fill: random (nothing compresses what changes) and random letters (gzip -1 keeps 0.58 of them). */
  const storage: StorageSample[] = [];
  let stress: StressSample | null = null;
  console.log(`bench: ${REPS} repetition(s)${QUICK ? ', quick (no 4-guest run)' : ''}, parts: ${PARTS.filter(doing).join(', ')}; results go to ${path.relative(process.cwd(), RESULTS)}`);
  try {
    await cleanup(b);
    for (const ds of await earlierRuns(b.vmDataset, `${b.vmDataset}/${ROOT}`)) await tryDestroy(ds);
    await sh('zfs', ['create', `${b.vmDataset}/${ROOT}`]);
    machine = await describeMachine();
    console.log(`  ${machine.cores} cores, ${machine.cpuModel}, ${machine.ramMiB} MiB, ${machine.libvirt}, ${machine.qemu}, virt type ${machine.virtType}`);

    if (doing('startup')) {
      console.log('start-up of hooks with nothing to do …');
      samples.startup = await benchStartup(`${b.vmDataset}/${ROOT}/empty`, STARTUP_REPS);
      checkInterrupted();
    }
    if (doing('prune')) {
      console.log('prune with 1,000 dumps …');
      samples.prune = await benchPrune(`${b.vmDataset}/${ROOT}/prune`);
      checkInterrupted();
    }

    if (doing('storage')) {
      console.log('storage: the same 24 dumps in the archive dir, a gzip ZFS dataset and restic …');
      for (const kind of ['random', 'text'] as const) {
        const sample = await benchStorage({ domain: 'vsbed-b-storage', dataset: `${b.vmDataset}/${ROOT}/storage`, setup: 'b-storage' }, 24, kind);
        storage.push(sample);
        console.log(renderStorage(sample));
        checkInterrupted();
      }
    }
    if (doing('stress')) {
      console.log(`restore stress: ${STRESS_ROUNDS} saves per variant, each restored in place, on a starved host …`);
      stress = await benchStress(b, `${b.vmDataset}/${ROOT}/stress`, STRESS_ROUNDS, URI);
      console.log(renderStress(stress));
      checkInterrupted();
    }
    if (doing('stall') || doing('four') || doing('scale') || doing('drain')) {
      const variants = new Map<string, Variant>();
      for (const spec of [...STALL_VARIANTS, ...BYTES_VARIANTS]) variants.set(spec.name, await Variant.create(spec));
      watcher = await EventWatcher.start();
      if (doing('stall')) await stallPart(b, variants, watcher, samples);
      if (doing('four')) await fourPart(b, variants, watcher, samples);
      if (doing('scale') || doing('drain')) await scalePart(b, variants, watcher, samples);
    }
  } catch (err) {
    stoppedBy = (err as Error).message;
    console.error(`bench: ${err instanceof BenchError ? '' : 'error: '}${stoppedBy}`);
  } finally {
    await watcher?.stop().catch((err) => console.error(`bench: the event watcher: ${(err as Error).message}`));
  }
  // The table before the cleanup: taking zfs-fuse's datasets down can take minutes.
  try {
    const finished = new Date();
    if (MERGE) stress = mergeEarlier(samples, stress);
    console.log(`\n${render(samples)}`);
    if (stress !== null) console.log(`\n${renderStress(stress)}`);
    const results = {
      format: 'virtsnap-bench/1',
      startedAt: started.toISOString(),
      finishedAt: finished.toISOString(),
      durationS: Math.round((finished.getTime() - started.getTime()) / 1000),
      settings: { stack: wantedStack(), reps: REPS, quick: QUICK, mergedWithEarlier: MERGE, datasets: `${b.vmDataset}/${ROOT}`, parts: PARTS.filter(doing), sanoid: '2.1.0', startupReps: STARTUP_REPS },
      stoppedBy,
      machine,
      variants: [...STALL_VARIANTS, ...BYTES_VARIANTS].map(({ name, what, settings }) => ({ name, what, settings })),
      table: sections(samples),
      targets: targets(samples),
      samples,
      storage,
      stress,
    };
    mkdirSync(path.dirname(RESULTS), { recursive: true });
    writeFileSync(RESULTS, JSON.stringify(results, null, 2) + '\n');
    console.log(`bench: ${results.durationS} s${stoppedBy ? `, stopped: ${stoppedBy}` : ''}; saved ${RESULTS}; cleaning up …`);
  } finally {
    await cleanup(b);
  }
  return stoppedBy ? 1 : 0;
}

process.exitCode = await main();
