// `virtsnap check`'s verdict: which VMs are watched, how old a dump may be, what is CRITICAL.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CLEAN_ARCHIVE, CRITICAL, judge, OK, parseDuration, sectionsOf, UNKNOWN, WARNING, watchedDatasets } from '../../lib/commands/check.js';
import type { DomainStatus } from '../../lib/commands/status.js';
import { parseIni } from '../../lib/sanoid/conf.js';

const conf = parseIni(`
[tank/vm]
  use_template = vm
  recursive = zfs
[tank/daily]
  daily = 7
  hourly = 0
  pre_snapshot_script = /usr/lib/virtsnap/hooks/pre-snapshot
[tank/plain]
  hourly = 24
[tank/vm/scratch]
  autosnap = no
[tank/bare]
  pre_snapshot_script = /opt/virtsnap/hooks/pre-snapshot
[template_vm]
  hourly = 24
  pre_snapshot_script = /opt/virtsnap/hooks/pre-snapshot
`);

function row(name: string, s: Partial<DomainStatus>): DomainStatus {
  return { name, uuid: name, state: 'running', datasets: ['tank/vm/a'], onOverlay: [], heldBy: null, stuck: null, damagedEntry: null, latestDump: null, waiting: null, ...s };
}
const dump = (ageSeconds: number) => ({ id: 'x', snapshots: ['tank/vm@s'], takenAt: '', ageSeconds, waiting: false });

describe('virtsnap check', () => {
  it('watches the sections that run our pre hook, with sanoid monitoring defaults by their periods', () => {
    const w = watchedDatasets(conf, {});
    assert.deepEqual(w.map((x) => [x.dataset, x.subtree, x.warnSeconds, x.critSeconds]), [
      ['tank/vm', true, 5400, 21600],
      ['tank/daily', false, 28 * 3600, 32 * 3600],
      ['tank/bare', false, 5400, 21600], // no period set: sanoid's default hourly = 48
    ]);
    assert.equal(watchedDatasets(conf, { warnSeconds: 60, critSeconds: 120 })[0]!.critSeconds, 120);
  });

  it('OK with fresh dumps, perfdata per VM; WARNING past warn; CRITICAL past crit, without a dump, on an overlay outside a run, or stuck', () => {
    const w = sectionsOf(conf, {});
    const fresh = judge([row('web', { latestDump: dump(600) })], w, CLEAN_ARCHIVE);
    assert.equal(fresh.status, OK);
    assert.match(fresh.line, /^OK: 1 VM\(s\) on 3 dataset\(s\) have fresh RAM dumps \| 'web_dump_age'=600s;5400;21600;0$/);
    assert.equal(judge([row('web', { latestDump: dump(6000) })], w, CLEAN_ARCHIVE).status, WARNING);
    assert.equal(judge([row('web', { latestDump: dump(30000) })], w, CLEAN_ARCHIVE).status, CRITICAL);
    assert.match(judge([row('web', {})], w, CLEAN_ARCHIVE).line, /^CRITICAL: web has no RAM dump/);
    assert.match(judge([row('web', { latestDump: dump(60), onOverlay: ['vda'] })], w, CLEAN_ARCHIVE).line, /CRITICAL: web on an overlay outside a run/);
    assert.equal(judge([row('web', { latestDump: dump(60), onOverlay: ['vda'], heldBy: 'tank/vm@x' })], w, CLEAN_ARCHIVE).status, OK, 'a run in progress');
    assert.match(judge([row('db', { state: 'undefined', stuck: { since: 'T', step: 'frozen', staleSnapshots: [] } })], w, CLEAN_ARCHIVE).line, /CRITICAL: db stuck since T/);
    assert.equal(judge([row('off', { state: 'shut off' })], w, CLEAN_ARCHIVE).status, OK, 'a shut-off VM needs no RAM dump');
    assert.equal(judge([row('elsewhere', { datasets: ['tank/plain'] })], w, CLEAN_ARCHIVE).status, OK, 'not on a watched dataset');
    const warned = judge([row('web', { latestDump: dump(60) })], w, { brokenManifests: 2, failingVerify: 1, unneeded: 3 });
    assert.equal(warned.status, WARNING);
    assert.match(warned.line, /^WARNING: 2 unreadable manifest\(s\) in the archive \(virtsnap verify\), 1 RAM dump\(s\) fail verify \(virtsnap verify\), 3 RAM dump\(s\) whose snapshots are all gone \(virtsnap gc\) \| /);
    assert.equal(judge([row('tmp', { datasets: ['tank/vm/scratch'] })], w, CLEAN_ARCHIVE).status, OK, 'its own section (autosnap = no) wins over the recursive parent');
    assert.equal(judge([row('web', { latestDump: dump(60), waiting: { count: 1, bytes: 1, oldestSeconds: 600 } })], w, CLEAN_ARCHIVE).status, OK, 'a dump waiting minutes for the archiver');
    const late = judge([row('web', { latestDump: dump(60), waiting: { count: 2, bytes: 1, oldestSeconds: 3700 } })], w, CLEAN_ARCHIVE);
    assert.equal(late.status, WARNING);
    assert.match(late.line, /^WARNING: 2 RAM dump\(s\) of web waiting in the spool for over an hour \(virtsnap archive says why\)/);
    assert.equal(UNKNOWN, 3);
  });

  it('ages', () => {
    assert.equal(parseDuration('90m'), 5400);
    assert.equal(parseDuration('6h'), 21600);
    assert.equal(parseDuration('2d'), 172800);
    assert.equal(parseDuration('300'), 300);
    assert.equal(parseDuration('soon'), null);
  });
});
