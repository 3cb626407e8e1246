// Lock takeover (lib/lock.ts): when a holder dies, exactly one waiter takes
// its lock over. Real processes: each takes the lock, says so, and dies
// holding it, so every hand-over is a takeover with the others racing for it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

const lockJs = pathToFileURL(path.join(path.dirname(fileURLToPath(import.meta.url)), '../../lib/lock.js')).href;
const root = mkdtempSync(path.join(tmpdir(), 'virtsnap-lock-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** A process that takes the lock, logs `enter`, works 30 ms, logs `exit`, and dies without letting go. */
function contender(stateDir: string, log: string): Promise<number> {
  const code = `
    import { appendFileSync } from 'node:fs';
    import { withLock } from ${JSON.stringify(lockJs)};
    await withLock(${JSON.stringify(path.join(stateDir, 'locks'))}, 'x', Date.now() + 60000, async () => {
      appendFileSync(${JSON.stringify(log)}, 'enter ' + process.pid + '\\n');
      await new Promise((r) => setTimeout(r, 30));
      appendFileSync(${JSON.stringify(log)}, 'exit ' + process.pid + '\\n');
      process.exit(0);
    });`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'ignore', 'inherit'] });
    child.on('error', reject);
    child.on('exit', (status) => resolve(status ?? -1));
  });
}

describe('lock takeover', () => {
  it('a dead holder\'s lock goes to exactly one of the waiters racing for it, every time', async () => {
    const stateDir = path.join(root, 'state');
    const log = path.join(root, 'log');
    // 24 holders that all die holding the lock, 8 waiting at a time.
    const codes = await Promise.all(Array.from({ length: 24 }, () => contender(stateDir, log)));
    assert.deepEqual(codes.filter((c) => c !== 0), []);
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    assert.equal(lines.length, 48);
    for (let i = 0; i < lines.length; i += 2) {
      const [enter, exit] = [lines[i]!, lines[i + 1]!];
      assert.match(enter, /^enter \d+$/);
      assert.equal(exit, enter.replace('enter', 'exit'), `two holders at once: ${lines.slice(Math.max(0, i - 2), i + 4).join(' | ')}`);
    }
  });
});

describe('a holder killed with -9', () => {
  it('counts as dead while it is a zombie its parent has not reaped yet (fault 25: the archiver killed, `virtsnap archive` right after)', async () => {
    const { ownerIsAlive, ownerOf, processIsAlive } = await import('../../lib/owner.js');
    // The grandchild's parent becomes `sleep 3`, which never reaps it: killed, it stays a zombie for 3 s.
    const sh = spawn('sh', ['-c', 'sleep 100 & echo $!; exec sleep 3'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const pid = await new Promise<number>((resolve) => sh.stdout.once('data', (b: Buffer) => resolve(Number(b.toString().trim()))));
    const owner = ownerOf(pid);
    assert.equal(ownerIsAlive(owner), true);
    process.kill(pid, 'SIGKILL');
    let state = '';
    for (let i = 0; i < 100 && state !== 'Z'; i++) {
      await new Promise((r) => setTimeout(r, 10));
      state = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[0]!;
    }
    assert.equal(state, 'Z', 'a zombie, not reaped');
    assert.equal(processIsAlive(pid), false);
    assert.equal(ownerIsAlive(owner), false);
    sh.kill('SIGKILL');
  });
});
