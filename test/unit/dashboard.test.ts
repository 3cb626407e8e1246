// The Grafana dashboard in examples/ (and the package's doc dir): valid JSON
// of a dashboard, and every query names only metrics virtsnap writes.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import type { Manifest } from '../../lib/manifest.js';
import { addOutcome, renderMetrics } from '../../lib/metrics.js';
import { repoRoot } from '../helpers/virtsnap.js';

interface Panel {
  title: string;
  type: string;
  gridPos: { x: number; y: number; w: number; h: number };
  targets: { expr: string; refId: string }[];
}

/** Every metric name the metrics file can hold: a state with all of them set, and a spool that waits. */
function written(): Set<string> {
  const m = {
    domain: { name: 'web', uuid: 'u' },
    types: ['hourly'],
    bytes: 1,
    times: { startedAt: '2026-01-01T00:00:00Z', frozenAt: '2026-01-01T00:00:00Z', archivedAt: '2026-01-01T00:00:00Z', pauseMs: 1, saveMs: 1, commitMs: 1 },
  } as Manifest;
  const state = addOutcome({ domains: {}, runFailures: 0 }, { dumps: [m], failed: [{ name: 'web', uuid: 'u' }], archived: [m], runFailed: true });
  const text = renderMetrics(state, { count: 1, bytes: 1, oldestSealedAt: Date.parse('2026-01-01T00:00:00Z') });
  return new Set([...text.matchAll(/^(virtsnap_[a-z_]+)[{ ]/gm)].map((x) => x[1]!));
}

describe('the Grafana dashboard', () => {
  const dashboard = JSON.parse(readFileSync(path.join(repoRoot, 'examples/grafana-virtsnap.json'), 'utf8')) as { title: string; uid: string; panels: Panel[]; templating: { list: { name: string; type: string }[] } };

  it('is a dashboard: a title, a uid, a Prometheus data source to choose, panels with queries and a place', () => {
    assert.equal(dashboard.title, 'virtsnap');
    assert.equal(dashboard.uid, 'virtsnap');
    assert.ok(dashboard.templating.list.some((v) => v.type === 'datasource'));
    assert.ok(dashboard.panels.length >= 6);
    for (const p of dashboard.panels) {
      assert.ok(p.title && p.type && p.targets.length > 0, p.title);
      assert.ok(p.gridPos.x + p.gridPos.w <= 24, `${p.title} fits the grid`);
    }
  });

  it('every query names only metrics virtsnap writes, and it shows dump age, period, stall, durations, failures and the spool', () => {
    const known = written();
    const used = new Set<string>();
    for (const p of dashboard.panels) {
      for (const t of p.targets) {
        const names = [...t.expr.matchAll(/\bvirtsnap_[a-z_]+/g)].map((x) => x[0]);
        assert.ok(names.length > 0, `${p.title}: ${t.expr}`);
        for (const n of names) {
          assert.ok(known.has(n), `${p.title} queries ${n}, which virtsnap does not write`);
          used.add(n);
        }
      }
    }
    for (const n of ['virtsnap_last_success_timestamp_seconds', 'virtsnap_snapshot_period_seconds', 'virtsnap_guest_pause_milliseconds', 'virtsnap_save_seconds', 'virtsnap_commit_seconds', 'virtsnap_failures_total', 'virtsnap_spool_dumps', 'virtsnap_spool_oldest_timestamp_seconds']) {
      assert.ok(used.has(n), `the dashboard shows ${n}`);
    }
  });
});
