// What this host lacks, against the real bed (issue 12): a running guest's
// XML, as `dumpxml` and as a save image holds it (`--migratable`), fits the
// host it runs on; a copy naming a network, a bridge and a cdrom this host
// does not have gets exactly those three gaps.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { gatherHostFacts, hostGaps } from '../../lib/host-fit.js';
import { LibvirtClient } from '../../lib/libvirt/virsh.js';
import { bed, destroyDataset, Guest, mountpointOf, removeDomains, stackUri, virsh, type Bed } from '../helpers/bed.js';

describe('host fit on the bed', () => {
  let b: Bed;
  let guest: Guest;
  let mountpoint = '';
  const dataset = () => `${b.vmDataset}/hf-fit`;
  const client = new LibvirtClient({ uri: stackUri() });
  const isRestored = (p: string) => p.startsWith(`${mountpoint}/`);

  before(async () => {
    b = await bed();
    await removeDomains('vsbed-hf-fit');
    await destroyDataset(dataset());
    guest = await Guest.create({ name: 'vsbed-hf-fit', dataset: dataset(), cdrom: true });
    mountpoint = await mountpointOf(dataset());
    await guest.start();
  });
  after(async () => {
    await guest?.remove();
    await destroyDataset(dataset());
  });

  for (const migratable of [false, true]) {
    it(`a running guest's ${migratable ? 'save-image (--migratable)' : 'live'} XML has no gaps on its own host`, async (t) => {
      const xml = await virsh('dumpxml', guest.name, ...(migratable ? ['--migratable'] : []));
      const started = Date.now();
      const facts = await gatherHostFacts(client, xml);
      t.diagnostic(`gatherHostFacts: ${Date.now() - started} ms`);
      assert.ok(facts.guests !== null && facts.domCaps !== null, 'capabilities and domcapabilities answered');
      assert.match(xml, /<cpu mode='custom'[^>]*>\s*<model[^>]*>qemu64</, 'libvirt names the CPU model it gave the guest');
      assert.deepEqual(hostGaps(xml, facts, isRestored), []);
    });
  }

  it('a copy naming a missing network, bridge and cdrom gets exactly those gaps', async () => {
    const live = await virsh('dumpxml', guest.name, '--migratable');
    const iso = `${b.dir}/hf-missing/media.iso`;
    const xml = live
      .replace(/(<disk type='file' device='cdrom'>[\s\S]*?<source file=')[^']*'/, `$1${iso}'`)
      .replace(
        '</devices>',
        "<interface type='network'><mac address='52:54:00:48:46:01'/><source network='vsbed-hf-nonet'/><model type='virtio'/></interface>\n" +
          "<interface type='bridge'><mac address='52:54:00:48:46:02'/><source bridge='hfbr-missing'/><model type='virtio'/></interface>\n</devices>",
      );
    assert.ok(xml.includes(iso), 'the cdrom now points outside the dataset');
    const gaps = hostGaps(xml, await gatherHostFacts(client, xml), isRestored);
    assert.deepEqual(gaps, [
      `disk hdc (${iso}) is outside the restored datasets and missing on this host: copy it there, or eject it after the restore`,
      'network "vsbed-hf-nonet" (interface 52:54:00:48:46:01) is not defined on this host: define and start it, or edit the interface after the restore',
      'bridge "hfbr-missing" (interface 52:54:00:48:46:02) does not exist on this host: create it, or edit the interface after the restore',
    ]);
  });
});
