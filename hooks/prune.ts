// sanoid pruning_script: a snapshot was destroyed; drop it from the RAM
// dumps that name it, and delete a dump once none of its snapshots is left.
import { loadConfig } from '../lib/config.js';
import { log } from '../lib/log.js';
import { hookFlags, main } from '../lib/main.js';
import { pruneSnapshot } from '../lib/retention.js';
import { parsePruneEnv } from '../lib/sanoid/env.js';
import { storeFor } from '../lib/stores/index.js';
import { ZfsClient } from '../lib/zfs.js';

main(async () => {
  hookFlags(process.argv.slice(2));
  const event = parsePruneEnv(process.env);
  if (event.script === null) {
    // pre_pruning_script (sanoid >= 2.2.0) sets no SANOID_SCRIPT. virtsnap
    // needs nothing before a destroy; exit 0 so sanoid goes ahead with it.
    log.info(`run as pre_pruning_script: nothing to do before ${event.dataset}@${event.snapname} is destroyed (use pruning_script)`, { dataset: event.dataset });
    return;
  }
  const config = loadConfig();
  await pruneSnapshot(event, config, new ZfsClient(), storeFor(config));
});
