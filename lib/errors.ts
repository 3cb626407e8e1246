// Every error virtsnap raises on purpose is a VirtsnapError: its message is
// the one line a user sees (what went wrong, naming the thing, and what to do).

export class VirtsnapError extends Error {
  override name = 'VirtsnapError';
  /** Exit code for the process that ends with this error. */
  readonly exitCode: number = 1;
}

/** The caller gave us something we cannot work with (arguments, environment). */
export class UsageError extends VirtsnapError {
  override name = 'UsageError';
  override readonly exitCode = 2;
}

/** The configuration (env file, directories, sanoid.conf) is wrong. */
export class ConfigError extends VirtsnapError {
  override name = 'ConfigError';
}

/** An external command failed. Carries the command's own error text. */
export class CommandError extends VirtsnapError {
  override name = 'CommandError';
  constructor(
    readonly command: string,
    readonly args: readonly string[],
    readonly status: number,
    readonly stderr: string,
    readonly timedOut = false,
    readonly stdout = '',
  ) {
    super(
      timedOut
        ? `${command} ${args[0] ?? ''} timed out`
        : `${command} ${args[0] ?? ''} failed: ${firstLine(stderr) || `exit code ${status}`}`,
    );
  }
}

/** libvirt (through virsh) refused or failed. `message` carries libvirt's text. */
export class LibvirtError extends VirtsnapError {
  override name = 'LibvirtError';
  constructor(
    message: string,
    readonly libvirtMessage: string,
    /** virsh was killed at its time limit: libvirt may still finish the call. */
    readonly timedOut = false,
  ) {
    super(message);
  }
}

/** ZFS refused or failed. `message` carries the zfs command's text. */
export class ZfsError extends VirtsnapError {
  override name = 'ZfsError';
  constructor(
    message: string,
    readonly zfsMessage: string,
  ) {
    super(message);
  }
}

/** A file operation failed: one line naming the path and what to do, not a stack trace. */
export class FsError extends VirtsnapError {
  override name = 'FsError';
  readonly code: string;
  constructor(err: NodeJS.ErrnoException, readonly path: string, what: string) {
    super(`${what}: ${path}: ${fsAdvice(err)}`);
    this.code = err.code ?? 'EIO';
  }
}

function fsAdvice(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ENOENT':
      return 'does not exist: create it or fix the setting';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied: run as root, or fix its owner and mode';
    case 'ENOSPC':
    case 'EDQUOT':
      return 'no space left on the device: free some space';
    case 'EROFS':
      return 'the filesystem is read-only: remount it read-write or choose another path';
    case 'EIO':
      return 'I/O error: check the disk (dmesg)';
    case 'ENOTDIR':
      return 'a part of the path is not a directory: fix the path';
    default:
      return err.message;
  }
}

/** Another run holds the lock on a domain for longer than we may wait. */
export class LockTimeoutError extends VirtsnapError {
  override name = 'LockTimeoutError';
}

export function firstLine(text: string): string {
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  return lines[0] ?? '';
}

/** All of a command's error text on one line: libvirt often puts the reason on line 2. */
export function oneLine(text: string): string {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .join(' ');
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
