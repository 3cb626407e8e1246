// Writing as root where other users can write: a dataset's mountpoint (the
// owner of a VM's images, a user with `zfs allow`) and the directories below
// it. A symlink planted at `.virtsnap`, `.virtsnap/<domain>` or a file name
// must never make root write, copy or read through it.
//
// Node has no openat(2). Every step goes through `/proc/self/fd/<fd>/name`
// instead: the directory is pinned by its open descriptor (renaming it or
// swapping in a symlink after our checks changes nothing), and O_NOFOLLOW
// refuses a symlink at the one component that is resolved by name.
import { closeSync, constants, fstatSync, lstatSync, fsyncSync, mkdirSync, openSync, readdirSync, readSync, renameSync, rmSync, unlinkSync, writeSync, fchmodSync } from 'node:fs';
import path from 'node:path';
import { VirtsnapError } from './errors.js';
import { privacyProblem, PRIVATE_DIR, PRIVATE_FILE } from './fsutil.js';

export class UnsafePathError extends VirtsnapError {
  override name = 'UnsafePathError';
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

export class SafeDir {
  private constructor(
    private fd: number,
    /** The path as users know it, for messages. */
    readonly shown: string,
  ) {}

  /**
   * Opens `dir`, whose last `ours` components virtsnap makes and owns
   * (`.virtsnap/<domain>` below a mountpoint: 2). Those are created 0700 when
   * `create`, and must be real directories owned by us that nobody else can
   * write; the part above them is opened as it is. Returns null when a
   * component is missing and `create` is false.
   */
  static open(dir: string, options: { ours: number; create: boolean }): SafeDir | null {
    const parts = dir.split('/').filter((p) => p !== '');
    const own = parts.splice(parts.length - options.ours, options.ours);
    const base = '/' + parts.join('/');
    let fd: number;
    try {
      fd = openSync(base, constants.O_RDONLY | constants.O_DIRECTORY);
    } catch (err) {
      if (errno(err) === 'ENOENT' && !options.create) return null;
      throw new VirtsnapError(`cannot open ${base}: ${(err as Error).message}`);
    }
    let dirNow = new SafeDir(fd, base);
    for (const name of own) {
      const next = dirNow.subdir(name, options.create);
      dirNow.close();
      if (next === null) return null;
      dirNow = next;
    }
    return dirNow;
  }

  private child(name: string): string {
    if (name === '' || name.includes('/') || name === '.' || name === '..') throw new Error(`bad file name ${JSON.stringify(name)}`);
    return `/proc/self/fd/${this.fd}/${name}`;
  }

  /** A directory below this one, with the same checks as open(). */
  subdir(name: string, create: boolean): SafeDir | null {
    const shown = path.join(this.shown, name);
    if (create) {
      try {
        mkdirSync(this.child(name), { mode: PRIVATE_DIR });
      } catch (err) {
        if (errno(err) !== 'EEXIST') throw new VirtsnapError(`cannot create ${shown}: ${(err as Error).message}`);
      }
    }
    let fd: number;
    try {
      fd = openSync(this.child(name), constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    } catch (err) {
      const code = errno(err);
      if (code === 'ENOENT' && !create) return null;
      // With O_DIRECTORY, Linux answers ENOTDIR rather than ELOOP for a symlink.
      const link = code === 'ELOOP' || (code === 'ENOTDIR' && lstatSync(this.child(name), { throwIfNoEntry: false })?.isSymbolicLink() === true);
      if (link) throw new UnsafePathError(`${shown} is a symlink: virtsnap does not write or read through symlinks there; remove it`);
      if (code === 'ENOTDIR') throw new UnsafePathError(`${shown} is not a directory: remove it so virtsnap can make its own`);
      throw new VirtsnapError(`cannot open ${shown}: ${(err as Error).message}`);
    }
    const problem = privacyProblem(fstatSync(fd));
    if (problem !== null) {
      closeSync(fd);
      throw new UnsafePathError(`${shown} is ${problem}: virtsnap will not write or read through it; remove it (virtsnap makes its own)`);
    }
    return new SafeDir(fd, shown);
  }

  /** Writes `name` atomically: a new temp file (O_EXCL|O_NOFOLLOW), fsync, rename over. */
  writeFile(name: string, data: Buffer | string): void {
    const tmp = `.${name}.${process.pid}.tmp`;
    try {
      unlinkSync(this.child(tmp));
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw err;
    }
    const fd = openSync(this.child(tmp), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, PRIVATE_FILE);
    try {
      writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
      fchmodSync(fd, PRIVATE_FILE);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(this.child(tmp), this.child(name));
    fsyncSync(this.fd);
  }

  /** Copies a file we trust (libvirt's NVRAM, swtpm state) in as `name`. */
  copyFileIn(src: string, name: string): void {
    this.writeFile(name, readRegularFile(src, src));
  }

  /** Copies a directory tree we trust in as `name`, replacing what was there. */
  copyTreeIn(src: string, name: string): void {
    rmSync(this.child(name), { recursive: true, force: true }); // removes a symlink itself, never its target
    const sub = this.subdir(name, true)!;
    try {
      for (const entry of readdirSync(src, { withFileTypes: true })) {
        const from = path.join(src, entry.name);
        if (entry.isDirectory()) sub.copyTreeIn(from, entry.name);
        else if (entry.isFile()) sub.copyFileIn(from, entry.name);
      }
    } finally {
      sub.close();
    }
  }

  /** Reads `name`, refusing a symlink or anything but a regular file; null when it is missing. */
  readFile(name: string): Buffer | null {
    try {
      return readRegularFile(this.child(name), path.join(this.shown, name), constants.O_NOFOLLOW);
    } catch (err) {
      if (errno(err) === 'ENOENT') return null;
      if (errno(err) === 'ELOOP') throw new UnsafePathError(`${path.join(this.shown, name)} is a symlink: virtsnap does not read through it; remove it`);
      throw err;
    }
  }

  /** Removes the file `name` (never what a symlink there points to); false when there was none. */
  removeFile(name: string): boolean {
    try {
      unlinkSync(this.child(name));
    } catch (err) {
      if (errno(err) === 'ENOENT') return false;
      throw err;
    }
    fsyncSync(this.fd);
    return true;
  }

  /** The names in this directory. */
  list(): string[] {
    return readdirSync(`/proc/self/fd/${this.fd}`);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

function readRegularFile(file: string, shown: string, extraFlags = 0): Buffer {
  const fd = openSync(file, constants.O_RDONLY | extraFlags);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UnsafePathError(`${shown} is not a regular file: virtsnap will not read it`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < st.size) {
      const n = readSync(fd, buf, off, st.size - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    closeSync(fd);
  }
}

/** Runs `fn` with `dir` opened by SafeDir.open and closes it after. */
export function withSafeDir<T>(dir: string, options: { ours: number; create: boolean }, fn: (d: SafeDir | null) => T): T {
  const d = SafeDir.open(dir, options);
  try {
    return fn(d);
  } finally {
    d?.close();
  }
}
