// libvirt's lifecycle events of the bed's domains, with libvirt's own
// timestamps: how long a guest really stood still (Suspended -> Resumed),
// which libvirt's "downtime" of a save does not tell.
import { spawn, type ChildProcess } from 'node:child_process';
import { stackUri } from './bed.js';

export interface LifecycleEvent {
  at: number;
  domain: string;
  event: string;
  detail: string;
}

/** `2026-11-23 15:54:20.529+0000: event 'lifecycle' for domain 'vsbed-x': Suspended Paused` */
export function parseEventLine(line: string): LifecycleEvent | null {
  const m = /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d+)([+-]\d{4}): event 'lifecycle' for domain '([^']*)': (\S+)\s*(.*)$/.exec(line.trim());
  if (m === null) return null;
  const offset = `${m[3]!.slice(0, 3)}:${m[3]!.slice(3)}`;
  return { at: Date.parse(`${m[1]}T${m[2]}${offset}`), domain: m[4]!, event: m[5]!, detail: m[6]!.trim() };
}

/** Each Suspended -> Resumed (or -> Stopped) of `domain`, in ms. */
export function stalls(events: readonly LifecycleEvent[], domain: string): number[] {
  const out: number[] = [];
  let since: number | null = null;
  for (const e of events.filter((x) => x.domain === domain)) {
    if (e.event === 'Suspended' && since === null) since = e.at;
    else if ((e.event === 'Resumed' || e.event === 'Stopped') && since !== null) {
      out.push(e.at - since);
      since = null;
    }
  }
  return out;
}

export class EventWatch {
  readonly events: LifecycleEvent[] = [];
  private buffer = '';
  private constructor(private readonly child: ChildProcess) {
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      this.buffer += chunk;
      const lines = this.buffer.split('\n');
      this.buffer = lines.pop() ?? '';
      for (const l of lines) {
        const e = parseEventLine(l);
        if (e !== null) this.events.push(e);
      }
    });
  }

  /** Starts `virsh event --loop --event lifecycle --timestamp`; resolves once virsh listens. */
  static async start(): Promise<EventWatch> {
    const child = spawn('stdbuf', ['-oL', 'virsh', '-c', stackUri(), 'event', '--loop', '--event', 'lifecycle', '--timestamp'], {
      stdio: ['ignore', 'pipe', 'ignore'],
      env: { ...process.env, LC_ALL: 'C' },
    });
    const w = new EventWatch(child);
    // virsh registers its callback right after connecting; give it that moment.
    await new Promise((r) => setTimeout(r, 500));
    return w;
  }

  /** Waits a moment for late events, then stops virsh. */
  async stop(settleMs = 300): Promise<LifecycleEvent[]> {
    await new Promise((r) => setTimeout(r, settleMs));
    this.child.kill('SIGTERM');
    return this.events;
  }
}
