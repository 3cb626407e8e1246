// The man page and the bash completion say what the CLI does: every command
// and option of `virtsnap help`, every setting config.ts knows. The man page
// renders without a warning.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { run } from '../../lib/exec.js';
import { cli, repoRoot } from '../helpers/virtsnap.js';
import { SETTINGS } from '../../lib/settings.js';

const manPage = path.join(repoRoot, 'doc/virtsnap.8');
const completion = path.join(repoRoot, 'packaging/virtsnap.bash-completion');

async function usage(): Promise<string> {
  return (await run(cli, ['help'], { timeoutMs: 30_000 })).stdout;
}

/** Commands and their options, as `virtsnap help` lists them. */
async function commandsOf(): Promise<Map<string, Set<string>>> {
  const commands = new Map<string, Set<string>>();
  let current: string | null = null;
  for (const line of (await usage()).split('\n')) {
    const head = /^ {2}([a-z]+)\b/.exec(line);
    if (head !== null) current = head[1]!;
    else if (!line.startsWith('    ')) current = null;
    if (current === null) continue;
    const options = commands.get(current) ?? new Set<string>();
    for (const m of line.matchAll(/(?<![\w-])(--?[a-z][a-z-]*)/g)) options.add(m[1]!);
    commands.set(current, options);
  }
  return commands;
}

/** What the completion offers after `virtsnap WORDS...` for the current word `cur`. */
async function complete(words: string[]): Promise<string[]> {
  const script = `source ${completion}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; PATH=/nonexistent; _virtsnap; printf '%s\\n' "\${COMPREPLY[@]}"`;
  const out = await run('/bin/bash', ['--noprofile', '--norc', '-c', script], { timeoutMs: 30_000 });
  return out.stdout.split('\n').filter(Boolean).sort();
}

describe('man page virtsnap(8)', () => {
  it('renders with man-db and groff without a warning', async () => {
    const out = await run('man', ['--warnings', '-E', 'UTF-8', '-l', manPage], { timeoutMs: 30_000, env: { MANWIDTH: '80', MAN_KEEP_STDERR: '1' } });
    assert.equal(out.stderr, '');
    assert.match(out.stdout, /^NAME\n\s+virtsnap\s+-\s+consistent\s+ZFS snapshots/m);
  });

  it('names every command and option of `virtsnap help`, and every setting', async () => {
    const text = readFileSync(manPage, 'utf8').replace(/\\-/g, '-').replace(/\\e/g, '\\');
    for (const [command, options] of await commandsOf()) {
      assert.match(text, new RegExp(`^\\.B virtsnap ${command}\\b`, 'm'), `synopsis of ${command}`);
      assert.match(text, new RegExp(`^\\.TP\\n\\.B ${command}$`, 'm'), `description of ${command}`);
      for (const o of options) assert.ok(text.includes(o), `${command} ${o}`);
    }
    // Their texts are checked against lib/settings.ts by test/unit/settings.test.ts.
    for (const { name } of SETTINGS) assert.ok(text.includes(name), `${name} in the man page`);
  });
});

describe('bash completion', () => {
  it('offers exactly the commands of `virtsnap help`', async () => {
    const commands = [...(await commandsOf()).keys()].sort();
    assert.deepEqual(await complete(['virtsnap', '']), [...commands, '--help', '--version'].sort());
    assert.deepEqual(await complete(['virtsnap', 're']), ['recover', 'restore']);
  });

  it("offers each command's options as `virtsnap help` lists them", async () => {
    for (const [command, options] of await commandsOf()) {
      if (command === 'help') continue;
      const offered = (await complete(['virtsnap', command, '-'])).filter((o) => o !== '--help');
      assert.deepEqual(offered, [...options].sort(), command);
    }
  });
});
