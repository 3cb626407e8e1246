// The Debian package on the bed: `packaging/deb/build` (what `npm run deb`
// runs) makes the .deb, `dpkg -i` installs it, and sanoid, run the way its
// own sanoid.service runs it, takes consistent snapshots through the
// installed hooks with the package's defaults: no file copied by hand. A
// clone restored by the installed CLI keeps the oracle silent. Removal is
// refused while a run holds a VM; purge keeps the RAM dumps.
//
// On Debian 12's stack it installs on this host; with VSBED_STACK=trixie in
// the Debian 13 root (test/bed/trixie), with that root's nodejs 20.19,
// libvirt-clients 11.3 and sanoid 2.2.0, against its libvirtd.
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { assertWhole, bed, consoleMark, destroyDataset, Guest, removeDomains, runSanoid, sh, snapshotsOf, watchDomain, type Bed } from '../helpers/bed.js';
import { repoRoot, runProgram, type Ran } from '../helpers/virtsnap.js';

const VAR = '/var/lib/virtsnap';
/** Left in /var/lib/virtsnap by this test, so that a later run knows the dir is the bed's to remove. */
const MARKER = path.join(VAR, '.vsbed-deb-test');
const CLI = '/usr/sbin/virtsnap';
/** A journal entry the removal test plants: prerm must refuse while it exists. */
const HELD = path.join(VAR, 'state/journal/00000000-0000-0000-0000-000000000000.json');
const HOOKS = '/usr/lib/virtsnap/hooks';

/** Where the package is tried: this host, or a Debian root (its files under `root`, its programs run by chroot). */
interface Target {
  /** '' for this host. */
  root: string;
  /** A path of the target's filesystem, as this process sees it. */
  path(p: string): string;
  run(program: string, args: string[], env?: Record<string, string>, timeoutMs?: number): Promise<Ran>;
}

function targetFor(b: Bed): Target {
  if (b.stack === 'bookworm') return { root: '', path: (p) => p, run: (program, args, env = {}, timeoutMs) => runProgram(program, args, env, timeoutMs) };
  const root = b.trixieRoot;
  if (root === null) throw new Error('VSBED_STACK=trixie, but the bed has no Debian 13 root: run `sudo bash test/bed/up --trixie`');
  return {
    root,
    path: (p) => path.join(root, p),
    run: (program, args, env = {}, timeoutMs) => runProgram('chroot', [root, '/usr/bin/env', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), program, ...args], {}, timeoutMs),
  };
}

async function installed(t: Target): Promise<boolean> {
  const q = await t.run('dpkg-query', ['-W', '-f', '${Status}', 'virtsnap']);
  return q.code === 0 && q.stdout.includes('install ok installed');
}

/** Removes what this test installed; never a virtsnap it did not install (no marker). */
async function purge(t: Target): Promise<void> {
  if (!existsSync(t.path(MARKER))) return;
  rmSync(t.path(HELD), { force: true });
  if ((await t.run('dpkg-query', ['-W', 'virtsnap'])).code === 0) {
    const purged = await t.run('dpkg', ['--purge', 'virtsnap'], {}, 120_000);
    if (purged.code !== 0) throw new Error(`dpkg --purge virtsnap: ${purged.stderr}`);
  }
  rmSync(t.path(VAR), { recursive: true, force: true });
}

/** `Key=` lines of a unit's [Service] section. */
function unitValues(file: string, key: string): string[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));
}

/** Runs `args` until it succeeds, or says why not: the installed CLI's list, until the archiver has stored the dumps. */
async function waitFor(what: string, check: () => Promise<string | null>, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: string | null = 'never looked';
  while (Date.now() < deadline) {
    last = await check();
    if (last === null) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`${what}: ${last}`);
}

describe('the Debian package', () => {
  let b: Bed;
  let t: Target;
  let g: Guest;
  let deb: string;
  const dataset = () => `${b.vmDataset}/deb`;
  const clone = () => `${b.vmDataset}/deb-clone`;
  const sanoidDir = () => path.join(b.dir, 'tests', 'deb-sanoid');
  const sanoidConf = () => path.join(sanoidDir(), 'sanoid.conf');

  before(async () => {
    b = await bed();
    t = targetFor(b);
    await purge(t);
    if (existsSync(t.path(VAR)) || (await t.run('dpkg-query', ['-W', 'virtsnap'])).code === 0) {
      throw new Error(`virtsnap is installed in ${t.root || 'this host'} or ${VAR} exists there, and not by this test: this test installs and purges the package; run it on a machine without virtsnap`);
    }
    await removeDomains('vsbed-deb', 'vsbed-deb-clone');
    await destroyDataset(clone());
    await destroyDataset(dataset());
    g = await Guest.create({ name: 'vsbed-deb', dataset: dataset() });
    await g.start();
  });
  after(async () => {
    await removeDomains('vsbed-deb-clone');
    await g?.remove();
    await destroyDataset(clone());
    await destroyDataset(dataset());
    await purge(t);
    rmSync(sanoidDir(), { recursive: true, force: true });
  });

  it('builds with dpkg-deb and installs with dpkg -i: binary, hooks, conffile, units, man page, completion, docs', async () => {
    const built = await runProgram('bash', [path.join(repoRoot, 'packaging/deb/build')], {}, 300_000);
    assert.equal(built.code, 0, built.stderr);
    deb = path.join(repoRoot, built.stdout.trim());
    // Where the target sees it: the bed's dir is the Debian 13 root's too.
    const debThere = path.join(b.dir, 'tests', path.basename(deb));
    copyFileSync(deb, debThere);
    const version = (JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;
    assert.equal(path.basename(deb), `virtsnap_${version}_all.deb`);
    // Debian's own check of the package: no error, no warning (packaging/deb/lintian-overrides says why for the two it overrides).
    if (t.root === '') {
      const lint = await runProgram('lintian', ['--fail-on', 'error,warning', '--tag-display-limit', '0', deb], {}, 300_000);
      assert.equal(lint.code, 0, `lintian: ${lint.stdout}${lint.stderr}`);
      assert.doesNotMatch(lint.stdout, /^[EW]: /m, lint.stdout);
    }
    const fields = await sh('dpkg-deb', ['-f', deb, 'Depends', 'Architecture']);
    assert.match(fields, /Depends: nodejs \(>= 20\), libvirt-clients, sanoid \(>= 2\.1\.0\), zfsutils-linux \| zfs-fuse/);

    const install = await t.run('dpkg', ['-i', debThere], {}, 300_000);
    if (existsSync(t.path(VAR))) writeFileSync(t.path(MARKER), '');
    assert.equal(install.code, 0, install.stderr);
    assert.ok(await installed(t));
    const files = (await t.run('dpkg', ['-L', 'virtsnap'])).stdout.split('\n');
    for (const f of [
      CLI,
      `${HOOKS}/pre-snapshot`,
      `${HOOKS}/post-snapshot`,
      `${HOOKS}/prune`,
      '/etc/virtsnap/virtsnap.env',
      '/lib/systemd/system/virtsnap-recover.service',
      '/lib/systemd/system/virtsnap-gc.timer',
      '/lib/systemd/system/sanoid.service.d/virtsnap.conf',
      '/usr/share/man/man8/virtsnap.8.gz',
      '/usr/share/bash-completion/completions/virtsnap',
      '/usr/share/doc/virtsnap/copyright',
      '/usr/share/doc/virtsnap/examples/sanoid.conf',
      '/usr/share/doc/virtsnap/examples/grafana-virtsnap.json',
      '/usr/share/lintian/overrides/virtsnap',
    ]) {
      assert.ok(files.includes(f), `${f} is in the package`);
    }
    assert.deepEqual(files.filter((f) => /\/test\/|vsbed/.test(f)), [], 'nothing of the tests or the bed');
    assert.match((await t.run('dpkg-query', ['-W', '-f', '${Conffiles}', 'virtsnap'])).stdout, /\/etc\/virtsnap\/virtsnap\.env [0-9a-f]{32}/);
    assert.equal(statSync(t.path('/etc/virtsnap')).mode & 0o777, 0o700);
    assert.equal(statSync(t.path('/etc/virtsnap/virtsnap.env')).mode & 0o777, 0o600);
    // QEMU must reach the overlays; dumps and the journal are private.
    assert.equal(statSync(t.path(VAR)).mode & 0o777, 0o711);
    assert.equal(statSync(t.path(`${VAR}/overlay`)).mode & 0o777, 0o711);
    assert.equal(statSync(t.path(`${VAR}/archive`)).mode & 0o777, 0o700);
    assert.equal(statSync(t.path(`${VAR}/state`)).mode & 0o777, 0o700);
    // Enabled as dh_installsystemd would: recover at boot, the gc timer.
    assert.ok(lstatSync(t.path('/etc/systemd/system/multi-user.target.wants/virtsnap-recover.service')).isSymbolicLink());
    assert.ok(lstatSync(t.path('/etc/systemd/system/timers.target.wants/virtsnap-gc.timer')).isSymbolicLink());
    for (const unit of ['virtsnap-recover.service', 'virtsnap-gc.service']) {
      assert.deepEqual(unitValues(t.path(`/lib/systemd/system/${unit}`), 'ExecStart').map((c) => c.split(' ')[0]), [CLI]);
    }
    // As installed, with the man page their Documentation= names (systemd-analyze checks it exists: man-db is this host's).
    if (t.root === '') {
      const verify = await runProgram('systemd-analyze', ['verify', '--man=yes', '/lib/systemd/system/virtsnap-recover.service', '/lib/systemd/system/virtsnap-gc.service', '/lib/systemd/system/virtsnap-gc.timer'], {});
      assert.deepEqual(verify.stderr.split('\n').filter((l) => /virtsnap|sanoid\.service\.d/.test(l)), [], verify.stderr);
      const man = await runProgram('man', ['-w', 'virtsnap'], {});
      assert.equal(man.stdout.trim(), '/usr/share/man/man8/virtsnap.8.gz');
    } else {
      assert.ok(existsSync(t.path('/usr/share/man/man8/virtsnap.8.gz')));
    }
    const v = await t.run(CLI, ['--version']);
    assert.equal(v.stdout, `virtsnap ${version}\n`, v.stderr);
  });

  it("sanoid, run as its own sanoid.service runs it, snapshots through the installed hooks; the installed CLI restores a clone with a silent oracle", async () => {
    assert.ok(await installed(t), 'installed by the test before');
    // What sanoid.service runs on every timer tick (Debian's unit: TZ=UTC, --take-snapshots).
    const unit = t.path('/lib/systemd/system/sanoid.service');
    const [execStart] = unitValues(unit, 'ExecStart');
    const [program, ...args] = execStart!.split(/\s+/);
    // Debian 12's sanoid 2.1.0 on this host, Debian 13's 2.2.0 in its root.
    assert.equal(program, t.root === '' ? b.sanoid['2.1.0'] : '/usr/sbin/sanoid', `${unit} runs Debian's sanoid`);
    const env = Object.fromEntries(unitValues(unit, 'Environment').map((e) => e.split('=') as [string, string]));
    const conf = [
      `[${dataset()}]`,
      '  use_template = vm',
      '[template_vm]',
      '  autosnap = yes',
      '  autoprune = yes',
      '  hourly = 24',
      '  daily = 30',
      '  monthly = 3',
      `  pre_snapshot_script = ${HOOKS}/pre-snapshot`,
      `  post_snapshot_script = ${HOOKS}/post-snapshot`,
      `  pruning_script = ${HOOKS}/prune`,
      '  script_timeout = 0',
      '  force_post_snapshot_script = yes',
      '',
    ].join('\n');
    mkdirSync(sanoidDir(), { recursive: true, mode: 0o700 });
    const sources = await g.sources();
    const run = await runSanoid('2.1.0', conf, args, { configDir: sanoidDir(), env, ...(t.root !== '' ? { root: t.root, program: '/usr/sbin/sanoid' } : {}) });
    assert.equal(run.code, 0, run.stderr);
    assert.doesNotMatch(run.stderr, /WARN: (pre|post)_snapshot_script failed/, run.stderr);
    const snaps = (await snapshotsOf(dataset())).filter((s) => s.includes('@autosnap_'));
    assert.equal(snaps.length, 3, `hourly, daily, monthly: ${snaps.join(' ')}`);
    assert.deepEqual(await g.sources(), sources, 'back on its own disks');
    assert.equal(await g.state(), 'running');

    // The installed CLI, with the package's defaults (and the test's sanoid.conf).
    const cliEnv = { VIRTSNAP_SANOID_CONF: sanoidConf() };
    type Listed = { domain: { name: string }; snapshots: string[]; memoryFile: string; waiting: boolean };
    let dumps: Listed[] = [];
    // The archiver the post hook started stores the dump after the run.
    await waitFor('the installed archiver stores the dump', async () => {
      const list = await t.run(CLI, ['list', '--json'], cliEnv);
      if (list.code !== 0) return list.stderr;
      dumps = JSON.parse(list.stdout) as Listed[];
      return dumps.length === 1 && !dumps[0]!.waiting ? null : `${list.stdout}`;
    });
    assert.equal(dumps.length, 1);
    assert.deepEqual([...dumps[0]!.snapshots].sort(), [...snaps].sort(), 'one dump for the three snapshots of the run');
    assert.ok(dumps[0]!.memoryFile.startsWith(`${VAR}/archive/vsbed-deb/`), dumps[0]!.memoryFile);
    assert.equal((statSync(t.path(dumps[0]!.memoryFile)).mode & 0o777).toString(8), '600');
    // VIRTSNAP_COMPRESS=auto, as the package sets it: zstd where libvirt reads it (Debian 13's 11.3), gzip on Debian 12's 9.0.
    const stored = JSON.parse(readFileSync(t.path(dumps[0]!.memoryFile.replace(/\.save$/, '.json')), 'utf8')) as { compression: string | null };
    assert.equal(stored.compression, t.root === '' ? 'gzip' : 'zstd');
    assert.equal((await t.run(CLI, ['verify'], cliEnv)).code, 0);
    const check = await t.run(CLI, ['check'], cliEnv);
    assert.equal(check.code, 0, check.stdout);
    const doctor = await t.run(CLI, ['doctor'], cliEnv);
    assert.equal(doctor.code, 0, doctor.stdout);
    assert.match(doctor.stdout, /^OK {3}overlay access: QEMU \(\S+\) can reach \/var\/lib\/virtsnap\/overlay$/m);

    const mark = await consoleMark('vsbed-deb-clone');
    const restored = await t.run(CLI, ['restore', snaps[0]!, '--clone', clone(), '--as', 'vsbed-deb-clone'], cliEnv);
    assert.equal(restored.code, 0, restored.stderr);
    assertWhole(await watchDomain('vsbed-deb-clone', mark), 'the clone restored by the installed CLI');
    await removeDomains('vsbed-deb-clone');
  });

  it('refuses removal while a run holds a VM, wherever the settings put its state dir; purge keeps the RAM dumps', async () => {
    assert.ok(await installed(t), 'installed by the test before');
    const refusedWhile = async (what: string): Promise<void> => {
      const refused = await t.run('dpkg', ['-r', 'virtsnap'], {}, 120_000);
      assert.notEqual(refused.code, 0, what);
      assert.match(refused.stderr, /virtsnap: VMs are held by a snapshot run or were left on overlays: run 'virtsnap status', then 'virtsnap recover'/, what);
      assert.ok(await installed(t), `still installed (${what})`);
    };
    // The default state dir.
    mkdirSync(path.dirname(t.path(HELD)), { recursive: true, mode: 0o700 });
    writeFileSync(t.path(HELD), '{}', { mode: 0o600 });
    await refusedWhile('the default state dir');
    rmSync(t.path(HELD));
    // An `export` line with an inline comment in the env file, as users write them (the old prerm's sed missed it).
    const envFile = t.path('/etc/virtsnap/virtsnap.env');
    const conffile = readFileSync(envFile, 'utf8');
    const elsewhere = `${VAR}/state-elsewhere`;
    mkdirSync(t.path(path.join(elsewhere, 'journal')), { recursive: true, mode: 0o700 });
    writeFileSync(t.path(path.join(elsewhere, 'journal', path.basename(HELD))), '{}', { mode: 0o600 });
    writeFileSync(envFile, `${conffile}export VIRTSNAP_STATE_DIR=${elsewhere} # moved\n`, { mode: 0o600 });
    try {
      await refusedWhile('a state dir the env file names with export');
    } finally {
      writeFileSync(envFile, conffile, { mode: 0o600 });
    }
    // A state dir only a unit names (sanoid.service's drop-in), systemd running or not.
    const dropIn = t.path('/etc/systemd/system/sanoid.service.d/vsbed-test.conf');
    mkdirSync(path.dirname(dropIn), { recursive: true });
    writeFileSync(dropIn, `[Service]\nEnvironment="VIRTSNAP_STATE_DIR=${elsewhere}" TZ=UTC\n`);
    try {
      await refusedWhile("a state dir a unit's Environment= names");
    } finally {
      rmSync(dropIn, { force: true });
      rmSync(t.path(elsewhere), { recursive: true, force: true });
    }
    const purged = await t.run('dpkg', ['--purge', 'virtsnap'], {}, 120_000);
    assert.equal(purged.code, 0, purged.stderr);
    assert.match(purged.stdout, /\/var\/lib\/virtsnap is kept/);
    assert.equal(existsSync(t.path('/etc/virtsnap')), false, 'the conffile is purged');
    assert.equal(existsSync(t.path('/etc/systemd/system/timers.target.wants/virtsnap-gc.timer')), false);
    assert.ok(existsSync(t.path(`${VAR}/archive/vsbed-deb`)), 'the RAM dumps stay with their snapshots');
  });
});
