import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  assertDatasetName,
  assertSnapshotName,
  datasetOfFile,
  datasetOfZvolPath,
  isDatasetName,
  isInSubtree,
  parseMounts,
  parseMountinfo,
  mountpointsOf,
  type Mount,
} from '../../lib/zfs.js';
import { UsageError } from '../../lib/errors.js';

const TABLE = [
  '/dev/vda1 / ext4 rw,relatime 0 0',
  'proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0',
  'tank /tank zfs rw,xattr,noacl 0 0',
  'tank/vm /tank/vm zfs rw,xattr,noacl 0 0',
  'tank/vm/win\\04010 /tank/vm/win\\04010 zfs rw,xattr,noacl 0 0',
  'fusepool/data /srv/fuse\\011tab fuse.zfs rw,nosuid,nodev 0 0',
  'tank/vm@autosnap_x_daily /tank/vm/.zfs/snapshot/autosnap_x_daily zfs ro,relatime 0 0',
  'tmpfs /tank/vm/tmp tmpfs rw 0 0',
  'tank/back\\134slash /mnt/back\\134slash zfs rw 0 0',
  '',
].join('\n');

describe('parseMounts', () => {
  const mounts = parseMounts(TABLE);

  it('keeps only zfs and fuse.zfs, and ignores snapshot mounts', () => {
    assert.deepEqual(
      mounts.map((m) => m.dataset),
      ['tank', 'tank/vm', 'tank/vm/win 10', 'fusepool/data', 'tank/back\\slash'],
    );
  });

  it('decodes octal escapes (space \\040, tab \\011, backslash \\134)', () => {
    assert.deepEqual(mounts[2], { dataset: 'tank/vm/win 10', mountpoint: '/tank/vm/win 10' });
    assert.deepEqual(mounts[3], { dataset: 'fusepool/data', mountpoint: '/srv/fuse\ttab' });
    assert.deepEqual(mounts[4], { dataset: 'tank/back\\slash', mountpoint: '/mnt/back\\slash' });
  });

  it('an empty table gives no mounts', () => {
    assert.deepEqual(parseMounts(''), []);
  });

  it("a dataset's mountpoint is its shortest mount path: a chroot's or container's copy (seen: the bed's Debian 13 root) lives below a root, first or last in the table", () => {
    for (const table of [
      ['tank/vm /tank/vm zfs rw 0 0', 'tank/vm /var/lib/chroot/tank/vm zfs rw 0 0', ''],
      ['tank/vm /var/lib/chroot/tank/vm zfs rw 0 0', 'tank/vm /tank/vm zfs rw 0 0', ''],
    ]) {
      assert.deepEqual([...mountpointsOf(parseMounts(table.join('\n')))], [['tank/vm', '/tank/vm']]);
    }
  });
});

describe('parseMountinfo', () => {
  it("a bind of a directory inside a dataset holds that dataset's files, and is no mountpoint of the dataset", () => {
    const table = [
      '46 27 0:41 / /tank rw,relatime shared:1 - fuse.zfs tank rw',
      '47 46 0:42 / /tank/vm rw,relatime shared:2 - zfs tank/vm rw,xattr',
      '90 27 0:42 /images /img rw,relatime shared:2 - zfs tank/vm rw,xattr',
      '91 27 0:42 / /var/lib/chroot/tank/vm rw,relatime shared:2 - zfs tank/vm rw,xattr',
      '92 27 0:44 / /srv/win\\04010 rw - zfs tank/win\\04010 rw',
      '93 27 0:45 / /run tmpfs rw - tmpfs tmpfs rw',
      '',
    ].join('\n');
    const mounts = parseMountinfo(table);
    assert.deepEqual(mounts.map((m) => [m.dataset, m.mountpoint, m.root]), [
      ['tank', '/tank', '/'],
      ['tank/vm', '/tank/vm', '/'],
      ['tank/vm', '/img', '/images'],
      ['tank/vm', '/var/lib/chroot/tank/vm', '/'],
      ['tank/win 10', '/srv/win 10', '/'],
    ]);
    assert.equal(mountpointsOf(mounts).get('tank/vm'), '/tank/vm');
    assert.equal(datasetOfFile('/img/web.qcow2', mounts)?.dataset, 'tank/vm', 'a disk reached through the bind is frozen with its dataset');
  });
});

describe('datasetOfFile', () => {
  const mounts: Mount[] = [
    { dataset: 'tank', mountpoint: '/tank' },
    { dataset: 'tank/vm', mountpoint: '/tank/vm' },
    { dataset: 'tank/vm/win', mountpoint: '/tank/vm/win' },
    { dataset: 'tank/vm2', mountpoint: '/tank/vm2' },
  ];

  it('picks the deepest mountpoint, whatever the order of the table', () => {
    assert.equal(datasetOfFile('/tank/vm/win/disk.qcow2', mounts)?.dataset, 'tank/vm/win');
    assert.equal(datasetOfFile('/tank/vm/win/disk.qcow2', [...mounts].reverse())?.dataset, 'tank/vm/win');
    assert.equal(datasetOfFile('/tank/vm/linux/disk.qcow2', mounts)?.dataset, 'tank/vm');
    assert.equal(datasetOfFile('/tank/vm', mounts)?.dataset, 'tank/vm');
  });

  it('does not match /tank/vm2 for mountpoint /tank/vm (nor /tank/vmx)', () => {
    assert.equal(datasetOfFile('/tank/vm2/disk.img', mounts)?.dataset, 'tank/vm2');
    const noVm2 = mounts.filter((m) => m.dataset !== 'tank/vm2');
    assert.equal(datasetOfFile('/tank/vm2/disk.img', noVm2)?.dataset, 'tank');
    assert.equal(datasetOfFile('/tank/vmx', [{ dataset: 'tank/vm', mountpoint: '/tank/vm' }]), null);
  });

  it('a path outside every mountpoint -> null', () => {
    assert.equal(datasetOfFile('/var/lib/libvirt/images/x.qcow2', mounts), null);
    assert.equal(datasetOfFile('/tank/vm/x', []), null);
  });

  it('a dataset mounted at / contains everything, but a deeper one wins', () => {
    const root: Mount[] = [{ dataset: 'rpool/ROOT', mountpoint: '/' }, ...mounts];
    assert.equal(datasetOfFile('/var/lib/x.img', root)?.dataset, 'rpool/ROOT');
    assert.equal(datasetOfFile('/tank/vm/x.img', root)?.dataset, 'tank/vm');
  });
});

describe('datasetOfZvolPath', () => {
  it('maps /dev/zvol paths to the zvol, with or without -partN', () => {
    assert.equal(datasetOfZvolPath('/dev/zvol/tank/vm/disk0'), 'tank/vm/disk0');
    assert.equal(datasetOfZvolPath('/dev/zvol/tank/vm/disk0-part1'), 'tank/vm/disk0');
    assert.equal(datasetOfZvolPath('/dev/zvol/tank/vm/disk0-part12'), 'tank/vm/disk0');
  });

  it('other paths -> null', () => {
    assert.equal(datasetOfZvolPath('/dev/zd0'), null);
    assert.equal(datasetOfZvolPath('/tank/vm/disk0'), null);
    assert.equal(datasetOfZvolPath('/dev/zvol/'), null);
    assert.equal(datasetOfZvolPath('/dev/zvol/tank/../etc'), null);
  });
});

describe('isDatasetName', () => {
  it('accepts valid names, spaces and : . - _ included', () => {
    for (const n of ['tank', 'tank/vm', 'tank/my vm', 'tank/a:b.c-d_e', 'rpool/ROOT/ubuntu_1']) assert.equal(isDatasetName(n), true, n);
  });

  it('rejects empty, absolute, trailing slash, empty component, . and .., @ and shell specials', () => {
    for (const n of ['', '/tank', 'tank/', 'tank//vm', 'tank/.', 'tank/..', 'tank/vm@snap', 'tank/vm#bm', 'tank;rm', 'tank/$(id)', 'tank/a\nb', "tank/'q'"]) {
      assert.equal(isDatasetName(n), false, JSON.stringify(n));
    }
  });

  it('assertDatasetName / assertSnapshotName throw UsageError naming the thing', () => {
    assert.throws(() => assertDatasetName('tank//x', 'SOMEVAR'), (e: unknown) => e instanceof UsageError && /SOMEVAR/.test(e.message));
    assert.doesNotThrow(() => assertDatasetName('tank/x', 'SOMEVAR'));
    assert.throws(() => assertSnapshotName('a/b', 'SNAPVAR'), (e: unknown) => e instanceof UsageError && /SNAPVAR/.test(e.message));
    assert.throws(() => assertSnapshotName('a@b', 'SNAPVAR'), UsageError);
    assert.doesNotThrow(() => assertSnapshotName('autosnap_2024-01-02_03:04:05_daily', 'SNAPVAR'));
  });
});

describe('isInSubtree', () => {
  it('a dataset is in its own subtree and its children are', () => {
    assert.equal(isInSubtree('tank/vm', 'tank/vm'), true);
    assert.equal(isInSubtree('tank/vm/a', 'tank/vm'), true);
    assert.equal(isInSubtree('tank/vm/a/b', 'tank/vm'), true);
  });

  it('siblings with a common prefix and parents are not', () => {
    assert.equal(isInSubtree('tank/vm2', 'tank/vm'), false);
    assert.equal(isInSubtree('tank', 'tank/vm'), false);
    assert.equal(isInSubtree('tank/other', 'tank/vm'), false);
  });
});
