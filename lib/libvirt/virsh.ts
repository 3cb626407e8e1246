// libvirt, reached through virsh: the npm binding (node-libvirt) does not
// build on Node 20 and @unraid/libvirt has no snapshots or block jobs.
//
// Domains are addressed by UUID once found: virsh takes a numeric name for a
// domain ID and a name starting with -- for an option, a UUID is neither.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CommandError, LibvirtError } from '../errors.js';
import { run } from '../exec.js';
import type { DomainDef } from './domain-xml.js';
import { parseVirshVersion, type Stack } from './stack.js';

/**
 * The XML parser, loaded on first use: fast-xml-parser costs ~40 ms of CPU
 * to load, and most hook calls (post and prune with nothing to do, pre on a
 * host without domains) never parse a domain.
 */
async function parseXml(xml: string): Promise<DomainDef> {
  const { parseDomainXml } = await import('./domain-xml.js');
  return parseDomainXml(xml);
}

/** `virsh capabilities` / `domcapabilities` parsers, loaded on first use like parseXml: only a restore asks. */
function capabilitiesModule(): Promise<typeof import('./capabilities.js')> {
  return import('./capabilities.js');
}

/** A libvirt network and whether it runs (an interface on an inactive network keeps its domain from starting). */
export interface NetworkState {
  name: string;
  active: boolean;
}

/**
 * `virsh -q net-list --all` (under LC_ALL=C): ` default   inactive   no   yes`,
 * columns name, state, autostart, persistent. Read from the right, so a
 * name with spaces stays whole.
 */
export function parseNetList(out: string): NetworkState[] {
  return out.split('\n').flatMap((line) => {
    const m = /^\s*(.+?)\s+(active|inactive)\s+(?:yes|no)\s+(?:yes|no)\s*$/.exec(line);
    return m ? [{ name: m[1]!, active: m[2] === 'active' }] : [];
  });
}

export type DomainState = 'running' | 'paused' | 'shut off' | 'pmsuspended' | 'crashed' | 'in shutdown' | 'blocked' | 'idle' | 'dying';

export interface Domain extends DomainDef {
  state: DomainState;
  /** The live definition, as `virsh dumpxml` printed it. */
  xml: string;
}

/** What libvirt reports about a finished job (`virsh domjobinfo --completed`). */
export interface CompletedJob {
  elapsedMs: number | null;
  downtimeMs: number | null;
  memoryBytes: number | null;
}

export interface RestoreOptions {
  /** Alternative domain XML (disk paths changed, for a clone). */
  xmlFile?: string;
  paused?: boolean;
}

export interface LibvirtClientOptions {
  uri: string;
  /** Bound for quick calls (state, XML, lists). */
  timeoutMs?: number;
}

/** A number from `virsh domjobinfo` output, in ms or bytes. */
function jobField(out: string, label: string): number | null {
  const m = new RegExp(`^${label}:\\s+([0-9.]+)\\s*(\\S*)`, 'm').exec(out);
  if (!m) return null;
  const scale: Record<string, number> = { ms: 1, B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };
  return Math.round(Number(m[1]) * (scale[m[2] ?? ''] ?? 1));
}

/** `virsh -q blockjob DOMAIN DISK --raw`: ` type=Active Block Commit`, `cur=`, `end=` lines for a job, nothing for none. */
export function blockJobInRaw(out: string): boolean {
  return /^\s*type=/m.test(out);
}

/** libvirt's words for a domain it does not know (virsh says "failed to get domain" for a UUID lookup). */
const NOT_FOUND = /not found|no domain|failed to get domain/i;

/** At most this many domains per virsh call: virsh takes its commands as one argument, and one argument may hold 128 KiB. */
const BATCH = 200;

/**
 * The commands that print the state and live XML of `uuids` in one virsh
 * run (virsh's own parser splits them at `;`; no shell is involved). Each
 * output is preceded by an `echo` of `marker`: a random word, so no text in
 * a domain's XML can pass for one. A command that fails prints nothing on
 * stdout and virsh goes on with the next, so an empty section is how a
 * failure shows.
 */
export function describeCommands(uuids: readonly string[], marker: string): string {
  return [...uuids.flatMap((u) => [`echo ${marker} state ${u}`, `domstate ${u}`, `echo ${marker} xml ${u}`, `dumpxml ${u}`]), `echo ${marker} end`].join(' ; ');
}

/**
 * Splits the output of describeCommands into state and XML per domain.
 * Without -q virsh prints an empty line after each command's output (none
 * after echo): one trailing newline is dropped, the rest is exactly what
 * `virsh -q dumpxml` prints. A domain whose state or XML is missing is left
 * out: the caller asks for it alone, where its error can be told apart.
 */
export function parseDescribe(out: string, marker: string): Map<string, { state: DomainState; xml: string }> {
  const sections = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const line of out.split('\n')) {
    const m = line.startsWith(`${marker} `) ? /^\S+ (state|xml|end)(?: (\S+))?$/.exec(line) : null;
    if (m !== null) {
      current = m[1] === 'end' ? null : [];
      if (current !== null) sections.set(`${m[1]} ${m[2]}`, current);
      continue;
    }
    current?.push(line);
  }
  const result = new Map<string, { state: DomainState; xml: string }>();
  for (const [key, lines] of sections) {
    if (!key.startsWith('state ')) continue;
    const uuid = key.slice('state '.length);
    const state = lines.join('\n').trim();
    const xml = (sections.get(`xml ${uuid}`) ?? []).join('\n').replace(/\n*$/, '\n');
    if (state === '' || state.includes('\n') || !xml.trimStart().startsWith('<domain')) continue;
    result.set(uuid, { state: state as DomainState, xml });
  }
  return result;
}

export function parseStateReason(out: string): { state: DomainState; reason: string } {
  const m = /^\s*(.+?)\s*(?:\((.*)\))?\s*$/.exec(out.trim()) ?? [];
  return { state: (m[1] ?? out.trim()) as DomainState, reason: m[2] ?? '' };
}

function libvirtText(err: CommandError): string {
  return err.stderr.replace(/\berror: /g, '').trim() || err.message;
}

export class LibvirtClient {
  readonly uri: string;
  private readonly timeoutMs: number;

  constructor(options: LibvirtClientOptions) {
    this.uri = options.uri;
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  private async virsh(args: string[], what: string, options: { timeoutMs?: number; quiet?: boolean } = {}): Promise<string> {
    try {
      const out = await run('virsh', [...(options.quiet === false ? [] : ['-q']), '-c', this.uri, ...args], { timeoutMs: options.timeoutMs ?? this.timeoutMs });
      return out.stdout;
    } catch (err) {
      if (!(err instanceof CommandError)) throw err;
      const reason = err.timedOut ? `no answer from libvirt within ${Math.round((options.timeoutMs ?? this.timeoutMs) / 1000)}s` : libvirtText(err);
      throw new LibvirtError(`${what}: ${reason}`, err.stderr, err.timedOut);
    }
  }

  /** The daemon's libvirt and the hypervisor's QEMU: what lib/libvirt/stack.ts judges. */
  async stack(): Promise<Stack> {
    return parseVirshVersion(await this.virsh(['version', '--daemon'], `cannot reach libvirt at ${this.uri} (is libvirtd running?)`));
  }

  /** UUIDs of every domain, running or not. */
  async listDomainUuids(): Promise<string[]> {
    // The first libvirt call of a run (no separate `virsh version` first, ~20 ms each): its failure is the one users see.
    const out = await this.virsh(['list', '--all', '--uuid'], `cannot reach libvirt at ${this.uri} to list its domains (is libvirtd running?)`);
    return out.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  }

  async state(uuid: string): Promise<DomainState> {
    const out = await this.virsh(['domstate', uuid], `cannot get the state of domain ${uuid}`);
    return out.trim() as DomainState;
  }

  /** The state and libvirt's reason for it: `paused` for an `I/O error`, a `snapshot`, a `user`... */
  async stateReason(uuid: string): Promise<{ state: DomainState; reason: string }> {
    const out = await this.virsh(['domstate', uuid, '--reason'], `cannot get the state of domain ${uuid}`);
    return parseStateReason(out);
  }

  /** Whether libvirt knows the domain (false once it is undefined). */
  async exists(uuid: string): Promise<boolean> {
    try {
      await this.virsh(['domname', uuid], `cannot look up domain ${uuid}`);
      return true;
    } catch (err) {
      if (err instanceof LibvirtError && NOT_FOUND.test(err.libvirtMessage)) return false;
      throw err;
    }
  }

  async dumpxml(uuid: string, inactive = false): Promise<string> {
    return this.virsh(['dumpxml', uuid, ...(inactive ? ['--inactive'] : [])], `cannot get the XML of domain ${uuid}`);
  }

  async domain(uuid: string): Promise<Domain> {
    const xml = await this.dumpxml(uuid);
    const state = await this.state(uuid);
    return { ...(await parseXml(xml)), state, xml };
  }

  /**
   * State and XML of many domains in one virsh run (a virsh call costs tens
   * of ms, most of it virsh starting and connecting). Domains missing from
   * the answer, or all of them if the call fails, are asked for one by one.
   */
  private async describe(uuids: readonly string[]): Promise<Map<string, { state: DomainState; xml: string }>> {
    const result = new Map<string, { state: DomainState; xml: string }>();
    for (let i = 0; i < uuids.length; i += BATCH) {
      const chunk = uuids.slice(i, i + BATCH);
      const marker = `virtsnap-${randomUUID()}`;
      try {
        // Not -q: under -q virsh's echo prints no newline, so a marker would run into the next output.
        const out = await this.virsh([describeCommands(chunk, marker)], `cannot describe ${chunk.length} domain(s)`, { quiet: false });
        for (const [uuid, d] of parseDescribe(out, marker)) if (chunk.includes(uuid)) result.set(uuid, d);
      } catch (err) {
        // virsh exits with the status of its last command: one domain undefined
        // meanwhile fails the whole call. Those not answered are asked alone below.
        if (!(err instanceof LibvirtError)) throw err;
      }
    }
    return result;
  }

  async domains(): Promise<Domain[]> {
    const result: Domain[] = [];
    const uuids = await this.listDomainUuids();
    const described = uuids.length > 1 ? await this.describe(uuids) : new Map<string, { state: DomainState; xml: string }>();
    for (const uuid of uuids) {
      const known = described.get(uuid);
      if (known !== undefined) {
        result.push({ ...(await parseXml(known.xml)), state: known.state, xml: known.xml });
        continue;
      }
      try {
        result.push(await this.domain(uuid));
      } catch (err) {
        // undefined between list and dumpxml: it is gone, not ours to freeze
        if (err instanceof LibvirtError && NOT_FOUND.test(err.libvirtMessage)) continue;
        throw err;
      }
    }
    return result;
  }

  /**
   * External snapshot of memory and the given disks, without libvirt
   * metadata: we commit the overlays away ourselves, so libvirt's record of
   * the snapshot would only be stale. `reuseExternal`: the overlays (and the
   * memory file) exist already and libvirt only opens them (--reuse-external).
   */
  async createSnapshot(uuid: string, snapshotXml: string, options: { live: boolean; timeoutMs: number; reuseExternal?: boolean }): Promise<void> {
    // virsh needs a file: node's stdio pipes are sockets, which /dev/stdin cannot open.
    const dir = mkdtempSync(path.join(tmpdir(), 'virtsnap-'));
    const xmlFile = path.join(dir, 'snapshot.xml');
    try {
      writeFileSync(xmlFile, snapshotXml, { mode: 0o600 });
      const args = ['snapshot-create', uuid, '--xmlfile', xmlFile, '--no-metadata', '--atomic'];
      if (options.live) args.push('--live');
      if (options.reuseExternal === true) args.push('--reuse-external');
      await this.virsh(args, 'external snapshot failed', { timeoutMs: options.timeoutMs });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /**
   * QEMU's migration downtime limit (ms): a live save stops the guest for
   * its last pass once the pages left fit into it. It stays set on the
   * running QEMU for every later migration and save until changed.
   */
  async maxDowntime(uuid: string): Promise<number> {
    const out = await this.virsh(['migrate-getmaxdowntime', uuid], `cannot get the migration downtime limit of domain ${uuid}`);
    const m = /^\s*(\d+)\s*$/.exec(out);
    if (m === null) throw new LibvirtError(`unexpected migrate-getmaxdowntime output: ${JSON.stringify(out.trim())}`, '');
    return Number(m[1]);
  }

  /** Allowed during a snapshot's save: libvirt lets migration-parameter jobs through its snapshot job. */
  async setMaxDowntime(uuid: string, ms: number): Promise<void> {
    await this.virsh(['migrate-setmaxdowntime', uuid, String(ms)], `cannot set the migration downtime limit of domain ${uuid}`);
  }

  async completedJob(uuid: string): Promise<CompletedJob> {
    const out = await this.virsh(['domjobinfo', uuid, '--completed'], `cannot get job info of domain ${uuid}`);
    return { elapsedMs: jobField(out, 'Time elapsed'), downtimeMs: jobField(out, 'Total downtime'), memoryBytes: jobField(out, 'Memory processed') };
  }

  /** Progress of the job running now (a RAM save), or null when none runs. */
  async activeJob(uuid: string): Promise<{ processedBytes: number; totalBytes: number } | null> {
    const out = await this.virsh(['domjobinfo', uuid], `cannot get job info of domain ${uuid}`, { timeoutMs: 5_000 });
    const processed = jobField(out, 'Data processed') ?? jobField(out, 'Memory processed');
    const total = jobField(out, 'Data total') ?? jobField(out, 'Memory total');
    if (/Job type:\s+None/.test(out) || processed === null || total === null || total === 0) return null;
    return { processedBytes: processed, totalBytes: total };
  }

  /**
   * Active block commit of the top image into the one right below it, then
   * pivot. --shallow matters: without it libvirt commits into the deepest
   * image of the chain, which for a disk with its own backing file would
   * write our changes into the shared base image. --wait with --pivot waits
   * for the job to report ready (not for cur == end); on --timeout virsh
   * aborts the job without pivoting, leaving the disk on the overlay.
   */
  async activeCommit(uuid: string, target: string, timeoutMs: number): Promise<void> {
    const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
    await this.virsh(
      ['blockcommit', uuid, target, '--active', '--shallow', '--pivot', '--wait', '--timeout', String(seconds)],
      `block commit of ${target} failed`,
      // virsh gives up (and aborts the job) at --timeout; ours is only for a virsh that hangs.
      { timeoutMs: timeoutMs + Math.min(30_000, timeoutMs) },
    );
  }

  async hasBlockJob(uuid: string, target: string): Promise<boolean> {
    // --raw: under -q, --info prints an empty line for a running job (its
    // progress bar is suppressed) and nothing for none; --raw prints `type=`.
    const out = await this.virsh(['blockjob', uuid, target, '--raw'], `cannot query block jobs of ${target}`);
    return blockJobInRaw(out);
  }

  /**
   * Pivots a commit job that has reached the ready state. Throws while it is
   * not ready yet (libvirt: "not ready for pivot yet"): the caller retries.
   */
  async pivot(uuid: string, target: string): Promise<void> {
    await this.virsh(['blockjob', uuid, target, '--pivot'], `cannot pivot the block job on ${target}`);
  }

  async abortBlockJob(uuid: string, target: string): Promise<void> {
    await this.virsh(['blockjob', uuid, target, '--abort'], `cannot abort the block job on ${target}`);
  }

  async abortJob(uuid: string): Promise<void> {
    await this.virsh(['domjobabort', uuid], `cannot abort the job of domain ${uuid}`);
  }

  /** Freezes the guest's filesystems through the QEMU guest agent; returns how many. */
  async fsFreeze(uuid: string, timeoutMs: number): Promise<number> {
    // Not quiet: `virsh -q` drops the "Froze N filesystem(s)" line, the count we report.
    const out = await this.virsh(['domfsfreeze', uuid], 'the guest agent did not freeze the filesystems', { timeoutMs, quiet: false });
    return Number(/(\d+)/.exec(out)?.[1] ?? 0);
  }

  /** Thaws them; harmless when none is frozen. */
  async fsThaw(uuid: string, timeoutMs: number): Promise<number> {
    const out = await this.virsh(['domfsthaw', uuid], 'the guest agent did not thaw the filesystems', { timeoutMs, quiet: false });
    return Number(/(\d+)/.exec(out)?.[1] ?? 0);
  }

  async resume(uuid: string): Promise<void> {
    await this.virsh(['resume', uuid], `cannot resume domain ${uuid}`);
  }

  async restore(file: string, options: RestoreOptions = {}, timeoutMs = 600_000): Promise<void> {
    const args = ['restore', file];
    if (options.xmlFile) args.push('--xml', options.xmlFile);
    args.push(options.paused ? '--paused' : '--running');
    await this.virsh(args, `cannot restore ${file}`, { timeoutMs });
  }

  /** define may be slow (libvirt re-probes QEMU on some hosts): the caller gives the limit, and reads libvirt's state after a timeout. */
  async define(xmlFile: string, timeoutMs = this.timeoutMs): Promise<void> {
    await this.virsh(['define', xmlFile], `cannot define a domain from ${xmlFile}`, { timeoutMs });
  }

  /** The UUID of the domain called `name`, or null when there is none. */
  async uuidOf(name: string): Promise<string | null> {
    try {
      return (await this.virsh(['domuuid', '--domain', name], `cannot look up domain ${JSON.stringify(name)}`)).trim() || null;
    } catch (err) {
      if (err instanceof LibvirtError && NOT_FOUND.test(err.libvirtMessage)) return null;
      throw err;
    }
  }

  /** Every network libvirt knows, running or not. */
  async networks(): Promise<NetworkState[]> {
    return parseNetList(await this.virsh(['net-list', '--all'], 'cannot list the networks of libvirt'));
  }

  /** `virsh capabilities`: each architecture's virt types, emulator and machine types. */
  async capabilities(): Promise<import('./capabilities.js').GuestCaps[]> {
    const out = await this.virsh(['capabilities'], 'cannot get the capabilities of this host');
    return (await capabilitiesModule()).parseCapabilities(out);
  }

  /** `virsh domcapabilities` for one virt type, and optionally one arch, emulator and machine: CPU modes and models, firmware. */
  async domCapabilities(of: { virtType: string; arch?: string; emulator?: string; machine?: string }): Promise<import('./capabilities.js').DomCaps> {
    const args = ['domcapabilities', '--virttype', of.virtType];
    if (of.arch !== undefined) args.push('--arch', of.arch);
    if (of.emulator !== undefined) args.push('--emulatorbin', of.emulator);
    if (of.machine !== undefined) args.push('--machine', of.machine);
    const out = await this.virsh(args, `cannot get the domain capabilities of this host for ${[of.virtType, of.arch, of.machine].filter((v) => v !== undefined).join(' ')}`);
    return (await capabilitiesModule()).parseDomCapabilities(out);
  }

  async undefine(uuid: string): Promise<void> {
    await this.virsh(['undefine', uuid, '--nvram'], `cannot undefine domain ${uuid}`);
  }

  async destroy(uuid: string): Promise<void> {
    await this.virsh(['destroy', uuid], `cannot stop domain ${uuid}`);
  }
}
