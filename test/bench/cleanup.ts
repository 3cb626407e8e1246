// Taking the bench's datasets down on zfs-fuse, which says "dataset is busy"
// after a guest lets go of its image, for seconds on a loaded bed, and which
// was seen to keep a child busy for good after a `zfs destroy -r` of its
// parent had unmounted it (4 guests, one child dataset each).
import { datasetExists, destroyDataset, sh, sleep } from '../helpers/bed.js';

const PAUSE_MS = 5_000;

/**
 * Destroys `dataset` and everything below it, deepest first, each child on
 * its own, `tries` times each (destroyDataset itself waits out a minute of
 * "busy"), then says what it left. Returns whether all is gone.
 */
export async function destroyPatiently(dataset: string, tries = 2): Promise<boolean> {
  if (!(await datasetExists(dataset))) return true;
  const tree = (await sh('zfs', ['list', '-H', '-o', 'name', '-t', 'filesystem', '-r', dataset])).split('\n').filter((l) => l !== '');
  for (const ds of tree.sort((a, b) => b.split('/').length - a.split('/').length)) {
    for (let i = 1; ; i++) {
      try {
        await destroyDataset(ds);
        break;
      } catch (err) {
        if (i >= tries) {
          console.error(`bench: cannot destroy ${ds} (left behind; zfs-fuse lets go of it later, or after it restarts): ${(err as Error).message}`);
          return false;
        }
        await sleep(PAUSE_MS);
      }
    }
  }
  return true;
}

/** Datasets of earlier bench runs (`<vm>/b-bench-…`) that are still there: every run has its own, so one zfs-fuse keeps busy never blocks the next run. */
export async function earlierRuns(vmDataset: string, current: string): Promise<string[]> {
  const all = (await sh('zfs', ['list', '-H', '-o', 'name', '-t', 'filesystem', '-r', vmDataset])).split('\n');
  return all.filter((ds) => ds.startsWith(`${vmDataset}/b-bench-`) && ds.split('/').length === vmDataset.split('/').length + 1 && ds !== current);
}

/** One `zfs destroy -r` of an earlier run's leftover, no waiting: it was busy for minutes already, and this run does not need it gone. */
export async function tryDestroy(dataset: string): Promise<boolean> {
  try {
    await sh('zfs', ['destroy', '-r', dataset]);
    return true;
  } catch (err) {
    console.error(`bench: an earlier run's ${dataset} is still there: ${(err as Error).message}`);
    return false;
  }
}
