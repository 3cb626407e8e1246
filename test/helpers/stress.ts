// The restore stress test (issue 19): many RAM saves of a busy guest on a
// CPU-starved host, each restored in place and watched by every oracle
// (test/helpers/oracle.ts). The integration test runs a short series
// (test/integration/stress.test.ts), `npm run bench` the long one
// (BENCH_ONLY=stress).
//
// Variants:
//   shell-live       QEMU's defaults: `virsh snapshot-create-as --live` (300 ms
//                    downtime limit, no flushing), as the shell pair does it
//   virtsnap-live    virtsnap forced live (VIRTSNAP_LIVE=yes): the lowered
//                    downtime limit and the memory file flushed while written
//   virtsnap         virtsnap's defaults: live where the stack is trusted,
//                    else with the guest paused (lib/libvirt/stack.ts)
//   virtsnap-nonlive VIRTSNAP_LIVE=no
//
// Each round: the guest runs a while, is saved (RAM + disks of one instant,
// a ZFS snapshot between), then stopped, its dataset rolled back to that
// snapshot and the dump restored (`virsh restore --running`): the in-place
// restore a user does. What the restored guest prints decides the round.
import { spawn, type ChildProcess } from 'node:child_process';
import { cpus } from 'node:os';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { Guest, sh, sleep, virsh, zfsRetry, type Watch } from './bed.js';
import type { WatchRule } from './oracle.js';
import { cli, runProgram, type Setup } from './virtsnap.js';

export const STRESS_VARIANTS = ['shell-live', 'virtsnap-live', 'virtsnap', 'virtsnap-nonlive'] as const;
export type StressVariant = (typeof STRESS_VARIANTS)[number];

/** What became of one round. */
export type RoundOutcome =
  | { kind: 'whole' }
  | { kind: 'lost-pages'; pages: number; detail: string }
  | { kind: 'kernel'; detail: string }
  | { kind: 'hung'; detail: string }
  | { kind: 'other'; detail: string }
  | { kind: 'save-failed'; detail: string };

export interface StressResult {
  variant: StressVariant;
  rounds: RoundOutcome[];
  /** The plan's live flag for the guest's save (virtsnap variants), as `--dry-run` printed it. */
  live: boolean | null;
}

/** One line of a round's verdict. */
export function classify(w: Watch): RoundOutcome {
  if (w.problems.length === 0) return { kind: 'whole' };
  const lost = w.problems.filter((p) => p.startsWith('memory oracle: a page lost'));
  if (lost.length > 0) {
    // The guest prints at most 16 pages a sweep, then counts: `lost=N` on its next sweep line says how many in all.
    const counted = [...w.text.matchAll(/VSBED MEM sweep=\d+ lost=(\d+)/g)].map((m) => Number(m[1]));
    return { kind: 'lost-pages', pages: Math.max(lost.length, ...counted), detail: lost[0]! };
  }
  const kernel = w.problems.find((p) => p.startsWith('kernel'));
  if (kernel !== undefined) return { kind: 'kernel', detail: kernel };
  const stall = w.problems.find((p) => p.startsWith('no progress'));
  if (stall !== undefined) return { kind: 'hung', detail: stall };
  return { kind: 'other', detail: w.problems.join('; ') };
}

/** Busy loops on every core, as a starved hypervisor has them; stop() ends them. */
export function starveCpus(): { stop(): void } {
  const loops: ChildProcess[] = cpus().map(() => spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }));
  return {
    stop() {
      for (const l of loops) l.kill('SIGKILL');
    },
  };
}

export interface StressOptions {
  guest: Guest;
  dataset: string;
  setup: Setup;
  variant: StressVariant;
  rounds: number;
  /** How long the guest runs before each save. */
  runMs?: number;
  rule?: Partial<WatchRule>;
  /** Called after each round (progress lines for the bench). */
  onRound?: (n: number, outcome: RoundOutcome) => void;
}

const VIRTSNAP_LIVE: Record<Exclude<StressVariant, 'shell-live'>, string> = { 'virtsnap-live': 'yes', virtsnap: 'auto', 'virtsnap-nonlive': 'no' };

/** Runs `rounds` save-and-restore rounds of one variant on a running guest. The guest is running again at the end. */
export async function stressRestores(o: StressOptions): Promise<StressResult> {
  const rounds: RoundOutcome[] = [];
  const env: Record<string, string> = o.variant === 'shell-live' ? {} : { VIRTSNAP_LIVE: VIRTSNAP_LIVE[o.variant], VIRTSNAP_COMPRESS: 'no' };
  let live: boolean | null = null;
  if (o.variant !== 'shell-live') {
    const dry = await runProgram(cli, ['snapshot', o.dataset, '--dry-run'], o.setup.env(env));
    if (dry.code !== 0) throw new Error(`virtsnap snapshot --dry-run: ${dry.stderr}`);
    const plan = JSON.parse(dry.stdout) as { domains: { name: string; live: boolean }[] };
    live = plan.domains.find((d) => d.name === o.guest.name)?.live ?? null;
  }
  for (let n = 1; n <= o.rounds; n++) {
    if ((await o.guest.state()) !== 'running') await o.guest.start();
    await sleep(o.runMs ?? 3000);
    // Unique: the bench runs one round at a time, variant after variant.
    const snap = `stress-${o.variant}-${Date.now()}`;
    let dump: string;
    try {
      dump = o.variant === 'shell-live' ? await shellLiveSave(o.guest, o.dataset, snap, o.setup.overlayDir) : await virtsnapSave(o, snap, env);
    } catch (err) {
      rounds.push({ kind: 'save-failed', detail: (err as Error).message });
      o.onRound?.(n, rounds.at(-1)!);
      continue;
    }
    const outcome = classify(await restoreInPlace(o.guest, o.dataset, snap, dump, o.rule ?? {}));
    rounds.push(outcome);
    o.onRound?.(n, outcome);
    rmSync(dump, { force: true });
    // A guest that came back damaged is started afresh: the next round judges its own save.
    if (outcome.kind !== 'whole') await o.guest.stop();
  }
  for (const s of await snapshotsNamed(o.dataset, `stress-${o.variant}-`)) await zfsRetry(['destroy', s]).catch(() => undefined);
  // The dumps' manifests go with their snapshots.
  if (o.variant !== 'shell-live') await runProgram(cli, ['gc'], o.setup.env(env));
  if ((await o.guest.state()) !== 'running') await o.guest.start();
  return { variant: o.variant, rounds, live };
}

async function virtsnapSave(o: StressOptions, snap: string, env: Record<string, string>): Promise<string> {
  const out = await runProgram(cli, ['snapshot', o.dataset, '--name', snap], o.setup.env(env));
  if (out.code !== 0) throw new Error(`virtsnap snapshot: ${out.stderr.trim().split('\n').pop()}`);
  const dump = (await o.setup.dumps()).find((d) => d.manifest.snapshots.some((r) => r.name === `${o.dataset}@${snap}`));
  if (dump === undefined) throw new Error(`virtsnap snapshot kept no dump for ${o.dataset}@${snap}`);
  // The dump's file only: its manifest goes with the next gc (its snapshot is destroyed below).
  return dump.manifest.memoryFile;
}

/** QEMU's defaults, as the shell pair: one external snapshot with --live, the ZFS snapshot, commit back. */
async function shellLiveSave(guest: Guest, dataset: string, snap: string, overlayDir: string): Promise<string> {
  const mem = path.join(overlayDir, `${guest.name}.stress.mem`);
  const overlay = path.join(overlayDir, `${guest.name}.stress.vda.qcow2`);
  rmSync(mem, { force: true });
  rmSync(overlay, { force: true });
  await virsh('snapshot-create-as', guest.name, snap, '--no-metadata', '--atomic', '--live', '--memspec', `file=${mem},snapshot=external`, '--diskspec', `vda,snapshot=external,file=${overlay}`);
  await sh('zfs', ['snapshot', `${dataset}@${snap}`]);
  await virsh('blockcommit', guest.name, 'vda', '--active', '--shallow', '--pivot', '--wait', '--timeout', '120');
  rmSync(overlay, { force: true });
  return mem;
}

/** The user's in-place restore: stop, roll back to the snapshot, `virsh restore --running`; then every oracle watches. */
async function restoreInPlace(guest: Guest, dataset: string, snap: string, dump: string, rule: Partial<WatchRule>): Promise<Watch> {
  await guest.stop();
  await zfsRetry(['rollback', '-r', `${dataset}@${snap}`], 60);
  const offset = guest.consoleSize();
  await virsh('restore', dump, '--running');
  return guest.watch(offset, rule);
}

async function snapshotsNamed(dataset: string, prefix: string): Promise<string[]> {
  const out = await sh('zfs', ['list', '-H', '-t', 'snapshot', '-o', 'name', '-r', dataset]);
  return out.split('\n').filter((l) => l.startsWith(`${dataset}@${prefix}`));
}

/** Counts per outcome kind, for a table. */
export function tally(r: StressResult): Record<RoundOutcome['kind'], number> & { lostPageTotal: number } {
  const t = { whole: 0, 'lost-pages': 0, kernel: 0, hung: 0, other: 0, 'save-failed': 0, lostPageTotal: 0 };
  for (const o of r.rounds) {
    t[o.kind]++;
    if (o.kind === 'lost-pages') t.lostPageTotal += o.pages;
  }
  return t;
}
