// The header of a libvirt save image (virQEMUSaveHeader in libvirt's
// src/qemu/qemu_saveimage.h): what `virsh save`, managedsave and an external
// memory snapshot write, and what `virsh restore` reads.
//
//   0  magic[16]     "LibvirtQemudSave", or "LibvirtQemudPart" while being written
//  16  u32 version   2
//  20  u32 data_len  domain XML + cookie + padding
//  24  u32 was_running
//  28  u32 format    0 raw, 1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd, 6 sparse
//  32  u32 cookieOffset
//  36  u32 unused[14]          -> 92 bytes, then the XML (NUL-terminated)
import { closeSync, openSync, readSync } from 'node:fs';

export const HEADER_BYTES = 92;
const COMPLETE = 'LibvirtQemudSave';
const PARTIAL = 'LibvirtQemudPart';

export interface SaveImageHeader {
  complete: boolean;
  version: number;
  dataLength: number;
  wasRunning: boolean;
  format: number;
}

/** Reads the header; null when the file does not start with either libvirt magic. */
export function readSaveImageHeader(file: string): SaveImageHeader | null {
  const buf = Buffer.alloc(HEADER_BYTES);
  const fd = openSync(file, 'r');
  let n: number;
  try {
    n = readSync(fd, buf, 0, HEADER_BYTES, 0);
  } finally {
    closeSync(fd);
  }
  if (n < HEADER_BYTES) return null;
  const magic = buf.toString('latin1', 0, 16);
  if (magic !== COMPLETE && magic !== PARTIAL) return null;
  // Host-endian; libvirt byte-swaps when version looks swapped.
  let read = (o: number) => buf.readUInt32LE(o);
  if (read(16) > 2) read = (o: number) => buf.readUInt32BE(o);
  return {
    complete: magic === COMPLETE,
    version: read(16),
    dataLength: read(20),
    wasRunning: read(24) !== 0,
    format: read(28),
  };
}
