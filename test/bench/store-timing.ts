// Ad hoc (not part of npm run bench): `virtsnap snapshot` of one 96 MiB guest,
// RAM into the archive (gzip) vs into the dataset, alternating, wall time and
// the snapshot's USED.
import { Guest, removeDomains, sh, zfsRetry, bed, datasetExists } from '../helpers/bed.js';
import { Setup, virtsnap } from '../helpers/virtsnap.js';

const ROUNDS = Number(process.env.ROUNDS ?? 4);
const b = await bed();
const ds = `${b.vmDataset}/st-time`;
await removeDomains('vsbed-st-time');
if (await datasetExists(ds)) await zfsRetry(['destroy', '-r', ds], 60);
const archive = await Setup.create('st-archive', { VIRTSNAP_LOG: 'warn' });
const dataset = await Setup.create('st-dataset', { VIRTSNAP_STORE: 'dataset', VIRTSNAP_LOG: 'warn' });
const guest = await Guest.create({ name: 'vsbed-st-time', dataset: ds });
await sh('zfs', ['set', 'compression=gzip', ds]);
await guest.start();
await new Promise((r) => setTimeout(r, 5000));
const times: Record<string, number[]> = { archive: [], dataset: [] };
for (let i = 0; i < ROUNDS; i++) {
  for (const [name, setup] of [['archive', archive], ['dataset', dataset]] as const) {
    const t0 = Date.now();
    const out = await virtsnap(setup, ['snapshot', ds, '--name', `${name}${i}`]);
    if (out.code !== 0) throw new Error(out.stderr);
    times[name]!.push(Date.now() - t0);
  }
}
await sh('sync', []);
await new Promise((r) => setTimeout(r, 3000));
const used = await sh('zfs', ['list', '-H', '-t', 'snapshot', '-o', 'name,used', '-r', ds]);
console.log(JSON.stringify(times), '\n', used, '\n', await sh('du', ['-sb', archive.archiveDir]));
await guest.remove();
await zfsRetry(['destroy', '-r', ds], 120);
