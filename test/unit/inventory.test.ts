// Which datasets a run snapshots, and what that costs in zfs calls.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { snapshottedDatasets } from '../../lib/inventory.js';
import { fakeConfig } from './fakes.js';

describe('snapshottedDatasets', () => {
  const root = mkdtempSync(path.join(tmpdir(), 'virtsnap-inventory-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  const config = fakeConfig(root);
  const mounts = [{ dataset: 'tank/vm', mountpoint: '/tank/vm' }];

  function zfs(known: string[]) {
    const asked: string[] = [];
    return {
      asked,
      exists: async (ds: string) => {
        asked.push(ds);
        return known.includes(ds);
      },
      subtree: async (ds: string) => [ds],
    };
  }

  it('a mounted filesystem exists without asking zfs; one not mounted is asked', async () => {
    const z = zfs(['tank/vol']);
    assert.deepEqual(await snapshottedDatasets(['tank/vm', 'tank/vol'], config, z, false, mounts), ['tank/vm', 'tank/vol']);
    assert.deepEqual(z.asked, ['tank/vol']);
  });

  it('a dataset neither mounted nor known to zfs is refused, naming it', async () => {
    await assert.rejects(snapshottedDatasets(['tank/nope'], config, zfs([]), false, mounts), /dataset tank\/nope does not exist/);
  });
});
