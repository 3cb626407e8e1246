// The metrics file: counters carried from run to run, and text that a
// Prometheus text-format parser reads back.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import type { Manifest } from '../../lib/manifest.js';
import { addOutcome, periodOf, recordRun, renderMetrics } from '../../lib/metrics.js';
import { parseModePolicy } from '../../lib/mode.js';
import { fakeConfig } from './fakes.js';

const parsePrometheus = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => { name: string; type: string; metrics: { labels?: Record<string, string>; value: string }[] }[];

function manifest(name: string, uuid: string, archivedAt: string): Manifest {
  return {
    format: 'virtsnap-dump/2',
    id: 'x',
    domain: { name, uuid },
    snapshots: [],
    types: [],
    memoryFile: '/x.save',
    bytes: 1234,
    sha256: '',
    metaDir: null,
    disks: [],
    times: { startedAt: archivedAt, frozenAt: archivedAt, archivedAt, pauseMs: 150, saveMs: 2500, commitMs: 600 },
    libvirtUri: 'qemu:///system',
    hostname: 'h',
  };
}

describe('metrics', () => {
  it('adds each run to the last; the text parses as Prometheus text format with one sample per domain', () => {
    let state = addOutcome({ domains: {}, runFailures: 0 }, { dumps: [manifest('web "1"', 'u1', '2026-11-23T10:00:00Z')], failed: [] });
    state = addOutcome(state, { dumps: [manifest('web "1"', 'u1', '2026-11-23T11:00:00Z')], failed: [{ name: 'db', uuid: 'u2' }], runFailed: true });
    const families = parsePrometheus(renderMetrics(state));
    const get = (name: string) => families.find((f) => f.name === name);
    const web = (name: string) => get(name)!.metrics.find((m) => m.labels?.domain === 'web "1"')!.value;
    assert.equal(get('virtsnap_last_success_timestamp_seconds')!.type, 'GAUGE');
    assert.deepEqual(get('virtsnap_last_success_timestamp_seconds')!.metrics, [{ labels: { domain: 'web "1"', uuid: 'u1' }, value: String(Date.parse('2026-11-23T11:00:00Z') / 1000) }]);
    assert.equal(web('virtsnap_dumps_total'), '2');
    assert.equal(web('virtsnap_save_seconds'), '2.5');
    assert.equal(web('virtsnap_commit_seconds'), '0.6');
    assert.equal(web('virtsnap_guest_pause_milliseconds'), '150');
    assert.deepEqual(get('virtsnap_failures_total')!.metrics.map((m) => [m.labels!.domain, m.value]), [['db', '1'], ['web "1"', '0']]);
    assert.equal(get('virtsnap_run_failures_total')!.metrics[0]!.value, '1');
    assert.equal(get('virtsnap_spool_dumps'), undefined, 'no spool gauges without a look at the spool');
  });

  it('the archiver counts what it stored; the spool gauges say what waits and since when (its age: time() minus it)', () => {
    let state = addOutcome({ domains: {}, runFailures: 0 }, { dumps: [manifest('web', 'u1', '2026-11-23T10:00:00Z')], failed: [] });
    state = addOutcome(state, { dumps: [], failed: [], archived: [manifest('web', 'u1', '2026-11-23T10:00:00Z')] });
    const sealedAt = Date.parse('2026-11-23T10:00:05Z');
    const families = parsePrometheus(renderMetrics(state, { count: 2, bytes: 2468, oldestSealedAt: sealedAt }));
    const value = (name: string) => families.find((f) => f.name === name)!.metrics[0]!.value;
    assert.equal(value('virtsnap_archived_total'), '1');
    assert.equal(value('virtsnap_spool_dumps'), '2');
    assert.equal(value('virtsnap_spool_bytes'), '2468');
    assert.equal(value('virtsnap_spool_oldest_timestamp_seconds'), String(sealedAt / 1000));
    const empty = parsePrometheus(renderMetrics(state, { count: 0, bytes: 0, oldestSealedAt: null }));
    assert.equal(empty.find((f) => f.name === 'virtsnap_spool_dumps')!.metrics[0]!.value, '0');
    assert.equal(empty.find((f) => f.name === 'virtsnap_spool_oldest_timestamp_seconds'), undefined, 'nothing waits: no oldest');
  });

  it('recordRun writes the file (0644, node_exporter reads it) and keeps counting across runs; off without VIRTSNAP_METRICS_FILE', async () => {
    const root = mkdtempSync(path.join(tmpdir(), 'virtsnap-metrics-'));
    try {
      const file = path.join(root, 'virtsnap.prom');
      const config = { ...fakeConfig(root), metricsFile: file };
      await recordRun(config, { dumps: [manifest('web', 'u1', '2026-11-23T10:00:00Z')], failed: [] });
      await recordRun(config, { dumps: [manifest('web', 'u1', '2026-11-23T11:00:00Z')], failed: [] });
      const text = readFileSync(file, 'utf8');
      assert.match(text, /^virtsnap_dumps_total\{domain="web",uuid="u1"\} 2$/m);
      await recordRun({ ...config, metricsFile: null }, { dumps: [], failed: [{ name: 'x', uuid: 'x' }] });
      assert.equal(readFileSync(file, 'utf8'), text);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('periodOf', () => {
  it('the shortest period of the types that keep RAM: with frequently and hourly quiesced, a midnight run is a day apart from the next dump', () => {
    assert.equal(periodOf(['frequently', 'hourly', 'daily']), 900);
    assert.equal(periodOf(['frequently', 'hourly', 'daily'], parseModePolicy('ram,frequently=quiesce,hourly=quiesce')), 86_400);
    assert.equal(periodOf([]), null);
    assert.equal(periodOf(['hourly'], parseModePolicy('quiesce')), null);
  });
});
