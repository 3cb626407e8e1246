// `virtsnap doctor`: checks the host and says what to fix.
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../config.js';
import { Journal } from '../journal.js';
import type { Domain, LibvirtClient } from '../libvirt/virsh.js';
import { can, compressionFor, FEATURES, readsZstd, stackLines, type Stack } from '../libvirt/stack.js';
import { hasProgram } from '../exec.js';
import { liveSaveOf } from '../plan.js';
import { ancestry, firstUnsearchable, qemuIdentity, type DirStat, type Identity, type QemuConf } from '../libvirt/qemu-user.js';
import { autosnaps, isYes, readSanoidConf, runsOurHooks, settingOf, type Ini } from '../sanoid/conf.js';
import { storeFor } from '../stores/index.js';
import { type ArchivedDump } from '../manifest.js';
import { latestInSnapshots } from '../ram-in-dataset.js';
import { spaceReport } from './space.js';
import { Restic, TAG, type ResticClient } from '../restic.js';
import { datasetOfFile, isInSubtree, readMounts, ZfsClient } from '../zfs.js';

export type Severity = 'ok' | 'warn' | 'fail';

export interface Finding {
  severity: Severity;
  check: string;
  detail: string;
}

const ok = (check: string, detail: string): Finding => ({ severity: 'ok', check, detail });
const warn = (check: string, detail: string): Finding => ({ severity: 'warn', check, detail });
const fail = (check: string, detail: string): Finding => ({ severity: 'fail', check, detail });

/** libvirt answers, and what its stack can do (lib/libvirt/stack.ts). */
export function judgeStack(uri: string, stack: Stack): Finding[] {
  const [versions, ...features] = stackLines(stack);
  const findings = [ok('libvirt', `reachable at ${uri}: ${versions}`), ...features.map((f) => ok('libvirt', f))];
  if (!can(stack, 'manualSnapshot')) findings.push(warn('libvirt', `external memory snapshots work, but libvirt >= ${FEATURES.manualSnapshot.libvirt.join('.')} is needed for pause-mode snapshots (snapshot=manual)`));
  return findings;
}

/**
 * Whose RAM is saved with the guest paused because a live save may lose
 * pages on this stack, or saved live against that (VIRTSNAP_LIVE=yes): the
 * plan's own rule (lib/plan.ts liveSaveOf), for the running VMs. Pure.
 */
export function judgeLiveSaves(stack: Stack, running: Pick<Domain, 'name' | 'state' | 'virtType'>[], setting: Config['live']): Finding[] {
  const byNote = new Map<string, { level: 'info' | 'warn'; names: string[] }>();
  for (const d of running) {
    const { note } = liveSaveOf(d, stack, setting);
    if (note === null) continue;
    const seen = byNote.get(note.text) ?? { level: note.level, names: [] };
    seen.names.push(d.name);
    byNote.set(note.text, seen);
  }
  if (byNote.size === 0) {
    const how = setting === 'no' ? 'with the guest paused (VIRTSNAP_LIVE=no)' : 'live';
    return [ok('live saves', `RAM of running VMs is saved ${how}`)];
  }
  return [...byNote].map(([text, { level, names }]) => (level === 'warn' ? warn : ok)('live saves', `${names.join(', ')}: ${text}`));
}


/** What the sections that use our hooks say, judged the way sanoid reads them (own keys, then templates). */
export function checkSanoidConf(ini: Ini, file: string): Finding[] {
  const findings: Finding[] = [];
  const value = (section: string, key: string): string | undefined => settingOf(ini, section, key);
  const ours = [...ini.keys()].filter((s) => runsOurHooks(ini, s));
  if (ours.length === 0) return [warn('sanoid.conf', `${file}: no section runs virtsnap's pre-snapshot hook`)];
  for (const s of ours) {
    const where = `[${s}]`;
    if (ini.get(s)?.has('path')) findings.push(fail('sanoid.conf', `${where} uses path =: sanoid never runs the hooks of such a section; name the section by its dataset`));
    const timeout = value(s, 'script_timeout');
    if (timeout === undefined) findings.push(fail('sanoid.conf', `${where} script_timeout is the default 5 s: sanoid kills itself (SIGALRM) when a hook runs longer, and the run is lost; set script_timeout = 0`));
    else if (Number(timeout) > 0 && Number(timeout) < 120) findings.push(warn('sanoid.conf', `${where} script_timeout = ${timeout} s may be too short for saving RAM; 0 (no limit) is safest`));
    if (!/post-snapshot/.test(value(s, 'post_snapshot_script') ?? '')) findings.push(fail('sanoid.conf', `${where} has no post_snapshot_script = .../hooks/post-snapshot: VMs would stay on overlays`));
    if (!isYes(value(s, 'force_post_snapshot_script'))) findings.push(warn('sanoid.conf', `${where} force_post_snapshot_script is off: after a failed pre hook sanoid skips the post hook; set it to yes`));
    if (isYes(value(s, 'no_inconsistent_snapshot'))) findings.push(ok('sanoid.conf', `${where} no_inconsistent_snapshot = yes: a failed freeze skips the snapshot (and the post hook)`));
    if (!/prune/.test(value(s, 'pruning_script') ?? '')) findings.push(warn('sanoid.conf', `${where} has no pruning_script = .../hooks/prune: RAM dumps of pruned snapshots stay until \`virtsnap gc\``));
    if (/prune/.test(value(s, 'pre_pruning_script') ?? '')) findings.push(warn('sanoid.conf', `${where} pre_pruning_script points at the prune hook: not needed (it does nothing there); use pruning_script`));
    for (const t of (ini.get(s)?.get('use_template') ?? '').split(',').map((x) => x.trim()).filter(Boolean)) {
      if (ini.get(`template_${t}`)?.has('recursive')) findings.push(warn('sanoid.conf', `[template_${t}] sets recursive: sanoid ignores it in templates; set it in ${where}`));
    }
  }
  if (findings.every((f) => f.severity === 'ok')) findings.push(ok('sanoid.conf', `${ours.length} section(s) use virtsnap: ${ours.join(', ')}`));
  return findings;
}

function checkDirs(config: Config, ini: Ini | null): Finding[] {
  const findings: Finding[] = [];
  const mounts = readMounts();
  let overlayDs: string | null = null;
  if (existsSync(config.overlayDir)) overlayDs = datasetOfFile(config.overlayDir, mounts)?.dataset ?? null;
  const snapshotted = ini ? [...ini.keys()].filter((s) => autosnaps(ini, s)) : [];
  const inside = overlayDs !== null ? snapshotted.find((s) => isInSubtree(overlayDs as string, s)) : undefined;
  if (inside !== undefined) findings.push(fail('overlay dir', `${config.overlayDir} is in dataset ${overlayDs}, which sanoid snapshots ([${inside}]): move VIRTSNAP_OVERLAY_DIR out of it`));
  for (const [name, dir] of [['archive dir', config.archiveDir], ['state dir', config.stateDir]] as const) {
    if (!existsSync(dir)) {
      findings.push(ok(name, `${dir} does not exist yet (created 0700 on first use)`));
      continue;
    }
    const st = statSync(dir);
    if ((st.mode & 0o077) !== 0 || st.uid !== 0) findings.push(fail(name, `${dir} is mode ${(st.mode & 0o777).toString(8)} owned by uid ${st.uid}: RAM dumps hold guest secrets; chown root and chmod 0700`));
    else findings.push(ok(name, `${dir} is private (0${(st.mode & 0o777).toString(8)})`));
  }
  return findings;
}

/**
 * QEMU's user reaches the overlays. libvirt hands QEMU each overlay file
 * (DAC, dynamic_ownership) but not the directories above it: a 0700
 * /var/lib/virtsnap makes every external snapshot fail with "Permission
 * denied" only when it is first tried. Pure.
 */
export function judgeQemuAccess(overlayDir: string, conf: QemuConf, identity: Identity | null, chain: DirStat[]): Finding[] {
  if (identity === null) return [warn('overlay access', `QEMU's user ${JSON.stringify(conf.user)} (qemu.conf) is not in /etc/passwd: check by hand that it can reach ${overlayDir}`)];
  const blocked = firstUnsearchable(chain, identity);
  if (blocked !== null) {
    return [
      fail(
        'overlay access',
        `QEMU runs as ${identity.name} and cannot enter ${blocked.path} (mode ${(blocked.mode & 0o7777).toString(8)}, uid ${blocked.uid}): every external snapshot would fail with "Permission denied"; chmod ${blocked.uid === identity.uid ? 'u' : identity.gids.includes(blocked.gid) ? 'g' : 'o'}+x ${blocked.path} (it stays unlistable), or choose another VIRTSNAP_OVERLAY_DIR`,
      ),
    ];
  }
  if (!conf.dynamicOwnership && identity.uid !== 0) {
    return [warn('overlay access', `dynamic_ownership = 0 in qemu.conf: libvirt does not hand the overlay files it creates to QEMU's user ${identity.name}, which then may not open them; set dynamic_ownership = 1`)];
  }
  return [ok('overlay access', `QEMU (${identity.name}) can reach ${overlayDir}`)];
}

function checkQemuAccess(config: Config): Finding[] {
  const { conf, identity } = qemuIdentity();
  return judgeQemuAccess(config.overlayDir, conf, identity, ancestry(config.overlayDir));
}

/** Where the dumps go and whether they fit (lib/commands/space.ts): the overlay dir, the archive dir, the pools with RAM inside snapshots. */
function checkSpace(config: Config, running: Domain[], ini: Ini | null, stack: Stack): Finding[] {
  if (ini === null) return [];
  let archived: ArchivedDump[] = [];
  try {
    archived = storeFor(config).scan().dumps;
  } catch {
    // an archive it cannot read is the archive dir check's finding
  }
  const verdicts = spaceReport({ config, ini, running, stack, archived, inSnapshots: latestInSnapshots(config.stateDir) });
  return verdicts.map((v) => ({ severity: v.level, check: 'space', detail: v.text }));
}

/**
 * VIRTSNAP_STORE=restic: the password file and the env file (which may
 * hold the repository's credentials) are private, and the repository
 * answers.
 */
export async function checkRestic(config: Config, given: ResticClient | null = null): Promise<Finding[]> {
  if (config.store.kind !== 'restic') return [];
  const backend = config.store;
  const restic = given ?? new Restic(backend);
  const findings: Finding[] = [];
  const secrets: [string, string][] = [];
  const pw = backend.passwordFile ?? backend.env.RESTIC_PASSWORD_FILE ?? null;
  if (pw !== null) secrets.push([pw, `password file ${pw}`]);
  if (config.configFile !== null && Object.keys(backend.env).length > 0) secrets.push([config.configFile, `env file ${config.configFile} (it gives restic ${Object.keys(backend.env).join(', ')})`]);
  for (const [file, what] of secrets) {
    const st = statSync(file, { throwIfNoEntry: false });
    if (st === undefined) findings.push(fail('restic', `${what} does not exist: nothing can be archived into ${restic.repo}`));
    else if ((st.mode & 0o077) !== 0) findings.push(fail('restic', `${what} is mode ${(st.mode & 0o777).toString(8)}: it opens every RAM dump in ${restic.repo}; chmod 0600`));
  }
  if (findings.length > 0) return findings;
  try {
    const snaps = await restic.snapshots([TAG]);
    findings.push(ok('restic', `repository ${restic.repo} answers: ${snaps.length} virtsnap snapshot(s)`));
  } catch (err) {
    findings.push(fail('restic', (err as Error).message));
  }
  return findings;
}

function checkAppArmor(config: Config): Finding[] {
  if (!existsSync('/sys/kernel/security/apparmor')) return [ok('AppArmor', 'not active')];
  return [
    warn(
      'AppArmor',
      `active: QEMU must be allowed to create and reopen files in ${config.overlayDir}; add "${config.overlayDir}/** rwk," to /etc/apparmor.d/local/abstractions/libvirt-qemu (libvirt >= 9.6) or /etc/apparmor.d/abstractions/libvirt-qemu`,
    ),
  ];
}

function checkJournal(config: Config): Finding[] {
  const { entries, damaged } = new Journal(config.stateDir).scan();
  if (entries.length === 0 && damaged.length === 0) return [ok('journal', 'no run in progress or left behind')];
  return [
    ...damaged.map((d) => fail('journal', d.reason)),
    ...entries.map((e) => warn('journal', `${JSON.stringify(e.domain.name)} held by run ${e.runId} since ${e.startedAt} (step ${e.step}): if no sanoid is running, \`virtsnap recover\``)),
  ];
}

function isExecutableFile(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * The hook programs sanoid.conf names exist and can be run: sanoid only
 * warns when a hook cannot be started, and then takes its snapshot without
 * a dump (or, for post, leaves the VMs on overlays until the watchdog).
 */
export function checkHookPaths(ini: Ini, canRun: (file: string) => boolean = isExecutableFile): Finding[] {
  const findings: Finding[] = [];
  const seen = new Set<string>();
  for (const section of ini.keys()) {
    if (section.startsWith('template_')) continue;
    for (const key of ['pre_snapshot_script', 'post_snapshot_script', 'pruning_script']) {
      const command = settingOf(ini, section, key) ?? '';
      for (const token of command.split(/\s+/).map((t) => t.replace(/^['"]|['"]$/g, ''))) {
        if (!/hooks\/(pre-snapshot|post-snapshot|prune)$/.test(token) || !path.isAbsolute(token) || seen.has(token)) continue;
        seen.add(token);
        findings.push(canRun(token) ? ok('hooks', `${token} (${key} of [${section}]) can be run`) : fail('hooks', `${token} (${key} of [${section}]) does not exist or is not executable: fix the path in sanoid.conf`));
      }
    }
  }
  return findings;
}

export async function doctor(config: Config, virsh: LibvirtClient): Promise<Finding[]> {
  const ini = readSanoidConf(config.sanoidConf);
  let stack: Stack;
  try {
    stack = await virsh.stack();
  } catch (err) {
    return [fail('libvirt', `${(err as Error).message}: start libvirtd (or virtqemud), or fix VIRTSNAP_LIBVIRT_URI`), ...(await doctorOffline(config, ini))];
  }
  const running = await virsh.domains().then(
    (all) => all.filter((d) => d.state === 'running' || d.state === 'paused'),
    () => [] as Domain[],
  );
  const zstd = await hasProgram('zstd');
  return [
    ...judgeStack(virsh.uri, stack),
    ...judgeLiveSaves(stack, running, config.live),
    judgeCompression(config, stack, zstd),
    ...(await doctorOffline(config, ini)),
    ...checkSpace(config, running, ini, stack),
  ];
}

/**
 * VIRTSNAP_STORE=dataset puts guest RAM (disk-encryption keys among it)
 * into the dataset and its snapshots: whoever reads the dataset reads it.
 * Pure: `shares` is each dataset's sharenfs/sharesmb, `allowed` the text
 * of `zfs allow` (null: could not be asked).
 */
export function judgeSharedRam(datasets: { dataset: string; shares: Record<string, string>; allowed: string | null }[]): Finding[] {
  const findings: Finding[] = [];
  for (const d of datasets) {
    const shared = Object.entries(d.shares).filter(([, v]) => v !== 'off' && v !== '-' && v !== '');
    if (shared.length > 0) findings.push(warn('RAM in dataset', `${d.dataset} is shared (${shared.map(([k, v]) => `${k}=${v}`).join(', ')}): everyone the share reaches can read its VMs' RAM in .zfs/snapshot; keep RAM out of it (VIRTSNAP_STORE=dir) or stop sharing it`));
    const delegated = d.allowed === null ? [] : d.allowed.split('\n').filter((l) => /\b(send|clone|mount|snapshot)\b/.test(l) && /^\s*(user|group|everyone)/.test(l));
    if (delegated.length > 0) findings.push(warn('RAM in dataset', `${d.dataset}: \`zfs allow\` lets others send, clone or mount it (${delegated.map((l) => l.trim()).join('; ')}): they can read its VMs' RAM from any snapshot`));
  }
  if (datasets.length > 0 && findings.length === 0) {
    findings.push(ok('RAM in dataset', `${datasets.map((d) => d.dataset).join(', ')}: not shared${datasets.some((d) => d.allowed === null) ? ' (zfs allow could not be asked)' : ', nothing delegated'}; every replica of them holds the VMs' RAM too`));
  }
  return findings;
}

/** The datasets that take RAM with VIRTSNAP_STORE=dataset: those of sanoid's sections with our hooks. */
async function checkSharedRam(config: Config, ini: Ini | null, zfs: Pick<ZfsClient, 'property' | 'delegations'> = new ZfsClient()): Promise<Finding[]> {
  if (config.store.kind !== 'dataset' || ini === null) return [];
  const datasets = [...ini.keys()].filter((s) => runsOurHooks(ini, s) && autosnaps(ini, s));
  const facts = [];
  for (const dataset of datasets) {
    const shares: Record<string, string> = {};
    try {
      for (const name of ['sharenfs', 'sharesmb']) {
        const value = await zfs.property(dataset, name);
        if (value !== null) shares[name] = value;
      }
    } catch {
      continue; // zfs cannot read it: the sanoid.conf and space checks name a dataset that is not there
    }
    if (Object.keys(shares).length === 0) continue; // not there
    facts.push({ dataset, shares, allowed: await zfs.delegations(dataset) });
  }
  return judgeSharedRam(facts);
}

/** How the archiver will compress dumps here (VIRTSNAP_COMPRESS on this stack: lib/libvirt/stack.ts compressionFor). Pure. */
export function judgeCompression(config: Pick<Config, 'compression' | 'store'>, stack: Stack, zstdInstalled: boolean): Finding {
  if (config.store.kind !== 'dir') return ok('compression', config.store.kind === 'restic' ? 'restic compresses and deduplicates the raw dumps itself' : 'RAM inside the snapshots is kept as libvirt wrote it');
  const { compression, note } = compressionFor(config.compression, stack, zstdInstalled);
  if (note !== null) return warn('compression', note);
  if (compression === null) return ok('compression', 'dumps are stored as libvirt wrote them (VIRTSNAP_COMPRESS=no)');
  const why = compression === 'zstd' ? 'this libvirt restores zstd save images' : config.compression === 'gzip' ? 'VIRTSNAP_COMPRESS=gzip' : readsZstd(stack, zstdInstalled);
  return ok('compression', `dumps are stored ${compression}-compressed (${why}); \`virsh restore\` reads them as they are`);
}

/** What doctor checks beside libvirt itself. */
async function doctorOffline(config: Config, ini: Ini | null): Promise<Finding[]> {
  return [
    ...(ini === null ? [warn('sanoid.conf', `${config.sanoidConf} not found (VIRTSNAP_SANOID_CONF): recursion cannot be learnt, and the hook settings cannot be checked`)] : checkSanoidConf(ini, config.sanoidConf)),
    ...(ini === null ? [] : checkHookPaths(ini)),
    ...checkDirs(config, ini),
    ...checkQemuAccess(config),
    ...(await checkRestic(config)),
    ...checkAppArmor(config),
    ...checkJournal(config),
    ...(await checkSharedRam(config, ini)),
  ];
}

export function formatFindings(findings: Finding[]): string {
  const label: Record<Severity, string> = { ok: 'OK  ', warn: 'WARN', fail: 'FAIL' };
  return findings.map((f) => `${label[f.severity]} ${f.check}: ${f.detail}`).join('\n') + '\n';
}
