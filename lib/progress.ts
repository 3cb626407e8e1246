// A progress line on a terminal while a VM's RAM is written. libvirt reports
// the save as a job (`virsh domjobinfo`); without a terminal there is only
// the log line before and after.
import type { LibvirtClient } from './libvirt/virsh.js';

export interface Progress {
  stop(): void;
}

const none: Progress = { stop() {} };

export function showSaveProgress(virsh: Pick<LibvirtClient, 'activeJob'>, uuid: string, name: string, enabled = process.stderr.isTTY === true): Progress {
  if (!enabled) return none;
  let shown = false;
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    virsh
      .activeJob(uuid)
      .then((job) => {
        if (job === null) return;
        const pct = Math.min(100, Math.floor((job.processedBytes / job.totalBytes) * 100));
        const mib = (n: number) => (n / 1024 ** 2).toFixed(0);
        process.stderr.write(`\r${name}: saving RAM ${pct}% (${mib(job.processedBytes)}/${mib(job.totalBytes)} MiB)`);
        shown = true;
      })
      .catch(() => undefined)
      .finally(() => {
        busy = false;
      });
  }, 300);
  return {
    stop() {
      clearInterval(timer);
      if (shown) process.stderr.write('\r\x1b[K');
    },
  };
}
