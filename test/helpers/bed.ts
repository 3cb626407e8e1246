// The test bed from the tests' side: read what test/bed/up made, make guests,
// read their consoles, run sanoid. Everything here stays inside the bed's
// pool, its dirs and domains named vsbed-*.
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import assert from 'node:assert/strict';
import { run } from '../../lib/exec.js';
import { CommandError } from '../../lib/errors.js';
import { DEFAULT_WATCH, enoughProgress, oracleProblems, progressOf, stalled, type Progress, type WatchRule } from './oracle.js';

/** The libvirt/QEMU stack the tests run against: Debian 12's on the host, or Debian 13's in the bed's chroot (test/bed/trixie). */
export type Stack = 'bookworm' | 'trixie';

export interface Bed {
  stack: Stack;
  /** That stack's libvirt: every virsh of the tests and every virtsnap setup talks to it. */
  uri: string;
  dir: string;
  pool: string;
  vmDataset: string;
  kernel: string;
  initrd: string;
  virtType: string;
  sanoid: Record<SanoidVersion, string>;
  sanoidPath: string;
  overlayDir: string;
  archiveDir: string;
  stateDir: string;
  consoleDir: string;
  /** The Debian 13 root (test/bed/trixie), when the bed has that stack: its package test runs in it. */
  trixieRoot: string | null;
}

export type SanoidVersion = '2.1.0' | '2.2.0';

let cached: Bed | null = null;

/** A reader of $VSBED_DIR/bed.env's keys; throws when the file or a key is missing. */
function bedEnv(): { dir: string; get: (k: string) => string } {
  const dir = process.env.VSBED_DIR ?? '/var/lib/vsbed';
  const envFile = path.join(dir, 'bed.env');
  if (!existsSync(envFile)) throw new Error(`the test bed is not up (${envFile} missing): run \`sudo bash test/bed/up\``);
  const env: Record<string, string> = {};
  for (const line of readFileSync(envFile, 'utf8').split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  const get = (k: string): string => {
    const v = env[k];
    if (v === undefined) throw new Error(`${envFile} has no ${k}: run test/bed/up again`);
    return v;
  };
  return { dir, get };
}

/** VSBED_STACK (bookworm by default, or trixie): the stack this test process runs against. */
export function wantedStack(): Stack {
  const s = process.env.VSBED_STACK ?? 'bookworm';
  if (s !== 'bookworm' && s !== 'trixie') throw new Error(`VSBED_STACK=${s}: use bookworm or trixie`);
  return s;
}

/** The libvirt URI of the stack the tests run against (sync: the virsh helper needs it before bed() ran). */
export function stackUri(): string {
  if (wantedStack() === 'bookworm') return 'qemu:///system';
  const { get } = bedEnv();
  try {
    return get('VSBED_TRIXIE_URI');
  } catch {
    throw new Error('VSBED_STACK=trixie, but the bed has no Debian 13 stack: run `sudo bash test/bed/up --trixie`');
  }
}

/** The bed, checked to be up. Throws (never skips) when it is not. */
export async function bed(): Promise<Bed> {
  if (cached) return cached;
  const { dir, get } = bedEnv();
  const uri = stackUri();
  // Every virsh the tests start (helpers, fault-bin's real one) talks to this stack unless told otherwise.
  process.env.LIBVIRT_DEFAULT_URI = uri;
  const b: Bed = {
    stack: wantedStack(),
    uri,
    dir,
    pool: get('VSBED_POOL'),
    vmDataset: get('VSBED_VM_DATASET'),
    kernel: get('VSBED_KERNEL'),
    initrd: get('VSBED_INITRD'),
    virtType: get('VSBED_VIRT_TYPE'),
    sanoid: { '2.1.0': get('VSBED_SANOID21'), '2.2.0': get('VSBED_SANOID22') },
    sanoidPath: get('VSBED_SANOID_PATH'),
    overlayDir: get('VSBED_OVERLAY_DIR'),
    archiveDir: get('VSBED_ARCHIVE_DIR'),
    stateDir: get('VSBED_STATE_DIR'),
    consoleDir: get('VSBED_CONSOLE_DIR'),
    trixieRoot: (() => {
      try {
        return get('VSBED_TRIXIE_ROOT');
      } catch {
        return null;
      }
    })(),
  };
  try {
    await sh('virsh', ['-c', uri, 'version']);
  } catch (err) {
    throw new Error(`libvirtd (${b.stack}) is not answering: run \`sudo bash test/bed/up${b.stack === 'trixie' ? ' --trixie' : ''}\` (${(err as Error).message})`);
  }
  try {
    await sh('zpool', ['list', '-H', b.pool]);
  } catch (err) {
    throw new Error(`pool ${b.pool} is not imported: run \`sudo bash test/bed/up\` (${(err as Error).message})`);
  }
  cached = b;
  return b;
}

/** The bed's side of the backup host (issue 12): a second pool, syncoid's target. */
export interface Backup {
  pool: string;
  /** Debian's syncoid 2.1.0. */
  syncoid: string;
}

let cachedBackup: Backup | null = null;

/**
 * The backup pool, checked to be imported. Apart from `bed()`: a bed.env
 * written by an older `up` (the bed is shared) fails only the tests that
 * replicate.
 */
export async function backup(): Promise<Backup> {
  if (cachedBackup) return cachedBackup;
  await bed();
  const { get } = bedEnv();
  const k: Backup = { pool: get('VSBED_BACKUP_POOL'), syncoid: get('VSBED_SYNCOID') };
  try {
    await sh('zpool', ['list', '-H', k.pool]);
  } catch (err) {
    throw new Error(`the backup pool ${k.pool} is not imported: run \`sudo bash test/bed/up\` (${(err as Error).message})`);
  }
  cachedBackup = k;
  return k;
}

export async function sh(command: string, args: string[], options: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<string> {
  return (await run(command, args, { timeoutMs: options.timeoutMs ?? 120_000, ...(options.env ? { env: options.env } : {}) })).stdout;
}

export async function virsh(...args: string[]): Promise<string> {
  return sh('virsh', ['-q', '-c', stackUri(), ...args]);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * zfs-fuse says "dataset is busy" for a moment after a guest lets go of a
 * file. Its `zfs rename` of a mounted dataset can stay busy for good on
 * this bed while an explicit `zfs umount` of it succeeds: a rename that is
 * busy unmounts it first, then mounts it under its new name.
 */
export async function zfsRetry(args: string[], tries = 20): Promise<void> {
  const renaming = args[0] === 'rename' && args.length === 3 && !args[1]!.includes('@');
  let unmounted = false;
  for (let i = 0; ; i++) {
    try {
      await sh('zfs', args);
      if (unmounted) await sh('zfs', ['mount', args[2]!]).catch(() => undefined);
      return;
    } catch (err) {
      if (i >= tries || !/busy/.test((err as Error).message)) throw err;
      if (renaming && i >= 2) unmounted = (await sh('zfs', ['umount', args[1]!]).then(() => true, () => false)) || unmounted;
      await sleep(500);
    }
  }
}

export async function datasetExists(name: string): Promise<boolean> {
  try {
    await sh('zfs', ['list', '-H', '-o', 'name', name]);
    return true;
  } catch {
    return false;
  }
}

/**
 * Under load (several guests, thousands of snapshots) zfs-fuse stays busy for
 * tens of seconds; with other guests on the bed's 2 cores, a dataset was seen
 * "busy" for about a minute after its guest and clones were gone (`tries`: 180).
 */
export async function destroyDataset(name: string, tries = 120): Promise<void> {
  if (await datasetExists(name)) await zfsRetry(['destroy', '-r', name], tries);
}

export async function mountpointOf(dataset: string): Promise<string> {
  return (await sh('zfs', ['get', '-H', '-o', 'value', 'mountpoint', dataset])).trim();
}

/** Snapshots of `dataset` (and of its whole subtree with `recursive`). */
export async function snapshotsOf(dataset: string, recursive = false): Promise<string[]> {
  const out = await sh('zfs', ['list', '-H', '-t', 'snapshot', '-o', 'name', '-r', dataset]);
  const all = out.split('\n').filter((l) => l !== '');
  return recursive ? all : all.filter((l) => l.startsWith(`${dataset}@`));
}

/** Stops and undefines test domains left by an earlier, interrupted run. */
export async function removeDomains(...names: string[]): Promise<void> {
  for (const name of names) {
    if (!name.startsWith('vsbed-')) throw new Error(`test domains must be named vsbed-*: ${name}`);
    await virsh('destroy', name).catch(() => undefined);
    await virsh('undefine', name).catch(() => undefined);
  }
}

export interface GuestDisk {
  target: string;
  format: 'qcow2' | 'raw';
  /** Dataset the image lives in; the guest's own dataset by default. */
  dataset?: string;
  /** The guest writes its counter to it (all writable disks by default). */
  counter?: boolean;
}

export interface GuestOptions {
  name: string;
  dataset: string;
  disks?: GuestDisk[];
  /** A read-only cdrom with media. */
  cdrom?: boolean;
  /**
   * A UEFI variable store (random bytes). The loader is a dummy: such a guest
   * can be defined and recorded, not started (no OVMF on the bed).
   */
  nvram?: boolean;
  memoryMiB?: number;
  /**
   * MiB of the guest's RAM to fill with random bytes and keep rewriting
   * (test/bed/guest/fill), so a live RAM save always finds dirty pages.
   * `start()` returns before the fill is done; `waitForFill()` waits for it.
   * The guest refuses a fill its free memory cannot hold (320 of 512 MiB fits).
   */
  fillMiB?: number;
  /** What the fill writes: random bytes (the default), or random letters a-p (gzip -1 keeps 0.58 of it, like a real guest's changing memory). */
  fillKind?: 'random' | 'text';
  /**
   * QEMU's guest agent: the org.qemu.guest_agent.0 channel (libvirt picks the
   * socket) and qemu-ga in the guest (test/bed/guest/agent). `start()` returns
   * once it answers guest-ping.
   */
  agent?: boolean;
  /**
   * Target of an extra raw 64M disk holding an ext4 (made on the host before
   * the first boot) that the guest mounts at /mnt and keeps writing to
   * (test/bed/guest/fs): what the agent's fsfreeze freezes. It must sort
   * after every other disk's target, so that the counter disks keep their
   * names in the guest. Listed in `disks` as a raw disk without counter.
   */
  fsDisk?: string;
  /**
   * MiB the memory oracle stamps (test/bed/memoracle/memoracle.c), 16 by
   * default; 0 runs the guest without it. Every restore checks it (watch()).
   */
  memMiB?: number;
  /** Milliseconds the memory oracle sleeps between sweeps (50 by default): less is a busier guest. */
  memPauseMs?: number;
  /**
   * Seconds the disk oracle pauses after each round (0.1 by default; 0:
   * none). Under TCG a guest that never idles takes a whole host core: with
   * two guests the bed's two cores had nothing left for zfs-fuse, libvirt and
   * sanoid. Its writes still come several times a second.
   */
  pace?: number;
}

/**
 * A guest's RAM when a test does not say: 96 MiB, 128 with the guest agent
 * (qemu-ga and its libraries in the initramfs left the memory oracle's 16 MiB
 * no room on QEMU 10: it was OOM-killed at boot).
 */
export function memoryOf(options: Pick<GuestOptions, 'memoryMiB' | 'agent'>): number {
  return options.memoryMiB ?? (options.agent ? 128 : 96);
}

/** The memory oracle's size and pause, and the disk oracle's pace, when a test does not say. */
export const DEFAULT_MEM_MIB = 16;
const DEFAULT_MEM_PAUSE_MS = 50;
const DEFAULT_PACE = 0.1;

const BOOT_TIMEOUT_MS = 90_000;
const FILL_TIMEOUT_MS = 300_000;
/** The fs disk's virtio serial: how the guest finds it, whatever its name there. */
const FS_SERIAL = 'vsbed-fs';
/** A line where one of the guest's extras gave up (test/bed/guest/{agent,fs,fill}). */
const EXTRA_FAILED = /VSBED (?:AGENT|FS|FILL) (?:failed|refused)[^\n]*/;

/** A test guest running the consistency oracle (test/bed/guest/init). */
export class Guest {
  readonly consoleLog: string;
  uuid = '';
  /** Console offset of the last `start()`: where its boot's lines begin. */
  bootOffset = 0;

  private constructor(
    readonly b: Bed,
    readonly options: Required<Pick<GuestOptions, 'name' | 'dataset'>> & GuestOptions,
  ) {
    if (!options.name.startsWith('vsbed-')) throw new Error(`test domains must be named vsbed-*: ${options.name}`);
    this.consoleLog = path.join(b.consoleDir, `${options.name}.log`);
  }

  get name(): string {
    return this.options.name;
  }

  get disks(): GuestDisk[] {
    const disks = this.options.disks ?? [{ target: 'vda', format: 'qcow2' }];
    return this.options.fsDisk ? [...disks, { target: this.options.fsDisk, format: 'raw', counter: false }] : disks;
  }

  static async create(options: GuestOptions): Promise<Guest> {
    const b = await bed();
    checkExtras(options);
    const g = new Guest(b, options);
    await g.remove();
    rmSync(g.consoleLog, { force: true });
    // Overlays and RAM files an interrupted earlier test run left for this guest.
    for (const f of readdirSync(b.overlayDir)) if (f.startsWith(`${options.name}.`)) rmSync(path.join(b.overlayDir, f), { recursive: true, force: true });
    for (const ds of new Set([options.dataset, ...g.disks.map((d) => d.dataset ?? options.dataset)])) {
      if (!(await datasetExists(ds))) await sh('zfs', ['create', '-p', ds]);
    }
    const devices: string[] = [];
    for (const d of g.disks) {
      const file = await g.imagePath(d);
      await sh('qemu-img', ['create', '-q', '-f', d.format, file, '64M']);
      const isFs = d.target === options.fsDisk;
      // ext4: it has a journal, and ext4_freeze clears needs_recovery, so a
      // copy taken while frozen is clean. Everything initialised now, nothing
      // discarded: otherwise the guest's ext4lazyinit zeroes inode tables in
      // the background after the mount (write-zeroes, fallocate on the image),
      // work the oracle would share its vCPU with; and the dataset of such a
      // guest was seen to stay busy in zfs-fuse for minutes after it stopped.
      if (isFs) await sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'lazy_itable_init=0,lazy_journal_init=0,nodiscard', '-L', 'vsbedfs', file]);
      devices.push(
        `<disk type='file' device='disk'><driver name='qemu' type='${d.format}'/><source file='${xmlEscape(file)}'/><target dev='${d.target}' bus='virtio'/>${isFs ? `<serial>${FS_SERIAL}</serial>` : ''}</disk>`,
      );
    }
    if (options.agent) devices.push(`<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`);
    if (options.cdrom) {
      const iso = path.join(await mountpointOf(options.dataset), `${options.name}-media.iso`);
      writeFileSync(iso, Buffer.alloc(1024 * 1024));
      devices.push(
        `<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='${xmlEscape(iso)}'/><target dev='hdc' bus='ide'/><readonly/></disk>`,
      );
    }
    const counterDisks = g.disks.filter((d) => d.counter !== false).map((d) => d.target);
    let firmware = '';
    if (options.nvram) {
      mkdirSync(path.join(b.dir, 'nvram'), { recursive: true });
      const vars = g.nvramPath();
      writeFileSync(vars, randomBytes(128 * 1024));
      firmware = `<loader readonly='yes' type='pflash'>${b.dir}/nvram/none_CODE.fd</loader><nvram>${xmlEscape(vars)}</nvram>`;
    }
    const xml = `<domain type='${b.virtType}'>
  <name>${xmlEscape(options.name)}</name>
  <memory unit='MiB'>${memoryOf(options)}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${b.kernel}</kernel><initrd>${b.initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 loglevel=5 vsbed.disks=${counterDisks.join(',') || 'none'}${extrasCmdline(options)}</cmdline>${firmware}</os>
  ${options.nvram ? '<features><acpi/></features>' : ''}
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    ${devices.join('\n    ')}
    <serial type='file'><source path='${xmlEscape(g.consoleLog)}' append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>`;
    const dir = mkdtempSync('/tmp/vsbed-xml-');
    try {
      writeFileSync(path.join(dir, 'domain.xml'), xml);
      await virsh('define', path.join(dir, 'domain.xml'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    g.uuid = (await virsh('domuuid', options.name)).trim();
    return g;
  }

  nvramPath(): string {
    return path.join(this.b.dir, 'nvram', `${this.name}_VARS.fd`);
  }

  async imagePath(d: GuestDisk): Promise<string> {
    return path.join(await mountpointOf(d.dataset ?? this.options.dataset), `${this.name}-${d.target}.${d.format}`);
  }

  /**
   * Starts the guest; returns once the oracle ticks and, when asked for,
   * the fs is mounted and the agent answers (not waiting for the fill).
   */
  async start(): Promise<void> {
    const offset = this.consoleSize();
    this.bootOffset = offset;
    await virsh('start', this.name);
    await this.waitForConsole(/TICK \d+/, offset, BOOT_TIMEOUT_MS);
    // A memory oracle that died at boot (OOM) would only show as "no sweeps" at the first restore.
    if (this.memoryOracle) {
      const text = await this.waitForConsole(/VSBED MEM (?:up|failed)|Killed process \d+ \(vsbed-memorac/, offset, BOOT_TIMEOUT_MS);
      if (!/VSBED MEM up/.test(text)) throw new Error(`${this.name}: the memory oracle did not start (${/Killed process/.test(text) ? 'OOM-killed: give the guest more memoryMiB' : 'mmap failed'})`);
    }
    if (this.options.fsDisk) await this.waitForExtra(/VSBED FS up[^\n]*/, BOOT_TIMEOUT_MS);
    if (this.options.agent) {
      await this.waitForExtra(/VSBED AGENT up[^\n]*/, BOOT_TIMEOUT_MS);
      await this.pingAgent();
    }
  }

  /** Waits for the fill of `fillMiB` (since the last start) and returns its line. */
  async waitForFill(timeoutMs = FILL_TIMEOUT_MS): Promise<string> {
    if (!this.options.fillMiB) throw new Error(`${this.name} has no fillMiB`);
    return this.waitForExtra(/VSBED FILL done[^\n]*/, timeoutMs);
  }

  /**
   * The first line matching `pattern` since the last start; throws at once
   * when one of the guest's extras says it failed.
   */
  private async waitForExtra(pattern: RegExp, timeoutMs: number): Promise<string> {
    const either = new RegExp(`${pattern.source}|${EXTRA_FAILED.source}`);
    const text = await this.waitForConsole(either, this.bootOffset, timeoutMs);
    const failed = EXTRA_FAILED.exec(text);
    if (failed) throw new Error(`${this.name}: ${failed[0].trim()}`);
    return pattern.exec(text)![0].trim();
  }

  /** A command to the guest agent (JSON in, JSON text out). */
  async agentCommand(command: object, timeoutSeconds = 10): Promise<string> {
    return (await virsh('qemu-agent-command', this.name, JSON.stringify(command), '--timeout', String(timeoutSeconds))).trim();
  }

  /**
   * guest-ping until the agent answers: qemu-ga has the port open, but
   * libvirt connects only when QEMU reports the port opened.
   */
  async pingAgent(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.agentCommand({ execute: 'guest-ping' });
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`${this.name}: the guest agent does not answer guest-ping: ${(err as Error).message}`);
        await sleep(500);
      }
    }
  }

  /**
   * `e2fsck -fn` of a copy of the fs disk's image (never of the image a
   * running guest has open). Clean: exit 0, and not one thing e2fsck would
   * have fixed or replayed. Exit 0 alone is not enough: e2fsck -n exits 0
   * on a copy of a mounted ext4 whose journal it skipped ("skipping journal
   * recovery") and whose free counts are stale ("Fix? no").
   */
  async fsckImage(file: string): Promise<{ clean: boolean; output: string }> {
    try {
      const out = await run('e2fsck', ['-fn', file], { timeoutMs: 60_000 });
      const output = out.stdout + out.stderr;
      return { clean: !/journal recovery|Fix\? no|needs_recovery/i.test(output), output };
    } catch (err) {
      if (!(err instanceof CommandError)) throw err;
      return { clean: false, output: `${err.stdout}${err.stderr}\n(exit ${err.status})` };
    }
  }

  async state(): Promise<string> {
    try {
      return (await virsh('domstate', this.name)).trim();
    } catch {
      return 'undefined';
    }
  }

  /**
   * Stops the guest and waits for its console log to settle: virtlogd may
   * append the last lines of a destroyed guest a moment later, and they must
   * not be read as the output of the next guest on the same log.
   */
  async stop(): Promise<void> {
    if ((await this.state()) === 'shut off') return;
    await virsh('destroy', this.name).catch(() => undefined);
    let size = this.consoleSize();
    for (let stable = 0, i = 0; stable < 5 && i < 50; i++) {
      await sleep(100);
      const now = this.consoleSize();
      stable = now === size ? stable + 1 : 0;
      size = now;
    }
  }

  async sources(): Promise<Record<string, string>> {
    const out = await virsh('domblklist', this.name);
    const map: Record<string, string> = {};
    for (const line of out.split('\n')) {
      const m = /^\s*(\S+)\s+(.+?)\s*$/.exec(line);
      if (m) map[m[1]!] = m[2]!;
    }
    return map;
  }

  consoleSize(): number {
    try {
      return statSync(this.consoleLog).size;
    } catch {
      return 0;
    }
  }

  consoleSince(offset: number): string {
    try {
      return readFileSync(this.consoleLog).subarray(offset).toString('latin1');
    } catch {
      return '';
    }
  }

  /** Waits for `pattern` to appear on the console after `offset`. */
  async waitForConsole(pattern: RegExp, offset: number, timeoutMs = 60_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = this.consoleSince(offset);
      if (pattern.test(text)) return text;
      if (Date.now() > deadline) {
        throw new Error(`${this.name}: no ${pattern} on the console within ${timeoutMs / 1000}s; last output: ${text.slice(-300)}`);
      }
      await sleep(200);
    }
  }

  /**
   * Lets the oracle run `ticks` progress lines after `offset` and returns the
   * console text since then: a restored guest that disagrees with its disk
   * prints MISMATCH before its next TICK.
   */
  async oracleAfter(offset: number, ticks = 2, timeoutMs = 60_000): Promise<string> {
    const pattern = new RegExp(`(TICK \\d+[\\s\\S]*){${ticks}}`);
    return this.waitForConsole(pattern, offset, timeoutMs);
  }

  /** Whether the memory oracle runs in this guest. */
  get memoryOracle(): boolean {
    return (this.options.memMiB ?? DEFAULT_MEM_MIB) > 0;
  }

  /**
   * Watches this guest's console from `offset` (taken before a restore or a
   * thaw) through `watchConsole`: every oracle, progress, still running.
   */
  async watch(offset: number, rule: Partial<WatchRule> = {}): Promise<Watch> {
    return watchConsole(this.consoleLog, offset, this.name, { ...(this.memoryOracle ? {} : { sweeps: 0 }), ...rule });
  }

  async remove(): Promise<void> {
    await this.stop();
    await virsh('undefine', this.name, '--nvram').catch(() => virsh('undefine', this.name).catch(() => undefined));
  }
}

/** What a watch of a restored guest saw: its console since the mark, the progress, and every problem. */
export interface Watch {
  text: string;
  progress: Progress;
  /** Empty when the restore was whole: no oracle spoke, no kernel trouble, no reboot, progress, still running. */
  problems: string[];
}

/**
 * Watches a restored (or thawed) guest's console from `offset` until both
 * oracles have made `rule`'s progress, a line says it was not whole, or the
 * time is up (test/helpers/oracle.ts has the rules); then asks libvirt that
 * the domain still runs.
 */
export async function watchConsole(log: string, offset: number, domain: string, rule: Partial<WatchRule> = {}): Promise<Watch> {
  const r: WatchRule = { ...DEFAULT_WATCH, ...rule };
  const deadline = Date.now() + r.timeoutMs;
  let text = '';
  for (;;) {
    text = consoleText(log, offset);
    const bad = oracleProblems(text);
    if (bad.length > 0 || enoughProgress(progressOf(text), r) || Date.now() > deadline) break;
    await sleep(250);
  }
  // What the guest printed while it was being judged still counts.
  await sleep(300);
  text = consoleText(log, offset);
  const progress = progressOf(text);
  const problems = oracleProblems(text);
  const stall = stalled(progress, r);
  if (stall !== null) problems.push(stall);
  const state = (await virsh('domstate', domain).catch(() => 'undefined')).trim();
  if (state !== 'running') problems.push(`the guest is ${state}, not running (a panic reboots it, and it is defined to stop on reboot)`);
  return { text, progress, problems };
}

function consoleText(log: string, offset: number): string {
  try {
    return readFileSync(log).subarray(offset).toString('latin1');
  } catch {
    return '';
  }
}

/** The console log of a domain the tests did not create (a restored clone). */
export async function consoleLogOf(name: string): Promise<string> {
  return path.join((await bed()).consoleDir, `${name}.log`);
}

/** Where a domain's console stands now: take it before restoring `name`, watch from it after (its log is appended to). */
export async function consoleMark(name: string): Promise<number> {
  try {
    return statSync(await consoleLogOf(name)).size;
  } catch {
    return 0;
  }
}

/** `watchConsole` for a domain the tests did not create (a restored clone), from `mark` (consoleMark before the restore). */
export async function watchDomain(name: string, mark: number, rule: Partial<WatchRule> = {}): Promise<Watch> {
  return watchConsole(await consoleLogOf(name), mark, name, rule);
}

/** Waits for `pattern` in a console log after `offset`; returns the offset right after the match. */
export async function waitForText(log: string, offset: number, pattern: RegExp, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const buf = (() => {
      try {
        return readFileSync(log).subarray(offset);
      } catch {
        return Buffer.alloc(0);
      }
    })();
    const m = pattern.exec(buf.toString('latin1'));
    if (m !== null) return offset + m.index + m[0].length;
    if (Date.now() > deadline) throw new Error(`no ${pattern} in ${log} within ${timeoutMs / 1000}s; last output: ${buf.toString('latin1').slice(-300)}`);
    await sleep(200);
  }
}

/** Fails the test, with the console's end, unless the watch found the restore whole. */
export function assertWhole(w: Watch, what: string): void {
  assert.deepEqual(w.problems, [], `${what} must restore whole:\n${w.text.slice(-800)}`);
}

export function mismatches(consoleText: string): string[] {
  return consoleText.split('\n').filter((l) => l.includes('MISMATCH'));
}

export function lastTick(consoleText: string): number {
  const ticks = [...consoleText.matchAll(/TICK (\d+)/g)];
  return ticks.length === 0 ? -1 : Number(ticks[ticks.length - 1]![1]);
}

/** The new options' bad values, before anything is made. */
function checkExtras(options: GuestOptions): void {
  const { fillMiB, fsDisk, memMiB } = options;
  if (fillMiB !== undefined && !(Number.isInteger(fillMiB) && fillMiB > 0)) throw new Error(`fillMiB must be a whole number of MiB above 0: ${fillMiB}`);
  if (memMiB !== undefined && !(Number.isInteger(memMiB) && memMiB >= 0)) throw new Error(`memMiB must be a whole number of MiB (0: no memory oracle): ${memMiB}`);
  if (fsDisk !== undefined) {
    if (!/^vd[a-z]+$/.test(fsDisk)) throw new Error(`fsDisk must be a virtio target like vdz: ${fsDisk}`);
    // libvirt orders disks, and so their PCI slots and guest names, by target.
    const others = (options.disks ?? [{ target: 'vda' }]).map((d) => d.target);
    const after = (a: string, b: string): boolean => a.length > b.length || (a.length === b.length && a > b);
    if (!others.every((t) => after(fsDisk, t))) throw new Error(`fsDisk ${fsDisk} must sort after the other disks (${others.join(', ')})`);
  }
}

/** The kernel command line words of the new options; none without them. */
function extrasCmdline(options: GuestOptions): string {
  const mem = options.memMiB ?? DEFAULT_MEM_MIB;
  const pace = options.pace ?? DEFAULT_PACE;
  return [
    mem > 0 ? ` vsbed.mem=${mem}:${options.memPauseMs ?? DEFAULT_MEM_PAUSE_MS}` : '',
    pace > 0 ? ` vsbed.pace=${pace}` : '',
    options.fillMiB ? ` vsbed.fill=${options.fillMiB}${options.fillKind === 'text' ? ':text' : ''}` : '',
    options.agent ? ' vsbed.agent=1' : '',
    options.fsDisk ? ` vsbed.fs=${FS_SERIAL}` : '',
  ].join('');
}

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

export interface SanoidRun {
  stdout: string;
  stderr: string;
  code: number;
}

/**
 * Runs a real sanoid with `conf` as its sanoid.conf. Only sanoid (not the
 * hooks, nor the code under test) gets the zfs-fuse adapter first on PATH.
 * `hoursAhead` runs sanoid's clock that far ahead (libfaketime), so a new
 * hourly/daily snapshot is due without waiting for one.
 */
export async function runSanoid(
  version: SanoidVersion,
  conf: string,
  args: string[],
  options: { hoursAhead?: number; env?: Record<string, string>; configDir?: string; root?: string; program?: string } = {},
): Promise<SanoidRun> {
  const b = await bed();
  // In a Debian root (the package test on Debian 13), sanoid sees the bed's dir, not this host's /tmp.
  const tmp = options.root === undefined ? '/tmp' : path.join(b.dir, 'tests');
  const dir = mkdtempSync(path.join(tmp, 'vsbed-sanoid-'));
  mkdirSync(path.join(dir, 'cache'));
  mkdirSync(path.join(dir, 'run'));
  const configDir = options.configDir ?? dir;
  mkdirSync(configDir, { recursive: true });
  writeFileSync(path.join(configDir, 'sanoid.conf'), conf);
  const env: Record<string, string> = {
    PATH: `${b.sanoidPath}:/usr/sbin:/usr/bin:/sbin:/bin`,
    TZ: 'UTC',
    ...options.env,
  };
  if (options.hoursAhead) {
    env.LD_PRELOAD = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
    env.FAKETIME = `+${options.hoursAhead}h`;
    env.FAKETIME_DONT_FAKE_MONOTONIC = '1';
  }
  const argv = [options.program ?? b.sanoid[version], '--configdir', configDir, '--cache-dir', path.join(dir, 'cache'), '--run-dir', path.join(dir, 'run'), ...args];
  const command = ['/usr/bin/env', '-i', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...argv];
  try {
    const out = options.root === undefined ? await run(command[0]!, command.slice(1), { timeoutMs: 600_000 }) : await run('chroot', [options.root, ...command], { timeoutMs: 600_000 });
    return { ...out, code: 0 };
  } catch (err) {
    const e = err as { status?: number; stderr?: string; message: string };
    return { stdout: '', stderr: e.stderr ?? e.message, code: e.status ?? -1 };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Runs Debian's syncoid 2.1.0 locally, `source` (a dataset in the bed's pool)
 * to `target` (in the backup pool), with `args` before them. Like sanoid it
 * gets the zfs-fuse adapter first on PATH (`zfs get -t`), and always
 * `--no-resume`: zfs-fuse has no resumable receive (no
 * feature@extensible_dataset, no `receive -s`/`-A`, no receive_resume_token);
 * without the option syncoid probes the pools for it and warns. What else it
 * runs that zfs-fuse lacks, `zfs send -nvP` for the size estimate, it
 * survives on its own: it prints "(~ UNKNOWN)" and gives pv `-s 0`. It takes
 * a sync snapshot syncoid_<host>_<date> on the source unless `args` has
 * `--no-sync-snap`; pv's progress lines go to stderr unless `--quiet`.
 */
export async function runSyncoid(
  source: string,
  target: string,
  args: string[] = [],
  options: { env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<SyncoidRun> {
  const b = await bed();
  const k = await backup();
  // syncoid appends /bin:/usr/bin:/sbin to PATH itself.
  const env: Record<string, string> = { PATH: `${b.sanoidPath}:/usr/sbin:/usr/bin:/sbin:/bin`, TZ: 'UTC', ...options.env };
  const argv = [k.syncoid, '--no-resume', ...args, source, target];
  try {
    const out = await run('/usr/bin/env', ['-i', ...Object.entries(env).map(([name, value]) => `${name}=${value}`), ...argv], { timeoutMs: options.timeoutMs ?? 120_000 });
    return { ...out, code: 0 };
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    // syncoid says much of what went wrong on stdout (WARN, CRITICAL lines).
    return { stdout: err.stdout, stderr: err.timedOut ? `syncoid timed out\n${err.stderr}` : err.stderr, code: err.timedOut ? -1 : err.status };
  }
}

export type SyncoidRun = SanoidRun;

/**
 * A hook command line for sanoid.conf. Hooks must not run under sanoid's
 * faked clock: `env -u` drops libfaketime before our code starts.
 */
export function hookCommand(program: string, env: Record<string, string> = {}): string {
  const vars = Object.entries(env).map(([k, v]) => `${k}=${shellQuote(v)}`);
  return ['/usr/bin/env', '-u', 'LD_PRELOAD', '-u', 'FAKETIME', ...vars, shellQuote(program)].join(' ');
}

export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A small shell hook that appends its SANOID_* environment, one JSON object a line, to `logFile`. */
export function writeEnvLoggingHook(file: string, logFile: string): void {
  writeFileSync(
    file,
    `#!/bin/sh
{
  printf '{'
  env | grep '^SANOID_' | sort | sed 's/\\\\/\\\\\\\\/g; s/"/\\\\"/g; s/^\\([^=]*\\)=\\(.*\\)$/"\\1":"\\2",/' | tr -d '\\n'
  printf '"argv0":"%s"}\\n' "$0"
} >> ${shellQuote(logFile)}
`,
  );
  chmodSync(file, 0o755);
  appendFileSync(logFile, '');
}

/**
 * Restores a RAM dump onto a clone of `snapshot` (the original dataset is
 * left as it is) and watches the restored guest (Guest.watch). The guest is
 * stopped first and again afterwards, and the clone destroyed.
 */
export async function restoreOnClone(guest: Guest, dumpFile: string, snapshot: string, rule: Partial<WatchRule> = {}, how: string[] = ['--running']): Promise<Watch> {
  const b = await bed();
  const [dataset] = snapshot.split('@') as [string];
  const parent = `${b.pool}/restore`;
  if (!(await datasetExists(parent))) await sh('zfs', ['create', parent]);
  const clone = `${parent}/r-${guest.uuid.slice(0, 8)}`;
  await destroyDataset(clone);
  await sh('zfs', ['clone', snapshot, clone]);
  const from = await mountpointOf(dataset);
  const to = await mountpointOf(clone);
  const dir = mkdtempSync('/tmp/vsbed-restore-');
  try {
    // libvirt writes attributes in single quotes, escaping ' " & < >.
    const xml = (await virsh('save-image-dumpxml', dumpFile)).split(`'${xmlEscape(from)}/`).join(`'${xmlEscape(to)}/`);
    if (!xml.includes(`'${xmlEscape(to)}/`)) throw new Error(`no disk of ${guest.name} is under ${from}: cannot point it at the clone`);
    writeFileSync(path.join(dir, 'domain.xml'), xml);
    await guest.stop();
    const offset = guest.consoleSize();
    await virsh('restore', dumpFile, '--xml', path.join(dir, 'domain.xml'), ...how);
    return await guest.watch(offset, rule);
  } finally {
    await guest.stop();
    rmSync(dir, { recursive: true, force: true });
    await destroyDataset(clone);
  }
}
