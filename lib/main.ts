// How every entry point (hooks and CLI) ends: an expected error is one line
// on stderr and its exit code; anything else is a bug and gets a stack trace.
import { FsError, VirtsnapError } from './errors.js';
import { log } from './log.js';

export function main(fn: () => Promise<number | void>): void {
  fn().then(
    (code) => {
      process.exitCode = code ?? 0;
    },
    (err: unknown) => {
      if (err instanceof VirtsnapError) {
        log.error(err.message);
        process.exitCode = err.exitCode;
        return;
      }
      const fsError = asFsError(err);
      if (fsError !== null) {
        log.error(fsError.message);
        if (process.env.VIRTSNAP_LOG === 'debug') log.debug((err as Error).stack ?? '');
        process.exitCode = fsError.exitCode;
        return;
      }
      log.error(`internal error: ${(err as Error)?.stack ?? String(err)}`);
      process.exitCode = 70;
    },
  );
}

/**
 * A filesystem error from Node (EACCES, ENOSPC, EROFS, EIO, ...) is the
 * host's condition, not a bug: one line naming the path and what to do.
 */
export function asFsError(err: unknown): FsError | null {
  const e = err as NodeJS.ErrnoException;
  if (e === null || typeof e !== 'object' || typeof e.code !== 'string' || typeof e.syscall !== 'string') return null;
  if (!['EACCES', 'EPERM', 'ENOSPC', 'EDQUOT', 'EROFS', 'EIO', 'ENOENT', 'ENOTDIR', 'EMFILE', 'ENFILE'].includes(e.code)) return null;
  return new FsError(e, e.path ?? '(unknown path)', `cannot ${e.syscall}`);
}

/** `--dry-run` and friends for the hooks, which otherwise take no arguments. */
export function hookFlags(argv: string[]): { dryRun: boolean } {
  let dryRun = false;
  for (const arg of argv) {
    if (arg === '--dry-run' || arg === '-n') dryRun = true;
    else throw new VirtsnapError(`unknown argument ${JSON.stringify(arg)}: the hooks take only --dry-run`);
  }
  return { dryRun };
}
