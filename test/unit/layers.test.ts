// lib/ imports one way: no module reaches itself through its imports and
// re-exports (type ones aside, and the lazy `await import()`s that keep a hook's start-up
// small are loads at run time, not layers).
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { repoRoot } from '../helpers/virtsnap.js';

function modules(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? modules(p) : f.endsWith('.ts') ? [p] : [];
  });
}

/** Each module's value imports of other lib modules. */
function graph(): Map<string, string[]> {
  const lib = path.join(repoRoot, 'lib');
  const g = new Map<string, string[]>();
  for (const file of modules(lib)) {
    const text = readFileSync(file, 'utf8');
    const deps = [...text.matchAll(/^(?:import|export) (?!type )[^;]*?from '(\.[^']+)'/gms)].map((m) => path.resolve(path.dirname(file), m[1]!.replace(/\.js$/, '.ts')));
    g.set(file, deps.filter((d) => d.startsWith(lib)));
  }
  return g;
}

describe('lib/ layers', () => {
  it('no import cycle', () => {
    const g = graph();
    assert.ok(g.size > 40, 'the modules are found');
    const state = new Map<string, 'open' | 'done'>();
    const cycles: string[] = [];
    const visit = (m: string, trail: string[]): void => {
      state.set(m, 'open');
      for (const d of g.get(m) ?? []) {
        if (state.get(d) === 'open') cycles.push([...trail.slice(trail.indexOf(d)), d].map((x) => path.relative(repoRoot, x)).join(' -> '));
        else if (!state.has(d)) visit(d, [...trail, d]);
      }
      state.set(m, 'done');
    };
    for (const m of g.keys()) if (!state.has(m)) visit(m, [m]);
    assert.deepEqual(cycles, []);
  });
});
