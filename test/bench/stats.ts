// Order statistics for the bench's samples. Medians, not means: one run
// delayed by another helper's guest on a 2-core machine must not move the
// figure a reader compares against a target.

export interface Summary {
  n: number;
  median: number;
  min: number;
  max: number;
  p90: number;
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The nearest-rank percentile: a value that was actually measured. */
export function percentile(values: readonly number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.max(0, Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** null when nothing was measured, so a table shows "–" rather than a made-up 0. */
export function summarize(values: readonly (number | null | undefined)[]): Summary | null {
  const v = values.filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
  if (v.length === 0) return null;
  return { n: v.length, median: median(v), min: Math.min(...v), max: Math.max(...v), p90: percentile(v, 90) };
}
