import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { archiveDump, listDumps } from '../../lib/archive.js';
import { loadConfig, type Config } from '../../lib/config.js';
import { collectGarbage, pruneSnapshot } from '../../lib/retention.js';
import { ZfsClient } from '../../lib/zfs.js';

/** A ZFS that knows some datasets and snapshots, and nothing else. */
function fakeZfs(datasets: string[], snapshots: string[]): ZfsClient {
  // The real client's own logic (census) over these two answers from "zfs".
  return Object.assign(Object.create(ZfsClient.prototype) as ZfsClient, {
    exists: async (ds: string) => datasets.includes(ds),
    listSnapshots: async (ds?: string, recursive = true) =>
      snapshots.filter((s) => ds === undefined || (recursive ? s.startsWith(`${ds}@`) || s.startsWith(`${ds}/`) : s.startsWith(`${ds}@`))),
  });
}

describe('retention against ZFS', () => {
  let root: string;
  let config: Config;

  before(() => {
    root = mkdtempSync(path.join(tmpdir(), 'virtsnap-retention-'));
    const env = path.join(root, 'empty.env');
    writeFileSync(env, '');
    config = loadConfig({
      VIRTSNAP_CONFIG: env,
      VIRTSNAP_ARCHIVE_DIR: path.join(root, 'archive'),
      VIRTSNAP_STATE_DIR: path.join(root, 'state'),
      VIRTSNAP_OVERLAY_DIR: path.join(root, 'overlay'),
    });
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  async function dump(id: string, snapshots: string[]) {
    const mem = path.join(root, `${id}.mem`);
    writeFileSync(mem, Buffer.concat([Buffer.from('LibvirtQemudSave'), Buffer.alloc(100)]));
    return archiveDump(config.archiveDir, {
      id,
      domain: { name: 'vm', uuid: '11111111-1111-1111-1111-111111111111' },
      snapshots,
      types: [],
      memoryFile: mem,
      metaDir: null,
      disks: [],
      startedAt: new Date().toISOString(),
      frozenAt: null,
      job: null,
      libvirtUri: 'qemu:///system',
      hostname: 'h',
    });
  }

  it('prune keeps a dump while another of its snapshots exists, deletes it with the last', async () => {
    const d = await dump('a', ['tank/vm@h1', 'tank/vm@d1']);
    let r = await pruneSnapshot({ script: 'prune', dataset: 'tank/vm', snapname: 'h1' }, config, fakeZfs(['tank/vm'], ['tank/vm@d1']));
    assert.deepEqual(r.updated, ['a']);
    assert.deepEqual(listDumps(config.archiveDir)[0]!.manifest.snapshots, ['tank/vm@d1']);
    r = await pruneSnapshot({ script: 'prune', dataset: 'tank/vm', snapname: 'd1' }, config, fakeZfs(['tank/vm'], []));
    assert.deepEqual(r.deleted, ['a']);
    assert.equal(existsSync(d.manifest.memoryFile), false);
  });

  it('a snapshot of a dataset ZFS does not know (pool not imported, renamed) is never taken as gone', async () => {
    const d = await dump('b', ['tank/vm@h2', 'other/vm@h2']);
    const r = await pruneSnapshot({ script: 'prune', dataset: 'tank/vm', snapname: 'h2' }, config, fakeZfs(['tank/vm'], []));
    assert.deepEqual(r.deleted, []);
    assert.deepEqual(listDumps(config.archiveDir).find((x) => x.manifest.id === 'b')!.manifest.snapshots, ['other/vm@h2']);
    const gc = await collectGarbage(config, fakeZfs(['tank/vm'], []), { dryRun: false });
    assert.deepEqual(gc.deleted, []);
    assert.ok(gc.kept.some((k) => k.includes('other/vm')));
    assert.ok(existsSync(d.manifest.memoryFile));
    // Once the pool is back and the snapshot really is gone, gc deletes it.
    const gc2 = await collectGarbage(config, fakeZfs(['tank/vm', 'other/vm'], []), { dryRun: false });
    assert.deepEqual(gc2.deleted, ['b']);
  });
});
