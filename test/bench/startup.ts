// Start-up: sanoid runs the pre and post hooks for every dataset it
// snapshots and the prune hook for every snapshot it destroys, most of them
// with nothing to do. What such a call costs is mostly starting Node and
// loading our modules; `node -e 0` is the floor.
import { sh } from '../helpers/bed.js';
import { hooks, sanoidEnv, Setup } from '../helpers/virtsnap.js';
import { timed, type Cost } from './cost.js';

export interface StartupSample {
  what: string;
  rep: number;
  wallMs: number;
  cpuMs: number;
}

/** `dataset` is created here, empty: no VM has a disk in it. */
export async function benchStartup(dataset: string, reps: number): Promise<StartupSample[]> {
  await sh('zfs', ['create', dataset]);
  const setup = await Setup.create('b-bench-startup');
  const calls: Record<string, () => Promise<Cost>> = {
    'node -e 0': () => timed(process.execPath, ['-e', '0']),
    'pre hook, dataset without VMs': () => timed(hooks.pre, [], { env: setup.env(sanoidEnv(dataset, 'autosnap_bench', 'pre')) }),
    'post hook, nothing frozen': () => timed(hooks.post, [], { env: setup.env(sanoidEnv(dataset, 'autosnap_bench', 'post')) }),
    'prune hook, snapshot without dump': () =>
      timed(hooks.prune, [], { env: setup.env({ SANOID_SCRIPT: 'prune', SANOID_TARGET: dataset, SANOID_SNAPNAME: 'autosnap_bench_hourly' }) }),
  };
  const samples: StartupSample[] = [];
  // One untimed round first: the page cache, not start-up, would be measured otherwise.
  for (const call of Object.values(calls)) await call();
  for (let rep = 1; rep <= reps; rep++) {
    for (const [what, call] of Object.entries(calls)) samples.push({ what, rep, ...(await call()) });
  }
  return samples;
}
