// The restic store's own logic (lib/stores/restic.ts) against a fake restic client; the store behind the DumpStore interface is in stores.test.ts.
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { publishDump, scanArchive, type ArchiveInput } from '../../lib/archive.js';
import { resticStoreOf, resticStoreProblem, storedAt, type Manifest } from '../../lib/manifest.js';
import { forgetStored, gcRestic, localDump, releaseFetched, REPO_MANIFEST, repoDumps, stageResticDump } from '../../lib/stores/restic.js';
import { FakeRestic } from './fakes.js';
import type { Config } from '../../lib/config.js';
import { redactRepo, resticAdvice, resticEnv, shownRepo } from '../../lib/restic.js';
import { CommandError } from '../../lib/errors.js';
import { legacyRef } from '../../lib/snapshot-id.js';

const ID = '20240102T030405.000Z-4aa4739f';
let dir: string;

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-store-'));
});
afterEach(() => {
  releaseFetched();
  rmSync(dir, { recursive: true, force: true });
});

const data = randomBytes(64 * 1024);

function inputs(): ArchiveInput {
  const overlay = path.join(dir, 'overlay');
  mkdirSync(path.join(overlay, `web.${ID}.meta`), { recursive: true });
  writeFileSync(path.join(overlay, `web.${ID}.save`), data, { mode: 0o644 });
  writeFileSync(path.join(overlay, `web.${ID}.meta`, 'domain.xml'), '<domain/>');
  return {
    id: ID,
    domain: { name: 'web', uuid: '4aa4739f-40fb-4dd3-b355-8e408c5e68f7' },
    snapshots: [{ ...legacyRef('tank/vm@autosnap_x_daily'), guid: '777' }],
    types: ['daily'],
    memoryFile: path.join(overlay, `web.${ID}.save`),
    metaDir: path.join(overlay, `web.${ID}.meta`),
    disks: [],
    startedAt: '2024-01-02T03:04:05.000Z',
    frozenAt: null,
    job: null,
    libvirtUri: 'qemu:///system',
    hostname: 'host1',
    compression: 'gzip',
  };
}

function config(): Pick<Config, 'archiveDir' | 'stateDir'> {
  return { archiveDir: path.join(dir, 'archive'), stateDir: path.join(dir, 'state') };
}

async function archived(restic: FakeRestic): Promise<Manifest> {
  const input = inputs();
  const staged = await stageResticDump(config().archiveDir, input, restic, 'host1');
  assert.equal(existsSync(input.memoryFile), true, 'the memory file stays until the manifest is written');
  return publishDump(staged).manifest;
}

describe('restic store', () => {
  it('post: one tagged snapshot of the raw image and the meta dir (manifest inside); the archive keeps the manifest, no .save', async () => {
    const restic = new FakeRestic();
    const m = await archived(restic);
    const [snap] = restic.snaps;
    assert.deepEqual(snap!.tags, ['virtsnap', `virtsnap-id=${ID}`, 'virtsnap-domain=web', 'virtsnap-guid=777']);
    assert.equal(snap!.hostname, 'host1');
    assert.deepEqual(snap!.files.get(`/web.${ID}.save`), data, 'raw, never gzip, whatever VIRTSNAP_COMPRESS says');
    assert.equal(m.compression, null);
    assert.equal(m.sha256, createHash('sha256').update(data).digest('hex'));
    assert.deepEqual(m.store, { kind: 'restic', repo: '/backup/repo', snapshot: snap!.id, save: `/web.${ID}.save`, meta: `/web.${ID}.meta` }); // the whole id, not the short one backup's summary gives
    const scan = scanArchive(config().archiveDir);
    assert.equal(scan.dumps.length, 1);
    assert.deepEqual([scan.strays, scan.foreign], [[], []], 'a restic manifest without .save is neither stray nor foreign');
    assert.equal(existsSync(scan.dumps[0]!.manifest.memoryFile), false);
    assert.deepEqual(resticStoreOf(scan.dumps[0]!.manifest), m.store);
    assert.match(storedAt(m), /^restic:\/backup\/repo [0-9a-f]{8}:\/web\..*\.save$/);
    const inRepo = JSON.parse(snap!.files.get(`/web.${ID}.meta/${REPO_MANIFEST}`)!.toString()) as Manifest;
    assert.equal(inRepo.sha256, m.sha256);
    assert.equal(inRepo.store, undefined);
  });

  it('archived again after a crash between backup and manifest: the snapshot found by its tag is used, no second backup', async () => {
    const restic = new FakeRestic();
    const input = inputs();
    await stageResticDump(config().archiveDir, input, restic, 'host1'); // crashed before publishDump
    const m = publishDump(await stageResticDump(config().archiveDir, inputs(), restic, 'host1')).manifest;
    assert.equal(restic.calls.filter((c) => c.startsWith('backup')).length, 1);
    assert.equal(restic.snaps.length, 1);
    assert.equal(resticStoreOf(m)?.snapshot, restic.snaps[0]!.id);
    assert.equal(existsSync(input.memoryFile), false, 'only now the memory file goes');
  });

  it('prune: the snapshot is forgotten (before the manifest goes); a dir dump calls nothing; another repo is one line', async () => {
    const restic = new FakeRestic();
    const m = await archived(restic);
    await forgetStored(m, restic);
    assert.equal(restic.snaps.length, 0);
    await forgetStored(m, restic); // forgotten already: fine
    await forgetStored({ ...m, store: undefined }, restic);
    assert.deepEqual(restic.calls.filter((c) => c.startsWith('forget')).length, 2);
    await assert.rejects(forgetStored(m, null), /is in restic repository \/backup\/repo, and VIRTSNAP_STORE does not name it: set VIRTSNAP_STORE=restic:\/backup\/repo/);
  });

  it('localDump: the raw image in a private temp dir under the state dir, 0600, gone after release', async () => {
    const restic = new FakeRestic();
    const m = await archived(restic);
    const local = await localDump(m, config().stateDir, restic);
    assert.deepEqual(readFileSync(local.manifest.memoryFile), data);
    assert.equal(statSync(local.manifest.memoryFile).mode & 0o777, 0o600);
    assert.equal(statSync(path.dirname(local.manifest.memoryFile)).mode & 0o777, 0o700);
    assert.ok(local.manifest.memoryFile.startsWith(path.join(config().stateDir, 'fetch') + '/'));
    assert.equal(local.manifest.store, undefined);
    local.release();
    assert.equal(existsSync(path.dirname(local.manifest.memoryFile)), false);
    const plain = { ...m, store: undefined };
    assert.equal((await localDump(plain, config().stateDir, restic)).manifest, plain, 'a dir dump is its own file');
  });

  it('repoDumps: the manifests from the repo, as scanArchive gives them (another host, no local manifests)', async () => {
    const restic = new FakeRestic();
    const m = await archived(restic);
    rmSync(config().archiveDir, { recursive: true });
    const [d] = await repoDumps(restic, { host: 'host1' });
    assert.equal(d!.manifest.id, ID);
    assert.equal(d!.manifest.sha256, m.sha256);
    assert.deepEqual(d!.manifest.snapshots, m.snapshots);
    assert.equal(resticStoreOf(d!.manifest)?.snapshot, restic.snaps[0]!.id);
    assert.deepEqual(await repoDumps(restic, { host: 'host1', exclude: new Set([ID]) }), [], 'ids known here are left out');
    assert.deepEqual(await repoDumps(restic, { host: 'host1', guids: new Set(['123']) }), [], 'another snapshot guid: not read');
    assert.equal((await repoDumps(restic, { host: 'host1', guids: new Set(['777']) })).length, 1, 'tagged with its snapshot guid');
  });

  it('repoDumps takes one host\'s dumps only: another host may tag a dump with your snapshot\'s guid', async () => {
    const restic = new FakeRestic();
    await archived(restic);
    rmSync(config().archiveDir, { recursive: true });
    assert.deepEqual(await repoDumps(restic, { host: 'host2', guids: new Set(['777']) }), [], 'host1\'s dump is not host2\'s');
    assert.equal((await repoDumps(restic, { host: 'host1', guids: new Set(['777']) })).length, 1, 'named by the user (--host host1)');
  });

  it('a retry takes a snapshot of this dump only when it is whole and this host\'s: an incomplete one is forgotten and backed up again, another host\'s left alone', async () => {
    const restic = new FakeRestic();
    await stageResticDump(config().archiveDir, inputs(), restic, 'host1'); // a backup that got this far, then post died
    // restic's exit 3: the snapshot exists, but holds only part of the memory file.
    const first = restic.snaps[0]!;
    first.files.set(`/web.${ID}.save`, data.subarray(0, 10));
    // Another host wrote a snapshot with this dump's tag (the password is shared).
    const other = path.join(dir, 'forged');
    mkdirSync(other, { recursive: true });
    writeFileSync(path.join(other, `web.${ID}.save`), 'not the RAM');
    await restic.backup(other, [`web.${ID}.save`], ['virtsnap', `virtsnap-id=${ID}`], 'host2');
    const again = inputs();
    const m = publishDump(await stageResticDump(config().archiveDir, again, restic, 'host1')).manifest;
    const stored = restic.snaps.find((s) => s.id === resticStoreOf(m)!.snapshot)!;
    assert.notEqual(stored.id, first.id, 'the incomplete snapshot is not used');
    assert.equal(stored.hostname, 'host1');
    assert.deepEqual(stored.files.get(`/web.${ID}.save`), data, 'backed up again, whole');
    assert.ok(restic.calls.includes(`forget ${first.id}`), 'the incomplete one is forgotten');
    assert.ok(restic.snaps.some((s) => s.hostname === 'host2'), 'another host\'s snapshot is never forgotten');
    assert.equal(existsSync(again.memoryFile), false);
  });

  it('gc: restic prune, and snapshots no manifest here names are reported, never forgotten', async () => {
    const restic = new FakeRestic();
    await archived(restic);
    const other = path.join(dir, 'other');
    mkdirSync(other);
    writeFileSync(path.join(other, 'x.save'), 'x');
    await restic.backup(other, ['x.save'], ['virtsnap', 'virtsnap-id=elsewhere'], 'host2');
    const dumps = scanArchive(config().archiveDir).dumps;
    const dry = await gcRestic(restic, dumps, true);
    assert.equal(dry.pruned, false);
    assert.equal(dry.unknown.length, 1);
    assert.match(dry.unknown[0]!, /virtsnap-id=elsewhere, host host2.*no manifest here names it \(left alone/);
    const done = await gcRestic(restic, dumps, false);
    assert.equal(done.pruned, true);
    assert.equal(restic.snaps.length, 2, 'nothing forgotten');
    assert.ok(restic.calls.includes('prune'));
  });
});

describe('resticAdvice', () => {
  const fail = (stderr: string, status = 1, timedOut = false) => resticAdvice('/r', '/etc/pw', new CommandError('restic', ['snapshots'], status, stderr, timedOut));
  it('one line that says what to do', () => {
    assert.equal(fail('Fatal: wrong password or no key found').message, 'restic: wrong password for /r: check VIRTSNAP_RESTIC_PASSWORD_FILE (/etc/pw)');
    assert.equal(
      fail('Fatal: unable to open config file: stat /r/config: no such file or directory\nIs there a repository at the following location?\n/r').message,
      'no restic repository at /r: create it with `restic init --repository-version 2`, with the repository and VIRTSNAP_RESTIC_PASSWORD_FILE (/etc/pw) as virtsnap gives them',
    );
    assert.match(fail('Resolving password failed: Fatal: /etc/pw does not exist').message, /^restic cannot read its password \(VIRTSNAP_RESTIC_PASSWORD_FILE \(\/etc\/pw\)\)/);
    assert.match(fail('Warning: at least one source file could not be read', 3).message, /could not read all of its input \(exit 3: the snapshot it made is incomplete\)/);
    assert.match(fail('command not found', 127).message, /^restic is not installed: apt-get install restic/);
    assert.match(fail('', -1, true).message, /^restic snapshots on \/r timed out/);
    const e = fail('Fatal: something else');
    assert.equal(e.message, 'restic snapshots on /r failed: something else');
    assert.equal(e.status, 1);
    assert.doesNotMatch(e.message, /\n/);
  });
});

describe('a manifest\'s restic store is checked before anything follows it', () => {
  const good = { kind: 'restic', repo: '/r', snapshot: 'a'.repeat(64), save: '/web.x.save', meta: '/web.x.meta' };
  it('what virtsnap writes passes', () => assert.equal(resticStoreProblem(good), null));
  it('a path out of the fetch dir, an option for restic, or a dataset store from disk is refused', () => {
    assert.match(resticStoreProblem({ ...good, save: '/../../etc/shadow.save' })!, /memory file/);
    assert.match(resticStoreProblem({ ...good, snapshot: '--password-command=x' })!, /not a snapshot id/);
    assert.match(resticStoreProblem({ ...good, meta: 'web.meta' })!, /meta dir/);
    assert.match(resticStoreProblem({ kind: 'dataset', dataset: 'tank/vm', mountpoint: '/', file: '../x' })!, /not a restic snapshot/);
  });
});

describe('repository credentials', () => {
  it('a URL\'s password is masked wherever the repository is shown', () => {
    assert.equal(redactRepo('rest:https://user:s3cr3t@backup.example:8000/virtsnap/'), 'rest:https://user:***@backup.example:8000/virtsnap/');
    assert.equal(redactRepo('rest:http://:tok@h/'), 'rest:http://:***@h/');
    assert.equal(redactRepo('sftp:user@host:/srv/restic'), 'sftp:user@host:/srv/restic', 'no password: as it is');
    assert.equal(redactRepo('/backup/virtsnap'), '/backup/virtsnap');
    assert.equal(shownRepo({ repo: 'rest:https://u:p@h/', env: {} }), 'rest:https://u:***@h/');
    assert.equal(shownRepo({ repo: null, env: { RESTIC_REPOSITORY: 's3:https://k:v@s3/b' } }), 's3:https://k:***@s3/b');
  });

  it('restic gets repository and password through its environment, never its command line; the env file\'s variables go with them', () => {
    const e = resticEnv({ repo: 'rest:https://u:p@h/', passwordFile: '/etc/pw', env: { AWS_ACCESS_KEY_ID: 'k', RESTIC_REPOSITORY_FILE: '/x', RESTIC_PASSWORD_COMMAND: 'pass show' } });
    assert.deepEqual(e.env, { AWS_ACCESS_KEY_ID: 'k', RESTIC_REPOSITORY: 'rest:https://u:p@h/', RESTIC_PASSWORD_FILE: '/etc/pw' });
    assert.deepEqual(e.unset.sort(), ['RESTIC_PASSWORD', 'RESTIC_PASSWORD_COMMAND', 'RESTIC_REPOSITORY_FILE']);
    // Nothing named by virtsnap: restic reads the env file's own.
    assert.deepEqual(resticEnv({ repo: null, passwordFile: null, env: { RESTIC_REPOSITORY_FILE: '/r', RESTIC_PASSWORD_FILE: '/p' } }), { env: { RESTIC_REPOSITORY_FILE: '/r', RESTIC_PASSWORD_FILE: '/p' }, unset: [] });
  });

  it('restic\'s own words are masked too', () => {
    const e = resticAdvice('rest:https://u:***@h/', null, new CommandError('restic', ['snapshots'], 1, 'Fatal: unable to open repository at rest:https://u:p4ss@h/: 401 Unauthorized'), ['rest:https://u:p4ss@h/']);
    assert.doesNotMatch(e.message, /p4ss/);
    assert.doesNotMatch(e.resticMessage, /p4ss/);
    assert.match(e.message, /^restic snapshots on rest:https:\/\/u:\*\*\*@h\/ failed: unable to open repository at rest:https:\/\/u:\*\*\*@h\/: 401 Unauthorized$/);
  });
});
