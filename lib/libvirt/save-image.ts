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
//  92 + data_len     QEMU's migration stream, through `<format> -c` unless raw
//
// A compressed image keeps header and XML as they are: on restore libvirt
// reads them, then (version 2, format neither raw nor sparse) runs
// `<format name> -dc` from its PATH with the rest of the file as stdin and
// hands its output to QEMU (qemuSaveImageDecompressionStart). So gzip
// (1) of the stream, with the format word set, is an image any libvirt
// restores directly; the bed's 9.0 does.
import { closeSync, fsyncSync, openSync, readSync, writeSync } from 'node:fs';

export const HEADER_BYTES = 92;
/** Offset of the format word: what a compressed copy changes in the header. */
export const FORMAT_OFFSET = 28;
/** libvirt's numbers for the stream's format (virQEMUSaveFormat): on-disk values, never reused. */
export const SAVE_FORMATS = ['raw', 'gzip', 'bzip2', 'xz', 'lzop', 'zstd', 'sparse'] as const;
export const FORMAT_RAW = 0;
export const FORMAT_GZIP = 1;
/** libvirt 10.4 and later read it (lib/libvirt/stack.ts zstdImage). */
export const FORMAT_ZSTD = 5;
const COMPLETE = 'LibvirtQemudSave';
const PARTIAL = 'LibvirtQemudPart';

export interface SaveImageHeader {
  complete: boolean;
  version: number;
  dataLength: number;
  wasRunning: boolean;
  format: number;
  /** Offset of the save cookie in the XML region (0: no cookie). */
  cookieOffset: number;
  /** The image was written big-endian: its words are read and written so. */
  bigEndian: boolean;
}

/** Reads the header; null when the file does not start with either libvirt magic. */
export function readSaveImageHeader(file: string): SaveImageHeader | null {
  const buf = readRegion(file, 0, HEADER_BYTES);
  if (buf.length < HEADER_BYTES) return null;
  const magic = buf.toString('latin1', 0, 16);
  if (magic !== COMPLETE && magic !== PARTIAL) return null;
  // Host-endian; libvirt byte-swaps when version looks swapped.
  const bigEndian = buf.readUInt32LE(16) > 2;
  const read = (o: number) => (bigEndian ? buf.readUInt32BE(o) : buf.readUInt32LE(o));
  return {
    complete: magic === COMPLETE,
    version: read(16),
    dataLength: read(20),
    wasRunning: read(24) !== 0,
    format: read(28),
    cookieOffset: read(32),
    bigEndian,
  };
}

/** Where QEMU's migration stream starts: after the header and the XML region. */
export function streamOffset(header: Pick<SaveImageHeader, 'dataLength'>): number {
  return HEADER_BYTES + header.dataLength;
}

/**
 * The header and XML region of an image (`head`, the first
 * streamOffset bytes) with its format word set to `format`, in the image's
 * own byte order; everything else is kept byte for byte.
 */
export function withFormat(head: Buffer, header: Pick<SaveImageHeader, 'bigEndian'>, format: number): Buffer {
  const out = Buffer.from(head);
  if (header.bigEndian) out.writeUInt32BE(format, FORMAT_OFFSET);
  else out.writeUInt32LE(format, FORMAT_OFFSET);
  return out;
}

export interface SaveImageXml {
  header: SaveImageHeader;
  /** The domain XML libvirt restores the domain with. */
  xml: string;
  /** libvirt's save cookie (CPU and such), kept as it is. */
  cookie: string | null;
}

/** Up to `length` bytes at `offset`; shorter when the file ends first. */
export function readRegion(file: string, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  const fd = openSync(file, 'r');
  let n: number;
  try {
    n = readSync(fd, buf, 0, length, offset);
  } finally {
    closeSync(fd);
  }
  return buf.subarray(0, n);
}

function cString(buf: Buffer, start: number): string {
  const end = buf.indexOf(0, start);
  return buf.subarray(start, end < 0 ? buf.length : end).toString('utf8');
}

export function readSaveImageXml(file: string): SaveImageXml {
  const header = readSaveImageHeader(file);
  if (header === null) throw new Error(`${file} is not a libvirt save image`);
  const region = readRegion(file, HEADER_BYTES, header.dataLength);
  const { cookieOffset } = header;
  return {
    header,
    xml: cString(region, 0),
    cookie: cookieOffset > 0 && cookieOffset < region.length ? cString(region, cookieOffset) : null,
  };
}

/**
 * Replaces the domain XML inside a save image, in place. libvirt pads the
 * XML region (64 KiB) precisely so that it can be edited like this; the
 * region keeps its length, the cookie moves right behind the new XML.
 * libvirt's own save-image-define refuses a new UUID (ABI check), which a
 * clone running beside its original needs.
 */
export function rewriteSaveImageXml(file: string, xml: string): void {
  const current = readSaveImageXml(file);
  const xmlBytes = Buffer.from(xml + '\0', 'utf8');
  const cookieBytes = current.cookie === null ? Buffer.alloc(0) : Buffer.from(current.cookie + '\0', 'utf8');
  if (xmlBytes.length + cookieBytes.length > current.header.dataLength) {
    throw new Error(`new domain XML (${xmlBytes.length} bytes) does not fit the save image's ${current.header.dataLength}-byte XML region`);
  }
  const region = Buffer.alloc(current.header.dataLength);
  xmlBytes.copy(region, 0);
  cookieBytes.copy(region, xmlBytes.length);
  const word = Buffer.alloc(4);
  if (current.header.bigEndian) word.writeUInt32BE(current.cookie === null ? 0 : xmlBytes.length);
  else word.writeUInt32LE(current.cookie === null ? 0 : xmlBytes.length);
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, region, 0, region.length, HEADER_BYTES);
    writeSync(fd, word, 0, 4, 32);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Offset of the was_running word: whether a plain `virsh restore` (no --running/--paused) starts the guest. */
export const WAS_RUNNING_OFFSET = 24;

/**
 * Sets a complete image's was_running word, in place. libvirt writes 0 for
 * a snapshot whose disks are `snapshot='manual'` (it leaves the guest
 * paused on purpose, for the storage snapshot), so a pause-mode dump of a
 * running guest would come back paused from a plain `virsh restore FILE`,
 * where a ram-mode dump comes back running. Only a complete image is touched:
 * libvirt rewrites the header of one it is still writing.
 */
export function setWasRunning(file: string, running: boolean): void {
  const header = readSaveImageHeader(file);
  if (header === null || !header.complete || header.wasRunning === running) return;
  const word = Buffer.alloc(4);
  if (header.bigEndian) word.writeUInt32BE(running ? 1 : 0);
  else word.writeUInt32LE(running ? 1 : 0);
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, word, 0, 4, WAS_RUNNING_OFFSET);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
