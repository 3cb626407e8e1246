import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { checkHookPaths, checkSanoidConf, formatFindings, judgeQemuAccess, judgeSharedRam, type Finding } from '../../lib/commands/doctor.js';
import { judgeSpace } from '../../lib/space.js';
import { firstUnsearchable, parseQemuConf, resolveIdentity, type DirStat } from '../../lib/libvirt/qemu-user.js';
import { parseIni } from '../../lib/sanoid/conf.js';

const FILE = '/etc/sanoid/sanoid.conf';

/** A template with our hooks; `extra` lines are added to it. */
function conf(templateExtra: string[], sectionExtra: string[] = []): Finding[] {
  const text = [
    '[tank/vm]',
    '  use_template = vms',
    ...sectionExtra.map((l) => `  ${l}`),
    '',
    '[template_vms]',
    '  hourly = 24',
    '  autosnap = yes',
    '  pre_snapshot_script = /opt/virtsnap/hooks/pre-snapshot',
    ...templateExtra.map((l) => `  ${l}`),
    '',
  ].join('\n');
  return checkSanoidConf(parseIni(text), FILE);
}

const RECOMMENDED = [
  'post_snapshot_script = /opt/virtsnap/hooks/post-snapshot',
  'pruning_script = /opt/virtsnap/hooks/prune',
  'script_timeout = 0',
  'force_post_snapshot_script = yes',
];

const without = (key: string) => RECOMMENDED.filter((l) => !l.startsWith(`${key} `));

function severities(findings: Finding[]): string[] {
  return findings.map((f) => f.severity);
}

function only(findings: Finding[], pattern: RegExp): Finding {
  const hits = findings.filter((f) => pattern.test(f.detail));
  assert.equal(hits.length, 1, `one finding matching ${pattern} in ${JSON.stringify(findings, null, 2)}`);
  return hits[0]!;
}

describe('checkSanoidConf', () => {
  it('a fully recommended config: only ok findings', () => {
    const findings = conf(RECOMMENDED);
    assert.ok(findings.length > 0);
    assert.deepEqual([...new Set(severities(findings))], ['ok']);
    assert.ok(findings.every((f) => f.check === 'sanoid.conf'));
    only(findings, /1 section\(s\) use virtsnap: tank\/vm/);
  });

  it('script_timeout missing: fail, saying to set script_timeout = 0', () => {
    const findings = conf(without('script_timeout'));
    const f = only(findings, /script_timeout/);
    assert.equal(f.severity, 'fail');
    assert.match(f.detail, /\[tank\/vm\]/);
    assert.match(f.detail, /script_timeout = 0/);
    assert.equal(findings.length, 1);
  });

  it('script_timeout = 30: warn', () => {
    const findings = conf([...without('script_timeout'), 'script_timeout = 30']);
    const f = only(findings, /script_timeout/);
    assert.equal(f.severity, 'warn');
    assert.match(f.detail, /script_timeout = 30 s/);
    assert.equal(findings.length, 1);
  });

  it('script_timeout = 0 or a generous timeout: no timeout finding', () => {
    for (const value of ['0', '600']) {
      const findings = conf([...without('script_timeout'), `script_timeout = ${value}`]);
      assert.equal(findings.filter((f) => /script_timeout/.test(f.detail)).length, 0, value);
      assert.deepEqual([...new Set(severities(findings))], ['ok']);
    }
  });

  it("the section's own setting overrides its template", () => {
    const findings = conf(RECOMMENDED, ['script_timeout = 10']);
    assert.equal(only(findings, /script_timeout/).severity, 'warn');
    const fixed = conf(without('script_timeout'), ['script_timeout = 0']);
    assert.deepEqual([...new Set(severities(fixed))], ['ok']);
  });

  it('a later template wins over an earlier one', () => {
    const text = (order: string) =>
      [
        '[tank/vm]',
        `  use_template = ${order}`,
        '[template_vms]',
        '  pre_snapshot_script = /opt/virtsnap/hooks/pre-snapshot',
        ...without('script_timeout').map((l) => `  ${l}`),
        '[template_slow]',
        '  script_timeout = 15',
        '[template_fast]',
        '  script_timeout = 0',
      ].join('\n');
    assert.deepEqual([...new Set(severities(checkSanoidConf(parseIni(text('vms, slow, fast')), FILE)))], ['ok']);
    assert.equal(only(checkSanoidConf(parseIni(text('vms,fast,slow')), FILE), /script_timeout/).severity, 'warn');
  });

  it('missing post hook: fail', () => {
    const findings = conf(without('post_snapshot_script'));
    const f = only(findings, /post_snapshot_script/);
    assert.equal(f.severity, 'fail');
    assert.match(f.detail, /hooks\/post-snapshot/);
  });

  it('a post hook that is not ours: fail', () => {
    const findings = conf([...without('post_snapshot_script'), 'post_snapshot_script = /usr/local/bin/notify']);
    assert.equal(only(findings, /no post_snapshot_script/).severity, 'fail');
  });

  it('force_post_snapshot_script missing or off: warn', () => {
    for (const extra of [[], ['force_post_snapshot_script = no'], ['force_post_snapshot_script = 0']]) {
      const findings = conf([...without('force_post_snapshot_script'), ...extra]);
      const f = only(findings, /force_post_snapshot_script/);
      assert.equal(f.severity, 'warn', JSON.stringify(extra));
    }
  });

  it('force_post_snapshot_script as 1, true, on, YES: no finding', () => {
    for (const v of ['1', 'true', 'on', 'YES']) {
      const findings = conf([...without('force_post_snapshot_script'), `force_post_snapshot_script = ${v}`]);
      assert.deepEqual([...new Set(severities(findings))], ['ok'], v);
    }
  });

  it('no pruning_script: warn', () => {
    const findings = conf(without('pruning_script'));
    const f = only(findings, /pruning_script/);
    assert.equal(f.severity, 'warn');
    assert.match(f.detail, /virtsnap gc/);
  });

  it('pre_pruning_script pointing at hooks/prune: warn (besides the missing pruning_script)', () => {
    const findings = conf([...without('pruning_script'), 'pre_pruning_script = /opt/virtsnap/hooks/prune']);
    assert.equal(only(findings, /pre_pruning_script points at the prune hook/).severity, 'warn');
    assert.equal(only(findings, /has no pruning_script/).severity, 'warn');
    assert.equal(findings.length, 2);
  });

  it('a section with path = : fail', () => {
    const findings = conf(RECOMMENDED, ['path = tank/vm']);
    const f = only(findings, /path =/);
    assert.equal(f.severity, 'fail');
    assert.match(f.detail, /\[tank\/vm\]/);
  });

  it('path = in the template only is not reported (sanoid reads path from the section)', () => {
    const findings = conf([...RECOMMENDED, 'path = tank/vm']);
    assert.deepEqual([...new Set(severities(findings))], ['ok']);
  });

  it('recursive in a template: warn naming the template', () => {
    const findings = conf([...RECOMMENDED, 'recursive = zfs']);
    const f = only(findings, /recursive/);
    assert.equal(f.severity, 'warn');
    assert.match(f.detail, /\[template_vms\] sets recursive/);
    assert.match(f.detail, /\[tank\/vm\]/);
  });

  it('recursive in the section itself: fine', () => {
    const findings = conf(RECOMMENDED, ['recursive = zfs']);
    assert.deepEqual([...new Set(severities(findings))], ['ok']);
  });

  it('no_inconsistent_snapshot = yes: an ok finding, the rest still checked', () => {
    const findings = conf([...without('pruning_script'), 'no_inconsistent_snapshot = yes']);
    assert.equal(only(findings, /no_inconsistent_snapshot/).severity, 'ok');
    assert.equal(only(findings, /pruning_script/).severity, 'warn');
  });

  it('a config without our hooks: one warn naming the file', () => {
    const text = '[tank/data]\n  use_template = plain\n  pre_snapshot_script = /usr/local/bin/other\n[template_plain]\n  hourly = 24\n';
    const findings = checkSanoidConf(parseIni(text), FILE);
    assert.equal(findings.length, 1);
    assert.equal(findings[0]!.severity, 'warn');
    assert.match(findings[0]!.detail, /\/etc\/sanoid\/sanoid\.conf: no section runs virtsnap's pre-snapshot hook/);
    assert.deepEqual(checkSanoidConf(parseIni(''), FILE).map((f) => f.severity), ['warn']);
  });

  it('templates themselves are not sections; every section using the hooks is checked', () => {
    const text = [
      '[tank/vm]',
      '  use_template = vms',
      '[tank/vm2]',
      '  use_template = vms',
      '  script_timeout = 5',
      '[tank/plain]',
      '  hourly = 1',
      '[template_vms]',
      '  pre_snapshot_script = /opt/virtsnap/hooks/pre-snapshot',
      ...RECOMMENDED.map((l) => `  ${l}`),
    ].join('\n');
    const findings = checkSanoidConf(parseIni(text), FILE);
    assert.equal(findings.length, 1);
    assert.equal(findings[0]!.severity, 'warn');
    assert.match(findings[0]!.detail, /\[tank\/vm2\] script_timeout = 5 s/);
  });

  it(
    "settings in [template_default] count for every section, as sanoid applies them",
    () => {
      const text = [
        '[template_default]',
        '  pre_snapshot_script = /opt/virtsnap/hooks/pre-snapshot',
        ...RECOMMENDED.map((l) => `  ${l}`),
        '[tank/vm]',
        '  hourly = 24',
      ].join('\n');
      const findings = checkSanoidConf(parseIni(text), FILE);
      assert.deepEqual([...new Set(severities(findings))], ['ok']);
      only(findings, /1 section\(s\) use virtsnap: tank\/vm/);
    },
  );
});

describe('formatFindings', () => {
  it('one line per finding, labelled by severity', () => {
    const out = formatFindings([
      { severity: 'ok', check: 'libvirt', detail: 'fine' },
      { severity: 'warn', check: 'AppArmor', detail: 'active' },
      { severity: 'fail', check: 'sanoid.conf', detail: 'broken' },
    ]);
    assert.equal(out, 'OK   libvirt: fine\nWARN AppArmor: active\nFAIL sanoid.conf: broken\n');
  });
});

describe('checkHookPaths', () => {
  it('fails a hook sanoid.conf names that cannot be run, once per path, own keys and templates alike', () => {
    const ini = parseIni(
      [
        '[tank/vm]',
        '  use_template = vm',
        "  post_snapshot_script = /usr/bin/env -u LD_PRELOAD VIRTSNAP_CONFIG=/etc/x.env '/opt/virtsnap/hooks/post-snapshot'",
        '[tank/other]',
        '  use_template = vm',
        '[template_vm]',
        '  pre_snapshot_script = /opt/virtsnap/hooks/pre-snapshot',
        '  pruning_script = /opt/virtsnap/hooks/prune',
      ].join('\n'),
    );
    const findings = checkHookPaths(ini, (f) => f !== '/opt/virtsnap/hooks/prune');
    assert.deepEqual(
      findings.map((f) => [f.severity, f.detail.split(' ')[0]]),
      [
        ['ok', '/opt/virtsnap/hooks/pre-snapshot'],
        ['ok', '/opt/virtsnap/hooks/post-snapshot'],
        ['fail', '/opt/virtsnap/hooks/prune'],
      ],
    );
    assert.match(findings[2]!.detail, /does not exist or is not executable: fix the path in sanoid.conf/);
  });
});

describe("QEMU's user and the overlay dir", () => {
  const passwd = 'root:x:0:0:root:/root:/bin/bash\nlibvirt-qemu:x:64055:107:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n';
  const group = 'root:x:0:\nkvm:x:107:\nlibvirt-qemu:x:64055:libvirt-qemu\nbackup:x:34:libvirt-qemu\n';
  const chain = (...modes: [string, number, number?][]): DirStat[] => modes.map(([p, mode, gid = 0]) => ({ path: p, uid: 0, gid, mode: 0o40000 | mode }));

  it("qemu.conf: Debian's compiled-in user and group unless set; dynamic_ownership on unless 0", () => {
    assert.deepEqual(parseQemuConf('#user = "qemu"\n# group = "x"\n'), { user: 'libvirt-qemu', group: 'libvirt-qemu', dynamicOwnership: true });
    assert.deepEqual(parseQemuConf('user = "root"\ngroup = "root"  # comment\ndynamic_ownership = 0\n'), { user: 'root', group: 'root', dynamicOwnership: false });
  });

  it("resolves the user's uid, the configured group and its supplementary groups; +N is a uid", () => {
    assert.deepEqual(resolveIdentity(parseQemuConf(''), passwd, group), { name: 'libvirt-qemu', uid: 64055, gids: [107, 64055, 34] });
    assert.equal(resolveIdentity(parseQemuConf('user = "+0"'), passwd, group)?.uid, 0);
    assert.equal(resolveIdentity(parseQemuConf('user = "nobody-here"'), passwd, group), null);
  });

  it('the first directory it cannot search: others, group and owner bits as they apply', () => {
    const who = { name: 'libvirt-qemu', uid: 64055, gids: [107] };
    assert.equal(firstUnsearchable(chain(['/', 0o755], ['/var', 0o755], ['/var/lib/virtsnap', 0o711], ['/var/lib/virtsnap/overlay', 0o711]), who), null);
    assert.equal(firstUnsearchable(chain(['/', 0o755], ['/var/lib/virtsnap', 0o700], ['/var/lib/virtsnap/overlay', 0o711]), who)?.path, '/var/lib/virtsnap');
    assert.equal(firstUnsearchable(chain(['/', 0o755], ['/srv/x', 0o750, 107]), who), null, 'group kvm may search');
    assert.equal(firstUnsearchable(chain(['/', 0o755], ['/srv/x', 0o701, 107]), who)?.path, '/srv/x', 'the group bits apply, not the others');
    assert.equal(firstUnsearchable(chain(['/srv/x', 0o700]), { name: 'root', uid: 0, gids: [0] }), null, 'root searches anything');
  });

  it('judged: fail naming the closed directory and the fix; ok; a warning without dynamic ownership or a known user', () => {
    const conf = parseQemuConf('');
    const who = { name: 'libvirt-qemu', uid: 64055, gids: [107] };
    const [closed] = judgeQemuAccess('/var/lib/virtsnap/overlay', conf, who, chain(['/', 0o755], ['/var/lib/virtsnap', 0o700]));
    assert.equal(closed?.severity, 'fail');
    assert.match(closed!.detail, /^QEMU runs as libvirt-qemu and cannot enter \/var\/lib\/virtsnap \(mode 700, uid 0\): .*chmod o\+x \/var\/lib\/virtsnap/);
    const [byGroup] = judgeQemuAccess('/srv/o', conf, who, chain(['/', 0o755], ['/srv', 0o701, 107]));
    assert.match(byGroup!.detail, /chmod g\+x \/srv /, 'the bit that applies to it: its group');
    assert.equal(judgeQemuAccess('/o', conf, who, chain(['/', 0o755], ['/o', 0o711]))[0]?.severity, 'ok');
    assert.equal(judgeQemuAccess('/o', { ...conf, dynamicOwnership: false }, who, chain(['/', 0o755], ['/o', 0o711]))[0]?.severity, 'warn');
    assert.equal(judgeQemuAccess('/o', conf, null, [])[0]?.severity, 'warn');
  });
});

describe('space where the dumps go, against the next run and what retention keeps (lib/space.ts)', () => {
  const GiB = 1024 ** 3;
  it('no VM to dump: ok', () => {
    assert.equal(judgeSpace('/a', GiB, []).level, 'ok');
  });
  it("fails when the next run's dumps do not fit, naming the sizes", () => {
    const f = judgeSpace('/a', 1 * GiB, [{ domain: 'web', dumpBytes: 2 * GiB, kept: 55, heldBytes: 0 }]);
    assert.equal(f.level, 'fail');
    assert.match(f.text, /^1\.0 GiB free in \/a, the next run's dumps of 1 VM\(s\) take 2\.0 GiB: they would get no RAM/);
  });
  it("warns when sanoid's retention will outgrow it, counting what is held there already", () => {
    const needs = [{ domain: 'web', dumpBytes: 1 * GiB, kept: 10, heldBytes: 4 * GiB }];
    const w = judgeSpace('/a', 5 * GiB, needs);
    assert.equal(w.level, 'warn');
    assert.match(w.text, /keeps up to 10 dumps per VM, 6\.0 GiB more than \/a holds now for web/);
    assert.equal(judgeSpace('/a', 6 * GiB, needs).level, 'ok');
  });
});

describe('RAM in a shared dataset (VIRTSNAP_STORE=dataset)', () => {
  const off = { sharenfs: 'off', sharesmb: 'off' };
  it('warns where the dataset is shared over NFS or SMB, naming the property', () => {
    const f = judgeSharedRam([{ dataset: 'tank/vm', shares: { sharenfs: 'rw=@10.0.0.0/24', sharesmb: 'off' }, allowed: '' }]);
    assert.equal(f.length, 1);
    assert.equal(f[0]!.severity, 'warn');
    assert.match(f[0]!.detail, /^tank\/vm is shared \(sharenfs=rw=@10\.0\.0\.0\/24\): .*RAM/);
  });
  it('warns where zfs allow lets a user send, clone or mount it', () => {
    const allowed = '---- Permissions on tank/vm ---------\nLocal+Descendent permissions:\n\tuser backup send,snapshot\n';
    const f = judgeSharedRam([{ dataset: 'tank/vm', shares: off, allowed }]);
    assert.equal(f.length, 1);
    assert.match(f[0]!.detail, /zfs allow.*user backup send,snapshot/);
  });
  it('says ok, and that replicas hold the RAM too, where nothing is shared; zfs-fuse without zfs allow is said', () => {
    const [f] = judgeSharedRam([{ dataset: 'tank/vm', shares: off, allowed: null }]);
    assert.equal(f!.severity, 'ok');
    assert.match(f!.detail, /not shared \(zfs allow could not be asked\); every replica/);
    assert.deepEqual(judgeSharedRam([]), []);
  });
});
