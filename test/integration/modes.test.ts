// The freeze modes (VIRTSNAP_MODE) under real sanoid, with writing guests.
//
// pause: RAM saved (live where the stack keeps every page), the guest left paused through sanoid's snapshot and
// resumed by post, no overlay; libvirt's lifecycle events show one pause,
// and the dump restores with the oracle silent. If post never comes, the
// watchdog resumes the guest within seconds of VIRTSNAP_PAUSE_MAX.
//
// quiesce and the per-type policy: with VIRTSNAP_MODE=ram,hourly=quiesce a
// run with daily and hourly due keeps RAM, a run with only hourly due has the
// guest agent freeze the guest's ext4 and thaw it in post, without pausing the
// guest; that snapshot, cloned, has a clean filesystem and boots with the
// oracle silent.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { snapshotNames, type ArchivedDump } from '../../lib/manifest.js';
import { assertWhole, bed, consoleLogOf, consoleMark, destroyDataset, Guest, mountpointOf, removeDomains, restoreOnClone, sh, sleep, snapshotsOf, virsh, waitForText, watchDomain, type Bed } from '../helpers/bed.js';
import { EventWatch, stalls } from '../helpers/events.js';
import { cli, hooks, leftovers, runProgram, sanoidEnv, Setup } from '../helpers/virtsnap.js';

async function assertBack(setup: Setup, guest: Guest, originals: Record<string, string>): Promise<void> {
  assert.deepEqual(await guest.sources(), originals, `${guest.name} must be on its own disks`);
  assert.equal(await guest.state(), 'running');
  assert.deepEqual(leftovers(setup.overlayDir, guest.name), [], 'no overlay or memory file may remain');
  assert.deepEqual(setup.journalFiles(), [], 'the journal must be empty');
}

async function assertRestoresSilently(guest: Guest, dump: ArchivedDump): Promise<void> {
  for (const snapshot of snapshotNames(dump.manifest)) {
    assertWhole(await restoreOnClone(guest, dump.manifest.memoryFile, snapshot), `dump ${dump.manifest.id} on ${snapshot}`);
  }
  await guest.start();
}

describe('pause mode', () => {
  let b: Bed;
  let guest: Guest;
  let setup: Setup;
  const dataset = () => `${b.vmDataset}/modes-pa`;

  before(async () => {
    b = await bed();
    await removeDomains('vsbed-modes-pause');
    await destroyDataset(dataset());
    setup = await Setup.create('modes-pause', { VIRTSNAP_MODE: 'pause' });
    guest = await Guest.create({ name: 'vsbed-modes-pause', dataset: dataset() });
    await guest.start();
  });
  after(async () => {
    await guest?.remove();
    await destroyDataset(dataset());
  });

  it('under sanoid: one pause from the RAM save to post, no overlay, a dump that restores silently', async () => {
    const originals = await guest.sources();
    const watch = await EventWatch.start();
    const out = await setup.sanoid('2.1.0', setup.section(dataset()), ['--take-snapshots', '--verbose']);
    const events = await watch.stop();
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stderr, /the guest stays paused until post \(pause mode(, RAM saved live)?\)/);
    assert.match(out.stderr, /resumed the guest after \d+ ms \(pause mode\)/);
    assert.doesNotMatch(out.stderr, /switching|committed .* back/i, 'pause mode makes no overlay and commits nothing');
    await assertBack(setup, guest, originals);
    const pauses = stalls(events, guest.name);
    assert.equal(pauses.length, 1, `one Suspended -> Resumed: ${JSON.stringify(events)}`);
    const dumps = (await setup.dumps());
    assert.equal(dumps.length, 1);
    assert.deepEqual(snapshotNames(dumps[0]!.manifest).sort(), (await snapshotsOf(dataset())).sort());
    await assertRestoresSilently(guest, dumps[0]!);
  });

  it('post never comes: the watchdog resumes the guest once VIRTSNAP_PAUSE_MAX is over, and keeps the dump of the snapshot taken meanwhile', async () => {
    const originals = await guest.sources();
    const snap = 'autosnap_2026-11-23_10:00:00';
    const env = setup.env({ ...sanoidEnv(dataset(), snap, 'pre'), VIRTSNAP_PAUSE_MAX: '3' });
    const pre = await runProgram(hooks.pre, [], env);
    assert.equal(pre.code, 0, pre.stderr);
    const frozeAt = Date.now();
    assert.equal(await guest.state(), 'paused');
    await sh('zfs', ['snapshot', `${dataset()}@${snap}_hourly`]);
    // No post: the hook's parent (this test) stays alive, so only the pause limit ends it.
    let state = 'paused';
    while (state === 'paused' && Date.now() - frozeAt < 30_000) {
      await sleep(250);
      state = await guest.state();
    }
    const resumedAfter = Date.now() - frozeAt;
    assert.equal(state, 'running', 'the watchdog must resume the guest');
    assert.ok(resumedAfter < 3_000 + 8_000, `resumed ${resumedAfter} ms after the freeze, limit 3 s`);
    for (let i = 0; i < 40 && setup.journalFiles().length > 0; i++) await sleep(250);
    await assertBack(setup, guest, originals);
    const dump = (await setup.dumps()).find((d) => snapshotNames(d.manifest).includes(`${dataset()}@${snap}_hourly`));
    assert.ok(dump !== undefined, 'the snapshot was taken while the guest stood still: its dump is kept');
    await assertRestoresSilently(guest, dump);
  });

  it('quiesce asked of a guest without an agent: fails naming it, or takes RAM instead and says so, as VIRTSNAP_QUIESCE_FALLBACK says', async () => {
    const originals = await guest.sources();
    const before = (await setup.dumps()).length;
    const strict = await runProgram(cli, ['snapshot', dataset(), '--mode', 'quiesce', '--name', 'q-strict'], setup.env({ VIRTSNAP_QUIESCE_FALLBACK: 'fail' }));
    assert.equal(strict.code, 1);
    assert.match(strict.stderr, /domain "vsbed-modes-pause" cannot be quiesced: no guest agent channel .*VIRTSNAP_QUIESCE_FALLBACK=ram/);
    assert.ok(!(await snapshotsOf(dataset())).some((s) => s.endsWith('@q-strict')), 'no snapshot without the freeze');
    await assertBack(setup, guest, originals);
    const lenient = await runProgram(cli, ['snapshot', dataset(), '--mode', 'quiesce', '--name', 'q-lenient'], setup.env({ VIRTSNAP_QUIESCE_FALLBACK: 'ram' }));
    assert.equal(lenient.code, 0, lenient.stderr);
    assert.match(lenient.stderr, /quiesce mode: no guest agent channel \(org\.qemu\.guest_agent\.0\): RAM snapshot instead \(VIRTSNAP_QUIESCE_FALLBACK=ram\)/);
    await assertBack(setup, guest, originals);
    assert.equal((await setup.dumps()).length, before + 1, 'the fallback keeps a RAM dump');
  });
});

describe('quiesce mode and the per-type policy', () => {
  let b: Bed;
  let guest: Guest;
  let setup: Setup;
  let quiesced = '';
  const dataset = () => `${b.vmDataset}/modes-q`;
  const clone = () => `${b.pool}/modes-qclone`;

  before(async () => {
    b = await bed();
    await removeDomains('vsbed-modes-q', 'vsbed-modes-qr');
    await destroyDataset(clone());
    await destroyDataset(dataset());
    setup = await Setup.create('modes-q', { VIRTSNAP_MODE: 'ram,hourly=quiesce' });
    guest = await Guest.create({ name: 'vsbed-modes-q', dataset: dataset(), agent: true, fsDisk: 'vdz' });
    await guest.start();
  });
  after(async () => {
    await removeDomains('vsbed-modes-q', 'vsbed-modes-qr');
    await destroyDataset(clone());
    await destroyDataset(dataset());
  });

  it('--dry-run shows the mode each run gets, and why', async () => {
    const plan = async (types: string) => {
      const snapnames = types.split(',').map((t) => `dry_${t}`).join(',');
      const env = setup.env({ ...sanoidEnv(dataset(), 'dry', 'pre'), SANOID_TYPES: types, SANOID_SNAPNAMES: snapnames, SANOID_SNAPNAME: snapnames.split(',')[0]! });
      const out = await runProgram(hooks.pre, ['--dry-run'], env);
      assert.equal(out.code, 0, out.stderr);
      return JSON.parse(out.stdout) as { mode: string; modeWhy: string; domains: { name: string; mode: string; fallback: string | null }[] };
    };
    const hourly = await plan('hourly');
    assert.deepEqual([hourly.mode, hourly.modeWhy], ['quiesce', 'hourly=quiesce']);
    assert.deepEqual(hourly.domains.map((d) => [d.name, d.mode, d.fallback]), [['vsbed-modes-q', 'quiesce', 'ram']]);
    const both = await plan('daily,hourly');
    assert.deepEqual([both.mode, both.modeWhy], ['ram', 'daily=ram, hourly=quiesce: ram is the strongest']);
    assert.deepEqual(setup.journalFiles(), [], '--dry-run touches nothing');
  });

  it('under sanoid: daily and hourly due keeps RAM; hourly alone quiesces, without pausing the guest', async () => {
    const originals = await guest.sources();
    const first = await setup.sanoid('2.1.0', setup.section(dataset()), ['--take-snapshots', '--verbose']);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /switching vda,vdz to overlays/);
    await assertBack(setup, guest, originals);
    assert.equal((await setup.dumps()).length, 1, 'the run with a daily keeps RAM');

    const before = await snapshotsOf(dataset());
    const watch = await EventWatch.start();
    // daily = 0: only hourly is due, at any hour of the day.
    const second = await setup.sanoid('2.1.0', setup.section(dataset(), { daily: '0' }), ['--take-snapshots', '--verbose'], 1);
    const events = await watch.stop();
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stderr, /froze 1 filesystem\(s\) through the guest agent/);
    assert.match(second.stderr, /thawed 1 filesystem\(s\) through the guest agent after \d+ ms/);
    assert.doesNotMatch(second.stderr, /saving RAM|overlay/);
    const taken = (await snapshotsOf(dataset())).filter((s) => !before.includes(s));
    assert.equal(taken.length, 1);
    assert.match(taken[0]!, /_hourly$/);
    quiesced = taken[0]!;
    assert.deepEqual(stalls(events, guest.name), [], 'quiesce never pauses the guest');
    assert.equal((await setup.dumps()).length, 1, 'quiesce keeps no RAM dump');
    await assertBack(setup, guest, originals);
    assert.match(await guest.agentCommand({ execute: 'guest-fsfreeze-status' }), /"thawed"/);
    assertWhole(await guest.watch(guest.consoleSize(), { ticks: 2 }), 'the quiesced guest, thawed');
  });

  it('the quiesced snapshot, cloned: a clean filesystem, and the VM boots with the oracle silent', async () => {
    assert.notEqual(quiesced, '', 'needs the quiesced snapshot of the test before');
    const out = await runProgram(cli, ['restore', quiesced, '--clone', clone(), '--domain', guest.name, '--as', 'vsbed-modes-qr'], setup.env());
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, /no RAM dump .*the snapshot was quiesced.*virsh start vsbed-modes-qr/);
    const fs = await guest.fsckImage(`${await mountpointOf(clone())}/${guest.name}-vdz.raw`);
    assert.ok(fs.clean, `e2fsck of the quiesced ext4:\n${fs.output}`);
    const mark = await consoleMark('vsbed-modes-qr');
    await virsh('start', 'vsbed-modes-qr');
    // A boot, not a restore: its BOOT line is expected, and only after it do the oracles count.
    const log = await consoleLogOf('vsbed-modes-qr');
    const booted = await waitForText(log, mark, /VSBED BOOT counter=\d+[^\n]*\n/, 90_000);
    const w = await watchDomain('vsbed-modes-qr', booted);
    assert.match(readFileSync(log, 'latin1'), /VSBED FS up/);
    assertWhole(w, 'the quiesced snapshot, booted');
  });
});
