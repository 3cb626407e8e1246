// The restic store on the bed (VIRTSNAP_STORE=restic:REPO): 8
// consecutive dumps of a guest that keeps rewriting part of its RAM go into
// one restic repository (a local one under the setup's dir); the repository
// is measured against one gzip-compressed dump of the same guest; the 1st
// and the 24th restore as clones with the oracle silent; the dumps whose
// snapshots are destroyed are forgotten by gc, and restic prune gives the
// space back.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stageFile } from '../../lib/archive.js';
import { resticStoreOf, type Manifest } from '../../lib/manifest.js';
import { storeFor } from '../../lib/stores/index.js';
import { loadConfig } from '../../lib/config.js';
import { Restic, TAG } from '../../lib/restic.js';
import { assertWhole, bed, consoleMark, datasetExists, destroyDataset, Guest, removeDomains, sh, watchDomain, zfsRetry, type Bed } from '../helpers/bed.js';
import { Setup, virtsnap } from '../helpers/virtsnap.js';

// 8 in npm test (the bench stores 24 of them: test/bench/storage.ts); RESTIC_TEST_DUMPS for more.
const DUMPS = Number(process.env.RESTIC_TEST_DUMPS ?? 8);
const DOMAIN = 'vsbed-rst-g';
const CLONE_DOMAIN = 'vsbed-rst-clone';

async function duBytes(dir: string): Promise<number> {
  return Number((await sh('du', ['-sb', dir])).split(/\s/)[0]);
}

describe('restic archive backend (VIRTSNAP_STORE=restic:REPO)', () => {
  let b: Bed;
  let setup: Setup;
  let guest: Guest;
  let restic: Restic;
  let repo: string;
  const dataset = () => `${b.vmDataset}/rst-g`;
  const clone = () => `${b.vmDataset}/rst-clone`;
  const dumps: Manifest[] = [];

  before(async () => {
    b = await bed();
    await removeDomains(DOMAIN, CLONE_DOMAIN);
    await destroyDataset(clone(), 180);
    await destroyDataset(dataset(), 180);
    // An overlay dir of its own: gc sweeps the overlay dir, and the bed's is shared with other tests' runs in flight.
    setup = await Setup.create('rst-restic', { VIRTSNAP_OVERLAY_DIR: path.join(b.dir, 'overlay-rst') });
    repo = path.join(setup.root, 'repo');
    const pw = path.join(setup.root, 'restic.pw');
    writeFileSync(pw, 'not-a-secret-but-0600\n', { mode: 0o600 });
    setup.writeEnv({ VIRTSNAP_OVERLAY_DIR: setup.overlayDir, VIRTSNAP_STORE: `restic:${repo}`, VIRTSNAP_RESTIC_PASSWORD_FILE: pw, VIRTSNAP_LOG: 'warn' });
    await sh('restic', ['init', '--repository-version', '2', '--repo', repo, '--password-file', pw]);
    restic = new Restic({ repo, passwordFile: pw, env: {} });
    // 160 MiB, a tenth of it (16 MiB) random and rewritten 1 MiB at a time, round and round (test/bed/guest/fill): what changes between runs is
    // bounded by the fill, and under TCG the filler at nice 19 rewrites a few MiB per second.
    guest = await Guest.create({ name: DOMAIN, dataset: dataset(), memoryMiB: 160, fillMiB: 16 });
    await guest.start();
    await guest.waitForFill();
  });
  after(async () => {
    await removeDomains(CLONE_DOMAIN);
    await guest?.remove();
    await destroyDataset(clone(), 180);
    await destroyDataset(dataset(), 180);
  });

  it(`${DUMPS} consecutive dumps go into restic; the archive dir keeps manifests only; the repo against one compressed dump`, async (t) => {
    const started = Date.now();
    for (let i = 1; i <= DUMPS; i++) {
      const out = await virtsnap(setup, ['snapshot', dataset(), '--name', `r${i}`, '--json']);
      assert.equal(out.code, 0, `${out.stderr}${out.stdout}`);
      const [m] = JSON.parse(out.stdout) as Manifest[];
      const local = (await setup.dumps()).find((d) => d.manifest.id === m!.id)!.manifest;
      assert.equal(resticStoreOf(local)?.repo, repo);
      assert.equal(existsSync(local.memoryFile), false, 'no .save beside a restic dump');
      dumps.push(local);
    }
    const perDump = (Date.now() - started) / DUMPS;
    assert.equal((await restic.snapshots([TAG])).length, DUMPS);
    const config = loadConfig(setup.env());
    // One compressed dump of the same guest: the last one, as the archive dir would store it.
    const last = await storeFor(config).fetch(dumps.at(-1)!);
    const gzFile = path.join(setup.root, 'one.save.gz');
    const staged = await stageFile(last.manifest.memoryFile, gzFile, 'gzip');
    rmSync(`${gzFile}.part`, { force: true });
    last.release();
    const du = await duBytes(repo);
    const raw = await restic.rawSize();
    const mib = (n: number) => (n / 1024 ** 2).toFixed(1);
    t.diagnostic(
      `${DUMPS} dumps of a 160 MiB guest (16 MiB random, rewritten): raw ${mib(dumps.at(-1)!.bytes)} MiB each, one gzip dump ${mib(staged.bytes)} MiB; ` +
        `restic repo du ${mib(du)} MiB (${(du / staged.bytes).toFixed(2)}x one compressed dump; target <= 4x), stats raw-data ${mib(raw)} MiB; ${(perDump / 1000).toFixed(1)} s per snapshot`,
    );
    // Lenient: the dumps take less than the archive dir would with each gzip-compressed (the target is reported above).
    assert.ok(du <= DUMPS * staged.bytes, `repo ${du} bytes against ${DUMPS} compressed dumps of ${staged.bytes}`);
  });

  for (const which of ['first', 'last'] as const) {
    it(`restore of the ${which} dump as a clone: fetched from restic, the oracle silent, the fetched copy gone`, async () => {
      const m = which === 'first' ? dumps[0]! : dumps.at(-1)!;
      const snap = m.snapshots[0]!.name;
      const mark = await consoleMark(CLONE_DOMAIN);
      const out = await virtsnap(setup, ['restore', snap, '--clone', clone(), '--as', CLONE_DOMAIN, '--yes']);
      assert.equal(out.code, 0, out.stderr);
      assertWhole(await watchDomain(CLONE_DOMAIN, mark, { timeoutMs: 120_000 }), `the ${which} dump`);
      const fetchDir = path.join(setup.stateDir, 'fetch');
      assert.deepEqual(existsSync(fetchDir) ? (await sh('ls', ['-A', fetchDir])).trim() : '', '', 'no fetched memory file left');
      await removeDomains(CLONE_DOMAIN);
      await destroyDataset(clone(), 180);
    });
  }

  it('another host (no manifests in its archive dir): list and restore read the manifests from the repo', async () => {
    const { runProgram, cli } = await import('../helpers/virtsnap.js');
    const empty = path.join(setup.root, 'archive-elsewhere');
    mkdirSync(empty, { mode: 0o700 });
    const env = setup.env({ VIRTSNAP_ARCHIVE_DIR: empty });
    const list = await runProgram(cli, ['list', '--json'], env);
    assert.equal(list.code, 0, list.stderr);
    assert.equal((JSON.parse(list.stdout) as unknown[]).length, DUMPS);
    const m = dumps.at(-2)!;
    const mark = await consoleMark(CLONE_DOMAIN);
    const out = await runProgram(cli, ['restore', m.snapshots[0]!.name, '--clone', clone(), '--as', CLONE_DOMAIN, '--yes'], env);
    assert.equal(out.code, 0, out.stderr);
    assertWhole(await watchDomain(CLONE_DOMAIN, mark, { timeoutMs: 120_000 }), 'a dump read from the repository on another host');
    await removeDomains(CLONE_DOMAIN);
    await destroyDataset(clone(), 180);
  });

  it('verify fetches each dump and checks it', async () => {
    const out = await virtsnap(setup, ['verify', DOMAIN]);
    assert.equal(out.code, 0, out.stdout + out.stderr);
    assert.equal(out.stdout.trim().split('\n').filter((l) => l.startsWith('OK ')).length, DUMPS);
  });

  it('snapshots destroyed: the prune hook forgets its dump, gc forgets the rest and restic prune shrinks the repo', async () => {
    const before = await duBytes(repo);
    const gone = dumps.slice(1, Math.ceil(DUMPS / 2));
    for (const m of gone) await zfsRetry(['destroy', m.snapshots[0]!.name]);
    const first = gone[0]!.snapshots[0]!.name.split('@');
    const prune = await virtsnap(setup, ['list']); // manifests still there before the prune
    assert.equal(prune.code, 0, prune.stderr);
    const { runProgram, hooks } = await import('../helpers/virtsnap.js');
    const hook = await runProgram(hooks.prune, [], setup.env({ SANOID_SCRIPT: 'prune', SANOID_TARGET: first[0]!, SANOID_SNAPNAME: first[1]! }));
    assert.equal(hook.code, 0, hook.stderr);
    const afterHook = await restic.snapshots([TAG]);
    assert.equal(afterHook.length, DUMPS - 1, 'the prune hook forgot one snapshot');
    assert.ok(!afterHook.some((s) => s.id.startsWith(resticStoreOf(gone[0]!)!.snapshot)));
    const gc = await virtsnap(setup, ['gc']);
    assert.equal(gc.code, 0, gc.stderr);
    assert.match(gc.stdout, /restic prune: done/);
    assert.equal((await restic.snapshots([TAG])).length, DUMPS - gone.length);
    assert.equal((await setup.dumps()).length, DUMPS - gone.length);
    const after = await duBytes(repo);
    console.log(`# gc: ${gone.length} dumps forgotten, repo ${(before / 1024 ** 2).toFixed(1)} -> ${(after / 1024 ** 2).toFixed(1)} MiB`);
    assert.ok(after < before, `repo shrank: ${before} -> ${after}`);
  });
});

