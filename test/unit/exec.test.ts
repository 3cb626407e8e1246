import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { run } from '../../lib/exec.js';
import { CommandError } from '../../lib/errors.js';

let dir: string;

before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-exec-'));
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('run', () => {
  it('passes arguments with shell metacharacters verbatim and runs nothing else', async () => {
    const marker = path.join(dir, 'pwned');
    const marker2 = path.join(dir, 'pwned2');
    const marker3 = path.join(dir, 'pwned3');
    const args = [
      `$(touch ${marker})`,
      `\`touch ${marker2}\``,
      `; touch ${marker3}; rm -rf ${dir}`,
      `| cat /etc/passwd`,
      `&& echo hi`,
      `it's "quoted"`,
      'two  spaces and\ttab',
      'line one\nline two',
      '*',
      '~',
      '$HOME',
      '\\back\\slash',
      '',
      '-n',
      '--',
      '> out.txt',
      'ünïcødé ✓',
    ];
    const out = await run('node', ['-e', 'process.stdout.write(JSON.stringify(process.argv.slice(1)))', ...args], { timeoutMs: 10_000 });
    assert.deepEqual(JSON.parse(out.stdout), args);
    assert.equal(existsSync(marker), false);
    assert.equal(existsSync(marker2), false);
    assert.equal(existsSync(marker3), false);
    assert.ok(existsSync(dir));
    assert.deepEqual(readdirSync(dir), []);
  });

  it("printf '%s\\n' prints each argument on its own line", async () => {
    const out = await run('printf', ['%s\n', 'a b', '$(id)', "c'd"]);
    assert.equal(out.stdout, "a b\n$(id)\nc'd\n");
  });

  it('a command name with spaces or metacharacters is one word, not shell code', async () => {
    const marker = path.join(dir, 'cmd-pwned');
    await assert.rejects(run(`true; touch ${marker}`, []), CommandError);
    assert.equal(existsSync(marker), false);
  });

  it('a failing command throws CommandError carrying its stderr and exit code', async () => {
    await assert.rejects(run('sh', ['-c', 'echo "first problem" >&2; echo second >&2; exit 3']), (err: unknown) => {
      assert.ok(err instanceof CommandError);
      assert.equal(err.status, 3);
      assert.equal(err.timedOut, false);
      assert.equal(err.command, 'sh');
      assert.match(err.stderr, /first problem/);
      assert.match(err.stderr, /second/);
      assert.match(err.message, /first problem/);
      assert.equal(err.exitCode, 1);
      return true;
    });
  });

  it('a missing program throws CommandError', async () => {
    await assert.rejects(run('/nonexistent/virtsnap-no-such-program', []), CommandError);
  });

  it('a program that is not installed or cannot be run is named as itself, with the shell exit codes', async () => {
    await assert.rejects(run('virtsnap-no-such-program', ['x']), (err: unknown) => {
      assert.ok(err instanceof CommandError);
      assert.equal(err.status, 127);
      assert.equal(err.stderr, 'virtsnap-no-such-program: command not found (is it installed, and on PATH?)');
      return true;
    });
    const notExecutable = path.join(dir, 'not-executable');
    writeFileSync(notExecutable, '#!/bin/sh\n', { mode: 0o644 });
    try {
      await assert.rejects(run(notExecutable, []), (err: unknown) => {
        assert.ok(err instanceof CommandError);
        assert.equal(err.status, 126);
        assert.equal(err.stderr, `${notExecutable}: cannot be run (Permission denied)`);
        return true;
      });
    } finally {
      rmSync(notExecutable);
    }
  });

  it('a timeout kills what the program started too, and does not wait for it', async () => {
    const start = Date.now();
    await assert.rejects(run('sh', ['-c', 'sleep 5 & wait'], { timeoutMs: 300 }), (err: unknown) => err instanceof CommandError && err.timedOut);
    assert.ok(Date.now() - start < 3000, 'the background sleep held the pipes open');
  });

  it('a timeout kills the command and throws CommandError with timedOut', async () => {
    const start = Date.now();
    await assert.rejects(run('sleep', ['5'], { timeoutMs: 300 }), (err: unknown) => {
      assert.ok(err instanceof CommandError);
      assert.equal(err.timedOut, true);
      assert.match(err.message, /timed out/);
      return true;
    });
    assert.ok(Date.now() - start < 3000, 'did not wait for sleep to finish');
  });

  it(
    'a command killed by a signal (not by our timeout) is not reported as timed out',
    async () => {
      await assert.rejects(run('sh', ['-c', 'kill -TERM $$'], { timeoutMs: 10_000 }), (err: unknown) => {
        assert.ok(err instanceof CommandError);
        assert.equal(err.timedOut, false);
        return true;
      });
    },
  );

  it('LC_ALL and LANG are C in the child, even if the caller asks otherwise', async () => {
    const out = await run('sh', ['-c', 'printf "%s|%s" "$LC_ALL" "$LANG"']);
    assert.equal(out.stdout, 'C|C');
    const out2 = await run('sh', ['-c', 'printf "%s" "$LC_ALL"'], { env: { LC_ALL: 'de_DE.UTF-8' } });
    assert.equal(out2.stdout, 'C');
  });

  it('extra env reaches the child; stdin is /dev/null, not a socket', async () => {
    const out = await run('sh', ['-c', 'printf "%s" "$VIRTSNAP_TEST_X"'], { env: { VIRTSNAP_TEST_X: 'a $(b) c' } });
    assert.equal(out.stdout, 'a $(b) c');
    const stdin = await run('readlink', ['/proc/self/fd/0']);
    assert.equal(stdin.stdout.trim(), '/dev/null');
  });

  it("bash's rc files are not read (Debian's bash sources ~/.bashrc when stdin is a socket)", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-rc-'));
    try {
      writeFileSync(path.join(dir, '.bashrc'), 'echo RC-WAS-READ >&2\n');
      // SHLVL 0: as under sanoid's clean environment, where bash then counts itself as the first shell.
      const out = await run('true', [], { env: { HOME: dir, SHLVL: '0' } });
      assert.doesNotMatch(out.stderr, /RC-WAS-READ/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('returns stdout and stderr of a successful command', async () => {
    const out = await run('sh', ['-c', 'echo out; echo err >&2']);
    assert.equal(out.stdout, 'out\n');
    assert.equal(out.stderr, 'err\n');
  });
});

describe('filesystem errors end in one line', () => {
  it('EACCES, ENOSPC and EROFS name the path and what to do, exit 1, no stack', async () => {
    const { asFsError } = await import('../../lib/errors.js');
    for (const [code, advice] of [['EACCES', /permission denied: run as root/], ['ENOSPC', /no space left/], ['EROFS', /read-only: remount/]] as const) {
      const err = Object.assign(new Error(`${code}: x`), { code, syscall: 'open', path: '/var/lib/virtsnap/state/locks' });
      const fsErr = asFsError(err);
      assert.ok(fsErr);
      assert.equal(fsErr.exitCode, 1);
      assert.match(fsErr.message, /^cannot open: \/var\/lib\/virtsnap\/state\/locks: /);
      assert.match(fsErr.message, advice);
      assert.ok(!fsErr.message.includes('\n'));
    }
    assert.equal(asFsError(new TypeError('a bug')), null, 'a bug still gets its stack trace');
  });
});

describe('dieWithUs', () => {
  it('a program run with dieWithUs dies with virtsnap (kill -9), and a missing one is named as itself', async () => {
    const { spawn } = await import('node:child_process');
    const exec = new URL('../../lib/exec.js', import.meta.url).href;
    // A virtsnap process running `sleep` the way the archiver runs restic; its length (300.<our pid>) is its name tag.
    const secs = `300.${process.pid}`;
    const code = `import { run } from ${JSON.stringify(exec)}; run('sleep', [${JSON.stringify(secs)}], { dieWithUs: true, timeoutMs: 600000 }); setInterval(() => {}, 1000);`;
    const parent = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: 'ignore' });
    const running = async (): Promise<boolean> => {
      try {
        await run('pgrep', ['-f', `^sleep ${secs}$`]);
        return true;
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 100 && !(await running()); i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(await running(), 'the program started');
    parent.kill('SIGKILL');
    let gone = false;
    for (let i = 0; i < 100 && !gone; i++) {
      await new Promise((r) => setTimeout(r, 50));
      gone = !(await running());
    }
    assert.ok(gone, 'the program died with its parent');
    await assert.rejects(run('virtsnap-no-such-program', [], { dieWithUs: true }), /virtsnap-no-such-program: command not found/);
  });
});
