// qemu-img, for the one thing virtsnap needs it for: making a disk's
// overlay before the freeze, so that libvirt only has to open it.
//
// Why: libvirt makes an external snapshot's overlays after the RAM is saved,
// while the guest is paused (qemu_snapshot.c: the memory, then the disks,
// then `cont`), and makes each with a `blockdev-create` job in QEMU that
// writes and flushes the new image. On the test bed that job alone took
// 8-95 ms of the pause. An overlay that exists already is only opened
// (`--reuse-external`: two `blockdev-add`s), so the guest stands still for less.
import { closeSync, openSync } from 'node:fs';
import path from 'node:path';
import { CommandError, VirtsnapError, oneLine } from '../errors.js';
import { run } from '../exec.js';
import { removeIfExists } from '../fsutil.js';

/** Bound for one `qemu-img create`: it writes a few KiB and reads the backing image's header. */
const CREATE_TIMEOUT_MS = 30_000;

export interface OverlaySpec {
  /** The overlay to make: a new qcow2 file. */
  overlay: string;
  /** The disk's image as the domain XML names it; the overlay's backing file. */
  backing: string;
  /** The backing image's format (the disk's <driver type>). */
  backingFormat: string;
}

/**
 * The `qemu-img create` arguments of one overlay, what libvirt's own
 * blockdev-create would write: qcow2, the backing file by its absolute path
 * with its format named (so nothing ever probes it), the size read from the
 * backing image. qemu-img opens the backing image read-only with
 * force-share, so it can read the header of a disk a running QEMU holds.
 * -u is not used: the size must come from the backing image, or the guest
 * would see a disk of another size.
 */
export function overlayArgs(spec: OverlaySpec): string[] {
  for (const p of [spec.overlay, spec.backing]) {
    // Absolute paths only: a name with a ':' before its first '/' would be read as a protocol (nbd:, json:).
    if (!path.isAbsolute(p)) throw new VirtsnapError(`overlay and backing image must be absolute paths, not ${JSON.stringify(p)}`);
  }
  if (!/^[a-z0-9]+$/.test(spec.backingFormat)) throw new VirtsnapError(`not an image format: ${JSON.stringify(spec.backingFormat)}`);
  return ['create', '-q', '-f', 'qcow2', '-b', spec.backing, '-F', spec.backingFormat, spec.overlay];
}

/** qemu-img is not installed (Debian: qemu-utils, which qemu-system-x86 only recommends). */
export class QemuImgMissingError extends VirtsnapError {
  override name = 'QemuImgMissingError';
}

export class QemuImgClient {
  constructor(private readonly binary = 'qemu-img') {}

  /**
   * Makes `spec.overlay`, which must not exist: the file is first created
   * here, exclusively and 0600 (it will hold the guest's writes), and
   * qemu-img then writes the image into it, keeping its mode. On failure
   * the file is gone again if this made it; one that existed is left alone.
   */
  async createOverlay(spec: OverlaySpec): Promise<void> {
    const args = overlayArgs(spec);
    try {
      closeSync(openSync(spec.overlay, 'wx', 0o600));
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new VirtsnapError(
        e.code === 'EEXIST' ? `overlay ${spec.overlay} exists already: not overwriting it` : `cannot create overlay ${spec.overlay}: ${e.message}`,
      );
    }
    try {
      await run(this.binary, args, { timeoutMs: CREATE_TIMEOUT_MS });
    } catch (err) {
      removeIfExists(spec.overlay);
      if (!(err instanceof CommandError)) throw err;
      if (err.status === 127) throw new QemuImgMissingError(`${this.binary} not found`);
      const why = err.timedOut ? `timed out after ${CREATE_TIMEOUT_MS / 1000} s` : oneLine(err.stderr) || `exit ${err.status}`;
      throw new VirtsnapError(`cannot create overlay ${spec.overlay} on ${spec.backing}: qemu-img: ${why}`);
    }
  }
}
