// Wall and CPU time of a whole child process. CPU comes from our own
// /proc/self/stat: node reaps its children, so their user+system time is
// added to our cutime/cstime (clock ticks) as each one ends.
import { readFileSync } from 'node:fs';
import { run, type RunOptions } from '../../lib/exec.js';

const TICK_MS = 10; // USER_HZ is 100 on Linux

function childrenCpuMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  // Fields after the command name (which may hold spaces) start at field 3.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[13]) + Number(fields[14])) * TICK_MS; // cutime, cstime
}

export interface Cost {
  wallMs: number;
  cpuMs: number;
}

/** Runs a program to its end (a failure throws) and returns what it cost. */
export async function timed(command: string, args: string[], options: RunOptions = {}): Promise<Cost> {
  const cpu = childrenCpuMs();
  const started = process.hrtime.bigint();
  await run(command, args, options);
  return { wallMs: Number(process.hrtime.bigint() - started) / 1e6, cpuMs: childrenCpuMs() - cpu };
}
