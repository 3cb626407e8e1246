import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { autosnaps, nearestSection, parseIni, readSanoidConf, recursionOf, runsKept, runsOurHooks, settingOf } from '../../lib/sanoid/conf.js';

describe('parseIni', () => {
  it('reads sections and key = value pairs, ignoring comments and blank lines', () => {
    const ini = parseIni(
      [
        '# a comment',
        '; another comment',
        '',
        '[tank/vm]',
        '  use_template = production  ',
        '  # recursive = zfs',
        '  ; recursive = yes',
        '  hourly=36',
        '',
        '[template_production]',
        'daily = 30',
        'not a pair',
      ].join('\n'),
    );
    assert.deepEqual([...ini.keys()], ['tank/vm', 'template_production']);
    assert.deepEqual(Object.fromEntries(ini.get('tank/vm')!), { use_template: 'production', hourly: '36' });
    assert.deepEqual(Object.fromEntries(ini.get('template_production')!), { daily: '30' });
  });

  it('keys before any section are ignored; values keep their inner = signs', () => {
    const ini = parseIni('orphan = 1\n[a]\nscript = /x --opt=1\n');
    assert.deepEqual([...ini.keys()], ['a']);
    assert.equal(ini.get('a')!.get('script'), '/x --opt=1');
  });

  it('handles CRLF line ends', () => {
    const ini = parseIni('[tank/vm]\r\nrecursive = zfs\r\n');
    assert.equal(recursionOf(ini, 'tank/vm'), 'zfs');
  });
});

describe('recursionOf', () => {
  it('recursive = zfs set directly', () => {
    assert.equal(recursionOf(parseIni('[tank/vm]\nrecursive = zfs\n'), 'tank/vm'), 'zfs');
    assert.equal(recursionOf(parseIni('[tank/vm]\nrecursive = ZFS\n'), 'tank/vm'), 'zfs');
  });

  it('recursive = yes (and its spellings) -> yes', () => {
    for (const v of ['yes', 'Yes', '1', 'true', 'on']) {
      assert.equal(recursionOf(parseIni(`[tank/vm]\nrecursive = ${v}\n`), 'tank/vm'), 'yes', v);
    }
  });

  it('recursive = no / absent key / absent section -> no', () => {
    assert.equal(recursionOf(parseIni('[tank/vm]\nrecursive = no\n'), 'tank/vm'), 'no');
    assert.equal(recursionOf(parseIni('[tank/vm]\nhourly = 1\n'), 'tank/vm'), 'no');
    assert.equal(recursionOf(parseIni('[tank/vm]\nrecursive = zfs\n'), 'tank/other'), 'no');
    assert.equal(recursionOf(parseIni('[tank/vm]\nrecursive = zfs\n'), 'tank'), 'no');
  });

  it('a commented-out recursive = zfs does not count', () => {
    assert.equal(recursionOf(parseIni('[tank/vm]\n# recursive = zfs\n;recursive = zfs\n'), 'tank/vm'), 'no');
  });

  it("the section's own value wins over its templates", () => {
    const ini = parseIni('[tank/vm]\nuse_template = rec\nrecursive = no\n[template_rec]\nrecursive = zfs\n');
    assert.equal(recursionOf(ini, 'tank/vm'), 'no');
    const ini2 = parseIni('[tank/vm]\nuse_template = rec\nrecursive = zfs\n[template_rec]\nrecursive = no\n');
    assert.equal(recursionOf(ini2, 'tank/vm'), 'zfs');
  });

  // sanoid does not honour `recursive` from a template: it warns "ignored key
  // 'recursive' from '<name>' template" and takes recursion only from the
  // dataset's own section (jimsalterjrs/sanoid #257, #261). So a dataset whose
  // only `recursive = zfs` is in a template is snapshotted without -r.
  it(
    'recursive = zfs only via use_template is ignored, as sanoid ignores it',
    () => {
      const ini = parseIni('[tank/vm]\nuse_template = rec\n[template_rec]\nrecursive = zfs\n');
      assert.equal(recursionOf(ini, 'tank/vm'), 'no');
    },
  );
});

describe('settingOf (templates)', () => {
  it('takes a value from template_NAME via use_template', () => {
    const ini = parseIni('[tank/vm]\nuse_template = production\n[template_production]\ndaily = 30\n');
    assert.equal(settingOf(ini, 'tank/vm', 'daily'), '30');
  });

  it('the later template wins', () => {
    const ini = parseIni('[tank/vm]\nuse_template = a, b\n[template_a]\ndaily = 1\nhourly = 5\n[template_b]\ndaily = 2\n');
    assert.equal(settingOf(ini, 'tank/vm', 'daily'), '2');
    assert.equal(settingOf(ini, 'tank/vm', 'hourly'), '5');
    const rev = parseIni('[tank/vm]\nuse_template = b,a\n[template_a]\ndaily = 1\n[template_b]\ndaily = 2\n');
    assert.equal(settingOf(rev, 'tank/vm', 'daily'), '1');
  });

  it("the section's own value wins", () => {
    const ini = parseIni('[tank/vm]\nuse_template = a\ndaily = 7\n[template_a]\ndaily = 1\n');
    assert.equal(settingOf(ini, 'tank/vm', 'daily'), '7');
  });

  it('an unknown template or absent key gives undefined', () => {
    const ini = parseIni('[tank/vm]\nuse_template = nosuch\n');
    assert.equal(settingOf(ini, 'tank/vm', 'daily'), undefined);
    assert.equal(settingOf(ini, 'tank/none', 'daily'), undefined);
  });
});

describe('readSanoidConf', () => {
  it('reads a file, and a missing file is null', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-conf-'));
    try {
      const file = path.join(dir, 'sanoid.conf');
      writeFileSync(file, '[tank/vm]\nrecursive = zfs\n');
      const ini = readSanoidConf(file);
      assert.ok(ini !== null);
      assert.equal(recursionOf(ini, 'tank/vm'), 'zfs');
      assert.equal(readSanoidConf(path.join(dir, 'missing.conf')), null);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('what a section means for virtsnap', () => {
  const ini = parseIni(`
[template_vm]
  pre_snapshot_script = /usr/lib/virtsnap/hooks/pre-snapshot
  hourly = 24
  daily = 30
  monthly = 3
[tank/vm]
  use_template = vm
  recursive = zfs
[tank/vm/db]
  use_template = vm
  autosnap = no
[tank/data]
  hourly = 5
  pre_snapshot_script = /usr/local/bin/mysql-pre-snapshot
[template_off]
  autosnap = no
[tank/off]
  use_template = off
`);
  it("runsOurHooks: the section's pre hook, templates applied; never a template itself", () => {
    assert.deepEqual([...ini.keys()].filter((s) => runsOurHooks(ini, s)), ['tank/vm', 'tank/vm/db']);
  });
  it('autosnaps: default yes, templates applied', () => {
    assert.deepEqual([...ini.keys()].filter((s) => autosnaps(ini, s)), ['tank/vm', 'tank/data']);
  });
  it("runsKept: the sum of the periods kept, sanoid's defaults where unset (hourly 48, daily 90, monthly 6)", () => {
    assert.equal(runsKept(ini, 'tank/vm'), 24 + 30 + 3);
    assert.equal(runsKept(ini, 'tank/data'), 5 + 90 + 6);
  });
  it("nearestSection: the dataset's own, else the nearest recursing ancestor", () => {
    const sections = [
      { dataset: 'tank', subtree: false },
      { dataset: 'tank/vm', subtree: true },
      { dataset: 'tank/vm/db', subtree: false },
    ];
    assert.equal(nearestSection('tank/vm/web', sections)?.dataset, 'tank/vm');
    assert.equal(nearestSection('tank/vm/db', sections)?.dataset, 'tank/vm/db');
    assert.equal(nearestSection('tank/other', sections), null);
    assert.equal(nearestSection('tank', sections)?.dataset, 'tank');
  });
});
