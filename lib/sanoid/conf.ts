// Reading sanoid.conf, for the one thing the hooks cannot learn from their
// environment: whether sanoid snapshots the target with `recursive = zfs`
// (one `zfs snapshot -r`, hooks run only for the parent, so the parent's
// hook must freeze the VMs of the whole subtree).
import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';

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
  if (['1', 'yes', 'true', 'on'].includes(value)) return 'yes';
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
