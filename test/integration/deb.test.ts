// The Debian package on the bed: `packaging/deb/build` (what `npm run deb`
// runs) makes the .deb, `dpkg -i` installs it, and sanoid, run the way its
// own sanoid.service runs it, takes consistent snapshots through the
// installed hooks with the package's defaults: no file copied by hand. A
// clone restored by the installed CLI keeps the oracle silent. Removal is
// refused while a run holds a VM; purge keeps the RAM dumps.
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { assertWhole, bed, consoleMark, destroyDataset, Guest, removeDomains, runSanoid, sh, snapshotsOf, watchDomain, type Bed } from '../helpers/bed.js';
import { repoRoot, runProgram } from '../helpers/virtsnap.js';

const VAR = '/var/lib/virtsnap';
/** Left in /var/lib/virtsnap by this test, so that a later run knows the dir is the bed's to remove. */
const MARKER = path.join(VAR, '.vsbed-deb-test');
const CLI = '/usr/sbin/virtsnap';
/** A journal entry the removal test plants: prerm must refuse while it exists. */
const HELD = path.join(VAR, 'state/journal/00000000-0000-0000-0000-000000000000.json');
const HOOKS = '/usr/lib/virtsnap/hooks';

async function installed(): Promise<boolean> {
  const q = await runProgram('dpkg-query', ['-W', '-f', '${Status}', 'virtsnap'], {});
  return q.code === 0 && q.stdout.includes('install ok installed');
}

/** Removes what this test installed; never a virtsnap it did not install (no marker). */
async function purge(): Promise<void> {
  if (!existsSync(MARKER)) return;
  rmSync(HELD, { force: true });
  if ((await runProgram('dpkg-query', ['-W', 'virtsnap'], {})).code === 0) await sh('dpkg', ['--purge', 'virtsnap'], { timeoutMs: 120_000 });
  rmSync(VAR, { recursive: true, force: true });
}

/** `Key=` lines of a unit's [Service] section. */
function unitValues(file: string, key: string): string[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));
}

describe('the Debian package', () => {
  let b: Bed;
  let g: Guest;
  let deb: string;
  const dataset = () => `${b.vmDataset}/deb`;
  const clone = () => `${b.vmDataset}/deb-clone`;
  const sanoidDir = () => path.join(b.dir, 'tests', 'deb-sanoid');
  const sanoidConf = () => path.join(sanoidDir(), 'sanoid.conf');

  before(async () => {
    b = await bed();
    await purge();
    if (existsSync(VAR) || (await runProgram('dpkg-query', ['-W', 'virtsnap'], {})).code === 0) {
      throw new Error(`virtsnap is installed here or ${VAR} exists, and not by this test: this test installs and purges the package; run it on a machine without virtsnap`);
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
    await purge();
    rmSync(sanoidDir(), { recursive: true, force: true });
  });

  it('builds with dpkg-deb and installs with dpkg -i: binary, hooks, conffile, units, man page, completion, docs', async () => {
    const built = await runProgram('bash', [path.join(repoRoot, 'packaging/deb/build')], {}, 300_000);
    assert.equal(built.code, 0, built.stderr);
    deb = path.join(repoRoot, built.stdout.trim());
    const version = (JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;
    assert.equal(path.basename(deb), `virtsnap_${version}_all.deb`);
    const fields = await sh('dpkg-deb', ['-f', deb, 'Depends', 'Architecture']);
    assert.match(fields, /Depends: nodejs \(>= 20\), libvirt-clients, sanoid \(>= 2\.1\.0\), zfsutils-linux \| zfs-fuse/);

    const install = await runProgram('dpkg', ['-i', deb], {}, 300_000);
    if (existsSync(VAR)) writeFileSync(MARKER, '');
    assert.equal(install.code, 0, install.stderr);
    assert.ok(await installed());
    const files = (await sh('dpkg', ['-L', 'virtsnap'])).split('\n');
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
    ]) {
      assert.ok(files.includes(f), `${f} is in the package`);
    }
    assert.deepEqual(files.filter((f) => /\/test\/|vsbed/.test(f)), [], 'nothing of the tests or the bed');
    assert.match(await sh('dpkg-query', ['-W', '-f', '${Conffiles}', 'virtsnap']), /\/etc\/virtsnap\/virtsnap\.env [0-9a-f]{32}/);
    assert.equal(statSync('/etc/virtsnap').mode & 0o777, 0o700);
    assert.equal(statSync('/etc/virtsnap/virtsnap.env').mode & 0o777, 0o600);
    // QEMU must reach the overlays; dumps and the journal are private.
    assert.equal(statSync(VAR).mode & 0o777, 0o711);
    assert.equal(statSync(`${VAR}/overlay`).mode & 0o777, 0o711);
    assert.equal(statSync(`${VAR}/archive`).mode & 0o777, 0o700);
    assert.equal(statSync(`${VAR}/state`).mode & 0o777, 0o700);
    // Enabled as dh_installsystemd would: recover at boot, the gc timer.
    assert.ok(lstatSync('/etc/systemd/system/multi-user.target.wants/virtsnap-recover.service').isSymbolicLink());
    assert.ok(lstatSync('/etc/systemd/system/timers.target.wants/virtsnap-gc.timer').isSymbolicLink());
    for (const unit of ['virtsnap-recover.service', 'virtsnap-gc.service']) {
      assert.deepEqual(unitValues(`/lib/systemd/system/${unit}`, 'ExecStart').map((c) => c.split(' ')[0]), [CLI]);
    }
    // As installed, with the man page their Documentation= names (systemd-analyze checks it exists).
    const verify = await runProgram('systemd-analyze', ['verify', '--man=yes', '/lib/systemd/system/virtsnap-recover.service', '/lib/systemd/system/virtsnap-gc.service', '/lib/systemd/system/virtsnap-gc.timer'], {});
    assert.deepEqual(verify.stderr.split('\n').filter((l) => /virtsnap|sanoid\.service\.d/.test(l)), [], verify.stderr);
    const v = await runProgram(CLI, ['--version'], {});
    assert.equal(v.stdout, `virtsnap ${version}\n`);
    const man = await runProgram('man', ['-w', 'virtsnap'], {});
    assert.equal(man.stdout.trim(), '/usr/share/man/man8/virtsnap.8.gz');
  });

  it("sanoid, run as its own sanoid.service runs it, snapshots through the installed hooks; the installed CLI restores a clone with a silent oracle", async () => {
    assert.ok(await installed(), 'installed by the test before');
    // What sanoid.service runs on every timer tick (Debian's unit: TZ=UTC, --take-snapshots).
    const unit = '/lib/systemd/system/sanoid.service';
    const [execStart] = unitValues(unit, 'ExecStart');
    const [program, ...args] = execStart!.split(/\s+/);
    assert.equal(program, b.sanoid['2.1.0'], `${unit} runs Debian's sanoid`);
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
    const run = await runSanoid('2.1.0', conf, args, { configDir: sanoidDir(), env });
    assert.equal(run.code, 0, run.stderr);
    const snaps = (await snapshotsOf(dataset())).filter((s) => s.includes('@autosnap_'));
    assert.equal(snaps.length, 3, `hourly, daily, monthly: ${snaps.join(' ')}`);
    assert.deepEqual(await g.sources(), sources, 'back on its own disks');
    assert.equal(await g.state(), 'running');

    // The installed CLI, with the package's defaults (and the test's sanoid.conf).
    const cliEnv = { VIRTSNAP_SANOID_CONF: sanoidConf() };
    const list = await runProgram(CLI, ['list', '--json'], cliEnv);
    assert.equal(list.code, 0, list.stderr);
    const dumps = JSON.parse(list.stdout) as { domain: { name: string }; snapshots: string[]; memoryFile: string }[];
    assert.equal(dumps.length, 1);
    assert.deepEqual([...dumps[0]!.snapshots].sort(), [...snaps].sort(), 'one dump for the three snapshots of the run');
    assert.ok(dumps[0]!.memoryFile.startsWith(`${VAR}/archive/vsbed-deb/`), dumps[0]!.memoryFile);
    assert.equal((statSync(dumps[0]!.memoryFile).mode & 0o777).toString(8), '600');
    assert.equal((await runProgram(CLI, ['verify'], cliEnv)).code, 0);
    const check = await runProgram(CLI, ['check'], cliEnv);
    assert.equal(check.code, 0, check.stdout);
    const doctor = await runProgram(CLI, ['doctor'], cliEnv);
    assert.equal(doctor.code, 0, doctor.stdout);
    assert.match(doctor.stdout, /^OK {3}overlay access: QEMU \(\S+\) can reach \/var\/lib\/virtsnap\/overlay$/m);

    const mark = await consoleMark('vsbed-deb-clone');
    const restored = await runProgram(CLI, ['restore', snaps[0]!, '--clone', clone(), '--as', 'vsbed-deb-clone'], cliEnv);
    assert.equal(restored.code, 0, restored.stderr);
    assertWhole(await watchDomain('vsbed-deb-clone', mark), 'the clone restored by the installed CLI');
    await removeDomains('vsbed-deb-clone');
  });

  it('refuses removal while a run holds a VM, wherever the settings put its state dir; purge keeps the RAM dumps', async () => {
    assert.ok(await installed(), 'installed by the test before');
    const refusedWhile = async (what: string): Promise<void> => {
      const refused = await runProgram('dpkg', ['-r', 'virtsnap'], {}, 120_000);
      assert.notEqual(refused.code, 0, what);
      assert.match(refused.stderr, /virtsnap: VMs are held by a snapshot run or were left on overlays: run 'virtsnap status', then 'virtsnap recover'/, what);
      assert.ok(await installed(), `still installed (${what})`);
    };
    // The default state dir.
    mkdirSync(path.dirname(HELD), { recursive: true, mode: 0o700 });
    writeFileSync(HELD, '{}', { mode: 0o600 });
    await refusedWhile('the default state dir');
    rmSync(HELD);
    // An `export` line with an inline comment in the env file, as users write them (the old prerm's sed missed it).
    const envFile = '/etc/virtsnap/virtsnap.env';
    const conffile = readFileSync(envFile, 'utf8');
    const elsewhere = `${VAR}/state-elsewhere`;
    mkdirSync(path.join(elsewhere, 'journal'), { recursive: true, mode: 0o700 });
    writeFileSync(path.join(elsewhere, 'journal', path.basename(HELD)), '{}', { mode: 0o600 });
    writeFileSync(envFile, `${conffile}export VIRTSNAP_STATE_DIR=${elsewhere} # moved\n`, { mode: 0o600 });
    try {
      await refusedWhile('a state dir the env file names with export');
    } finally {
      writeFileSync(envFile, conffile, { mode: 0o600 });
    }
    // A state dir only a unit names (sanoid.service's drop-in), systemd running or not.
    const dropIn = '/etc/systemd/system/sanoid.service.d/vsbed-test.conf';
    mkdirSync(path.dirname(dropIn), { recursive: true });
    writeFileSync(dropIn, `[Service]\nEnvironment="VIRTSNAP_STATE_DIR=${elsewhere}" TZ=UTC\n`);
    try {
      await refusedWhile("a state dir a unit's Environment= names");
    } finally {
      rmSync(dropIn, { force: true });
      rmSync(elsewhere, { recursive: true, force: true });
    }
    const purged = await runProgram('dpkg', ['--purge', 'virtsnap'], {}, 120_000);
    assert.equal(purged.code, 0, purged.stderr);
    assert.match(purged.stdout, /\/var\/lib\/virtsnap is kept/);
    assert.equal(existsSync('/etc/virtsnap'), false, 'the conffile is purged');
    assert.equal(existsSync('/etc/systemd/system/timers.target.wants/virtsnap-gc.timer'), false);
    assert.ok(existsSync(`${VAR}/archive/vsbed-deb`), 'the RAM dumps stay with their snapshots');
  });
});
