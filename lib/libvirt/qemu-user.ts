// Who QEMU runs as, and whether that user can reach a directory. libvirt's
// DAC driver starts QEMU as qemu.conf's `user`/`group` (Debian builds in
// libvirt-qemu:libvirt-qemu) and, with `dynamic_ownership` (the default),
// chowns each image it hands QEMU, the overlays included. It does not
// touch the directories above them: every one must be searchable (x) by
// that user, or the external snapshot fails with "Permission denied" when
// QEMU opens the overlay.
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';

export const QEMU_CONF = '/etc/libvirt/qemu.conf';

/** libvirt's compiled-in defaults on Debian (meson -Dqemu_user/-Dqemu_group). */
const DEBIAN_DEFAULT = { user: 'libvirt-qemu', group: 'libvirt-qemu' };

export interface QemuConf {
  user: string;
  group: string;
  dynamicOwnership: boolean;
}

/** The settings of qemu.conf that decide who QEMU is (libvirt's own syntax: key = "value", # comments). */
export function parseQemuConf(text: string): QemuConf {
  const values = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const m = /^\s*([a-z_]+)\s*=\s*(?:"([^"]*)"|(\S+))/.exec(raw);
    if (m !== null) values.set(m[1]!, m[2] ?? m[3]!);
  }
  return {
    user: values.get('user') ?? DEBIAN_DEFAULT.user,
    group: values.get('group') ?? DEBIAN_DEFAULT.group,
    dynamicOwnership: values.get('dynamic_ownership') !== '0',
  };
}

export interface Identity {
  name: string;
  uid: number;
  gids: number[];
}

/**
 * The uid and groups QEMU gets, from passwd and group text: libvirt gives
 * the process the configured group plus the user's supplementary groups.
 * A name may be `+N` (a number, never a name). Null when the user is unknown.
 */
export function resolveIdentity(conf: QemuConf, passwd: string, group: string): Identity | null {
  const users = passwd.split('\n').map((l) => l.split(':')).filter((f) => f.length >= 4);
  const groups = group.split('\n').map((l) => l.split(':')).filter((f) => f.length >= 4);
  const byName = (rows: string[][], name: string): string[] | undefined =>
    name.startsWith('+') ? rows.find((r) => r[2] === name.slice(1)) ?? [name, '', name.slice(1), name.slice(1)] : rows.find((r) => r[0] === name);
  const user = byName(users, conf.user);
  if (user === undefined) return null;
  const name = user[0]!;
  const gids = new Set<number>([Number(user[3])]);
  const g = byName(groups, conf.group);
  if (g !== undefined) gids.add(Number(g[2]));
  for (const row of groups) if ((row[3] ?? '').split(',').includes(name)) gids.add(Number(row[2]));
  return { name, uid: Number(user[2]), gids: [...gids] };
}

export interface DirStat {
  path: string;
  uid: number;
  gid: number;
  mode: number;
}

/** The first directory `who` cannot search (no x for it), or null when it reaches the last. Pure. */
export function firstUnsearchable(chain: DirStat[], who: Identity): DirStat | null {
  if (who.uid === 0) return null;
  for (const d of chain) {
    const bit = d.uid === who.uid ? 0o100 : who.gids.includes(d.gid) ? 0o010 : 0o001;
    if ((d.mode & bit) === 0) return d;
  }
  return null;
}

/** `/`, then each directory down to `dir`, as far as they exist (virtsnap creates the rest 0711). */
export function ancestry(dir: string): DirStat[] {
  const parts = path.resolve(dir).split('/').filter(Boolean);
  const chain: DirStat[] = [];
  for (let i = 0; i <= parts.length; i++) {
    const p = `/${parts.slice(0, i).join('/')}`;
    let st;
    try {
      st = statSync(p);
    } catch {
      break;
    }
    chain.push({ path: p, uid: st.uid, gid: st.gid, mode: st.mode });
  }
  return chain;
}

/** QEMU's identity on this host, read from qemu.conf, passwd and group; null when it cannot be told. */
export function qemuIdentity(confFile = QEMU_CONF): { conf: QemuConf; identity: Identity | null } {
  const read = (file: string): string => {
    try {
      return readFileSync(file, 'utf8');
    } catch {
      return '';
    }
  };
  const conf = parseQemuConf(read(confFile));
  return { conf, identity: resolveIdentity(conf, read('/etc/passwd'), read('/etc/group')) };
}
