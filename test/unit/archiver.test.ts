// The archiver (lib/archiver.ts) against a store that fails on command.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { drainSpool, startArchiver, withWaitingDump } from '../../lib/archiver.js';
import { withLock } from '../../lib/lock.js';
import type { ArchivedDump } from '../../lib/manifest.js';
import { scanSpool } from '../../lib/spool.js';
import { DirStore } from '../../lib/stores/dir.js';
import { committedEntry, fakeConfig } from './fakes.js';

let root: string;
beforeEach(() => {
  root = mkdtempSync(path.join(tmpdir(), 'virtsnap-archiver-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

/** The dir store, whose keep fails (as a read-only archive does) while `failures` lasts. */
class FlakyStore extends DirStore {
  failures = 0;
  attempts: number[] = [];
  override async keep(waiting: ArchivedDump): Promise<ArchivedDump> {
    this.attempts.push(Date.now());
    if (this.failures > 0) {
      this.failures--;
      throw new Error('EROFS: read-only file system, mkdir');
    }
    return super.keep(waiting);
  }
}

function setup(domains: string[]) {
  const config = fakeConfig(root);
  const store = new FlakyStore(config, 'host1');
  domains.forEach((name, i) => {
    const entry = committedEntry(config, name, `2024010${i + 1}T030405.000Z`);
    store.seal(entry, entry.tied!);
  });
  return { config, store };
}

const fast = { backoffMs: 20, maxBackoffMs: 80, patienceMs: 60_000 };

describe('archiver', () => {
  it('drains the spool oldest first; while the store fails it waits longer each time, then takes every dump once it is back', async () => {
    const { config, store } = setup(['a', 'b']);
    store.failures = 4;
    const outcome = await drainSpool({ config, store }, fast);
    assert.equal(outcome.kind, 'drained');
    assert.deepEqual(outcome.kind === 'drained' && outcome.archived.map((d) => d.manifest.domain.name), ['a', 'b']);
    assert.deepEqual(scanSpool(config).dumps, []);
    assert.equal(store.scan().dumps.length, 2);
    // Rounds of two tries (a, b): the waits between rounds grow (20, 40 ms...).
    const gaps = [store.attempts[2]! - store.attempts[1]!, store.attempts[4]! - store.attempts[3]!];
    assert.ok(gaps[1]! > gaps[0]!, `backoff grows: ${gaps.join(', ')} ms`);
  });

  it('gives up after its patience, deleting nothing: the dumps wait for the next archiver', async () => {
    const { config, store } = setup(['a']);
    store.failures = Infinity;
    const outcome = await drainSpool({ config, store }, { ...fast, patienceMs: 0 });
    assert.equal(outcome.kind, 'gave-up');
    assert.match(outcome.kind === 'gave-up' ? outcome.reason : '', /EROFS/);
    assert.equal(scanSpool(config).dumps.length, 1, 'still waiting, whole');
  });

  it('one archiver at a time: a second one leaves at once, the first takes what came meanwhile', async () => {
    const { config, store } = setup(['a']);
    const second = await withLock(path.join(config.stateDir, 'locks'), 'archiver', Date.now() + 1000, () => drainSpool({ config, store }, fast));
    assert.equal(second.kind, 'busy');
    assert.equal(scanSpool(config).dumps.length, 1);
    assert.equal((await drainSpool({ config, store }, fast)).kind, 'drained');
  });

  it('startArchiver: `virtsnap archive --wait` detached, with the starter\'s settings from a private file; it drains the spool', async () => {
    const config = { ...fakeConfig(root), watchdog: 'detached' as const };
    const env = path.join(root, 'virtsnap.env');
    writeFileSync(env, `VIRTSNAP_OVERLAY_DIR=${config.overlayDir}\nVIRTSNAP_ARCHIVE_DIR=${config.archiveDir}\nVIRTSNAP_STATE_DIR=${config.stateDir}\n`, { mode: 0o600 });
    const entry = committedEntry(config, 'a');
    new DirStore(config, 'host1').seal(entry, entry.tied!);
    const before = process.env.VIRTSNAP_CONFIG;
    process.env.VIRTSNAP_CONFIG = env;
    try {
      await startArchiver(config);
    } finally {
      if (before === undefined) delete process.env.VIRTSNAP_CONFIG;
      else process.env.VIRTSNAP_CONFIG = before;
    }
    const deadline = Date.now() + 30_000;
    while (scanSpool(config).dumps.length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(scanSpool(config).dumps, [], readFileSync(path.join(config.stateDir, 'archiver.log'), 'utf8'));
    assert.equal(new DirStore(config, 'host1').scan().dumps.length, 1);
    assert.deepEqual(readdirSync(path.join(config.stateDir, 'settings')), [], 'the settings file is taken and removed');
  });

  it('a dump held by prune or a restore (its own lock) is left until it is let go, never stored under them', async () => {
    const { config, store } = setup(['a']);
    const id = scanSpool(config).dumps[0]!.manifest.id;
    let released = false;
    const held = withWaitingDump(config, id, async () => {
      await new Promise((r) => setTimeout(r, 300));
      released = true;
    });
    const outcome = await drainSpool({ config, store }, fast);
    await held;
    assert.equal(outcome.kind, 'drained');
    assert.equal(released, true);
    assert.ok(store.attempts.length === 1, 'stored once, after the hold');
  });
});
