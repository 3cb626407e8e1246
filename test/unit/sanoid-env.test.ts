import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parsePruneEnv, parseSnapshotEnv, stripDataset } from '../../lib/sanoid/env.js';
import { UsageError } from '../../lib/errors.js';

const SNAP = 'autosnap_2024-01-02_03:04:05_daily';

/** Asserts `fn` throws a UsageError (exit code 2) whose message matches `message`. */
function assertUsage(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof UsageError, `expected UsageError, got ${String(err)}`);
    assert.equal(err.exitCode, 2);
    assert.match(err.message, message);
    return true;
  });
}

describe('parseSnapshotEnv', () => {
  it('pre: bare SANOID_SNAPNAME and SANOID_TARGETS', () => {
    const run = parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGETS: 'tank/vm', SANOID_SNAPNAME: SNAP }, 'pre');
    assert.deepEqual(run, { phase: 'pre', targets: ['tank/vm'], snapnames: [SNAP], types: [], preFailure: false });
  });

  it('post: strips the dataset@ that sanoid 2.1.0 puts into SANOID_SNAPNAME', () => {
    const run = parseSnapshotEnv(
      { SANOID_SCRIPT: 'post', SANOID_TARGETS: 'tank/vm', SANOID_SNAPNAME: `tank/vm@${SNAP}`, SANOID_PRE_FAILURE: '0' },
      'post',
    );
    assert.equal(run.phase, 'post');
    assert.deepEqual(run.snapnames, [SNAP]);
    assert.equal(run.preFailure, false);
  });

  it('post: SANOID_PRE_FAILURE=1 is reported', () => {
    const run = parseSnapshotEnv({ SANOID_SCRIPT: 'post', SANOID_TARGETS: 'tank/vm', SANOID_SNAPNAMES: SNAP, SANOID_PRE_FAILURE: '1' }, 'post');
    assert.equal(run.preFailure, true);
  });

  it('prefers SANOID_SNAPNAMES over SANOID_SNAPNAME, in order, with types', () => {
    const run = parseSnapshotEnv(
      {
        SANOID_SCRIPT: 'pre',
        SANOID_TARGETS: 'tank/vm',
        SANOID_SNAPNAMES: 'autosnap_x_monthly, autosnap_x_daily',
        SANOID_SNAPNAME: 'something_else',
        SANOID_TYPES: 'monthly,daily',
      },
      'pre',
    );
    assert.deepEqual(run.snapnames, ['autosnap_x_monthly', 'autosnap_x_daily']);
    assert.deepEqual(run.types, ['monthly', 'daily']);
  });

  it('falls back to SANOID_TARGET when SANOID_TARGETS is absent', () => {
    const run = parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGET: 'tank/vm/a', SANOID_SNAPNAMES: SNAP }, 'pre');
    assert.deepEqual(run.targets, ['tank/vm/a']);
  });

  it('SANOID_TARGETS wins over SANOID_TARGET', () => {
    const run = parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGETS: 'tank/a,tank/b', SANOID_TARGET: 'tank/c', SANOID_SNAPNAMES: SNAP }, 'pre');
    assert.deepEqual(run.targets, ['tank/a', 'tank/b']);
  });

  it('accepts dataset names with spaces', () => {
    const run = parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGETS: 'tank/my vms/win 10', SANOID_SNAPNAMES: SNAP }, 'pre');
    assert.deepEqual(run.targets, ['tank/my vms/win 10']);
  });

  it('missing SANOID_SCRIPT -> UsageError naming SANOID_SCRIPT', () => {
    assertUsage(() => parseSnapshotEnv({ SANOID_TARGETS: 'tank/vm', SANOID_SNAPNAMES: SNAP }, 'pre'), /SANOID_SCRIPT/);
    assertUsage(() => parseSnapshotEnv({ SANOID_SCRIPT: '', SANOID_TARGETS: 'tank/vm', SANOID_SNAPNAMES: SNAP }, 'post'), /SANOID_SCRIPT/);
  });

  it('wrong SANOID_SCRIPT -> UsageError naming SANOID_SCRIPT and the value', () => {
    assertUsage(
      () => parseSnapshotEnv({ SANOID_SCRIPT: 'post', SANOID_TARGETS: 'tank/vm', SANOID_SNAPNAMES: SNAP }, 'pre'),
      /SANOID_SCRIPT=post/,
    );
    assertUsage(
      () => parseSnapshotEnv({ SANOID_SCRIPT: 'prune', SANOID_TARGETS: 'tank/vm', SANOID_SNAPNAMES: SNAP }, 'post'),
      /SANOID_SCRIPT=prune/,
    );
  });

  it('missing targets -> UsageError naming SANOID_TARGETS', () => {
    assertUsage(() => parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_SNAPNAMES: SNAP }, 'pre'), /SANOID_TARGETS/);
    assertUsage(() => parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGETS: '', SANOID_SNAPNAMES: SNAP }, 'pre'), /SANOID_TARGET/);
    assertUsage(() => parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGETS: ' , ', SANOID_SNAPNAMES: SNAP }, 'pre'), /SANOID_TARGETS/);
  });

  it('missing snapnames -> UsageError naming SANOID_SNAPNAMES', () => {
    assertUsage(() => parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGETS: 'tank/vm' }, 'pre'), /SANOID_SNAPNAMES/);
  });

  it('bad dataset names -> UsageError naming SANOID_TARGETS', () => {
    for (const bad of ['tank/vm;rm -rf /', '/tank/vm', 'tank/vm/', 'tank//vm', 'tank/vm@snap', 'tank/$(id)', 'tank/../etc']) {
      assertUsage(() => parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGETS: bad, SANOID_SNAPNAMES: SNAP }, 'pre'), /SANOID_TARGETS/);
    }
  });

  it(
    'a bad SANOID_TARGET (fallback) is reported under its own name',
    () => {
      assertUsage(
        () => parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGET: 'tank/vm;x', SANOID_SNAPNAMES: SNAP }, 'pre'),
        /SANOID_TARGET[^S]/,
      );
    },
  );

  it('bad snapshot names -> UsageError naming the variable they came from', () => {
    assertUsage(
      () => parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGETS: 'tank/vm', SANOID_SNAPNAMES: 'a/b' }, 'pre'),
      /SANOID_SNAPNAMES/,
    );
    assertUsage(
      () => parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGETS: 'tank/vm', SANOID_SNAPNAME: 'snap;reboot' }, 'pre'),
      /SANOID_SNAPNAME\b/,
    );
  });

  it('SANOID_TYPES of another length than SANOID_SNAPNAMES -> UsageError', () => {
    assertUsage(
      () => parseSnapshotEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGETS: 'tank/vm', SANOID_SNAPNAMES: 'a,b', SANOID_TYPES: 'daily' }, 'pre'),
      /SANOID_TYPES/,
    );
  });
});

describe('parsePruneEnv', () => {
  it('pruning_script: SANOID_SCRIPT=prune, SANOID_SNAPNAME with dataset@', () => {
    const ev = parsePruneEnv({ SANOID_SCRIPT: 'prune', SANOID_TARGET: 'tank/vm', SANOID_SNAPNAME: `tank/vm@${SNAP}` });
    assert.deepEqual(ev, { script: 'prune', dataset: 'tank/vm', snapname: SNAP });
  });

  it('pre_pruning_script: no SANOID_SCRIPT at all -> script null', () => {
    const ev = parsePruneEnv({ SANOID_TARGET: 'tank/vm', SANOID_SNAPNAME: SNAP });
    assert.deepEqual(ev, { script: null, dataset: 'tank/vm', snapname: SNAP });
  });

  it('dataset names with spaces are valid', () => {
    const ev = parsePruneEnv({ SANOID_SCRIPT: 'prune', SANOID_TARGET: 'tank/my vm', SANOID_SNAPNAME: `tank/my vm@${SNAP}` });
    assert.equal(ev.dataset, 'tank/my vm');
    assert.equal(ev.snapname, SNAP);
  });

  it('SANOID_SNAPNAME of another dataset is rejected', () => {
    assertUsage(
      () => parsePruneEnv({ SANOID_SCRIPT: 'prune', SANOID_TARGET: 'tank/vm', SANOID_SNAPNAME: `tank/other@${SNAP}` }),
      /SANOID_SNAPNAME/,
    );
    // a prefix of the dataset is another dataset too
    assertUsage(
      () => parsePruneEnv({ SANOID_SCRIPT: 'prune', SANOID_TARGET: 'tank/vm', SANOID_SNAPNAME: `tank/vm2@${SNAP}` }),
      /SANOID_SNAPNAME/,
    );
  });

  it('wrong SANOID_SCRIPT -> UsageError', () => {
    assertUsage(() => parsePruneEnv({ SANOID_SCRIPT: 'pre', SANOID_TARGET: 'tank/vm', SANOID_SNAPNAME: SNAP }), /SANOID_SCRIPT=pre/);
  });

  it('missing SANOID_TARGET / SANOID_SNAPNAME -> UsageError naming it', () => {
    assertUsage(() => parsePruneEnv({ SANOID_SCRIPT: 'prune', SANOID_SNAPNAME: SNAP }), /SANOID_TARGET/);
    assertUsage(() => parsePruneEnv({ SANOID_SCRIPT: 'prune', SANOID_TARGET: 'tank/vm' }), /SANOID_SNAPNAME/);
  });

  it('bad dataset name -> UsageError naming SANOID_TARGET', () => {
    assertUsage(() => parsePruneEnv({ SANOID_TARGET: 'tank/vm`id`', SANOID_SNAPNAME: SNAP }), /SANOID_TARGET/);
  });
});

describe('stripDataset', () => {
  it('returns a bare name as is and strips dataset@', () => {
    assert.equal(stripDataset(SNAP), SNAP);
    assert.equal(stripDataset(`tank/vm@${SNAP}`), SNAP);
    assert.equal(stripDataset(`tank/vm@${SNAP}`, 'tank/vm'), SNAP);
  });
});
