// sanoid post_snapshot_script: thaw what pre froze and archive the RAM dumps.
import { loadConfig } from '../lib/config.js';
import { hookFlags, main } from '../lib/main.js';
import { makeDeps, runPost } from '../lib/runs.js';
import { parseSnapshotEnv } from '../lib/sanoid/env.js';

main(async () => {
  hookFlags(process.argv.slice(2));
  const run = parseSnapshotEnv(process.env, 'post');
  await runPost(run, makeDeps(loadConfig()));
});
