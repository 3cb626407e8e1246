// The demo (`npm run demo`, after test/demo/run brought the sandbox up):
// a writing guest on a ZFS dataset, real sanoid with virtsnap's hooks twice,
// the archive listed, one snapshot restored as a clone running beside the
// original, both oracles silent, `virtsnap check`, and everything removed
// again. It says what it does as it goes and exits 1 if anything is off.
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { bed, consoleMark, destroyDataset, Guest, removeDomains, snapshotsOf, virsh, watchDomain } from '../helpers/bed.js';
import { cli, runProgram, Setup } from '../helpers/virtsnap.js';

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const say = (s: string) => process.stdout.write(`\n${bold(`== ${s}`)}\n`);
const show = (text: string) => process.stdout.write(text.replace(/^/gm, '   ').replace(/\s+$/, '') + '\n');

class DemoFailed extends Error {}
function expect(ok: boolean, what: string): void {
  if (!ok) throw new DemoFailed(what);
}

/** The guest's last few oracle lines since `mark`, and what its oracles, its kernel and libvirt say is wrong (test/helpers/oracle.ts). */
async function oracle(name: string, mark: number): Promise<{ tail: string; problems: string[] }> {
  const w = await watchDomain(name, mark);
  const lines = w.text.split('\n').filter((l) => /TICK|MISMATCH|VSBED MEM/.test(l));
  return { tail: lines.slice(-3).join('\n'), problems: w.problems };
}

async function main(): Promise<void> {
  const b = await bed();
  const dataset = `${b.vmDataset}/demo`;
  const clone = `${b.vmDataset}/demo-restored`;
  let root: string | null = null;
  const cleanup = async () => {
    await removeDomains('vsbed-demo', 'vsbed-demo-restored');
    if (root !== null) rmSync(root, { recursive: true, force: true });
    await destroyDataset(clone);
    await destroyDataset(dataset);
  };
  await cleanup();
  try {
    say(`A VM whose disk lives on ZFS dataset ${dataset}`);
    const setup = await Setup.create('demo');
    root = setup.root;
    const guest = await Guest.create({ name: 'vsbed-demo', dataset });
    await guest.start();
    show(
      `vsbed-demo runs a tiny Linux that writes a counter to its disk (fsync'd) in a loop\n` +
        `and checks before each write that the disk holds what its memory remembers.\n` +
        `If RAM and disk ever come from different instants it prints MISMATCH.\n` +
        `disk: ${Object.values(await guest.sources()).join(', ')}`,
    );

    say('sanoid.conf: a section for the dataset with virtsnap as its hooks');
    const conf = setup.section(dataset);
    show(conf);
    show(
      `(The hooks are started through \`env -u LD_PRELOAD -u FAKETIME\` only because this demo\n` +
        ` moves sanoid's clock forward to make a second hourly snapshot due.)`,
    );

    const snapshots: string[] = [];
    for (const [i, hours] of [0, 1.5].entries()) {
      say(`sanoid --take-snapshots, run ${i + 1} of 2${hours > 0 ? ` (sanoid's clock ${hours} h ahead)` : ''}`);
      show('pre hook: saves the RAM while the guest runs, switches its disk to an overlay outside the dataset;\nsanoid: zfs snapshot; post hook: merges the overlay back and archives the RAM dump.');
      const started = Date.now();
      const run = await setup.sanoid('2.1.0', conf, ['--take-snapshots', '--verbose'], hours);
      show(run.stdout.split('\n').filter((l) => /taking snapshot|virtsnap|INFO/.test(l)).join('\n'));
      expect(run.code === 0, `sanoid exited ${run.code}: ${run.stderr.trim().split('\n').slice(-3).join(' / ')}`);
      show(`done in ${((Date.now() - started) / 1000).toFixed(1)} s; the guest is back on its own disk: ${Object.values(await guest.sources()).join(', ')}`);
      const now = (await snapshotsOf(dataset)).filter((s) => !snapshots.includes(s));
      snapshots.push(...now);
      show(`new snapshots: ${now.join(' ')}`);
    }

    say('virtsnap list: the RAM dumps, each tied to the snapshots of its run');
    const list = await runProgram(cli, ['list'], setup.env());
    expect(list.code === 0, `virtsnap list failed: ${list.stderr.trim()}`);
    show(list.stdout);

    const first = snapshots.find((s) => s.endsWith('_hourly'))!;
    say(`Restoring ${first} as a clone, beside the original`);
    show(`virtsnap restore ${first} --clone ${clone} --as vsbed-demo-restored`);
    const marks = { 'vsbed-demo': await consoleMark('vsbed-demo'), 'vsbed-demo-restored': await consoleMark('vsbed-demo-restored') };
    const restored = await runProgram(cli, ['restore', first, '--clone', clone, '--as', 'vsbed-demo-restored'], setup.env());
    expect(restored.code === 0, `virtsnap restore failed: ${restored.stderr.trim()}`);
    show(restored.stdout);

    say('Both VMs run; the restored one continues from its RAM, not from a boot');
    show((await virsh('list')).split('\n').filter((l) => l.includes('vsbed-demo')).join('\n'));
    for (const name of ['vsbed-demo', 'vsbed-demo-restored'] as const) {
      const o = await oracle(name, marks[name]);
      show(`${name}, last console lines:\n${o.tail}`);
      expect(o.problems.length === 0, `${name}: ${o.problems[0]}`);
    }
    show('No MISMATCH, no lost memory page, no kernel error, no reboot: the restored VM\'s memory and disk are of one instant, and whole.');

    say('virtsnap check: the Nagios/Icinga plugin');
    const check = await runProgram(cli, ['check'], setup.env());
    show(check.stdout);
    expect(check.code === 0, `virtsnap check exited ${check.code}`);

    say('Cleaning up: the two VMs, their datasets and the demo\'s archive');
    await cleanup();
    show('Done. The sandbox itself stays up for `npm test`; `sudo bash test/bed/down` removes it.');
  } catch (err) {
    await cleanup().catch(() => undefined);
    throw err;
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`\nnpm run demo: FAILED: ${err instanceof DemoFailed ? err.message : (err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
