// Taking the bench's datasets down on zfs-fuse, which says "dataset is busy"
// after a guest lets go of its image, for seconds on a loaded bed, and which
// was seen to keep a child busy for good after a `zfs destroy -r` of its
// parent had unmounted it (4 guests, one child dataset each).
import { datasetExists, destroyDataset, sh, sleep } from '../helpers/bed.js';

const TRIES = 6;
const PAUSE_MS = 5_000;

/** Destroys `dataset` and everything below it, deepest first, each child on its own; keeps trying for half a minute, then says what it left. */
export async function destroyPatiently(dataset: string): Promise<void> {
  if (!(await datasetExists(dataset))) return;
  const tree = (await sh('zfs', ['list', '-H', '-o', 'name', '-t', 'filesystem', '-r', dataset])).split('\n').filter((l) => l !== '');
  for (const ds of tree.sort((a, b) => b.split('/').length - a.split('/').length)) {
    for (let i = 1; ; i++) {
      try {
        await destroyDataset(ds);
        break;
      } catch (err) {
        if (i >= TRIES) {
          console.error(`bench: cannot destroy ${ds} (left behind): ${(err as Error).message}`);
          return;
        }
        await sleep(PAUSE_MS);
      }
    }
  }
}
