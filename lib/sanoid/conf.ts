// Reading sanoid.conf, for the one thing the hooks cannot learn from their
// environment: whether sanoid snapshots the target with `recursive = zfs`
// (one `zfs snapshot -r`, hooks run only for the parent, so the parent's
// hook must freeze the VMs of the whole subtree).
import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import { isInSubtree } from '../zfs.js';

export type Recursion = 'no' | 'yes' | 'zfs';

export type Ini = Map<string, Map<string, string>>;

/** Parses the INI dialect sanoid reads (Config::IniFiles): [section], key = value, # comments. */
export function parseIni(text: string): Ini {
  const sections: Ini = new Map();
  let current: Map<string, string> | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      const name = header[1]!.trim();
      current = sections.get(name) ?? new Map();
      sections.set(name, current);
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0 || current === null) continue;
    current.set(line.slice(0, eq).trim(), line.slice(eq + 1).trim());
  }
  return sections;
}

/**
 * The value of `key` for a section as sanoid sees it: the section's own
 * value, else its templates' (in the order named, a later one wins), else
 * the user's [template_default], which sanoid applies to every section.
 */
export function settingOf(ini: Ini, section: string, key: string): string | undefined {
  const own = ini.get(section);
  if (own === undefined) return undefined;
  if (own.has(key)) return own.get(key);
  let found: string | undefined;
  for (const name of (own.get('use_template') ?? '').split(',').map((s) => s.trim())) {
    if (name === '') continue;
    const value = ini.get(`template_${name}`)?.get(key);
    if (value !== undefined) found = value;
  }
  return found ?? (section.startsWith('template_') ? undefined : ini.get('template_default')?.get(key));
}

/**
 * sanoid reads `recursive` from the dataset's own section only, never from a
 * template (it skips the key when applying templates), and takes any value
 * containing "zfs" as zfs recursion.
 */
export function recursionOf(ini: Ini, dataset: string): Recursion {
  const value = (ini.get(dataset)?.get('recursive') ?? '').toLowerCase();
  if (value.includes('zfs')) return 'zfs';
  if (isYes(value)) return 'yes';
  return 'no';
}

/** Reads sanoid.conf; a missing file means "no recursion known" (null). */
export function readSanoidConf(file: string): Ini | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new ConfigError(`cannot read sanoid config ${file} (VIRTSNAP_SANOID_CONF): ${(err as Error).message}`);
  }
  return parseIni(text);
}

/** Whether sanoid runs virtsnap's pre hook for a section: the one test doctor and check share. */
export function runsOurHooks(ini: Ini, section: string): boolean {
  // Our hook by its path (`…/hooks/pre-snapshot`), or a wrapper named after us;
  // never another tool's `mysql-pre-snapshot`.
  return !section.startsWith('template_') && /\/hooks\/pre-snapshot\b|virtsnap/.test(settingOf(ini, section, 'pre_snapshot_script') ?? '');
}

/** sanoid.defaults.conf's snapshot counts, for a period a section does not set. */
const DEFAULT_COUNTS = { frequently: 0, hourly: 48, daily: 90, weekly: 0, monthly: 6, yearly: 0 } as const;

export type Period = keyof typeof DEFAULT_COUNTS;

/** How many snapshots of `period` sanoid keeps for a section. */
export function countOf(ini: Ini, section: string, period: Period): number {
  const n = Number(settingOf(ini, section, period) ?? DEFAULT_COUNTS[period]);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

/**
 * At most how many runs' snapshots a section keeps at once, so how many RAM
 * dumps per VM: the sum over periods (one run often serves several, so
 * fewer in practice).
 */
export function runsKept(ini: Ini, section: string): number {
  return (Object.keys(DEFAULT_COUNTS) as Period[]).reduce((sum, p) => sum + countOf(ini, section, p), 0);
}

/** A sanoid.conf yes (1, yes, true, on, in any case); an unset key is no. */
export function isYes(value: string | undefined): boolean {
  return ['1', 'yes', 'true', 'on'].includes((value ?? '').toLowerCase());
}

/** Whether sanoid takes snapshots of a section at all (`autosnap`, default yes, templates applied). */
export function autosnaps(ini: Ini, section: string): boolean {
  return !section.startsWith('template_') && isYes(settingOf(ini, section, 'autosnap') ?? 'yes');
}

/**
 * The section sanoid uses for a dataset: its own, else the nearest
 * ancestor whose section recurses. Null when none covers it.
 */
export function nearestSection<S extends { dataset: string; subtree: boolean }>(dataset: string, sections: readonly S[]): S | null {
  let best: S | null = null;
  for (const s of sections) {
    if (!(s.dataset === dataset || (s.subtree && isInSubtree(dataset, s.dataset)))) continue;
    if (best === null || s.dataset.length > best.dataset.length) best = s;
  }
  return best;
}
