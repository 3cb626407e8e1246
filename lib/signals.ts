// SIGINT, SIGTERM and SIGHUP: Ctrl-C on `virtsnap snapshot`, `systemctl stop
// sanoid` and a host shutdown (sanoid is stopped before libvirtd). Exiting at
// once could leave a VM on an overlay or paused, so a signal is only a
// request: the current step finishes, a freeze then undoes what it froze, a
// thaw (which is the undo) runs to its end. A second signal changes nothing;
// only SIGKILL ends us early, and then the watchdog commits the VMs back.
import { VirtsnapError } from './errors.js';
import { log } from './log.js';

export class InterruptedError extends VirtsnapError {
  override name = 'InterruptedError';
  override readonly exitCode = 130;
}

export interface StopSignal {
  /** The signal received, or null. */
  readonly requested: NodeJS.Signals | null;
  /** Throws InterruptedError when a signal arrived: call it between steps that are safe to stop after. */
  check(what: string): void;
}

class ProcessStop implements StopSignal {
  requested: NodeJS.Signals | null = null;

  check(what: string): void {
    if (this.requested !== null) throw new InterruptedError(`stopped by ${this.requested} ${what}: what this run froze is thawed again, no RAM dump kept`);
  }
}

let installed: ProcessStop | null = null;

/** Takes over SIGINT, SIGTERM and SIGHUP for this process (once). */
export function stopOnSignals(): StopSignal {
  if (installed !== null) return installed;
  const stop = new ProcessStop();
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      if (stop.requested === null) log.warn(`received ${signal}: finishing the current step, then putting every VM back on its own disks`);
      else log.warn(`received ${signal} again: still putting the VMs back, virtsnap exits as soon as that is done`);
      stop.requested ??= signal;
    });
  }
  installed = stop;
  return stop;
}

/** For code that runs without signal handling (tests, dry runs). */
export const noStop: StopSignal = { requested: null, check: () => undefined };
