// Guest stall from libvirt's own lifecycle events: the time between a
// domain's `Suspended` and the `Resumed` that follows, as `virsh event
// --timestamp` sees them (test/helpers/events.ts: the watcher, the parser
// and the pairing). This is what the guest lives through, whoever paused it;
// libvirt's "Total downtime" only covers the migration stream's last pass.
//
// One watcher runs for the whole bench; each sample reads its own time
// window out of it (the stamps are virsh's, on the same host clock as ours).
import { EventWatch, stalls, type LifecycleEvent } from '../helpers/events.js';

export interface Stall {
  /** Every pause of the window, in ms: one snapshot may pause a guest more than once. */
  pausesMs: number[];
  totalMs: number;
  longestMs: number;
}

/** The pauses of `domain` between `from` and `to` (ms since the epoch). */
export function stallOf(events: readonly LifecycleEvent[], domain: string, from: number, to: number): Stall {
  const pausesMs = stalls(events.filter((e) => e.at >= from && e.at <= to), domain);
  return { pausesMs, totalMs: pausesMs.reduce((a, p) => a + p, 0), longestMs: Math.max(0, ...pausesMs) };
}

export class EventWatcher {
  private constructor(private readonly watch: EventWatch) {}

  static async start(): Promise<EventWatcher> {
    return new EventWatcher(await EventWatch.start());
  }

  events(): LifecycleEvent[] {
    return [...this.watch.events];
  }

  /** Waits until `domain` reports `event` after `since`: proof the watcher hears the bench's guests. */
  async waitFor(domain: string, event: string, since: number, timeoutMs: number): Promise<boolean> {
    for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
      if (this.watch.events.some((e) => e.domain === domain && e.event === event && e.at >= since)) return true;
    }
    return false;
  }

  async stop(): Promise<void> {
    await this.watch.stop();
  }
}
