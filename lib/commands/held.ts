// `virtsnap status --held`: whether any VM is held by a run or was left on
// overlays, in every state dir a virtsnap of this host may use. The
// package's prerm asks this before it lets the package go: without
// virtsnap, nothing would commit those VMs back.
//
// A state dir may be named in the env file (with `export`, quotes, inline
// comments: read as virtsnap reads it), in another env file a unit names
// with VIRTSNAP_CONFIG, or in a unit's own Environment= or
// EnvironmentFile= (sanoid.service's drop-in, say). Units are read from
// their files, so this works whether systemd runs or not.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { loadConfig, type Config } from '../config.js';
import { Journal } from '../journal.js';

const UNIT_DIRS = ['/etc/systemd/system', '/run/systemd/system', '/lib/systemd/system', '/usr/lib/systemd/system'];

/**
 * The values of a unit file's Environment= lines (systemd's quoting:
 * words split on whitespace, "..." and '...' keep theirs) and the files its
 * EnvironmentFile= lines name (a leading `-`: optional). Pure.
 */
export function unitEnvironment(text: string): { env: Record<string, string>; files: string[] } {
  const env: Record<string, string> = {};
  const files: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const m = /^(Environment|EnvironmentFile)\s*=\s*(.*)$/.exec(line);
    if (m === null) continue;
    if (m[1] === 'EnvironmentFile') {
      if (m[2]!.trim() !== '') files.push(m[2]!.trim().replace(/^-/, ''));
      continue;
    }
    for (const word of m[2]!.match(/"(?:[^"\\]|\\.)*"|'[^']*'|\S+/g) ?? []) {
      const unquoted = /^(["']).*\1$/.test(word) ? word.slice(1, -1).replace(/\\(.)/g, '$1') : word;
      const eq = unquoted.indexOf('=');
      if (eq > 0) env[unquoted.slice(0, eq)] = unquoted.slice(eq + 1);
    }
  }
  return { env, files };
}

function unitFiles(): string[] {
  const found: string[] = [];
  for (const dir of UNIT_DIRS) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      const p = path.join(dir, name);
      if (name.endsWith('.service')) found.push(p);
      else if (name.endsWith('.service.d')) {
        try {
          for (const f of readdirSync(p)) if (f.endsWith('.conf')) found.push(path.join(p, f));
        } catch {
          // not a dir
        }
      }
    }
  }
  return found;
}

/** VIRTSNAP_ settings the units set: each set of them, as a unit's processes would see them. */
function unitSettings(): Record<string, string>[] {
  const dotenv = createRequire(import.meta.url)('dotenv') as typeof import('dotenv');
  const sets: Record<string, string>[] = [];
  for (const file of unitFiles()) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    if (!text.includes('VIRTSNAP_') && !text.includes('EnvironmentFile')) continue;
    const { env, files } = unitEnvironment(text);
    for (const f of files) {
      try {
        Object.assign(env, dotenv.parse(readFileSync(f, 'utf8')));
      } catch {
        // optional, or not there
      }
    }
    const ours = Object.fromEntries(Object.entries(env).filter(([k]) => k.startsWith('VIRTSNAP_')));
    if (Object.keys(ours).length > 0) sets.push(ours);
  }
  return sets;
}

export interface Held {
  stateDir: string;
  domain: string;
  runId: string;
  step: string;
}

/** The state dirs of this host: the default settings' and every unit's. */
export function stateDirs(config: Config): string[] {
  const dirs = new Set([config.stateDir]);
  for (const env of unitSettings()) {
    try {
      dirs.add(loadConfig({ ...env }).stateDir);
    } catch {
      // a unit whose settings do not load runs nothing of ours either
    }
  }
  return [...dirs].filter((d) => existsSync(d));
}

/** Every VM held in those state dirs (a damaged entry counts: what was done to its VM is unknown). */
export function heldRuns(config: Config): Held[] {
  return stateDirs(config).flatMap((stateDir) => {
    const { entries, damaged } = new Journal(stateDir).scan();
    return [
      ...entries.map((e) => ({ stateDir, domain: e.domain.name, runId: e.runId, step: e.step })),
      ...damaged.map((d) => ({ stateDir, domain: d.uuid, runId: '?', step: 'damaged journal entry' })),
    ];
  });
}
