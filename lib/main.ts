// How every entry point (hooks and CLI) ends: an expected error is one line
// on stderr and its exit code; anything else is a bug and gets a stack trace.
import { asFsError, VirtsnapError } from './errors.js';
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

/** `--dry-run` and friends for the hooks, which otherwise take no arguments. */
export function hookFlags(argv: string[]): { dryRun: boolean } {
  let dryRun = false;
  for (const arg of argv) {
    if (arg === '--dry-run' || arg === '-n') dryRun = true;
    else throw new VirtsnapError(`unknown argument ${JSON.stringify(arg)}: the hooks take only --dry-run`);
  }
  return { dryRun };
}
