// Human-readable output of `virtsnap gc` and `virtsnap verify`.
import type { GcReport } from '../retention.js';
import type { Verdict } from './verify.js';

export function formatGc(report: GcReport, dryRun: boolean): string {
  const would = dryRun ? 'would ' : '';
  const lines = [
    ...report.deleted.map((id) => `${would}delete dump ${id}: none of its snapshots exists`),
    ...report.updated.map((id) => `${would}update dump ${id}: some of its snapshots are gone, renamed or promoted`),
    ...report.removed.map((f) => `${would}remove ${f}`),
    ...report.kept.map((k) => `left alone: ${k}`),
    ...report.foreign.map((f) => `not ours, left alone: ${f.path}: ${f.reason}`),
  ];
  const mib = (report.freedBytes / 1024 ** 2).toFixed(1);
  lines.push(`${dryRun ? 'would free' : 'freed'} ${mib} MiB`);
  if (report.resticPruned === true) lines.push('restic prune: done (the space of forgotten dumps is back in the repository)');
  return lines.join('\n') + '\n';
}

export function formatVerdicts(verdicts: Verdict[]): string {
  if (verdicts.length === 0) return 'no RAM dumps to verify\n';
  return verdicts.map((v) => `${v.ok ? 'OK ' : 'BAD'} ${v.domain} ${v.id}${v.ok ? '' : `: ${v.detail}`}`).join('\n') + '\n';
}
