// Proves the test guest's extras (test/bed/guest/{agent,fs,fill}): QEMU's
// guest agent answers and freezes a real filesystem, and a big guest fills
// its RAM; the oracle ticks on, silent, through all of it.
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { assertWhole, bed, destroyDataset, Guest, mismatches, removeDomains, sh, sleep, stackUri } from '../helpers/bed.js';

describe('test guest extras', () => {
  let dataset: string;
  let scratch: string;
  const guests: Guest[] = [];

  before(async () => {
    dataset = `${(await bed()).vmDataset}/g-x`;
    await removeDomains('vsbed-g-agent', 'vsbed-g-fill');
    await destroyDataset(dataset);
    scratch = mkdtempSync('/tmp/vsbed-guest-');
  });

  after(async () => {
    for (const g of guests) await g.remove();
    // zfs-fuse: a dataset destroyed (so unmounted) while QEMU's last file
    // handles are still being released can stay busy for many minutes.
    if (guests.length > 0) await sleep(10_000);
    if (dataset) await destroyDataset(dataset);
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  let agentGuest: Guest;
  let fillGuest: Guest;

  // Both guests boot together: the fill (tens of seconds under TCG) goes on
  // while the agent is tested.
  before(async () => {
    agentGuest = await Guest.create({ name: 'vsbed-g-agent', dataset, agent: true, fsDisk: 'vdz' });
    fillGuest = await Guest.create({ name: 'vsbed-g-fill', dataset, memoryMiB: 512, fillMiB: 320 });
    guests.push(agentGuest, fillGuest);
    const t0 = Date.now();
    const seconds = (): string => ((Date.now() - t0) / 1000).toFixed(1);
    await Promise.all([
      agentGuest.start().then(() => console.log(`agent + fs guest up (TICK, FS up, AGENT up, guest-ping answered) after ${seconds()} s`)),
      fillGuest.start().then(() => console.log(`fill guest ticking after ${seconds()} s`)),
    ]);
  });

  it('the agent answers, freezes the ext4 (a copy taken then is clean) and thaws it; the oracle ticks on', async () => {
    const g = agentGuest;
    const boot = g.consoleSince(g.bootOffset);
    assert.match(boot, /VSBED FS up dev=vdb/);
    assert.match(boot, /VSBED AGENT up port=vport\d+p\d+/);
    assert.equal(await g.agentCommand({ execute: 'guest-ping' }), '{"return":{}}');

    const image = await g.imagePath(g.disks.find((d) => d.target === 'vdz')!);
    const offset = g.consoleSize();
    const frozen = path.join(scratch, 'frozen.img');
    // Not virsh() (-q): quiet virsh prints neither count.
    const froze = (await sh('virsh', ['-c', stackUri(), 'domfsfreeze', g.name])).trim();
    try {
      assert.match(froze, /^Froze [1-9]\d* filesystem\(s\)$/);
      assert.equal(await g.agentCommand({ execute: 'guest-fsfreeze-status' }), '{"return":"frozen"}');
      copyFileSync(image, frozen);
    } finally {
      const thawed = (await sh('virsh', ['-c', stackUri(), 'domfsthaw', g.name])).trim();
      assert.match(thawed, /^Thawed [1-9]\d* filesystem\(s\)$/);
      console.log(`virsh: ${froze} / ${thawed}`);
    }
    assert.equal(await g.agentCommand({ execute: 'guest-fsfreeze-status' }), '{"return":"thawed"}');
    const fsck = await g.fsckImage(frozen);
    assert.ok(fsck.clean, `the copy taken while frozen is not clean:\n${fsck.output}`);
    console.log(`e2fsck -fn of the frozen copy: ${fsck.output.trim().split('\n').join(' | ')}`);
    // The check has teeth: a copy of the mounted, unfrozen ext4 needs its journal replayed.
    const live = path.join(scratch, 'live.img');
    copyFileSync(image, live);
    const liveFsck = await g.fsckImage(live);
    assert.ok(!liveFsck.clean, `a copy of the mounted fs passed e2fsck -fn:\n${liveFsck.output}`);
    console.log(`e2fsck -fn of a copy while mounted: ${liveFsck.output.trim().split('\n').filter((l) => /Warning|wrong/.test(l)).join(' | ')}`);

    assertWhole(await g.watch(offset, { ticks: 2 }), 'the guest after its fs was frozen and thawed');
    assert.doesNotMatch(g.consoleSince(g.bootOffset), /VSBED \w+ failed/);
    await g.stop();
  });

  it('a 512 MiB guest fills 320 MiB of RAM and keeps running, the oracle silent', async () => {
    const g = fillGuest;
    const line = await g.waitForFill();
    console.log(`fill guest: "${line}"`);
    assert.match(line, /^VSBED FILL done MiB=320 /);
    assertWhole(await g.watch(g.consoleSize(), { ticks: 2 }), 'the filled guest');
    assert.deepEqual(mismatches(g.consoleSince(g.bootOffset)), []);
    assert.equal(await g.state(), 'running');
    await g.stop();
  });
});
