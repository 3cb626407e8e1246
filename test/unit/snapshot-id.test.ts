import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { follow, legacyRef, locate, tieSnapshots, type TieInput } from '../../lib/snapshot-id.js';
import { parseSnapshotProps, type GuidCensus, type SnapshotProps } from '../../lib/zfs.js';

const FREEZE_MS = Date.parse('2026-11-23T07:00:00.500Z');
const AFTER = Math.floor(FREEZE_MS / 1000) + 3;

function input(now: Record<string, SnapshotProps>, extra: Partial<TieInput> = {}): TieInput {
  return {
    wanted: ['tank/vm@s_daily', 'tank/vm@s_hourly'],
    existedAtFreeze: {},
    now: new Map(Object.entries(now)),
    unknownDatasets: new Set(),
    freezeStartedMs: FREEZE_MS,
    mountpointOf: (ds) => `/${ds}`,
    ...extra,
  };
}

const p = (guid: string, creation = AFTER): SnapshotProps => ({ guid, createtxg: '100', creation });

describe('tieSnapshots: a dump is tied only to snapshots taken while the disks stood still', () => {
  it('snapshots that appeared after the freeze are tied, with guid, txg, creation and mountpoint', () => {
    const r = tieSnapshots(input({ 'tank/vm@s_daily': p('g1'), 'tank/vm@s_hourly': p('g2') }));
    assert.deepEqual(r.refused, []);
    assert.deepEqual(r.tied[0], { name: 'tank/vm@s_daily', frozenAs: 'tank/vm@s_daily', guid: 'g1', createtxg: '100', creation: AFTER, mountpoint: '/tank/vm' });
  });

  it('a name that already existed at the freeze (sanoid reusing a name, a user snapshot) is refused: same guid', () => {
    const r = tieSnapshots(input({ 'tank/vm@s_daily': p('old'), 'tank/vm@s_hourly': p('g2') }, { existedAtFreeze: { 'tank/vm@s_daily': 'old' } }));
    assert.deepEqual(r.tied.map((t) => t.name), ['tank/vm@s_hourly']);
    assert.match(r.refused[0]!.reason, /existed before the freeze \(guid old\)/);
  });

  it('a name that existed, was destroyed and taken again after the freeze is ours: another guid', () => {
    const r = tieSnapshots(input({ 'tank/vm@s_daily': p('new') }, { existedAtFreeze: { 'tank/vm@s_daily': 'old' }, wanted: ['tank/vm@s_daily'] }));
    assert.deepEqual(r.tied.map((t) => t.guid), ['new']);
  });

  it('a snapshot not there yet (a thaw before sanoid snapshots, a failed zfs snapshot) is refused', () => {
    const r = tieSnapshots(input({}));
    assert.equal(r.tied.length, 0);
    assert.match(r.refused[0]!.reason, /does not exist/);
  });

  it('a dataset renamed away while frozen is named as such', () => {
    const r = tieSnapshots(input({}, { unknownDatasets: new Set(['tank/vm']) }));
    assert.match(r.refused[0]!.reason, /dataset tank\/vm does not exist any more/);
  });

  it('without a record of the freeze (older journal), creation before the freeze began is refused', () => {
    const r = tieSnapshots(input({ 'tank/vm@s_daily': p('g1', AFTER - 3600), 'tank/vm@s_hourly': p('g2') }, { existedAtFreeze: undefined }));
    assert.deepEqual(r.tied.map((t) => t.name), ['tank/vm@s_hourly']);
    assert.match(r.refused[0]!.reason, /before the freeze began/);
  });
});

describe('locate and follow: finding a snapshot by guid', () => {
  const census: GuidCensus = {
    byGuid: new Map([
      ['g1', [{ name: 'tank/clone@a', createtxg: '5' }]],
      ['g2', [{ name: 'tank/vm@renamed', createtxg: '8' }, { name: 'tank/vm@b', createtxg: '7' }, { name: 'tank/backup/vm@b', createtxg: '900' }]],
    ]),
    names: new Set(['tank/clone@a', 'tank/vm@b']),
    datasets: new Set(['tank/vm', 'tank/clone']),
    unknownPools: new Set(['far']),
  };
  const ref = (name: string, guid: string | null) => ({ ...legacyRef(name), guid });
  it('by guid, whatever the name is now', () => {
    assert.equal(locate(ref('tank/vm@a', 'g1'), census), 'tank/clone@a');
    assert.equal(locate(ref('tank/vm@b', 'g-other'), census), 'gone', 'the same name with another guid is not it');
    assert.equal(locate(ref('far/vm@a', 'g5'), census), 'unknown');
  });
  it('a guid shared with a received copy (syncoid into the same pool): the recorded name wins, then the same createtxg', () => {
    assert.equal(locate({ ...ref('tank/vm@b', 'g2'), createtxg: '8' }, census), 'tank/vm@b', 'the recorded name wins over a createtxg match');
    assert.equal(locate({ ...ref('tank/vm@old', 'g2'), createtxg: '8' }, census), 'tank/vm@renamed');
    assert.equal(locate({ ...ref('tank/vm@gone', 'g2'), createtxg: '1' }, census), 'tank/backup/vm@b', 'only copies left: the dump follows one, it is not deleted');
  });

  it('follow renames what moved and keeps the rest', () => {
    assert.deepEqual(follow([ref('tank/vm@a', 'g1'), ref('tank/vm@x', 'g9')], census).map((r) => r.name), ['tank/clone@a', 'tank/vm@x']);
  });
});

describe('parseSnapshotProps', () => {
  it('reads zfs get -H -p output of several snapshots, ignoring datasets and half-listed ones', () => {
    const out = [
      'tank/vm\tguid\t5264503146623029578',
      'tank/vm@a\tguid\t17257844049822009454',
      'tank/vm@a\tcreatetxg\t25',
      'tank/vm@a\tcreation\t1795419498',
      'tank/vm@b\tguid\t1',
      '',
    ].join('\n');
    assert.deepEqual([...parseSnapshotProps(out)], [['tank/vm@a', { guid: '17257844049822009454', createtxg: '25', creation: 1795419498 }]]);
  });
});
