// virtsnap command line: parse arguments, call lib/, print.
import { readFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { formatList, listArchived } from '../lib/commands/list.js';
import { formatGc, formatVerdicts } from '../lib/commands/archive-report.js';
import { doctor, formatFindings } from '../lib/commands/doctor.js';
import { check, parseDuration, UNKNOWN } from '../lib/commands/check.js';
import { discardEntry, recover } from '../lib/recovery.js';
import { parseStarter, watch } from '../lib/watchdog.js';
import { takeSettings } from '../lib/detached.js';
import { stopOnSignals } from '../lib/signals.js';
import { domainStatus, formatStatus } from '../lib/commands/status.js';
import { heldRuns } from '../lib/commands/held.js';

/** `status --held`: a VM is held (1 and 2 are virtsnap's own failures). */
const HELD = 3;
import { collectGarbage } from '../lib/retention.js';
import { verifyDumps } from '../lib/commands/verify.js';
import { ARCHIVER_DEFAULTS, runArchiver } from '../lib/archiver.js';
import { storeFor } from '../lib/stores/index.js';
import { isWaiting, storedAt } from '../lib/manifest.js';
import { assertDatasetName, assertSnapshotName, ZfsClient } from '../lib/zfs.js';
import { oneOffSnapshot } from '../lib/commands/snapshot.js';
import { loadConfig } from '../lib/config.js';
import { UsageError, VirtsnapError } from '../lib/errors.js';
import { LibvirtClient } from '../lib/libvirt/virsh.js';
import { executeRestore, prepareRestore } from '../lib/restore.js';
import { confirm } from '../lib/terminal.js';
import { main } from '../lib/main.js';
import { makeClients, makeDeps } from '../lib/deps.js';
import { MODES, type Mode } from '../lib/mode.js';

const usage = `usage: virtsnap COMMAND [options]

  snapshot DATASET [-r] [--name NAME] [--mode MODE] [--dry-run] [--json]
                      take one consistent ZFS snapshot now (RAM included;
                      MODE ram, pause or quiesce overrides VIRTSNAP_MODE)
  restore DATASET@SNAP (--clone NEW_DATASET | --rollback) [--domain NAME]
          [--as NEW_NAME] [--paused] [--yes] [--destroy-newer] [--ignore-host-gaps]
          [--host NAME] [--trust-dump-xml] [--dry-run] [--json]
                      bring the VMs back running, as they were at the snapshot
                      (on this host or any that received it by zfs recv;
                      --host takes another host's dumps from a shared restic
                      repository, --trust-dump-xml defines one whose XML
                      reaches into this host)
  list [--json] [DATASET]
                      the RAM dumps: stored, or waiting in the spool
  archive [--wait] [--json]
                      store the dumps waiting in the spool now (post starts
                      an archiver that does this on its own); --wait retries
                      while the store is away, as that archiver does
  gc [--dry-run] [--json]
                      drop what no snapshot needs any more (dumps, half-written files)
  verify [--json] [--deep] [DATASET|DOMAIN]
                      check every RAM dump (header, domain XML, sha256)
  recover [--force]   commit back VMs that an interrupted run left on overlays
  recover --discard DOMAIN [--yes]
                      end the journal entry of a VM that can never be thawed
                      (undefined, shut down on its overlays); names what it leaves
  status [--json] [DATASET]
                      each VM: datasets, state, on an overlay?, latest dump
  status --held       exit 3 if a run holds a VM or left one on overlays, in
                      any state dir this host's settings or units name (the
                      package's prerm asks this)
  doctor [--json]     check the host and sanoid.conf, say what to fix
  check [--warn AGE] [--crit AGE] [DATASET]
                      Nagios/Icinga plugin: one line, exit 0 OK, 1 WARNING,
                      2 CRITICAL, 3 UNKNOWN (AGE: 90m, 6h, 2d; default from
                      sanoid.conf: hourly 90m/6h, daily 28h/32h)
  help [COMMAND]      this text, or one command's (also: COMMAND --help)
  --version           virtsnap's version

Hooks for sanoid.conf: hooks/pre-snapshot, hooks/post-snapshot, hooks/prune.
Settings: environment or /etc/virtsnap/virtsnap.env (VIRTSNAP_CONFIG).
Exit codes: 0 done, 1 failed (one line on stderr says what and what to do),
2 bad usage, 130 stopped by a signal (what was frozen is thawed again).
`;

/** One command's lines of the usage text. */
function helpOf(command: string): string | null {
  const lines = usage.split('\n');
  const start = lines.findIndex((l) => l.startsWith(`  ${command} `) || l === `  ${command}`);
  if (start < 0) return null;
  let end = start + 1;
  while (end < lines.length && lines[end]!.startsWith('    ') && !/^  \S/.test(lines[end]!)) end++;
  // `recover` has two forms, one block each.
  while (lines[end]?.startsWith(`  ${command} `)) {
    end++;
    while (end < lines.length && lines[end]!.startsWith('    ')) end++;
  }
  const block = lines.slice(start, end).map((l) => (l.startsWith(`  ${command}`) ? `  virtsnap ${l.slice(2)}` : `         ${l}`));
  return `usage:\n${block.join('\n')}\n`;
}

/** Every command but help and --version works on root's files and libvirt's system connection. */
function assertRoot(): void {
  if (typeof process.geteuid === 'function' && process.geteuid() !== 0) {
    throw new VirtsnapError(`virtsnap needs root (libvirt's system connection, ZFS, ${'/var/lib/virtsnap'} are root's): run it with sudo`);
  }
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function print(value: unknown, json: boolean, text: () => string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : text());
}

function parse<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}: see \`virtsnap help\``);
  }
}

const commands: Record<string, (args: string[]) => Promise<number | void>> = {
  async snapshot(args) {
    const { values, positionals } = parse(args, {
      recursive: { type: 'boolean', short: 'r' },
      name: { type: 'string' },
      mode: { type: 'string' },
      'dry-run': { type: 'boolean', short: 'n' },
      json: { type: 'boolean' },
    });
    if (positionals.length !== 1) throw new UsageError('virtsnap snapshot needs exactly one DATASET: virtsnap snapshot tank/vm');
    const config = loadConfig();
    if (typeof values.mode === 'string') {
      if (!(MODES as readonly string[]).includes(values.mode)) throw new UsageError(`--mode ${values.mode}: use ram, pause or quiesce`);
      config.mode = { fallback: values.mode as Mode, byType: {} };
    }
    const deps = makeDeps(config, { ownerPid: process.pid });
    const result = await oneOffSnapshot(
      {
        dataset: positionals[0]!,
        recursive: values.recursive === true,
        ...(typeof values.name === 'string' ? { name: values.name } : {}),
        dryRun: values['dry-run'] === true,
      },
      deps,
    );
    if (values['dry-run']) {
      process.stdout.write(JSON.stringify(result.plan, null, 2) + '\n');
      return;
    }
    print(result.dumps.map((d) => d.manifest), values.json === true, () =>
      `${result.snapshots.join(' ')} (${result.plan.mode} mode): ${result.dumps.length} RAM dump(s)\n${result.dumps.map((d) => `  ${d.manifest.domain.name}: ${storedAt(d.manifest)}${isWaiting(d.manifest) ? ' (waiting for the archiver)' : ''}\n`).join('')}`,
    );
  },

  async restore(args) {
    const { values, positionals } = parse(args, {
      clone: { type: 'string' },
      rollback: { type: 'boolean' },
      domain: { type: 'string' },
      as: { type: 'string' },
      paused: { type: 'boolean' },
      yes: { type: 'boolean', short: 'y' },
      'destroy-newer': { type: 'boolean' },
      'ignore-host-gaps': { type: 'boolean' },
      host: { type: 'string' },
      'trust-dump-xml': { type: 'boolean' },
      // Before 0.2: --force meant both. It now only skips the question, like --yes.
      force: { type: 'boolean' },
      'dry-run': { type: 'boolean', short: 'n' },
      json: { type: 'boolean' },
    });
    const yes = values.yes === true || values.force === true;
    if (positionals.length !== 1 || !positionals[0]!.includes('@')) {
      throw new UsageError('virtsnap restore needs one DATASET@SNAPSHOT: virtsnap restore tank/vm@autosnap_... --clone tank/vm-restored');
    }
    if ((values.clone === undefined) === (values.rollback !== true)) throw new UsageError('virtsnap restore needs exactly one of --clone NEW_DATASET and --rollback');
    const [dataset, snapname] = positionals[0]!.split('@') as [string, string];
    assertDatasetName(dataset, 'virtsnap restore');
    assertSnapshotName(snapname, 'virtsnap restore');
    if (typeof values.clone === 'string') assertDatasetName(values.clone, '--clone');
    const config = loadConfig();
    const deps = { ...makeClients(config), config, stop: stopOnSignals() };
    const prepared = await prepareRestore(
      {
        snapshot: positionals[0]!,
        mode: typeof values.clone === 'string' ? { kind: 'clone', dataset: values.clone } : { kind: 'rollback' },
        destroyNewer: values['destroy-newer'] === true,
        paused: values.paused === true,
        ignoreHostGaps: values['ignore-host-gaps'] === true,
        trustDumpXml: values['trust-dump-xml'] === true,
        ...(typeof values.host === 'string' ? { repoHost: values.host } : {}),
        ...(typeof values.domain === 'string' ? { domain: values.domain } : {}),
        ...(typeof values.as === 'string' ? { as: values.as } : {}),
      },
      deps,
    );
    const { plan } = prepared;
    if (values['dry-run']) {
      prepared.release();
      process.stdout.write(JSON.stringify(plan, null, 2) + '\n');
      return plan.problems.length > 0 ? 1 : 0;
    }
    for (const w of plan.warnings) process.stderr.write(`virtsnap: WARNING: ${w}\n`);
    if (plan.problems.length > 0) {
      for (const p of plan.problems.slice(1)) process.stderr.write(`virtsnap: ERROR: ${p}\n`);
      throw new VirtsnapError(plan.problems[0]!);
    }
    if ((plan.stop.length > 0 || plan.newer.length > 0) && !yes) {
      const stop = plan.stop.length > 0 ? `stop ${plan.stop.join(', ')} and ` : '';
      const destroy = plan.newer.length > 0 ? `, destroying ${plan.newer.length} newer snapshot(s)` : '';
      const question = `${stop}roll back ${plan.datasets.join(', ')} to @${plan.snapname}${destroy}?`;
      if (!(await confirm(question[0]!.toUpperCase() + question.slice(1)))) {
        throw new UsageError(`not confirmed: ${question.slice(0, -1)} needs a yes on a terminal, or --yes`);
      }
    }
    const result = await executeRestore(prepared, deps);
    print(result, values.json === true, () => result.messages.join('\n') + '\n');
  },

  async list(args) {
    const { values, positionals } = parse(args, { json: { type: 'boolean' } });
    if (positionals.length > 1) throw new UsageError('virtsnap list takes at most one DATASET');
    const config = loadConfig();
    const dumps = await listArchived(config, storeFor(config), new ZfsClient(), positionals[0]);
    print(dumps, values.json === true, () => formatList(dumps));
  },

  async gc(args) {
    const { values, positionals } = parse(args, { 'dry-run': { type: 'boolean', short: 'n' }, json: { type: 'boolean' } });
    if (positionals.length > 0) throw new UsageError('virtsnap gc takes no DATASET: it sweeps the whole archive');
    const config = loadConfig();
    const report = await collectGarbage(config, new ZfsClient(), storeFor(config), { dryRun: values['dry-run'] === true });
    print(report, values.json === true, () => formatGc(report, values['dry-run'] === true));
  },

  async verify(args) {
    const { values, positionals } = parse(args, { json: { type: 'boolean' }, deep: { type: 'boolean' } });
    if (positionals.length > 1) throw new UsageError('virtsnap verify takes at most one DATASET or DOMAIN');
    const config = loadConfig();
    const verdicts = await verifyDumps(config, storeFor(config), positionals[0], { deep: values.deep === true });
    if (positionals[0] !== undefined && verdicts.length === 0) {
      throw new VirtsnapError(`no RAM dump of a domain or dataset ${JSON.stringify(positionals[0])} in the archive: see \`virtsnap list\``);
    }
    print(verdicts, values.json === true, () => formatVerdicts(verdicts));
    return verdicts.every((v) => v.ok) ? 0 : 1;
  },

  async recover(args) {
    const { values, positionals } = parse(args, { force: { type: 'boolean' }, discard: { type: 'string' }, yes: { type: 'boolean', short: 'y' } });
    if (positionals.length > 0) throw new UsageError('virtsnap recover takes no arguments besides --force, or --discard DOMAIN [--yes]');
    const deps = makeDeps(loadConfig(), { ownerPid: process.pid });
    if (typeof values.discard === 'string') {
      const question = `End the journal entry of ${JSON.stringify(values.discard)} without thawing it (its RAM dump is deleted, its overlays are kept)?`;
      if (values.yes !== true && !(await confirm(question))) {
        throw new UsageError(`not confirmed: recover --discard ${values.discard} needs a yes on a terminal, or --yes`);
      }
      const r = await discardEntry(deps, values.discard);
      process.stdout.write(
        `${r.domain}: journal entry ended\n` +
          r.leftBehind.map((f) => `  left behind (the VM's writes since the freeze): ${f}\n`).join('') +
          r.staleSnapshots.map((s) => `  holds its disk from before the freeze: ${s}\n`).join(''),
      );
      return;
    }
    const result = await recover(deps, { force: values.force === true });
    if (result.recovered.length + result.skipped.length + result.failed.length === 0) {
      process.stdout.write('nothing to recover\n');
    }
    return result.failed.length > 0 ? 1 : 0;
  },

  // Started detached by post, recover, the watchdog and the pre hook (lib/archiver.ts) with --wait --settings; by people to drain now.
  async archive(args) {
    const { values, positionals } = parse(args, { wait: { type: 'boolean' }, json: { type: 'boolean' }, settings: { type: 'string' } });
    if (positionals.length > 0) throw new UsageError('virtsnap archive takes no arguments besides --wait and --json');
    if (typeof values.settings === 'string') takeSettings(values.settings);
    const config = loadConfig();
    const outcome = await runArchiver({ config, store: storeFor(config) }, values.wait === true ? ARCHIVER_DEFAULTS : { ...ARCHIVER_DEFAULTS, patienceMs: 0 });
    const stored = outcome.kind === 'busy' ? [] : outcome.archived.map((d) => d.manifest);
    print({ outcome: outcome.kind, stored, ...(outcome.kind === 'gave-up' ? { waiting: outcome.waiting, reason: outcome.reason } : {}) }, values.json === true, () =>
      outcome.kind === 'busy'
        ? 'another archiver is at work: it stores what waits\n'
        : stored.map((m) => `stored ${m.domain.name} ${m.id}: ${storedAt(m)}\n`).join('') +
          (outcome.kind === 'gave-up' ? `${outcome.waiting} RAM dump(s) still wait in the spool: ${outcome.reason}\n` : stored.length === 0 ? 'nothing waits in the spool\n' : ''),
    );
    return outcome.kind === 'gave-up' ? 1 : 0;
  },

  // Started by the pre hook and `virtsnap snapshot` (lib/watchdog.ts), not by people.
  async watchdog(args) {
    const { values } = parse(args, { run: { type: 'string' }, starter: { type: 'string' }, settings: { type: 'string' } });
    const starter = parseStarter(values.starter);
    if (typeof values.run !== 'string' || starter === null) throw new UsageError('virtsnap watchdog needs --run RUN_ID --starter PID[:STARTTIME] [--settings FILE]');
    if (typeof values.settings === 'string') takeSettings(values.settings);
    return watch(values.run, starter, makeDeps(loadConfig(), { ownerPid: starter.pid }));
  },

  async status(args) {
    const { values, positionals } = parse(args, { json: { type: 'boolean' }, held: { type: 'boolean' } });
    if (positionals.length > 1) throw new UsageError('virtsnap status takes at most one DATASET');
    const config = loadConfig();
    if (values.held === true) {
      const held = heldRuns(config);
      print(held, values.json === true, () => held.map((h) => `${h.domain}: held by run ${h.runId} (${h.step}) in ${h.stateDir}\n`).join(''));
      return held.length > 0 ? HELD : 0;
    }
    const { virsh, zfs, store } = makeClients(config);
    const rows = await domainStatus(config, virsh, zfs, store, positionals[0]);
    print(rows, values.json === true, () => formatStatus(rows));
  },

  async doctor(args) {
    const { values, positionals } = parse(args, { json: { type: 'boolean' } });
    if (positionals.length > 0) throw new UsageError('virtsnap doctor takes no arguments');
    const config = loadConfig();
    const findings = await doctor(config, new LibvirtClient({ uri: config.libvirtUri }));
    print(findings, values.json === true, () => formatFindings(findings));
    return findings.some((f) => f.severity === 'fail') ? 1 : 0;
  },

  async check(args) {
    // A monitoring plugin answers in its own format, whatever goes wrong: UNKNOWN, exit 3.
    try {
      const { values, positionals } = parse(args, { warn: { type: 'string' }, crit: { type: 'string' } });
      if (positionals.length > 1) throw new UsageError('virtsnap check takes at most one DATASET');
      if (positionals[0] !== undefined) assertDatasetName(positionals[0], 'virtsnap check');
      const override: { warnSeconds?: number; critSeconds?: number } = {};
      for (const [key, field] of [['warn', 'warnSeconds'], ['crit', 'critSeconds']] as const) {
        const text = values[key];
        if (typeof text !== 'string') continue;
        const seconds = parseDuration(text);
        if (seconds === null) throw new UsageError(`--${key} ${JSON.stringify(text)} is not an age: give e.g. 90m, 6h or 2d`);
        override[field] = seconds;
      }
      assertRoot();
      const config = loadConfig();
      const verdict = await check(config, makeClients(config), override, positionals[0]);
      process.stdout.write(`VIRTSNAP ${verdict.line}\n`);
      return verdict.status;
    } catch (err) {
      process.stdout.write(`VIRTSNAP UNKNOWN: ${(err as Error).message}\n`);
      return UNKNOWN;
    }
  },

  async help(args) {
    if (args.length === 0) {
      process.stdout.write(usage);
      return;
    }
    if (args[0] === '--help' || args[0] === '-h') {
      process.stdout.write(usage);
      return;
    }
    const text = Object.hasOwn(commands, args[0]!) ? helpOf(args[0]!) : null;
    if (text === null) throw new UsageError(`no command ${JSON.stringify(args[0])}: see \`virtsnap help\``);
    process.stdout.write(text);
  },
};

main(async () => {
  const [command, ...args] = process.argv.slice(2);
  if (command === undefined || command === '--help' || command === '-h') {
    process.stdout.write(usage);
    return command === undefined ? 2 : 0;
  }
  if (command === '--version' || command === '-V' || command === 'version') {
    process.stdout.write(`virtsnap ${version()}\n`);
    return 0;
  }
  const handler = Object.hasOwn(commands, command) ? commands[command] : undefined;
  if (handler === undefined) throw new UsageError(`unknown command ${JSON.stringify(command)}: see \`virtsnap help\``);
  if (command !== 'help' && (args.includes('--help') || args.includes('-h'))) {
    process.stdout.write(helpOf(command) ?? usage);
    return 0;
  }
  if (command !== 'help' && command !== 'check') assertRoot();
  return handler(args);
});
