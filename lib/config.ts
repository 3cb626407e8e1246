// virtsnap's settings: environment variables, optionally from an env file
// (VIRTSNAP_CONFIG, default /etc/virtsnap/virtsnap.env) read with dotenv.
// The real environment wins over the file, so a one-off
// `VIRTSNAP_LOG=debug virtsnap ...` works without editing it.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import type { Compression } from './manifest.js';
import { ConfigError } from './errors.js';
import { parseModePolicy, type ModePolicy } from './mode.js';
import { settingDefaults } from './settings.js';

// dotenv is CommonJS: required, it loads in half the time an ESM import of it takes (~8 ms of CPU less on every hook call).
const dotenv = createRequire(import.meta.url)('dotenv') as typeof import('dotenv');

export interface Config {
  /** libvirt connection URI. */
  libvirtUri: string;
  /** Where overlays and in-flight memory files live while a VM is frozen. Never inside a snapshotted dataset. */
  overlayDir: string;
  /** Where RAM dumps and their manifests are kept. */
  archiveDir: string;
  /** Journal and locks. */
  stateDir: string;
  /** sanoid's config, read to learn whether a dataset is snapshotted with `recursive = zfs`. */
  sanoidConf: string;
  /**
   * Save RAM while the guest runs (pause only for the last pass), or paused
   * for the whole write: `auto` saves live wherever the stack keeps every
   * page the guest writes (lib/libvirt/stack.ts), `yes` always (with a
   * warning where it may not), `no` never.
   */
  live: 'auto' | 'yes' | 'no';
  /** How each snapshot type is frozen: ram, pause or quiesce (lib/mode.ts). */
  mode: ModePolicy;
  /** quiesce without a responding guest agent: freeze the VM with ram instead, or fail the run. */
  quiesceFallback: 'ram' | 'fail';
  /** Bound for each guest agent call (fsfreeze, fsthaw). */
  agentTimeoutMs: number;
  /** Pause mode: longest a guest stays paused waiting for post before the watchdog resumes it. */
  pauseMaxMs: number;
  /** How many VMs are frozen (and committed back) at once. */
  parallel: number;
  /** Bounds, in milliseconds. */
  saveTimeoutMs: number;
  commitTimeoutMs: number;
  /** `virsh define`: slow where libvirt re-probes QEMU on every define (no udev: /dev/kvm 0600). */
  defineTimeoutMs: number;
  /** `virsh restore`: reads the whole RAM dump back. */
  restoreTimeoutMs: number;
  lockTimeoutMs: number;
  /** Prometheus textfile written after every run (lib/metrics.ts), or null. */
  metricsFile: string | null;
  /**
   * How the archiver stores RAM dumps in the archive dir (lib/archive.ts):
   * `auto` (zstd where this host's libvirt reads zstd save images and zstd
   * is installed, else gzip), gzip, zstd, or null, as libvirt wrote them.
   */
  compression: Compression | 'auto' | null;
  /**
   * Where RAM dumps live (VIRTSNAP_STORE): the archive dir, a restic
   * repository (the manifests stay in the archive dir), or inside the
   * snapshots of the VM's own dataset. lib/stores/ has one DumpStore each.
   */
  store: StoreSetting;
  /** How the watchdog is started (lib/watchdog.ts): `auto` uses systemd-run where systemd runs. */
  watchdog: 'auto' | 'detached';
  /** The env file that was read, if any. */
  configFile: string | null;
}

/**
 * VIRTSNAP_STORE: `dir` (the archive dir); a restic repository,
 * `restic:REPO`, or `restic` with the repository in the env file
 * (RESTIC_REPOSITORY or RESTIC_REPOSITORY_FILE), the password in
 * VIRTSNAP_RESTIC_PASSWORD_FILE or restic's own RESTIC_PASSWORD_FILE /
 * RESTIC_PASSWORD_COMMAND / RESTIC_PASSWORD in the env file; or `dataset`:
 * inside the snapshots of the VM's own dataset. Before 0.2 two settings said
 * this: VIRTSNAP_ARCHIVE (dir, restic:REPO) and VIRTSNAP_RAM_STORE
 * (archive, dataset); both are still read.
 */
export type StoreSetting = { kind: 'dir' } | ResticBackend | { kind: 'dataset' };

export interface ResticBackend {
  kind: 'restic';
  /** The repository as given (it may hold credentials: only restic's environment ever sees it), or null: restic reads the env file's. */
  repo: string | null;
  /** VIRTSNAP_RESTIC_PASSWORD_FILE, or null: the env file gives restic its password. */
  passwordFile: string | null;
  /**
   * The env file's other variables (RESTIC_*, AWS_*, B2_*, ...): given to
   * restic's processes, and to nothing else (not to virsh, zfs, the log).
   */
  env: Record<string, string>;
}

export const DEFAULT_CONFIG_FILE = '/etc/virtsnap/virtsnap.env';

/** The defaults, from the one table of settings (lib/settings.ts). */
const defaults: Record<string, string> = settingDefaults();

/** Settings of earlier versions, still read (storeOf). */
const LEGACY = ['VIRTSNAP_ARCHIVE', 'VIRTSNAP_RAM_STORE'];

const known = new Set([...Object.keys(defaults), ...LEGACY, 'VIRTSNAP_CONFIG']);

/** Reads the env file (if any) under the real environment and returns the settings. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const configFile = env.VIRTSNAP_CONFIG ?? DEFAULT_CONFIG_FILE;
  const fromFile = readEnvFile(configFile, env.VIRTSNAP_CONFIG !== undefined);
  const others = Object.fromEntries(Object.entries(fromFile.values).filter(([k]) => !k.startsWith('VIRTSNAP_')));
  const merged: Record<string, string> = { ...defaults, ...fromFile.values };
  for (const [key, value] of Object.entries(env)) {
    if (key.startsWith('VIRTSNAP_') && value !== undefined) merged[key] = value;
  }
  // What was set, in the file or the environment, as opposed to a default.
  const explicit = new Set([...Object.keys(fromFile.values), ...Object.keys(env).filter((k) => k.startsWith('VIRTSNAP_') && env[k] !== undefined)]);
  // Logging is read from process.env by lib/log; let the file set it too.
  if (process.env.VIRTSNAP_LOG === undefined && merged.VIRTSNAP_LOG !== undefined) {
    process.env.VIRTSNAP_LOG = merged.VIRTSNAP_LOG;
  }
  return {
    libvirtUri: nonEmpty(merged, 'VIRTSNAP_LIBVIRT_URI'),
    overlayDir: absolutePath(merged, 'VIRTSNAP_OVERLAY_DIR'),
    archiveDir: absolutePath(merged, 'VIRTSNAP_ARCHIVE_DIR'),
    stateDir: absolutePath(merged, 'VIRTSNAP_STATE_DIR'),
    sanoidConf: absolutePath(merged, 'VIRTSNAP_SANOID_CONF'),
    live: autoYesNo(merged, 'VIRTSNAP_LIVE'),
    mode: parseModePolicy(nonEmpty(merged, 'VIRTSNAP_MODE')),
    quiesceFallback: oneOf(merged, 'VIRTSNAP_QUIESCE_FALLBACK', ['ram', 'fail'] as const),
    agentTimeoutMs: seconds(merged, 'VIRTSNAP_AGENT_TIMEOUT'),
    pauseMaxMs: seconds(merged, 'VIRTSNAP_PAUSE_MAX'),
    parallel: count(merged, 'VIRTSNAP_PARALLEL'),
    saveTimeoutMs: seconds(merged, 'VIRTSNAP_SAVE_TIMEOUT'),
    commitTimeoutMs: seconds(merged, 'VIRTSNAP_COMMIT_TIMEOUT'),
    defineTimeoutMs: seconds(merged, 'VIRTSNAP_DEFINE_TIMEOUT'),
    restoreTimeoutMs: seconds(merged, 'VIRTSNAP_RESTORE_TIMEOUT'),
    lockTimeoutMs: seconds(merged, 'VIRTSNAP_LOCK_TIMEOUT'),
    watchdog: oneOf(merged, 'VIRTSNAP_WATCHDOG', ['auto', 'detached'] as const),
    compression: compressionOf(merged, 'VIRTSNAP_COMPRESS'),
    store: storeOf(merged, others, explicit),
    metricsFile: (merged.VIRTSNAP_METRICS_FILE ?? '').trim() === '' ? null : absolutePath(merged, 'VIRTSNAP_METRICS_FILE'),
    configFile: fromFile.path,
  };
}

function readEnvFile(file: string, explicit: boolean): { path: string | null; values: Record<string, string> } {
  if (!existsSync(file)) {
    if (explicit) throw new ConfigError(`config file ${file} (VIRTSNAP_CONFIG) does not exist: create it or unset VIRTSNAP_CONFIG`);
    return { path: null, values: {} };
  }
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`);
  }
  const values = dotenv.parse(text);
  for (const key of Object.keys(values)) {
    if (key.startsWith('VIRTSNAP_') && !known.has(key)) {
      throw new ConfigError(`unknown setting ${key} in ${file}: see \`man virtsnap\` (ENVIRONMENT) for the settings virtsnap knows`);
    }
  }
  return { path: file, values };
}

function nonEmpty(values: Record<string, string>, key: string): string {
  const value = (values[key] ?? '').trim();
  if (value === '') throw new ConfigError(`${key} is empty: set it or remove it to get the default (${defaults[key]})`);
  return value;
}

function absolutePath(values: Record<string, string>, key: string): string {
  const value = nonEmpty(values, key);
  if (!path.isAbsolute(value)) throw new ConfigError(`${key}=${value} is not an absolute path: give a path starting with /`);
  return path.normalize(value).replace(/\/+$/, '') || '/';
}

function oneOf<T extends string>(values: Record<string, string>, key: string, allowed: readonly T[]): T {
  const value = nonEmpty(values, key).toLowerCase();
  if (!(allowed as readonly string[]).includes(value)) throw new ConfigError(`${key}=${value} is not one of ${allowed.join(', ')}`);
  return value as T;
}

function yesNo(values: Record<string, string>, key: string): boolean {
  const value = nonEmpty(values, key).toLowerCase();
  if (['1', 'yes', 'true', 'on'].includes(value)) return true;
  if (['0', 'no', 'false', 'off'].includes(value)) return false;
  throw new ConfigError(`${key}=${value} is not yes or no`);
}

function autoYesNo(values: Record<string, string>, key: string): 'auto' | 'yes' | 'no' {
  if (nonEmpty(values, key).toLowerCase() === 'auto') return 'auto';
  try {
    return yesNo(values, key) ? 'yes' : 'no';
  } catch {
    throw new ConfigError(`${key}=${values[key]} is not auto, yes or no`);
  }
}

function count(values: Record<string, string>, key: string): number {
  const value = nonEmpty(values, key);
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(`${key}=${value} is not a whole number of at least 1`);
  return n;
}

function compressionOf(values: Record<string, string>, key: string): Compression | 'auto' | null {
  const value = nonEmpty(values, key).toLowerCase();
  if (value === 'gzip' || value === 'zstd' || value === 'auto') return value;
  try {
    return yesNo(values, key) ? 'auto' : null;
  } catch {
    throw new ConfigError(`${key}=${value} is not auto, gzip, zstd or no`);
  }
}

/**
 * VIRTSNAP_STORE, or what the two settings of earlier versions said of it:
 * VIRTSNAP_RAM_STORE=dataset, or VIRTSNAP_ARCHIVE=dir|restic:REPO. Two that
 * disagree are refused, naming both.
 */
function storeSettingOf(values: Record<string, string>, fromEnv: Set<string>): { key: string; value: string } {
  const given = (k: string) => fromEnv.has(k) && (values[k] ?? '').trim() !== '';
  const legacy: { key: string; value: string }[] = [];
  if (given('VIRTSNAP_RAM_STORE')) {
    const v = oneOf(values, 'VIRTSNAP_RAM_STORE', ['archive', 'dataset'] as const);
    if (v === 'dataset') legacy.push({ key: 'VIRTSNAP_RAM_STORE', value: 'dataset' });
  }
  if (given('VIRTSNAP_ARCHIVE')) legacy.push({ key: 'VIRTSNAP_ARCHIVE', value: nonEmpty(values, 'VIRTSNAP_ARCHIVE') });
  const store = given('VIRTSNAP_STORE') ? [{ key: 'VIRTSNAP_STORE', value: nonEmpty(values, 'VIRTSNAP_STORE') }] : [];
  const all = [...store, ...legacy];
  const kind = (v: string) => (v.startsWith('restic') ? 'restic' : v);
  const first = all[0];
  if (first === undefined) return { key: 'VIRTSNAP_STORE', value: 'dir' };
  const other = all.find((x) => kind(x.value) !== kind(first.value));
  // Never the values themselves: a repository URL may hold a password.
  if (other !== undefined) throw new ConfigError(`${first.key} and ${other.key} name two places for the RAM dumps: set VIRTSNAP_STORE alone (dir, restic:REPO or dataset)`);
  return first;
}

function storeOf(values: Record<string, string>, env: Record<string, string>, fromEnv: Set<string>): StoreSetting {
  const { key, value } = storeSettingOf(values, fromEnv);
  if (value === 'dir') return { kind: 'dir' };
  if (value === 'dataset') return { kind: 'dataset' };
  if (value !== 'restic' && !value.startsWith('restic:')) {
    throw new ConfigError(`${key} is not dir, restic:REPO (a path, sftp:, s3: or rest: repository), restic (the repository in RESTIC_REPOSITORY or RESTIC_REPOSITORY_FILE of the env file) or dataset`);
  }
  const repo = value === 'restic' ? null : value.slice('restic:'.length);
  if ((repo ?? '') === '' && env.RESTIC_REPOSITORY === undefined && env.RESTIC_REPOSITORY_FILE === undefined) {
    throw new ConfigError(`${key}=restic names no repository: give restic:REPO, or RESTIC_REPOSITORY (or RESTIC_REPOSITORY_FILE) in the env file`);
  }
  const passwordFile = (values.VIRTSNAP_RESTIC_PASSWORD_FILE ?? '').trim() === '' ? null : absolutePath(values, 'VIRTSNAP_RESTIC_PASSWORD_FILE');
  if (passwordFile === null && !['RESTIC_PASSWORD_FILE', 'RESTIC_PASSWORD_COMMAND', 'RESTIC_PASSWORD'].some((k) => env[k] !== undefined)) {
    throw new ConfigError(`VIRTSNAP_RESTIC_PASSWORD_FILE is not set: ${key}=restic needs the absolute path of a file (0600) holding the repository's password (or RESTIC_PASSWORD_FILE in the env file)`);
  }
  return { kind: 'restic', repo: repo === '' ? null : repo, passwordFile, env };
}

function seconds(values: Record<string, string>, key: string): number {
  const value = nonEmpty(values, key);
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new ConfigError(`${key}=${value} is not a positive number of seconds`);
  return Math.round(n * 1000);
}
