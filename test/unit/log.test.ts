// Log lines carry their syslog priority when stderr is systemd's journal
// stream (JOURNAL_STREAM names its device and inode), and are plain otherwise.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';

const logModule = fileURLToPath(new URL('../../lib/log.js', import.meta.url));

function logTo(journalStream: (fd: number) => string | undefined): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-log-'));
  try {
    const file = path.join(dir, 'stderr');
    const fd = openSync(file, 'w');
    const stream = journalStream(fd);
    const script = `import(${JSON.stringify(logModule)}).then(({ log }) => { log.error('e'); log.warn('w'); log.info('i'); })`;
    spawnSync(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', fd], env: { ...process.env, VIRTSNAP_LOG: 'info', ...(stream ? { JOURNAL_STREAM: stream } : {}) } });
    closeSync(fd);
    return readFileSync(file, 'utf8');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('log priorities', () => {
  it('to the journal: <3> errors, <4> warnings, <6> info', () => {
    const out = logTo((fd) => {
      const st = fstatSync(fd);
      return `${st.dev}:${st.ino}`;
    });
    assert.equal(out, '<3>virtsnap: ERROR: e\n<4>virtsnap: WARN: w\n<6>virtsnap: i\n');
  });

  it('elsewhere, or when JOURNAL_STREAM names another file (inherited by a child that writes to a log file): plain lines', () => {
    assert.equal(logTo(() => undefined), 'virtsnap: ERROR: e\nvirtsnap: WARN: w\nvirtsnap: i\n');
    assert.equal(logTo(() => '1:2'), 'virtsnap: ERROR: e\nvirtsnap: WARN: w\nvirtsnap: i\n');
  });
});
