// One line per action on stderr. sanoid passes its hooks' stderr through to
// wherever its own output goes (the journal under systemd, mail under cron),
// so each line names the domain and dataset it is about. When stderr is the
// systemd journal (JOURNAL_STREAM names it), each line starts with its syslog
// priority, `<3>` for an error, which journald reads (SyslogLevelPrefix=).
import { fstatSync } from 'node:fs';

export type Level = 'debug' | 'info' | 'warn' | 'error';

export interface LogContext {
  domain?: string;
  dataset?: string;
}

/** The context of a line about domain `name`, and the dataset when there is one. */
export function about(name: string, dataset?: string): LogContext {
  return dataset === undefined ? { domain: name } : { domain: name, dataset };
}

const order: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

function threshold(): number {
  const wanted = (process.env.VIRTSNAP_LOG ?? 'info').toLowerCase();
  return order[wanted as Level] ?? order.info;
}

function format(level: Level, message: string, ctx: LogContext): string {
  const parts = ['virtsnap:'];
  if (level !== 'info') parts.push(`${level.toUpperCase()}:`);
  if (ctx.domain !== undefined) parts.push(`domain=${JSON.stringify(ctx.domain)}`);
  if (ctx.dataset !== undefined) parts.push(`dataset=${ctx.dataset}`);
  parts.push(message);
  return parts.join(' ');
}

const priority: Record<Level, number> = { debug: 7, info: 6, warn: 4, error: 3 };

let journal: boolean | null = null;
/** Whether stderr is the journal stream systemd gave us (not a file or pipe that inherited the variable). */
export function toJournal(): boolean {
  if (journal !== null) return journal;
  const [dev, ino] = (process.env.JOURNAL_STREAM ?? '').split(':');
  try {
    const st = fstatSync(2);
    journal = dev !== undefined && ino !== undefined && String(st.dev) === dev && String(st.ino) === ino;
  } catch {
    journal = false;
  }
  return journal;
}

function write(level: Level, message: string, ctx: LogContext = {}): void {
  if (order[level] < threshold()) return;
  process.stderr.write((toJournal() ? `<${priority[level]}>` : '') + format(level, message, ctx) + '\n');
}

export const log = {
  debug: (message: string, ctx?: LogContext) => write('debug', message, ctx),
  info: (message: string, ctx?: LogContext) => write('info', message, ctx),
  warn: (message: string, ctx?: LogContext) => write('warn', message, ctx),
  error: (message: string, ctx?: LogContext) => write('error', message, ctx),
};
