import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { Manifest } from '../../lib/manifest.js';
import type { SnapshotRef } from '../../lib/snapshot-id.js';
import { inRestoredDatasets, isZvolOf, linksDown, planRestore, renameDomainXml, rewriteDiskPaths, type RestoreFacts, type RestoreRequest } from '../../lib/restore-plan.js';
import { splitSnapshot } from '../../lib/zfs.js';
import { parseDomainXml, type Disk } from '../../lib/libvirt/domain-xml.js';

function fixture(name: string): string {
  // tests run from dist/test/unit/
  return readFileSync(new URL(`../../../test/fixtures/${name}`, import.meta.url), 'utf8');
}

const WEB_UUID = '11111111-1111-4111-8111-111111111111';
const DB_UUID = '22222222-2222-4222-8222-222222222222';

/** Refs as the tie recorded them: guid from the name, mountpoint /<dataset>. */
function refs(names: string[]): SnapshotRef[] {
  return names.map((name) => ({ name, frozenAs: name, guid: `g-${name}`, createtxg: '1', creation: 1, mountpoint: `/${splitSnapshot(name).dataset}` }));
}

function manifest(name: string, uuid: string, snapshots: string[], id = `dump-${name}`): Manifest {
  return {
    format: 'virtsnap-dump/2',
    id,
    domain: { name, uuid },
    snapshots: refs(snapshots),
    types: ['hourly'],
    memoryFile: `/var/lib/virtsnap/archive/${name}/${id}.save`,
    bytes: 1024,
    sha256: '0'.repeat(64),
    metaDir: null,
    disks: [],
    times: { startedAt: '2024-01-01T00:00:00.000Z', frozenAt: '2024-01-01T00:00:01.000Z', archivedAt: '2024-01-01T00:00:05.000Z', pauseMs: 10, saveMs: 1000 },
    libvirtUri: 'qemu:///system',
    hostname: 'host',
  };
}

function facts(f: Partial<RestoreFacts> = {}): RestoreFacts {
  return {
    snapshots: ['tank/vm@a', 'tank/vm@b'],
    dumps: [],
    domains: [],
    cloneTargetExists: false,
    asNameTaken: false,
    ...f,
  };
}

function clone(snapshot: string, dataset = 'tank/restore', extra: Partial<RestoreRequest> = {}): RestoreRequest {
  return { snapshot, mode: { kind: 'clone', dataset }, destroyNewer: false, paused: false, ...extra };
}

function rollback(snapshot: string, extra: Partial<RestoreRequest> = {}): RestoreRequest {
  return { snapshot, mode: { kind: 'rollback' }, destroyNewer: false, paused: false, ...extra };
}

/** Deterministic UUIDs, counting up; throws when more are drawn than allowed. */
function uuids(max = 10): () => string {
  let n = 0;
  return () => {
    n++;
    if (n > max) throw new Error(`newUuid called ${n} times`);
    return `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;
  };
}

const noUuid = (): string => {
  throw new Error('newUuid must not be called without --as');
};

describe('splitSnapshot', () => {
  it('splits at the first @', () => {
    assert.deepEqual(splitSnapshot('tank/vm/web@autosnap_2024-01-01_00:00:00_hourly'), { dataset: 'tank/vm/web', snapname: 'autosnap_2024-01-01_00:00:00_hourly' });
  });
});

describe('planRestore: common checks', () => {
  it('a snapshot that does not exist is a problem, and nothing is planned', () => {
    const plan = planRestore(rollback('tank/vm@zzz'), facts({ dumps: [{ manifest: manifest('web', WEB_UUID, ['tank/vm@zzz']), problem: null }] }), noUuid);
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0]!, /tank\/vm@zzz does not exist/);
    assert.match(plan.problems[0]!, /zfs list -t snapshot -r tank\/vm/);
    assert.deepEqual(plan.datasets, []);
    assert.deepEqual(plan.domains, []);
    assert.deepEqual(plan.newer, []);
    assert.deepEqual(plan.stop, []);
    assert.equal(plan.snapname, 'zzz');
  });

  it('a bad dump is a problem naming the dump, its domain and what is wrong', () => {
    const plan = planRestore(
      clone('tank/vm@b'),
      facts({ dumps: [{ manifest: manifest('web', WEB_UUID, ['tank/vm@b'], 'd-42'), problem: 'sha256 mismatch' }] }),
      noUuid,
    );
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0]!, /RAM dump d-42 of "web" is bad \(sha256 mismatch\)/);
  });

  it('a good dump is no problem; a bad dump of another domain is ignored with --domain', () => {
    const f = facts({
      dumps: [
        { manifest: manifest('web', WEB_UUID, ['tank/vm@b']), problem: null },
        { manifest: manifest('db', DB_UUID, ['tank/vm@b']), problem: 'truncated' },
      ],
    });
    assert.deepEqual(planRestore(clone('tank/vm@b', 'tank/restore', { domain: 'web' }), f, noUuid).problems, []);
    const all = planRestore(clone('tank/vm@b'), f, noUuid);
    assert.equal(all.problems.length, 1);
    assert.match(all.problems[0]!, /"db" is bad \(truncated\)/);
  });

  it('carries snapshot, snapname, mode and paused into the plan', () => {
    const request = clone('tank/vm@b', 'tank/restore', { paused: true });
    const plan = planRestore(request, facts(), noUuid);
    assert.equal(plan.snapshot, 'tank/vm@b');
    assert.equal(plan.snapname, 'b');
    assert.deepEqual(plan.mode, { kind: 'clone', dataset: 'tank/restore' });
    assert.equal(plan.paused, true);
    assert.deepEqual(plan.datasets, ['tank/vm']);
    assert.deepEqual(plan.problems, []);
  });

  it('dumps map to DomainRestores keeping name and UUID without --as', () => {
    const m = manifest('web', WEB_UUID, ['tank/vm@b']);
    const plan = planRestore(clone('tank/vm@b'), facts({ dumps: [{ manifest: m, problem: null }] }), noUuid);
    assert.deepEqual(plan.domains, [{ name: 'web', uuid: WEB_UUID, newName: 'web', newUuid: WEB_UUID, dump: m }]);
  });
});

describe('planRestore: clone', () => {
  const snaps = ['tank/vm@a', 'tank/vm/disks@a', 'tank/vm@b', 'tank/vm/disks@b', 'tank/vm/disks/deep@b'];

  it('cloneOf maps the dataset and the children holding the dumps disks to the clone target', () => {
    const m = manifest('web', WEB_UUID, ['tank/vm@b', 'tank/vm/disks@b', 'tank/vm/disks/deep@b', 'tank/vm/other@a', 'tank/elsewhere@b', 'tank/vmx@b']);
    const plan = planRestore(clone('tank/vm@b'), facts({ snapshots: snaps, dumps: [{ manifest: m, problem: null }] }), noUuid);
    assert.deepEqual(plan.problems, []);
    assert.deepEqual(plan.datasets, ['tank/vm', 'tank/vm/disks', 'tank/vm/disks/deep']);
    assert.deepEqual(plan.cloneOf, {
      'tank/vm': 'tank/restore',
      'tank/vm/disks': 'tank/restore/disks',
      'tank/vm/disks/deep': 'tank/restore/disks/deep',
    });
    assert.deepEqual(plan.newer, []);
    assert.deepEqual(plan.stop, []);
  });

  it('children named only with another snapname are not involved', () => {
    const m = manifest('web', WEB_UUID, ['tank/vm@b', 'tank/vm/disks@a']);
    const plan = planRestore(clone('tank/vm@b'), facts({ snapshots: snaps, dumps: [{ manifest: m, problem: null }] }), noUuid);
    assert.deepEqual(plan.datasets, ['tank/vm']);
    assert.deepEqual(plan.cloneOf, { 'tank/vm': 'tank/restore' });
  });

  it('children of a child snapshot: the clone of a child dataset keeps its relative name', () => {
    const m = manifest('web', WEB_UUID, ['tank/vm/disks@b']);
    const plan = planRestore(clone('tank/vm/disks@b', 'pool2/copy'), facts({ snapshots: snaps, dumps: [{ manifest: m, problem: null }] }), noUuid);
    assert.deepEqual(plan.problems, []);
    assert.deepEqual(plan.cloneOf, { 'tank/vm/disks': 'pool2/copy' });
  });

  it('an existing clone target is a problem', () => {
    const plan = planRestore(clone('tank/vm@b'), facts({ cloneTargetExists: true }), noUuid);
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0]!, /dataset tank\/restore already exists/);
  });

  it('a clone target inside the source dataset is a problem', () => {
    for (const target of ['tank/vm/restore', 'tank/vm/disks/restore']) {
      const plan = planRestore(clone('tank/vm@b', target), facts(), noUuid);
      assert.equal(plan.problems.length, 1, target);
      assert.match(plan.problems[0]!, new RegExp(`--clone ${target} is inside tank/vm`));
    }
  });

  it('a clone target beside the source, even sharing its name as a prefix, is fine', () => {
    const plan = planRestore(clone('tank/vm@b', 'tank/vm-restore'), facts(), noUuid);
    assert.deepEqual(plan.problems, []);
    assert.deepEqual(plan.cloneOf, { 'tank/vm': 'tank/vm-restore' });
  });

  it('same-name clone while the domain is running (or paused) is a problem mentioning --as', () => {
    for (const state of ['running', 'paused']) {
      const plan = planRestore(
        clone('tank/vm@b'),
        facts({
          dumps: [{ manifest: manifest('web', WEB_UUID, ['tank/vm@b']), problem: null }],
          domains: [{ name: 'web', uuid: WEB_UUID, state, datasets: ['tank/vm'] }],
        }),
        noUuid,
      );
      assert.equal(plan.problems.length, 1, state);
      assert.match(plan.problems[0]!, /domain "web" is running/);
      assert.match(plan.problems[0]!, /--as/);
    }
  });

  it('same-name clone of a shut-off domain, or while another domain runs, is fine', () => {
    const plan = planRestore(
      clone('tank/vm@b'),
      facts({
        dumps: [{ manifest: manifest('web', WEB_UUID, ['tank/vm@b']), problem: null }],
        domains: [
          { name: 'web', uuid: WEB_UUID, state: 'shut off', datasets: ['tank/vm'] },
          { name: 'db', uuid: DB_UUID, state: 'running', datasets: ['tank/vm'] },
        ],
      }),
      noUuid,
    );
    assert.deepEqual(plan.problems, []);
    assert.deepEqual(plan.stop, []);
  });

  it('--as: a running original is fine, the clone gets the new name and a new UUID', () => {
    const m = manifest('web', WEB_UUID, ['tank/vm@b']);
    const plan = planRestore(
      clone('tank/vm@b', 'tank/restore', { as: 'web-clone' }),
      facts({ dumps: [{ manifest: m, problem: null }], domains: [{ name: 'web', uuid: WEB_UUID, state: 'running', datasets: ['tank/vm'] }] }),
      uuids(1),
    );
    assert.deepEqual(plan.problems, []);
    assert.deepEqual(plan.domains, [{ name: 'web', uuid: WEB_UUID, newName: 'web-clone', newUuid: '00000000-0000-4000-8000-000000000001', dump: m }]);
  });

  it('--as with two domains in the snapshot is a problem naming both; --domain picks one', () => {
    const f = facts({
      dumps: [
        { manifest: manifest('web', WEB_UUID, ['tank/vm@b']), problem: null },
        { manifest: manifest('db', DB_UUID, ['tank/vm@b']), problem: null },
      ],
    });
    const plan = planRestore(clone('tank/vm@b', 'tank/restore', { as: 'copy' }), f, uuids());
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0]!, /--as names one domain, but tank\/vm@b holds 2 \(web, db\): add --domain NAME/);

    const one = planRestore(clone('tank/vm@b', 'tank/restore', { as: 'copy', domain: 'db' }), f, uuids(1));
    assert.deepEqual(one.problems, []);
    assert.equal(one.domains.length, 1);
    assert.equal(one.domains[0]!.name, 'db');
    assert.equal(one.domains[0]!.newName, 'copy');
  });

  it('--as with no domain at all is a problem saying none', () => {
    const plan = planRestore(clone('tank/vm@b', 'tank/restore', { as: 'copy' }), facts(), uuids());
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0]!, /holds 0 \(none\)/);
  });

  it('--as with a name already taken is a problem', () => {
    const plan = planRestore(
      clone('tank/vm@b', 'tank/restore', { as: 'db' }),
      facts({ dumps: [{ manifest: manifest('web', WEB_UUID, ['tank/vm@b']), problem: null }], asNameTaken: true }),
      uuids(1),
    );
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0]!, /a domain named "db" already exists: choose another --as/);
  });

  it('problems accumulate: existing target, target inside, running same-name domain', () => {
    const plan = planRestore(
      clone('tank/vm@b', 'tank/vm/x'),
      facts({
        cloneTargetExists: true,
        dumps: [{ manifest: manifest('web', WEB_UUID, ['tank/vm@b']), problem: 'bad header' }],
        domains: [{ name: 'web', uuid: WEB_UUID, state: 'running', datasets: ['tank/vm'] }],
      }),
      noUuid,
    );
    assert.equal(plan.problems.length, 4);
  });
});

describe('planRestore: rollback', () => {
  it('newer snapshots on the involved datasets are listed, and are a problem without --destroy-newer', () => {
    // Only tank/vm is involved (no dumps naming children): tank/vm/x's snapshots are not rolled back.
    const f = facts({ snapshots: ['tank/vm@a', 'tank/vm/x@a', 'tank/vm@b', 'tank/vm/x@b', 'tank/vm@c'] });
    const plan = planRestore(rollback('tank/vm@a'), f, noUuid);
    assert.deepEqual(plan.datasets, ['tank/vm']);
    assert.deepEqual(plan.newer, ['tank/vm@b', 'tank/vm@c']);
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0]!, /would destroy 2 newer snapshot\(s\): tank\/vm@b, tank\/vm@c/);
    assert.match(plan.problems[0]!, /--destroy-newer/);
    assert.deepEqual(plan.cloneOf, {});
  });

  it('with --destroy-newer the newer snapshots are still listed, but no problem', () => {
    const f = facts({ snapshots: ['tank/vm@a', 'tank/vm@b', 'tank/vm@c'] });
    const plan = planRestore(rollback('tank/vm@a', { destroyNewer: true }), f, noUuid);
    assert.deepEqual(plan.newer, ['tank/vm@b', 'tank/vm@c']);
    assert.deepEqual(plan.problems, []);
  });

  it('rolling back to the latest snapshot: nothing newer, no problem', () => {
    const plan = planRestore(rollback('tank/vm@b'), facts(), noUuid);
    assert.deepEqual(plan.newer, []);
    assert.deepEqual(plan.problems, []);
  });

  it('newer snapshots of involved children are listed too', () => {
    const m = manifest('web', WEB_UUID, ['tank/vm@a', 'tank/vm/x@a']);
    const f = facts({ snapshots: ['tank/vm@a', 'tank/vm/x@a', 'tank/vm/y@a', 'tank/vm@b', 'tank/vm/x@b', 'tank/vm/y@b'], dumps: [{ manifest: m, problem: null }] });
    const plan = planRestore(rollback('tank/vm@a', { destroyNewer: true }), f, noUuid);
    assert.deepEqual(plan.datasets, ['tank/vm', 'tank/vm/x']);
    assert.ok(plan.newer.includes('tank/vm@b'));
    assert.ok(plan.newer.includes('tank/vm/x@b'));
    assert.ok(!plan.newer.includes('tank/vm/y@b'));
  });

  it(
    'a child snapshot taken with the target (same snapname) is not "newer"',
    () => {
      const m = manifest('web', WEB_UUID, ['tank/vm@b', 'tank/vm/x@b']);
      const f = facts({ snapshots: ['tank/vm@a', 'tank/vm/x@a', 'tank/vm@b', 'tank/vm/x@b'], dumps: [{ manifest: m, problem: null }] });
      const plan = planRestore(rollback('tank/vm@b'), f, noUuid);
      assert.deepEqual(plan.datasets, ['tank/vm', 'tank/vm/x']);
      assert.deepEqual(plan.newer, []);
      assert.deepEqual(plan.problems, []);
    },
  );

  it('stop lists running domains on the rolled-back datasets, not on children that are not rolled back, shut-off ones or ones elsewhere', () => {
    const f = facts({
      domains: [
        { name: 'web', uuid: WEB_UUID, state: 'running', datasets: ['tank/vm'] },
        { name: 'db', uuid: DB_UUID, state: 'running', datasets: ['tank/vm/disks'] },
        { name: 'idle', uuid: 'u3', state: 'shut off', datasets: ['tank/vm'] },
        { name: 'far', uuid: 'u4', state: 'running', datasets: ['tank/other'] },
        { name: 'prefix', uuid: 'u5', state: 'running', datasets: ['tank/vmx'] },
        { name: 'nodisk', uuid: 'u6', state: 'running', datasets: [] },
        { name: 'held', uuid: 'u7', state: 'paused', datasets: ['tank/other', 'tank/vm'] },
      ],
    });
    const plan = planRestore(rollback('tank/vm@b'), f, noUuid);
    assert.deepEqual(plan.stop, ['web', 'held'], 'db is in tank/vm/disks, which a rollback of tank/vm leaves as it is');
    assert.deepEqual(plan.problems, []);
  });

  it('stop is not filled for a clone', () => {
    const f = facts({ domains: [{ name: 'web', uuid: WEB_UUID, state: 'running', datasets: ['tank/vm'] }] });
    assert.deepEqual(planRestore(clone('tank/vm@b'), f, noUuid).stop, []);
  });
});

describe('planRestore: --domain', () => {
  it('no dump, but a defined domain: a DomainRestore with dump null', () => {
    const f = facts({ domains: [{ name: 'web', uuid: WEB_UUID, state: 'shut off', datasets: ['tank/vm'] }] });
    const plan = planRestore(rollback('tank/vm@b', { domain: 'web' }), f, noUuid);
    assert.deepEqual(plan.problems, []);
    assert.deepEqual(plan.domains, [{ name: 'web', uuid: WEB_UUID, newName: 'web', newUuid: WEB_UUID, dump: null }]);
  });

  it('no dump, a defined domain, --as: new name and UUID', () => {
    const f = facts({ domains: [{ name: 'web', uuid: WEB_UUID, state: 'running', datasets: ['tank/vm'] }] });
    const plan = planRestore(clone('tank/vm@b', 'tank/restore', { domain: 'web', as: 'web2' }), f, uuids(1));
    assert.deepEqual(plan.problems, []);
    assert.deepEqual(plan.domains, [{ name: 'web', uuid: WEB_UUID, newName: 'web2', newUuid: '00000000-0000-4000-8000-000000000001', dump: null }]);
  });

  it('no dump, a defined running domain, same-name clone: the running check still applies', () => {
    const f = facts({ domains: [{ name: 'web', uuid: WEB_UUID, state: 'running', datasets: ['tank/vm'] }] });
    const plan = planRestore(clone('tank/vm@b', 'tank/restore', { domain: 'web' }), f, noUuid);
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0]!, /"web" is running.*--as/);
  });

  it('an unknown domain is a problem', () => {
    const f = facts({
      dumps: [{ manifest: manifest('web', WEB_UUID, ['tank/vm@b']), problem: null }],
      domains: [{ name: 'web', uuid: WEB_UUID, state: 'shut off', datasets: ['tank/vm'] }],
    });
    const plan = planRestore(rollback('tank/vm@b', { domain: 'ghost' }), f, noUuid);
    assert.equal(plan.problems.length, 1);
    assert.match(plan.problems[0]!, /no RAM dump of "ghost" belongs to tank\/vm@b, and no such domain is defined/);
    assert.deepEqual(plan.domains, []);
  });

  it('--domain picks its dump out of several', () => {
    const web = manifest('web', WEB_UUID, ['tank/vm@b']);
    const f = facts({ dumps: [{ manifest: web, problem: null }, { manifest: manifest('db', DB_UUID, ['tank/vm@b']), problem: null }] });
    const plan = planRestore(rollback('tank/vm@b', { domain: 'web' }), f, noUuid);
    assert.deepEqual(plan.domains.map((d) => [d.name, d.dump]), [['web', web]]);
  });
});

describe('rewriteDiskPaths', () => {
  const xml = (...paths: string[]) => paths.map((p) => `<source file='${p}'/>`).join('\n');

  it("rewrites '<from>/...' attribute values", () => {
    const out = rewriteDiskPaths(xml('/tank/vm/web/disk.qcow2', '/tank/vm/web/data.raw'), [{ from: '/tank/vm', to: '/tank/restore' }], []);
    assert.equal(out, xml('/tank/restore/web/disk.qcow2', '/tank/restore/web/data.raw'));
  });

  it('leaves other paths alone: prefixes without /, paths not starting at the quote, text, double quotes', () => {
    const input = [
      xml('/tank/vmx/disk.qcow2', '/srv/tank/vm/disk.qcow2', '/tank/vm'),
      '<description>/tank/vm/disk.qcow2</description>',
      '<source file="/tank/vm/dq.qcow2"/>',
      "<source dev='/dev/zvol/tank/other'/>",
    ].join('\n');
    assert.equal(rewriteDiskPaths(input, [{ from: '/tank/vm', to: '/tank/restore' }], [{ from: 'tank/vm/vol', to: 'tank/restore/vol' }]), input);
  });

  it('mountpoints with XML special characters are matched escaped', () => {
    const input = `<domain><name>x</name><uuid>u</uuid><devices><disk type='file' device='disk'><source file='/mnt/bob&apos;s vms/disk.img'/><target dev='vda'/></disk></devices></domain>`;
    const out = rewriteDiskPaths(input, [{ from: "/mnt/bob's vms", to: "/mnt/clone's & co" }], []);
    assert.ok(out.includes(`'/mnt/clone&apos;s &amp; co/disk.img'`), out);
    assert.equal(parseDomainXml(out).disks[0]!.source, "/mnt/clone's & co/disk.img");
    // The unescaped spelling is not what libvirt writes, and is not matched.
    const raw = `<source file='/mnt/bob's vms/disk.img'/>`;
    assert.equal(rewriteDiskPaths(raw, [{ from: "/mnt/bob's vms", to: '/x' }], []), raw);
  });

  it('rewrites zvol paths and their partitions, not zvols sharing a prefix', () => {
    const input = [
      "<source dev='/dev/zvol/tank/vm/disk0'/>",
      "<source dev='/dev/zvol/tank/vm/disk0-part1'/>",
      "<source dev='/dev/zvol/tank/vm/disk0-part12'/>",
      "<source dev='/dev/zvol/tank/vm/disk01'/>",
      "<source dev='/dev/zvol/tank/vm/disk0/x'/>",
    ].join('\n');
    const out = rewriteDiskPaths(input, [], [{ from: 'tank/vm/disk0', to: 'tank/restore/disk0' }]);
    assert.equal(
      out,
      [
        "<source dev='/dev/zvol/tank/restore/disk0'/>",
        "<source dev='/dev/zvol/tank/restore/disk0-part1'/>",
        "<source dev='/dev/zvol/tank/restore/disk0-part12'/>",
        "<source dev='/dev/zvol/tank/vm/disk01'/>",
        "<source dev='/dev/zvol/tank/vm/disk0/x'/>",
      ].join('\n'),
    );
  });

  it('deepest mount given first: the child goes to its clone, the parent to its own', () => {
    const out = rewriteDiskPaths(
      xml('/tank/vm/child/a.img', '/tank/vm/b.img'),
      [
        { from: '/tank/vm/child', to: '/mnt/clonechild' },
        { from: '/tank/vm', to: '/tank/restore' },
      ],
      [],
    );
    assert.equal(out, xml('/mnt/clonechild/a.img', '/tank/restore/b.img'));
  });

  it('identity mappings (rollback) change nothing', () => {
    const input = fixture('dumpxml-running-3disks.xml');
    assert.equal(rewriteDiskPaths(input, [{ from: '/vsbed/vm', to: '/vsbed/vm' }], [{ from: 'vsbed/vm', to: 'vsbed/vm' }]), input);
  });

  it('on the fixture: every disk moves, nothing else does', () => {
    const input = fixture('dumpxml-running-3disks.xml');
    const out = rewriteDiskPaths(input, [{ from: '/vsbed/vm/t1', to: '/vsbed/clone/t1' }], []);
    const before = parseDomainXml(input);
    const after = parseDomainXml(out);
    assert.deepEqual(
      after.disks.map((d) => d.source),
      before.disks.map((d) => d.source!.replace('/vsbed/vm/t1/', '/vsbed/clone/t1/')),
    );
    assert.ok(out.includes("<source path='/var/lib/vsbed/console/vsbed-t1.log'"));
    assert.equal(out.split('\n').length, input.split('\n').length);
  });
});

describe('renameDomainXml', () => {
  const UUID = '4aa4739f-40fb-4dd3-b355-8e408c5e68f7';
  const NEW_UUID = '9bb4739f-40fb-4dd3-b355-8e408c5e68f8';
  const from = { name: 'vsbed-t1', uuid: UUID };
  const to = { name: 'vsbed-t1-clone', uuid: NEW_UUID, nvram: null };

  it('on the fixture: name and uuid replaced, console paths renamed, disks untouched', () => {
    const input = fixture('dumpxml-running-3disks.xml');
    const out = renameDomainXml(input, from, to);
    assert.ok(out.includes('<name>vsbed-t1-clone</name>'));
    assert.ok(!out.includes('<name>vsbed-t1</name>'));
    assert.ok(out.includes(`<uuid>${NEW_UUID}</uuid>`));
    assert.ok(!out.includes(UUID));
    // serial and console both write the clone's own log
    assert.equal(out.split("<source path='/var/lib/vsbed/console/vsbed-t1-clone.log' append='on'/>").length - 1, 2);
    assert.ok(!out.includes('/var/lib/vsbed/console/vsbed-t1.log'));
    for (const disk of ['/vsbed/vm/t1/disk.qcow2', '/vsbed/vm/t1/data.raw', '/vsbed/vm/t1/cd.iso']) assert.ok(out.includes(`file='${disk}'`), disk);
    assert.ok(out.includes('<kernel>/var/lib/vsbed/kernel/vmlinuz</kernel>'));

    const before = parseDomainXml(input);
    const after = parseDomainXml(out);
    assert.equal(after.name, 'vsbed-t1-clone');
    assert.equal(after.uuid, NEW_UUID);
    assert.deepEqual(after.disks, before.disks);
    assert.equal(after.memoryKiB, before.memoryKiB);
    assert.equal(after.nvram, null);
  });

  it('the nvram element is replaced when given, kept when null', () => {
    const input = fixture('dumpxml-running-3disks.xml').replace(
      '<boot dev=\'hd\'/>',
      "<boot dev='hd'/>\n    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>\n    <nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/vsbed-t1_VARS.fd</nvram>",
    );
    assert.equal(parseDomainXml(input).nvram, '/var/lib/libvirt/qemu/nvram/vsbed-t1_VARS.fd');
    const out = renameDomainXml(input, from, { ...to, nvram: '/var/lib/libvirt/qemu/nvram/vsbed-t1-clone_VARS.fd' });
    assert.ok(out.includes("<nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/vsbed-t1-clone_VARS.fd</nvram>"));
    assert.ok(out.includes('<loader readonly=\'yes\' type=\'pflash\'>/usr/share/OVMF/OVMF_CODE.fd</loader>'));
    assert.equal(parseDomainXml(out).nvram, '/var/lib/libvirt/qemu/nvram/vsbed-t1-clone_VARS.fd');

    const kept = renameDomainXml(input, from, to);
    assert.equal(parseDomainXml(kept).nvram, '/var/lib/libvirt/qemu/nvram/vsbed-t1_VARS.fd');
  });

  it('interfaces get <link state=\'down\'/>; an existing link up becomes down', () => {
    const nics = [
      "<interface type='network'>",
      "      <mac address='52:54:00:12:34:56'/>",
      "      <source network='default'/>",
      "      <model type='virtio'/>",
      '    </interface>',
      "    <interface type='bridge'>",
      "      <mac address='52:54:00:12:34:57'/>",
      "      <source bridge='br0'/>",
      "      <link state='up'/>",
      '    </interface>',
      '    <input',
    ].join('\n');
    const input = fixture('dumpxml-running-3disks.xml').replace('<input', nics);
    const out = renameDomainXml(input, from, to);
    assert.ok(out.includes("<interface type='network'><link state='down'/>\n      <mac address='52:54:00:12:34:56'/>"), out);
    assert.ok(out.includes("<source bridge='br0'/>\n      <link state='down'/>\n    </interface>"));
    assert.ok(!out.includes("state='up'"));
    assert.equal(out.split("<link state='down'/>").length - 1, 2);
    // MAC addresses stay (the clone is the same machine); it is just cut off.
    assert.ok(out.includes("<mac address='52:54:00:12:34:56'/>"));
    const parsed = parseDomainXml(out);
    assert.equal(parsed.name, 'vsbed-t1-clone');
    assert.equal(parsed.uuid, NEW_UUID);
  });

  it('a file console whose path does not contain the name gets the new name appended', () => {
    const input = fixture('dumpxml-running-3disks.xml').replaceAll('/var/lib/vsbed/console/vsbed-t1.log', '/var/log/console.log');
    const out = renameDomainXml(input, from, to);
    assert.equal(out.split("path='/var/log/console.log.vsbed-t1-clone'").length - 1, 2);
  });

  it('<log file=...> of a pty serial is renamed; a pty source is left alone', () => {
    const serial = "<serial type='pty'>\n      <source path='/dev/pts/3'/>\n      <log file='/var/log/libvirt/qemu/vsbed-t1-serial0.log' append='off'/>\n      <target port='0'/>\n    </serial>\n    <input";
    const input = fixture('dumpxml-running-3disks.xml').replace('<input', serial);
    const out = renameDomainXml(input, from, to);
    assert.ok(out.includes("<log file='/var/log/libvirt/qemu/vsbed-t1-clone-serial0.log' append='off'/>"));
    assert.ok(out.includes("<source path='/dev/pts/3'/>"));
  });

  it('a new name with XML special characters is escaped', () => {
    const out = renameDomainXml(fixture('dumpxml-running-3disks.xml'), from, { name: "t1 & co's", uuid: NEW_UUID, nvram: null });
    assert.equal(parseDomainXml(out).name, "t1 & co's");
  });

  it(
    'only the file name of a console path is renamed, not a directory that contains the old name',
    () => {
      const input = fixture('dumpxml-running-3disks.xml').replaceAll('/var/lib/vsbed/console/vsbed-t1.log', '/var/log/vsbed-t1/vsbed-t1.log');
      const out = renameDomainXml(input, from, to);
      assert.equal(out.split("path='/var/log/vsbed-t1/vsbed-t1-clone.log'").length - 1, 2);
    },
  );
});

describe('planRestore: checked before anything changes', () => {
  const disk = (target: string, source: string, extra: Partial<Disk> = {}): Disk => ({
    target,
    device: 'disk',
    type: 'file',
    source,
    format: 'qcow2',
    readonly: false,
    shareable: false,
    backing: null,
    ...extra,
  });

  const frozenDisk = (target: string, source: string, dataset: string) => ({ target, source, dataset, format: 'qcow2', bytes: null });

  for (const mode of ['rollback', 'clone'] as const) {
    it(`${mode}: a writable disk outside the restored datasets is a problem, so nothing is stopped, rolled back or cloned`, () => {
      const m = manifest('web', WEB_UUID, ['tank/vm@a']);
      m.disks = [frozenDisk('vda', '/tank/vm/web.qcow2', 'tank/vm')];
      const disks = [disk('vda', '/tank/vm/web.qcow2'), disk('vdb', '/srv/other/web-data.qcow2'), disk('hdc', '/srv/iso/x.iso', { device: 'cdrom', readonly: true })];
      const f = facts({ dumps: [{ manifest: m, problem: null, disks }], domains: [{ name: 'web', uuid: WEB_UUID, state: 'running', datasets: ['tank/vm'] }] });
      const request = mode === 'rollback' ? rollback('tank/vm@a', { destroyNewer: true }) : clone('tank/vm@a', 'tank/restore', { as: 'web2' });
      const plan = planRestore(request, f, uuids());
      assert.equal(plan.problems.length, 1, plan.problems.join('\n'));
      assert.match(plan.problems[0]!, /disk vdb of "web" \(\/srv\/other\/web-data\.qcow2\) was not in the snapshot with the RAM \(outside tank\/vm when it was saved\): .*nothing was changed/);
    });
  }

  it('a disk in a child dataset mounted below the restored one is not taken for the parent: it was not frozen with it', () => {
    const m = manifest('web', WEB_UUID, ['tank/vm@a']);
    m.disks = [frozenDisk('vda', '/tank/vm/web.qcow2', 'tank/vm'), frozenDisk('vdb', '/tank/vm/child/b.qcow2', 'tank/vm/child')];
    const disks = [disk('vda', '/tank/vm/web.qcow2'), disk('vdb', '/tank/vm/child/b.qcow2')];
    const plan = planRestore(rollback('tank/vm@a', { destroyNewer: true }), facts({ dumps: [{ manifest: m, problem: null, disks }] }), uuids());
    assert.equal(plan.problems.length, 1, plan.problems.join('\n'));
    assert.match(plan.problems[0]!, /disk vdb .* is not in tank\/vm:/);
  });

  it('rollback refuses while the dump\'s VM runs on disks that are not rolled back', () => {
    const m = manifest('web', WEB_UUID, ['tank/vm@a']);
    m.disks = [frozenDisk('vda', '/tank/vm/web.qcow2', 'tank/vm')];
    const f = facts({ dumps: [{ manifest: m, problem: null, disks: [disk('vda', '/tank/vm/web.qcow2')] }], domains: [{ name: 'web', uuid: WEB_UUID, state: 'running', datasets: ['tank/moved'] }] });
    const plan = planRestore(rollback('tank/vm@a'), f, uuids());
    assert.deepEqual(plan.stop, []);
    assert.match(plan.problems.join('\n'), /domain "web" is running on disks outside tank\/vm: stop it first/);
  });

  it('zvols: a partition of the restored zvol counts, a sibling zvol with a similar name does not', () => {
    assert.ok(isZvolOf('/dev/zvol/tank/vm-part2', 'tank/vm'));
    assert.ok(!isZvolOf('/dev/zvol/tank/vm-partner', 'tank/vm'));
    const xml = "<source dev='/dev/zvol/tank/vm-part1'/><source dev='/dev/zvol/tank/vm-partner'/>";
    assert.equal(rewriteDiskPaths(xml, [], [{ from: 'tank/vm', to: 'tank/r' }]), "<source dev='/dev/zvol/tank/r-part1'/><source dev='/dev/zvol/tank/vm-partner'/>");
  });

  it('a dump whose snapshot was promoted and renamed since: the datasets are the current ones, the paths are rewritten from where the dump saw them', () => {
    const m = manifest('web', WEB_UUID, ['tank/vm@a']);
    m.disks = [frozenDisk('vda', '/tank/vm/web.qcow2', 'tank/vm')];
    // What gatherFacts hands over after following the guid: tank/vm@a is now tank/restore@a2.
    m.snapshots = [{ ...m.snapshots[0]!, name: 'tank/restore@a2' }];
    const f = facts({ snapshots: ['tank/restore@a2'], dumps: [{ manifest: m, problem: null, disks: [disk('vda', '/tank/vm/web.qcow2')] }] });
    const plan = planRestore(clone('tank/restore@a2', 'tank/again', { as: 'web3' }), f, uuids());
    assert.deepEqual(plan.problems, []);
    assert.deepEqual(plan.datasets, ['tank/restore']);
    assert.deepEqual(plan.cloneOf, { 'tank/restore': 'tank/again' });
    assert.deepEqual(plan.sources, { 'tank/restore': { dataset: 'tank/vm', mountpoint: '/tank/vm' } });
  });

  it('a dump recorded before guids (no mountpoint) is checked against the current mountpoints', () => {
    const m = manifest('web', WEB_UUID, ['tank/vm@a']);
    m.disks = [frozenDisk('vda', '/srv/vm/web.qcow2', 'tank/vm')];
    m.snapshots = [{ ...m.snapshots[0]!, guid: null, mountpoint: null }];
    const f = facts({ mounts: { 'tank/vm': '/srv/vm' }, dumps: [{ manifest: m, problem: null, disks: [disk('vda', '/srv/vm/web.qcow2')] }] });
    assert.deepEqual(planRestore(clone('tank/vm@a', 'tank/r', { as: 'w' }), f, uuids()).problems, []);
  });

  it('inRestoredDatasets: inside a mountpoint or the zvol, not a sibling with the same prefix', () => {
    const sources = [{ dataset: 'tank/vm', mountpoint: '/tank/vm' }];
    assert.ok(inRestoredDatasets('/tank/vm/a.qcow2', sources));
    assert.ok(inRestoredDatasets('/dev/zvol/tank/vm', sources));
    assert.ok(inRestoredDatasets('/dev/zvol/tank/vm-part1', sources));
    assert.ok(!inRestoredDatasets('/tank/vmx/a.qcow2', sources));
    assert.ok(!inRestoredDatasets('/dev/zvol/tank/vmx', sources));
  });
});

describe('planRestore on another host (issue 12)', () => {
  const NEW = () => '33333333-3333-4333-8333-333333333333';
  it("what this host lacks is a problem naming the VM, or with --ignore-host-gaps a warning", () => {
    const dump = { manifest: manifest('web', WEB_UUID, ['tank/vm@a']), problem: null, disks: [], hostGaps: ['bridge "br0" (interface 52:54:00:00:00:01) does not exist on this host: create it'] };
    const refused = planRestore(clone('tank/vm@a', 'tank/restore', { as: 'web2' }), facts({ dumps: [dump] }), NEW);
    assert.equal(refused.problems.length, 1);
    assert.match(refused.problems[0]!, /this host cannot run "web" as saved: bridge "br0".*--ignore-host-gaps/);
    const warned = planRestore(clone('tank/vm@a', 'tank/restore', { as: 'web2', ignoreHostGaps: true }), facts({ dumps: [dump] }), NEW);
    assert.deepEqual(warned.problems, []);
    assert.equal(warned.warnings.length, 1);
  });

  it('a snapshot whose RAM could not be read is refused, naming why; the dumps it held are carried to be removed after the restore', () => {
    const plan = planRestore(clone('tank/vm@a'), facts({ snapshotProblems: ['cannot read tank/vm@a: …'], ramInSnapshot: [{ dataset: 'tank/vm', dir: '.virtsnap/web', id: 'x' }] }), NEW);
    assert.deepEqual(plan.problems, ['cannot read tank/vm@a: …']);
    assert.deepEqual(plan.ramInSnapshot, [{ dataset: 'tank/vm', dir: '.virtsnap/web', id: 'x' }]);
  });
});

describe('linksDown', () => {
  it('every interface of a clone starts with its link down, one <link> each', () => {
    const xml = `<domain><devices><interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface><interface type='bridge'><link state='up'/><source bridge='br0'/></interface></devices></domain>`;
    const out = linksDown(xml);
    assert.equal((out.match(/<link state='down'\/>/g) ?? []).length, 2);
    assert.doesNotMatch(out, /state='up'/);
  });
});
