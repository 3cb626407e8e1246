import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { formatStatus, type DomainStatus } from '../../lib/commands/status.js';
import { table } from '../../lib/format.js';

describe('table', () => {
  it('pads every column but the last to its widest cell, two spaces apart', () => {
    const out = table(
      ['A', 'LONGER', 'C'],
      [
        ['xxxx', 'y', 'z'],
        ['', 'yyyyyyyy', 'last column is not padded'],
      ],
    );
    assert.equal(out, ['A     LONGER    C', 'xxxx  y         z', '      yyyyyyyy  last column is not padded', ''].join('\n'));
  });

  it('columns start at the same offset on every line', () => {
    const out = table(['NAME', 'STATE', 'X'], [['a', 'running', '1'], ['much-longer-name', 'shut off', '22']]);
    const lines = out.trimEnd().split('\n');
    const starts = (line: string, cell: string) => line.indexOf(cell);
    assert.equal(starts(lines[0]!, 'STATE'), 'much-longer-name'.length + 2);
    assert.equal(starts(lines[1]!, 'running'), starts(lines[0]!, 'STATE'));
    assert.equal(starts(lines[2]!, 'shut off'), starts(lines[0]!, 'STATE'));
    assert.equal(starts(lines[1]!, '1'), starts(lines[0]!, 'X'));
    assert.equal(starts(lines[2]!, '22'), starts(lines[0]!, 'X'));
  });

  it('no trailing spaces, even when the last cells are empty', () => {
    const out = table(['A', 'B'], [['a', ''], ['', '']]);
    for (const line of out.split('\n')) assert.equal(line, line.trimEnd());
    assert.equal(out, 'A  B\na\n\n');
  });

  it('a header alone; short rows are padded as empty cells', () => {
    assert.equal(table(['ONE', 'TWO'], []), 'ONE  TWO\n');
    assert.equal(table(['ONE', 'TWO', 'THREE'], [['1']]), 'ONE  TWO  THREE\n1\n');
  });
});

function row(s: Partial<DomainStatus> & { name: string }): DomainStatus {
  return { uuid: 'u', state: 'running', datasets: [], onOverlay: [], heldBy: null, stuck: null, damagedEntry: null, latestDump: null, waiting: null, ...s };
}

describe('formatStatus', () => {
  it("no rows: 'no domains'", () => {
    assert.equal(formatStatus([]), 'no domains\n');
  });

  it('a table with one line per domain, aligned', () => {
    const out = formatStatus([
      row({ name: 'web', datasets: ['tank/vm/web'], latestDump: { id: 'd1', snapshots: ['tank/vm/web@autosnap_1_hourly', 'tank/vm@x'], takenAt: '2024-01-01T00:00:00Z', ageSeconds: 90, waiting: false } }),
      row({ name: 'database-server', state: 'shut off', datasets: ['tank/a', 'tank/b'] }),
    ]);
    const lines = out.trimEnd().split('\n');
    assert.equal(lines.length, 3);
    assert.match(lines[0]!, /^DOMAIN\s+STATE\s+DATASETS\s+OVERLAY\s+LATEST DUMP$/);
    for (const header of ['STATE', 'DATASETS', 'OVERLAY', 'LATEST DUMP']) {
      const col = lines[0]!.indexOf(header);
      assert.notEqual(lines[1]![col - 1], undefined);
      assert.equal(lines[1]![col - 1], ' ', `${header} column, line 1`);
      assert.equal(lines[2]![col - 1], ' ', `${header} column, line 2`);
      assert.notEqual(lines[1]![col], ' ', `${header} column starts with a value`);
      assert.notEqual(lines[2]![col], ' ', `${header} column starts with a value`);
    }
    assert.ok(lines[0]!.startsWith(`${'DOMAIN'.padEnd('database-server'.length)}  STATE`));
    assert.match(lines[1]!, /^web\s+running\s+tank\/vm\/web\s+no\s+90s ago tank\/vm\/web@autosnap_1_hourly$/);
    assert.match(lines[2]!, /^database-server\s+shut off\s+tank\/a,tank\/b\s+no\s+-$/);
  });

  it("no datasets: '-'", () => {
    const out = formatStatus([row({ name: 'bare' })]);
    assert.match(out.split('\n')[1]!, /^bare\s+running\s+-\s+no\s+-$/);
  });

  it('a leftover overlay tells to run `virtsnap recover`', () => {
    const out = formatStatus([row({ name: 'web', onOverlay: ['vda', 'vdb'] })]);
    assert.match(out, /ON vda,vdb \(leftover: virtsnap recover\)/);
  });

  it('an overlay held by a run names the run, not recover', () => {
    const out = formatStatus([row({ name: 'web', onOverlay: ['vda'], heldBy: 'run-123' })]);
    assert.match(out, /ON vda \(run run-123\)/);
    assert.doesNotMatch(out, /recover/);
  });

  it('dump ages: seconds, minutes, hours, days', () => {
    const ages: [number, string][] = [
      [0, '0s'],
      [119, '119s'],
      [120, '2m'],
      [7199, '120m'],
      [7200, '2h'],
      [172799, '48h'],
      [172800, '2d'],
      [30 * 86400, '30d'],
    ];
    for (const [seconds, text] of ages) {
      const out = formatStatus([row({ name: 'web', latestDump: { id: 'd', snapshots: ['tank/vm@s'], takenAt: '2024-01-01T00:00:00Z', ageSeconds: seconds, waiting: false } })]);
      assert.ok(out.includes(`${text} ago tank/vm@s`), `${seconds}: ${out}`);
    }
  });
});

describe('formatStatus of a stuck domain', () => {
  it('names it, says since when, what ends it, and which snapshots hold its old disk', () => {
    const out = formatStatus([row({ name: 'db', state: 'undefined', onOverlay: ['vda'], stuck: { since: '2026-11-23T10:00:00Z', step: 'frozen', staleSnapshots: ['tank/vm@x_hourly'] } })]);
    assert.match(out, /db\s+undefined\s+-\s+STUCK vda since 2026-11-23T10:00:00Z \(step frozen\)/);
    assert.match(out, /virtsnap recover --discard db/);
    assert.match(out, /hold its disk from before that, not its newest writes: tank\/vm@x_hourly/);
  });
});
