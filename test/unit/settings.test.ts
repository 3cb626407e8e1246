// Every setting is documented once (lib/settings.ts): the man page, the
// example env file and doc/settings.md are what scripts/settings.ts writes
// from it, and lib/config.ts knows exactly these settings.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadConfig } from '../../lib/config.js';
import { SETTINGS } from '../../lib/settings.js';
import { envExample, generated } from '../../scripts/settings.js';
import { repoRoot } from '../helpers/virtsnap.js';

describe('settings, documented once', () => {
  it('the man page, examples/virtsnap.env and doc/settings.md are what `npm run settings` writes', () => {
    for (const g of generated()) assert.equal(g.now, g.want, `${g.file} differs from lib/settings.ts: run npm run settings`);
  });

  it('each setting once, with a summary of one line; the example env file loads as the defaults', () => {
    const names = SETTINGS.map((s) => s.name);
    assert.equal(new Set(names).size, names.length);
    for (const s of SETTINGS) assert.ok(s.summary.length > 0 && !s.summary.includes('\n'), s.name);
    // Uncommented, the example is the defaults (what a setting left out means); one not set by default shows an example value.
    const unset = new Set(SETTINGS.filter((s) => s.default === '').map((s) => s.name));
    const lines = envExample().split('\n').filter((l) => /^#VIRTSNAP_/.test(l)).map((l) => l.slice(1));
    const env = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]).filter(([k]) => !unset.has(k!)));
    assert.equal(Object.keys(env).length + unset.size, SETTINGS.length, 'every setting is in the example');
    const fromExample = loadConfig({ VIRTSNAP_CONFIG: '/dev/null', ...env });
    const defaults = loadConfig({ VIRTSNAP_CONFIG: '/dev/null' });
    assert.deepEqual({ ...fromExample, configFile: null }, { ...defaults, configFile: null });
  });

  it('config.ts reads no setting the table lacks', () => {
    const source = readFileSync(path.join(repoRoot, 'lib/config.ts'), 'utf8');
    const read = new Set([...source.matchAll(/'(VIRTSNAP_[A-Z_]+)'/g)].map((m) => m[1]!));
    const known = new Set([...SETTINGS.map((s) => s.name), 'VIRTSNAP_CONFIG', 'VIRTSNAP_ARCHIVE', 'VIRTSNAP_RAM_STORE']);
    assert.deepEqual([...read].filter((n) => !known.has(n)), []);
  });
});
