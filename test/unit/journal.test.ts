import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Journal, type JournalEntry } from '../../lib/journal.js';
import { processIsAlive } from '../../lib/owner.js';
import { LockTimeoutError, VirtsnapError } from '../../lib/errors.js';

const UUID = '4aa4739f-40fb-4dd3-b355-8e408c5e68f7';

let stateDir: string;

beforeEach(() => {
  stateDir = mkdtempSync(path.join(tmpdir(), 'virtsnap-journal-'));
});

afterEach(() => {
  rmSync(stateDir, { recursive: true, force: true });
});

function entry(runId: string, more: Partial<JournalEntry> = {}): JournalEntry {
  const now = new Date().toISOString();
  return {
    format: 'virtsnap-journal/1',
    runId,
    targets: ['tank/vm'],
    snapnames: ['autosnap_x_daily'],
    types: ['daily'],
    domain: { name: 'web', uuid: UUID },
    step: 'snapshotting',
    tag: 'tag',
    memoryFile: '/var/lib/virtsnap/overlay/web.tag.save',
    metaDir: '/var/lib/virtsnap/overlay/web.tag.meta',
    overlays: [],
    snapshots: ['tank/vm@autosnap_x_daily'],
    owner: { pid: process.pid, bootId: 'x', startTime: 'y' },
    startedAt: now,
    updatedAt: now,
    ...more,
  };
}

function mode(p: string): number {
  return statSync(p).mode & 0o777;
}

describe('Journal', () => {
  it('claim() on a free domain writes the entry (0600 file in 0700 dirs)', async () => {
    const j = new Journal(stateDir);
    assert.equal(j.read(UUID), null);
    await j.claim(entry('tank/vm@a'), 1000);
    const got = j.read(UUID);
    assert.ok(got !== null);
    assert.equal(got.runId, 'tank/vm@a');
    assert.equal(got.domain.uuid, UUID);
    assert.equal(got.step, 'snapshotting');
    const file = path.join(stateDir, 'journal', `${UUID}.json`);
    assert.equal(mode(file), 0o600);
    assert.equal(mode(path.join(stateDir, 'journal')), 0o700);
    assert.equal(mode(path.join(stateDir, 'locks')), 0o700);
    // the mutex is released, and no temp file is left behind
    assert.deepEqual(readdirSync(path.join(stateDir, 'locks')), []);
    assert.deepEqual(readdirSync(path.join(stateDir, 'journal')), [`${UUID}.json`]);
  });

  it('a second claim by another run waits, then throws LockTimeoutError naming virtsnap recover', async () => {
    const j = new Journal(stateDir);
    await j.claim(entry('tank/vm@first'), 1000);
    const start = Date.now();
    await assert.rejects(j.claim(entry('tank/vm@second'), 300), (err: unknown) => {
      assert.ok(err instanceof LockTimeoutError);
      assert.match(err.message, /virtsnap recover/);
      assert.match(err.message, /tank\/vm@first/);
      assert.match(err.message, /"web"/);
      return true;
    });
    const waited = Date.now() - start;
    assert.ok(waited >= 300, `waited ${waited}ms`);
    assert.ok(waited < 3000, `waited ${waited}ms`);
    // the first run's entry is untouched
    assert.equal(j.read(UUID)!.runId, 'tank/vm@first');
  });

  it('after remove() the claim succeeds', async () => {
    const j = new Journal(stateDir);
    await j.claim(entry('tank/vm@first'), 1000);
    j.remove(UUID);
    assert.equal(j.read(UUID), null);
    await j.claim(entry('tank/vm@second'), 300);
    assert.equal(j.read(UUID)!.runId, 'tank/vm@second');
    j.remove(UUID);
    j.remove(UUID); // removing twice is fine
  });

  it('a waiting claim gets the domain once the holder removes its entry', async () => {
    const j = new Journal(stateDir);
    await j.claim(entry('tank/vm@first'), 1000);
    setTimeout(() => j.remove(UUID), 100);
    await j.claim(entry('tank/vm@second'), 3000);
    assert.equal(j.read(UUID)!.runId, 'tank/vm@second');
  });

  it('withMutex takes over a lock file whose pid is dead', async () => {
    const j = new Journal(stateDir);
    assert.equal(processIsAlive(999999), false);
    mkdirSync(path.join(stateDir, 'locks'), { recursive: true });
    const lock = path.join(stateDir, 'locks', `${UUID}.lock`);
    writeFileSync(lock, '999999');
    let sawLockWithOurPid = false;
    const result = await j.withMutex(UUID, Date.now() + 300, () => {
      sawLockWithOurPid = (JSON.parse(readFileSync(lock, 'utf8')) as { pid: number }).pid === process.pid;
      assert.equal(mode(lock), 0o600);
      return 42;
    });
    assert.equal(result, 42);
    assert.equal(sawLockWithOurPid, true);
    assert.equal(existsSync(lock), false);
  });

  it('a lock left before a reboot is stale even if its pid is alive again (boot id differs)', async () => {
    const j = new Journal(stateDir);
    mkdirSync(path.join(stateDir, 'locks'), { recursive: true });
    const lock = path.join(stateDir, 'locks', `${UUID}.lock`);
    writeFileSync(lock, JSON.stringify({ pid: process.pid, bootId: 'an-earlier-boot', startTime: '1' }));
    assert.equal(await j.withMutex(UUID, Date.now() + 300, () => 7), 7);
  });

  it('withMutex waits for a live holder and times out with LockTimeoutError', async () => {
    const j = new Journal(stateDir);
    mkdirSync(path.join(stateDir, 'locks'), { recursive: true });
    const lock = path.join(stateDir, 'locks', `${UUID}.lock`);
    writeFileSync(lock, String(process.pid)); // alive
    let ran = false;
    await assert.rejects(
      j.withMutex(UUID, Date.now() + 200, () => {
        ran = true;
      }),
      LockTimeoutError,
    );
    assert.equal(ran, false);
    assert.equal(readFileSync(lock, 'utf8'), String(process.pid), 'a live holder keeps its lock');
  });

  it('withMutex releases the lock when fn throws', async () => {
    const j = new Journal(stateDir);
    await assert.rejects(
      j.withMutex(UUID, Date.now() + 300, () => {
        throw new Error('boom');
      }),
      /boom/,
    );
    assert.deepEqual(readdirSync(path.join(stateDir, 'locks')), []);
  });

  it('update() merges changes; list() returns every entry', async () => {
    const j = new Journal(stateDir);
    const e = entry('tank/vm@a');
    await j.claim(e, 1000);
    const next = j.update(e, { step: 'frozen', frozenAt: '2024-01-01T00:00:00.000Z' });
    assert.equal(next.step, 'frozen');
    assert.equal(j.read(UUID)!.step, 'frozen');
    assert.equal(j.read(UUID)!.frozenAt, '2024-01-01T00:00:00.000Z');
    const other = entry('tank/vm@a', { domain: { name: 'db', uuid: '00000000-0000-4000-8000-000000000001' } });
    j.write(other);
    assert.deepEqual(
      j.list().map((x) => x.domain.name).sort(),
      ['db', 'web'],
    );
    assert.equal(mode(path.join(stateDir, 'journal', '00000000-0000-4000-8000-000000000001.json')), 0o600);
  });

  it('list() of a missing journal dir is empty; a damaged entry is a VirtsnapError', () => {
    const j = new Journal(stateDir);
    assert.deepEqual(j.list(), []);
    mkdirSync(path.join(stateDir, 'journal'), { recursive: true });
    writeFileSync(path.join(stateDir, 'journal', `${UUID}.json`), '{not json');
    assert.throws(() => j.read(UUID), (err: unknown) => err instanceof VirtsnapError && err.message.includes(`${UUID}.json`));
  });
});
