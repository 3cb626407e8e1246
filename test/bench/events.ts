// Guest stall from libvirt's own lifecycle events: the time between a
// domain's `Suspended` and the `Resumed` that follows, as `virsh event
// --timestamp` sees them. This is what the guest lives through, whoever
// paused it; libvirt's "Total downtime" only covers the migration stream's
// last pass and misses the pauses around it.
//
// Lines as libvirt 9.0's virsh prints them (checked on the bed):
//   2026-11-23 16:00:15.478+0000: event 'lifecycle' for domain 'vsbed-b-evt': Suspended Paused
//   2026-11-23 16:00:15.515+0000: event 'lifecycle' for domain 'vsbed-b-evt': Resumed Unpaused
// The stamp is taken by virsh when the event arrives (same host clock as ours).
import { startUntilStopped, type Running } from '../../lib/exec.js';

export interface LifecycleEvent {
  /** Milliseconds since the epoch. */
  at: number;
  domain: string;
  /** Started, Suspended, Resumed, Stopped, … */
  event: string;
  /** libvirt's reason: Paused, Migrated, Snapshot, Unpaused, … */
  detail: string;
}

const LINE = /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d)(\d\d): event 'lifecycle' for domain '(.*)': (\S+)(?: (.*))?$/;

/** The lifecycle events in `text`; other lines (virsh's own messages) are skipped. */
export function parseLifecycle(text: string): LifecycleEvent[] {
  const out: LifecycleEvent[] = [];
  for (const line of text.split('\n')) {
    const m = LINE.exec(line.trimEnd());
    if (!m) continue;
    const at = Date.parse(`${m[1]}T${m[2]}${m[3]}:${m[4]}`);
    if (Number.isNaN(at)) continue;
    out.push({ at, domain: m[5]!, event: m[6]!, detail: m[7] ?? '' });
  }
  return out;
}

export interface Pause {
  from: number;
  to: number;
  ms: number;
  /** "Suspended <detail> → Resumed <detail>", to tell a migration's pause from a snapshot's. */
  how: string;
}

export interface Stall {
  pauses: Pause[];
  totalMs: number;
  longestMs: number;
  /** A Suspended with no Resumed before `to`: the guest was left paused. */
  leftPaused: boolean;
}

/**
 * The pauses of `domain` between `from` and `to`: each Suspended paired with
 * the next Resumed. One snapshot may pause a guest several times (a live
 * save's last pass, then the disk switch): all are summed, the longest kept.
 */
export function stallOf(events: readonly LifecycleEvent[], domain: string, from: number, to: number): Stall {
  const pauses: Pause[] = [];
  let open: LifecycleEvent | null = null;
  for (const e of events) {
    if (e.domain !== domain || e.at < from || e.at > to) continue;
    if (e.event === 'Suspended' && open === null) open = e;
    else if (e.event === 'Resumed' && open !== null) {
      pauses.push({ from: open.at, to: e.at, ms: e.at - open.at, how: `Suspended ${open.detail} → Resumed ${e.detail}`.trim() });
      open = null;
    }
  }
  return {
    pauses,
    totalMs: pauses.reduce((a, p) => a + p.ms, 0),
    longestMs: pauses.reduce((a, p) => Math.max(a, p.ms), 0),
    leftPaused: open !== null,
  };
}

/** One `virsh event --loop` for the whole bench; samples read their time window out of it. */
export class EventWatcher {
  private constructor(private readonly proc: Running) {}

  static async start(uri: string, maxMs: number): Promise<EventWatcher> {
    return new EventWatcher(await startUntilStopped('virsh', ['-c', uri, 'event', '--loop', '--event', 'lifecycle', '--timestamp'], { timeoutMs: maxMs }));
  }

  events(): LifecycleEvent[] {
    return parseLifecycle(this.proc.stdout());
  }

  /** Waits until an event of `domain` matching `event` arrives after `since` (proof the watcher hears it). */
  async waitFor(domain: string, event: string, since: number, timeoutMs: number): Promise<boolean> {
    for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
      if (this.events().some((e) => e.domain === domain && e.event === event && e.at >= since)) return true;
    }
    return false;
  }

  async stop(): Promise<void> {
    await this.proc.stop();
  }
}
