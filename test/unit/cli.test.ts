// The command line as a user meets it first: version, help, usage errors,
// and a one-line refusal when not run as root. Runs the compiled CLI.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { asItself } from '../../lib/exec.js';

const cli = fileURLToPath(new URL('../../bin/virtsnap.js', import.meta.url));

function virtsnap(args: string[], asNobody = false) {
  const argv = asNobody ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, cli, ...args] : [process.execPath, cli, ...args];
  const out = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', env: { ...process.env, VIRTSNAP_CONFIG: '/nonexistent/for-tests.env' }, stdio: ['ignore', 'pipe', 'pipe'] });
  return { code: out.status, stdout: out.stdout, stderr: out.stderr };
}

describe('the command line', () => {
  it('--version prints the package version', () => {
    const out = virtsnap(['--version']);
    assert.equal(out.code, 0);
    assert.match(out.stdout, /^virtsnap \d+\.\d+\.\d+\n$/);
  });

  it('help COMMAND and COMMAND --help print that command only', () => {
    for (const args of [['help', 'recover'], ['recover', '--help']]) {
      const out = virtsnap(args);
      assert.equal(out.code, 0, out.stderr);
      assert.match(out.stdout, /virtsnap recover --discard DOMAIN/);
      assert.doesNotMatch(out.stdout, /virtsnap snapshot/);
    }
  });

  it('an unknown command or help topic: exit 2, one line', () => {
    for (const args of [['frobnicate'], ['help', 'frobnicate']]) {
      const out = virtsnap(args);
      assert.equal(out.code, 2);
      assert.equal(out.stderr.trim().split('\n').length, 1, out.stderr);
    }
  });

  // nobody must be able to run node from where it is (not the case for a node under /root).
  const nobodyCanRun = process.getuid?.() === 0 && existsSync('/usr/bin/setpriv') && spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, cli, 'help'], { stdio: 'ignore' }).status === 0;
  it('not root: one line saying so, exit 1, no stack trace', { skip: !nobodyCanRun && 'cannot run node as nobody here' }, () => {
    const out = virtsnap(['gc'], true);
    assert.equal(out.code, 1, out.stderr);
    assert.match(out.stderr, /^virtsnap: ERROR: virtsnap needs root .*: run it with sudo\n$/);
  });
});

describe('a program that cannot be run is named as itself', () => {
  it("not through the shell that started it", () => {
    assert.equal(asItself('zfs', 127, '/bin/bash: line 1: zfs: command not found'), 'zfs: command not found (is it installed, and on PATH?)');
    assert.equal(asItself('virsh', 126, '/bin/bash: line 1: /usr/bin/virsh: Permission denied'), 'virsh: cannot be run (Permission denied)');
    assert.equal(asItself('zfs', 1, "cannot open 'x': dataset does not exist"), "cannot open 'x': dataset does not exist");
  });
});
