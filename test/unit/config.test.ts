import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../lib/config.js';
import { ConfigError } from '../../lib/errors.js';

let dir: string;
let empty: string;
const savedLog = process.env.VIRTSNAP_LOG;

before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-config-'));
  empty = path.join(dir, 'empty.env');
  writeFileSync(empty, '');
  // loadConfig copies VIRTSNAP_LOG into process.env when unset; keep it quiet and restorable
  process.env.VIRTSNAP_LOG = 'error';
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
  if (savedLog === undefined) delete process.env.VIRTSNAP_LOG;
  else process.env.VIRTSNAP_LOG = savedLog;
});

function envFile(name: string, text: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
}

function assertConfigError(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    assert.match(err.message, message);
    return true;
  });
}

describe('loadConfig', () => {
  it('defaults', () => {
    const c = loadConfig({ VIRTSNAP_CONFIG: empty });
    assert.deepEqual(c, {
      libvirtUri: 'qemu:///system',
      overlayDir: '/var/lib/virtsnap/overlay',
      archiveDir: '/var/lib/virtsnap/archive',
      stateDir: '/var/lib/virtsnap/state',
      sanoidConf: '/etc/sanoid/sanoid.conf',
      live: 'auto',
      mode: { fallback: 'ram', byType: {} },
      quiesceFallback: 'ram',
      agentTimeoutMs: 10_000,
      pauseMaxMs: 60_000,
      parallel: 4,
      saveTimeoutMs: 600_000,
      commitTimeoutMs: 300_000,
      defineTimeoutMs: 120_000,
      restoreTimeoutMs: 600_000,
      watchdog: 'auto',
      metricsFile: null,
      compression: 'auto',
      store: { kind: 'dir' },
      lockTimeoutMs: 120_000,
      configFile: empty,
    });
  });

  it('VIRTSNAP_STORE: dir, dataset, or restic:REPO with an absolute password file; the settings of earlier versions still read; anything else is one line', () => {
    const c = (env: Record<string, string>) => loadConfig({ VIRTSNAP_CONFIG: empty, ...env });
    assert.deepEqual(c({ VIRTSNAP_STORE: 'dir' }).store, { kind: 'dir' });
    assert.deepEqual(c({ VIRTSNAP_STORE: 'dataset' }).store, { kind: 'dataset' });
    assert.deepEqual(c({ VIRTSNAP_RAM_STORE: 'dataset' }).store, { kind: 'dataset' }, 'VIRTSNAP_RAM_STORE of 0.x');
    assert.deepEqual(c({ VIRTSNAP_ARCHIVE: 'dir' }).store, { kind: 'dir' }, 'VIRTSNAP_ARCHIVE of 0.x');
    assert.throws(() => c({ VIRTSNAP_RAM_STORE: 'dataset', VIRTSNAP_ARCHIVE: 'dir' }), /^ConfigError: VIRTSNAP_RAM_STORE and VIRTSNAP_ARCHIVE name two places for the RAM dumps: set VIRTSNAP_STORE alone/);
    assert.deepEqual(c({ VIRTSNAP_STORE: 'restic:sftp:h:/r', VIRTSNAP_RESTIC_PASSWORD_FILE: '/etc/virtsnap/restic.pw' }).store, {
      kind: 'restic',
      repo: 'sftp:h:/r',
      passwordFile: '/etc/virtsnap/restic.pw',
      env: {},
    });
    assert.throws(() => c({ VIRTSNAP_STORE: 'restic:/r' }), /^ConfigError: VIRTSNAP_RESTIC_PASSWORD_FILE is not set: [^\n]*$/);
    assert.throws(() => c({ VIRTSNAP_STORE: 'restic:/r', VIRTSNAP_RESTIC_PASSWORD_FILE: 'pw' }), /VIRTSNAP_RESTIC_PASSWORD_FILE=pw is not an absolute path/);
    assert.throws(() => c({ VIRTSNAP_STORE: 'borg:/r' }), /^ConfigError: VIRTSNAP_STORE is not dir, restic:REPO/);
    assert.throws(() => c({ VIRTSNAP_STORE: 'restic:' }), /VIRTSNAP_STORE=restic names no repository/);
    // A URL with a password is never echoed.
    assert.throws(() => c({ VIRTSNAP_STORE: 'rest:https://u:secret@h/' }), (err: Error) => !err.message.includes('secret'));
  });

  it('restic from the env file alone: its repository, password and the rest reach restic, and only restic', () => {
    const file = envFile(
      'restic.env',
      ['VIRTSNAP_STORE=restic', 'export RESTIC_REPOSITORY_FILE=/etc/virtsnap/repo # the URL holds a password', 'RESTIC_PASSWORD_FILE=/etc/virtsnap/pw', 'AWS_ACCESS_KEY_ID=AKIA', ''].join('\n'),
    );
    const c = loadConfig({ VIRTSNAP_CONFIG: file });
    assert.deepEqual(c.store, { kind: 'restic', repo: null, passwordFile: null, env: { RESTIC_REPOSITORY_FILE: '/etc/virtsnap/repo', RESTIC_PASSWORD_FILE: '/etc/virtsnap/pw', AWS_ACCESS_KEY_ID: 'AKIA' } });
    assert.equal(process.env.AWS_ACCESS_KEY_ID, undefined, 'not in virtsnap\'s own environment (every other program it runs would see it)');
    assert.throws(() => loadConfig({ VIRTSNAP_CONFIG: envFile('norepo.env', 'VIRTSNAP_STORE=restic\nRESTIC_PASSWORD_FILE=/p\n') }), /names no repository/);
    assert.throws(() => loadConfig({ VIRTSNAP_CONFIG: envFile('nopw.env', 'VIRTSNAP_STORE=restic\nRESTIC_REPOSITORY=/r\n') }), /VIRTSNAP_RESTIC_PASSWORD_FILE is not set/);
  });

  it('VIRTSNAP_COMPRESS: auto (yes), gzip or zstd compress, no stores raw, anything else is one line', () => {
    for (const v of ['auto', 'yes', 'on', '1']) assert.equal(loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_COMPRESS: v }).compression, 'auto', v);
    for (const v of ['gzip', 'GZIP']) assert.equal(loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_COMPRESS: v }).compression, 'gzip', v);
    assert.equal(loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_COMPRESS: 'zstd' }).compression, 'zstd');
    for (const v of ['no', 'off', 'false', '0']) assert.equal(loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_COMPRESS: v }).compression, null, v);
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_COMPRESS: 'xz' }), /^VIRTSNAP_COMPRESS=xz is not auto, gzip, zstd or no$/);
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_COMPRESS: ' ' }), /^VIRTSNAP_COMPRESS is empty/);
  });

  it('values from an env file (comments, quotes, export-less lines)', () => {
    const file = envFile(
      'values.env',
      [
        '# virtsnap settings',
        'VIRTSNAP_LIBVIRT_URI=qemu+ssh://host/system',
        'VIRTSNAP_OVERLAY_DIR="/srv/overlay dir/"',
        "VIRTSNAP_ARCHIVE_DIR='/srv/archive'",
        'VIRTSNAP_STATE_DIR=/srv/state//x/..',
        'VIRTSNAP_SANOID_CONF=/opt/sanoid/sanoid.conf',
        'VIRTSNAP_LIVE=no',
        'VIRTSNAP_SAVE_TIMEOUT=1.5',
        'VIRTSNAP_COMMIT_TIMEOUT=10',
        'VIRTSNAP_LOCK_TIMEOUT=2',
        'OTHER_TOOL_SETTING=ignored',
      ].join('\n'),
    );
    const c = loadConfig({ VIRTSNAP_CONFIG: file });
    assert.equal(c.libvirtUri, 'qemu+ssh://host/system');
    assert.equal(c.overlayDir, '/srv/overlay dir');
    assert.equal(c.archiveDir, '/srv/archive');
    assert.equal(c.stateDir, '/srv/state');
    assert.equal(c.sanoidConf, '/opt/sanoid/sanoid.conf');
    assert.equal(c.live, 'no');
    assert.equal(c.saveTimeoutMs, 1500);
    assert.equal(c.commitTimeoutMs, 10_000);
    assert.equal(c.lockTimeoutMs, 2000);
    assert.equal(c.configFile, file);
  });

  it('the real environment wins over the file', () => {
    const file = envFile('wins.env', 'VIRTSNAP_OVERLAY_DIR=/from/file\nVIRTSNAP_LIVE=no\nVIRTSNAP_LOCK_TIMEOUT=5\n');
    const c = loadConfig({ VIRTSNAP_CONFIG: file, VIRTSNAP_OVERLAY_DIR: '/from/env', VIRTSNAP_LIVE: 'yes' });
    assert.equal(c.overlayDir, '/from/env');
    assert.equal(c.live, 'yes');
    assert.equal(c.lockTimeoutMs, 5000);
  });

  it('reads the env it is given, not process.env', () => {
    const saved = process.env.VIRTSNAP_OVERLAY_DIR;
    process.env.VIRTSNAP_OVERLAY_DIR = '/from/process/env';
    try {
      assert.equal(loadConfig({ VIRTSNAP_CONFIG: empty }).overlayDir, '/var/lib/virtsnap/overlay');
    } finally {
      if (saved === undefined) delete process.env.VIRTSNAP_OVERLAY_DIR;
      else process.env.VIRTSNAP_OVERLAY_DIR = saved;
    }
  });

  it('unknown VIRTSNAP_ key in the file -> ConfigError naming key and file', () => {
    const file = envFile('unknown.env', 'VIRTSNAP_OVERLAYDIR=/typo\n');
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: file }), /VIRTSNAP_OVERLAYDIR.*unknown\.env/);
  });

  it('relative path -> ConfigError naming the setting', () => {
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_OVERLAY_DIR: 'overlay' }), /VIRTSNAP_OVERLAY_DIR=overlay.*absolute/);
    const file = envFile('relative.env', 'VIRTSNAP_ARCHIVE_DIR=./archive\n');
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: file }), /VIRTSNAP_ARCHIVE_DIR/);
  });

  it('VIRTSNAP_CONFIG pointing at a missing file -> ConfigError', () => {
    const missing = path.join(dir, 'missing.env');
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: missing }), /missing\.env.*VIRTSNAP_CONFIG/);
  });

  it('bad VIRTSNAP_LIVE -> ConfigError; all yes/no spellings are accepted', () => {
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_LIVE: 'maybe' }), /VIRTSNAP_LIVE=maybe/);
    for (const v of ['1', 'yes', 'TRUE', 'on']) assert.equal(loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_LIVE: v }).live, 'yes', v);
    for (const v of ['0', 'no', 'False', 'OFF']) assert.equal(loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_LIVE: v }).live, 'no', v);
    for (const v of ['auto', 'AUTO']) assert.equal(loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_LIVE: v }).live, 'auto', v);
  });

  it('bad timeouts and empty values -> ConfigError', () => {
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_SAVE_TIMEOUT: 'ten' }), /VIRTSNAP_SAVE_TIMEOUT/);
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_COMMIT_TIMEOUT: '0' }), /VIRTSNAP_COMMIT_TIMEOUT/);
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_LOCK_TIMEOUT: '-5' }), /VIRTSNAP_LOCK_TIMEOUT/);
    assertConfigError(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_LIBVIRT_URI: '  ' }), /VIRTSNAP_LIBVIRT_URI is empty/);
  });
});

describe('VIRTSNAP_MODE', () => {
  it('one mode for every type, or per type with a default', () => {
    assert.deepEqual(loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_MODE: 'pause' }).mode, { fallback: 'pause', byType: {} });
    assert.deepEqual(loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_MODE: 'ram, frequently=quiesce,Hourly=QUIESCE' }).mode, {
      fallback: 'ram',
      byType: { frequently: 'quiesce', hourly: 'quiesce' },
    });
    assert.deepEqual(loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_MODE: 'hourly=quiesce' }).mode, { fallback: 'ram', byType: { hourly: 'quiesce' } });
  });

  it('a bad mode, two defaults or a type named twice is a one-line error naming the setting', () => {
    assert.throws(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_MODE: 'snapshot' }), /VIRTSNAP_MODE=snapshot: "snapshot" is not a mode; use ram, pause or quiesce/);
    assert.throws(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_MODE: 'ram,pause' }), /more than one mode for all types/);
    assert.throws(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_MODE: 'hourly=ram,hourly=pause' }), /names type hourly twice/);
    assert.throws(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_QUIESCE_FALLBACK: 'pause' }), /VIRTSNAP_QUIESCE_FALLBACK=pause is not one of ram, fail/);
    assert.throws(() => loadConfig({ VIRTSNAP_CONFIG: empty, VIRTSNAP_PARALLEL: '0' }), /VIRTSNAP_PARALLEL=0 is not a whole number of at least 1/);
  });
});
