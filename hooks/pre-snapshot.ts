// sanoid pre_snapshot_script: freeze every VM with disks in the target.
import { loadConfig } from '../lib/config.js';
import { hookFlags, main } from '../lib/main.js';
import { makeDeps, planRun, runPre } from '../lib/runs.js';
import { parseSnapshotEnv } from '../lib/sanoid/env.js';

main(async () => {
  const { dryRun } = hookFlags(process.argv.slice(2));
  const run = parseSnapshotEnv(process.env, 'pre');
  const deps = makeDeps(loadConfig());
  if (dryRun) {
    process.stdout.write(JSON.stringify(await planRun(run, deps), null, 2) + '\n');
    return;
  }
  await runPre(run, deps);
});
