// `npm pack` and `npm install -g` of the tarball give a working virtsnap:
// the CLI and the hooks run from the install, with nothing of the test bed.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { repoRoot, runProgram } from '../helpers/virtsnap.js';

describe('npm pack and npm install -g', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-pack-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('the tarball holds what runs, not the tests; installed, the CLI and the hooks start', async () => {
    // dist/ is built by `npm test`; --ignore-scripts spares a second build.
    // The dependencies come from npm's cache, filled by `npm ci` (--prefer-offline).
    const pack = await runProgram('npm', ['pack', repoRoot, '--ignore-scripts', '--json', '--pack-destination', dir], {}, 120_000);
    assert.equal(pack.code, 0, pack.stderr);
    const files = (JSON.parse(pack.stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
    for (const f of ['bin/virtsnap', 'dist/bin/virtsnap.js', 'hooks/pre-snapshot', 'dist/hooks/pre-snapshot.js', 'dist/lib/thaw.js', 'systemd/virtsnap-recover.service']) {
      assert.ok(files.includes(f), `${f} is in the tarball`);
    }
    assert.deepEqual(files.filter((f) => f.startsWith('test/') || f.startsWith('dist/test/')), []);
    const tgz = path.join(dir, readdirSync(dir).find((f) => f.endsWith('.tgz'))!);
    const prefix = path.join(dir, 'prefix');
    const install = await runProgram('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tgz], {}, 300_000);
    assert.equal(install.code, 0, install.stderr);
    const version = await runProgram(path.join(prefix, 'bin/virtsnap'), ['--version'], {});
    assert.equal(version.code, 0, version.stderr);
    assert.match(version.stdout, /^virtsnap \d/);
    const hook = await runProgram(path.join(prefix, 'lib/node_modules/virtsnap/hooks/pre-snapshot'), [], {});
    assert.equal(hook.code, 2, 'a hook outside sanoid says so, and exits 2');
    assert.match(hook.stderr, /SANOID_SCRIPT is not set/);
  });
});
