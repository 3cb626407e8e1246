// virtsnap command line: parse arguments, call lib/, print.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { formatList, listArchived } from '../lib/commands/list.js';
import { formatGc, formatVerdicts } from '../lib/commands/archive-report.js';
import { recover } from '../lib/commands/recover.js';
import { collectGarbage } from '../lib/retention.js';
import { verifyArchive } from '../lib/verify.js';
import { ZfsClient } from '../lib/zfs.js';
import { oneOffSnapshot } from '../lib/commands/snapshot.js';
import { loadConfig } from '../lib/config.js';
import { UsageError } from '../lib/errors.js';
import { main } from '../lib/main.js';
import { makeDeps } from '../lib/runs.js';

const usage = `usage: virtsnap COMMAND [options]

  snapshot DATASET [-r] [--name NAME] [--dry-run] [--json]
                      take one consistent ZFS snapshot now (RAM included)
  list [--json] [DATASET]
                      the RAM dumps in the archive
  gc [--dry-run] [--json]
                      drop what no snapshot needs any more (dumps, half-written files)
  verify [--json] [DATASET|DOMAIN]
                      check every RAM dump (header, domain XML, sha256)
  recover [--force]   commit back VMs that a crashed run left on overlays
  help                this text

Hooks for sanoid.conf: hooks/pre-snapshot, hooks/post-snapshot, hooks/prune.
Settings: environment or /etc/virtsnap/virtsnap.env (VIRTSNAP_CONFIG).
`;

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
      'dry-run': { type: 'boolean', short: 'n' },
      json: { type: 'boolean' },
    });
    if (positionals.length !== 1) throw new UsageError('virtsnap snapshot needs exactly one DATASET: virtsnap snapshot tank/vm');
    const deps = makeDeps(loadConfig(), process.pid);
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
      `${result.snapshots.join(' ')}: ${result.dumps.length} RAM dump(s)\n${result.dumps.map((d) => `  ${d.manifest.domain.name}: ${d.manifest.memoryFile}\n`).join('')}`,
    );
  },

  async list(args) {
    const { values, positionals } = parse(args, { json: { type: 'boolean' } });
    if (positionals.length > 1) throw new UsageError('virtsnap list takes at most one DATASET');
    const dumps = listArchived(loadConfig(), positionals[0]);
    print(dumps, values.json === true, () => formatList(dumps));
  },

  async gc(args) {
    const { values, positionals } = parse(args, { 'dry-run': { type: 'boolean', short: 'n' }, json: { type: 'boolean' } });
    if (positionals.length > 0) throw new UsageError('virtsnap gc takes no DATASET: it sweeps the whole archive');
    const report = await collectGarbage(loadConfig(), new ZfsClient(), { dryRun: values['dry-run'] === true });
    print(report, values.json === true, () => formatGc(report, values['dry-run'] === true));
  },

  async verify(args) {
    const { values, positionals } = parse(args, { json: { type: 'boolean' } });
    if (positionals.length > 1) throw new UsageError('virtsnap verify takes at most one DATASET or DOMAIN');
    const verdicts = await verifyArchive(loadConfig().archiveDir, positionals[0]);
    print(verdicts, values.json === true, () => formatVerdicts(verdicts));
    return verdicts.every((v) => v.ok) ? 0 : 1;
  },

  async recover(args) {
    const { values, positionals } = parse(args, { force: { type: 'boolean' } });
    if (positionals.length > 0) throw new UsageError('virtsnap recover takes no arguments besides --force');
    const result = await recover(makeDeps(loadConfig(), process.pid), { force: values.force === true });
    if (result.recovered.length + result.skipped.length + result.failed.length === 0) {
      process.stdout.write('nothing to recover\n');
    }
    return result.failed.length > 0 ? 1 : 0;
  },

  async help() {
    process.stdout.write(usage);
  },
};

main(async () => {
  const [command, ...args] = process.argv.slice(2);
  if (command === undefined || command === '--help' || command === '-h') {
    process.stdout.write(usage);
    return command === undefined ? 2 : 0;
  }
  const handler = commands[command];
  if (handler === undefined) throw new UsageError(`unknown command ${JSON.stringify(command)}: see \`virtsnap help\``);
  return handler(args);
});
