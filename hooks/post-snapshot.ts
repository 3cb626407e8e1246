// sanoid post_snapshot_script: thaw what pre froze and archive the RAM dumps.
import { loadConfig } from '../lib/config.js';
import { Journal } from '../lib/journal.js';
import { log } from '../lib/log.js';
import { hookFlags, main } from '../lib/main.js';
import { parseSnapshotEnv } from '../lib/sanoid/env.js';

main(async () => {
  hookFlags(process.argv.slice(2));
  const run = parseSnapshotEnv(process.env, 'post');
  const config = loadConfig();
  // sanoid runs this for every dataset it snapshots, and most have no VM.
  // With no journal entry at all no domain is frozen (by this run or any
  // other) and none is stuck, so runPost would thaw nothing, record nothing
  // (no metrics file) and fail nothing: skip loading it, ~50 ms of a call
  // that is otherwise only Node starting.
  if (config.metricsFile === null && new Journal(config.stateDir).list().length === 0) {
    log.debug('no domain frozen by any run: nothing to thaw', { dataset: run.targets.join(',') });
    return;
  }
  const { makeDeps, runPost } = await import('../lib/runs.js');
  await runPost(run, makeDeps(config));
});
