// How a run freezes its VMs, and which sanoid snapshot types get which way.
// The rule in one place: parsed from VIRTSNAP_MODE by lib/config, applied by
// lib/plan (and shown by `--dry-run`).
//
//   ram      external snapshot: RAM saved (live), disks switched to overlays
//            outside the dataset, committed back in post. The guest stalls
//            for the last pass of the RAM save only.
//   pause    RAM saved (live), then libvirt leaves the guest paused
//            (snapshot='manual', libvirt >= 8.2) until post resumes it: no
//            overlay, no block commit, so raw disks and guests that write
//            faster than a commit can follow are fine; the guest stalls for
//            the whole ZFS snapshot.
//   quiesce  disk only: the QEMU guest agent freezes the guest's
//            filesystems (fsfreeze) and post thaws them. No RAM dump: a
//            restore boots from a clean filesystem instead of resuming.
import { ConfigError } from './errors.js';

export type Mode = 'ram' | 'pause' | 'quiesce';

export const MODES: readonly Mode[] = ['ram', 'pause', 'quiesce'];

/**
 * A run whose types name several modes takes the strongest. Both RAM modes
 * keep the running state, quiesce does not; pause outranks ram because it is
 * what a user names for disks that must not get overlays.
 */
const STRENGTH: Record<Mode, number> = { quiesce: 0, ram: 1, pause: 2 };

export interface ModePolicy {
  /** For types not named (and for `virtsnap snapshot` without types). */
  fallback: Mode;
  /** sanoid snapshot type (hourly, daily, ...) -> mode. */
  byType: Record<string, Mode>;
}

export const DEFAULT_POLICY: ModePolicy = { fallback: 'ram', byType: {} };

function asMode(value: string, setting: string, text: string): Mode {
  if ((MODES as readonly string[]).includes(value)) return value as Mode;
  throw new ConfigError(`${setting}=${text}: ${JSON.stringify(value)} is not a mode; use ram, pause or quiesce (e.g. ram,hourly=quiesce)`);
}

/**
 * `MODE` or `MODE,TYPE=MODE,...`: e.g. `ram,frequently=quiesce,hourly=quiesce`
 * (RAM for every type but frequently and hourly). A bare `TYPE=MODE` list
 * keeps ram for the types it does not name.
 */
export function parseModePolicy(text: string, setting = 'VIRTSNAP_MODE'): ModePolicy {
  const policy: ModePolicy = { fallback: 'ram', byType: {} };
  let bare = 0;
  for (const part of text.split(/[\s,]+/).filter((p) => p !== '')) {
    const m = /^([a-z0-9_-]+)=(.*)$/i.exec(part);
    if (m === null) {
      if (++bare > 1) throw new ConfigError(`${setting}=${text} names more than one mode for all types: give one, then TYPE=MODE pairs`);
      policy.fallback = asMode(part.toLowerCase(), setting, text);
      continue;
    }
    const type = m[1]!.toLowerCase();
    if (policy.byType[type] !== undefined) throw new ConfigError(`${setting}=${text} names type ${type} twice`);
    policy.byType[type] = asMode(m[2]!.toLowerCase(), setting, text);
  }
  return policy;
}

export interface ModeChoice {
  mode: Mode;
  /** For `--dry-run` and the log: which type decided. */
  why: string;
}

/** The mode of a run taking snapshots of `types` (sanoid runs pre once for all types due). */
export function modeOfRun(types: readonly string[], policy: ModePolicy): ModeChoice {
  const named = types.map((t) => ({ type: t, mode: policy.byType[t.toLowerCase()] ?? policy.fallback }));
  if (named.length === 0) return { mode: policy.fallback, why: `no snapshot type: ${policy.fallback}` };
  const strongest = named.reduce((a, b) => (STRENGTH[b.mode] > STRENGTH[a.mode] ? b : a));
  const list = named.map((n) => `${n.type}=${n.mode}`).join(', ');
  return { mode: strongest.mode, why: named.length === 1 ? list : `${list}: ${strongest.mode} is the strongest` };
}

/** Whether a run of `type` alone keeps RAM (ram or pause), as `policy` says. */
export function keepsRam(type: string, policy: ModePolicy): boolean {
  return (policy.byType[type.toLowerCase()] ?? policy.fallback) !== 'quiesce';
}

export function formatPolicy(policy: ModePolicy): string {
  return [policy.fallback, ...Object.entries(policy.byType).map(([t, m]) => `${t}=${m}`)].join(',');
}
