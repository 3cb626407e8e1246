// The restore stress test, short (issue 19): RAM saves of a busy guest on a
// CPU-starved host, each restored in place and watched by every oracle: the
// disk oracle, the memory oracle, the kernel, progress, no reboot. With
// virtsnap's defaults every restore must be whole, on every stack: that is
// what the safe default (lib/libvirt/stack.ts, lib/plan.ts liveSaveOf) is
// for. The long series, with QEMU's own defaults and virtsnap forced live
// beside it, is `BENCH_ONLY=stress npm run bench`.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { liveSaveTrust, parseVirshVersion } from '../../lib/libvirt/stack.js';
import { bed, destroyDataset, Guest, removeDomains, sh, type Bed } from '../helpers/bed.js';
import { starveCpus, stressRestores, tally } from '../helpers/stress.js';
import { Setup, virtsnap } from '../helpers/virtsnap.js';

/** At least 8 restores a run (the issue's floor for CI). */
const ROUNDS = Number(process.env.VSBED_STRESS_ROUNDS ?? 8);

describe('restore stress: saves of a busy guest on a starved host, each restored in place with every oracle silent', () => {
  let b: Bed;
  let setup: Setup;
  let guest: Guest;
  const dataset = () => `${b.vmDataset}/stress`;

  before(async () => {
    b = await bed();
    await removeDomains('vsbed-stress');
    await destroyDataset(dataset(), 180);
    setup = await Setup.create('stress');
    // Busy: its disk oracle never pauses, its memory oracle sweeps 16 MiB with 2 ms between sweeps, and 24 MiB of text are rewritten beside it.
    guest = await Guest.create({ name: 'vsbed-stress', dataset: dataset(), memoryMiB: 160, memPauseMs: 2, pace: 0, fillMiB: 24, fillKind: 'text' });
    await guest.start();
    await guest.waitForFill();
  });
  after(async () => {
    await guest?.remove();
    await destroyDataset(dataset(), 180);
  });

  it('the plan says how this stack saves the guest: live only where QEMU keeps every page (KVM, or QEMU >= 9.0), else paused, with the reason', async () => {
    const stack = parseVirshVersion(await sh('virsh', ['-c', b.uri, 'version', '--daemon']));
    const trust = liveSaveTrust(stack, b.virtType);
    const dry = await virtsnap(setup, ['snapshot', dataset(), '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    const plan = JSON.parse(dry.stdout) as { domains: { name: string; live: boolean; liveNote: { level: string; text: string } | null }[] };
    const d = plan.domains.find((x) => x.name === guest.name)!;
    console.log(`stack: libvirt ${stack.libvirt?.text}, QEMU ${stack.qemu?.text}, ${b.virtType}: live=${d.live}${d.liveNote ? ` (${d.liveNote.text})` : ''}`);
    assert.equal(d.live, trust.trusted);
    if (trust.trusted) assert.equal(d.liveNote, null);
    else assert.match(d.liveNote!.text, /under TCG .* can lose guest writes during a live RAM save \(fixed in QEMU 9\.0\): its RAM is saved with the guest paused/);
  });

  it(`${ROUNDS} saves with virtsnap's defaults, each restored whole`, async () => {
    const starved = starveCpus();
    let result;
    try {
      result = await stressRestores({
        guest,
        dataset: dataset(),
        setup,
        variant: 'virtsnap',
        rounds: ROUNDS,
        onRound: (n, o) => console.log(`round ${n}: ${o.kind}${'detail' in o ? ` (${o.detail})` : ''}`),
      });
    } finally {
      starved.stop();
    }
    console.log(`virtsnap defaults (live=${result.live}): ${JSON.stringify(tally(result))}`);
    assert.deepEqual(
      result.rounds.filter((r) => r.kind !== 'whole'),
      [],
      'every restore of a save with virtsnap\'s defaults keeps every oracle silent',
    );
  });
});
