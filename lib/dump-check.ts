// Is a RAM dump's memory file still what `virsh restore` needs? Header (magic, version, format, XML length), the embedded domain XML
// (parses, names the manifest's domain), and the sha256 in the manifest;
// a gzip dump is decompressed too (zlib's CRC), and what comes out must be
// what libvirt wrote (the manifest's raw sha256).
import { statSync } from 'node:fs';
import { hashStored, sha256File } from './archive.js';
import { hashKnown, resticStoreOf, type Manifest } from './manifest.js';
import { parseDomainXml } from './libvirt/domain-xml.js';
import { FORMAT_GZIP, FORMAT_ZSTD, HEADER_BYTES, readRegion, readSaveImageHeader, readSaveImageXml, SAVE_FORMATS, streamOffset, type SaveImageHeader } from './libvirt/save-image.js';
import { CommandError } from './errors.js';

/** gzip's magic and method (deflate): the first bytes of every member (RFC 1952). */
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b, 0x08]);
/** A zstd frame's magic number, little-endian (RFC 8878). */
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/**
 * What shows of a gzip stream without decompressing it: its magic right
 * after the XML region, and its trailer's ISIZE (the stream's length mod
 * 2^32) matching the raw image the manifest recorded. Catches a cut or a
 * mix-up; damage inside the stream is verify's decompress pass.
 */
function gzipProblem(m: SavedImage, header: SaveImageHeader, size: number): string | null {
  const offset = streamOffset(header);
  if (!readRegion(m.memoryFile, offset, GZIP_MAGIC.length).equals(GZIP_MAGIC)) return `header says gzip, but no gzip stream starts at byte ${offset}`;
  if (m.raw === undefined) return null;
  const isize = readRegion(m.memoryFile, size - 4, 4).readUInt32LE(0); // RFC 1952: little-endian
  const expected = (m.raw.bytes - offset) % 2 ** 32;
  if (isize !== expected) return `gzip trailer says ${isize} bytes (mod 2^32) of stream, the manifest's raw image has ${expected}: cut short or not this dump's`;
  return null;
}

/** What checkStructure needs to know of a dump: its file and what its manifest says of it. */
export type SavedImage = Pick<Manifest, 'memoryFile' | 'compression' | 'domain' | 'bytes' | 'raw' | 'store'>;

/**
 * The problem with a dump's memory file that shows without reading it all
 * (header, embedded XML, size), or null: cheap enough for `virtsnap check`
 * on every monitoring tick.
 */
export function checkStructure(m: SavedImage): string | null {
  // A restic dump's bytes are not here to look at cheaply: verify fetches them (localDump) and checks the copy.
  if (resticStoreOf(m) !== null) return null;
  let size: number;
  try {
    size = statSync(m.memoryFile).size;
  } catch {
    return `memory file ${m.memoryFile} is missing`;
  }
  const header = readSaveImageHeader(m.memoryFile);
  if (header === null) return 'not a libvirt save image (bad magic)';
  if (!header.complete) return 'incomplete save image (magic LibvirtQemudPart): the save never finished';
  if (header.version < 1 || header.version > 2) return `unknown save image version ${header.version}`;
  if (header.format >= SAVE_FORMATS.length) return `unknown save image format ${header.format}`;
  if ((m.compression === 'gzip' && header.format !== FORMAT_GZIP) || (m.compression === 'zstd' && header.format !== FORMAT_ZSTD)) {
    return `header says format ${SAVE_FORMATS[header.format]}, the manifest says ${m.compression}`;
  }
  if (header.dataLength <= 0 || HEADER_BYTES + header.dataLength >= size) {
    return `truncated: header says ${HEADER_BYTES + header.dataLength} bytes of header and XML, file has ${size}`;
  }
  let uuid: string;
  try {
    uuid = parseDomainXml(readSaveImageXml(m.memoryFile).xml).uuid;
  } catch (err) {
    return `embedded domain XML is damaged: ${(err as Error).message}`;
  }
  if (uuid !== m.domain.uuid) return `embedded domain XML is for ${uuid}, manifest says ${m.domain.uuid}`;
  if (size !== m.bytes) return `size ${size} differs from the manifest's ${m.bytes}`;
  if (header.format === FORMAT_GZIP) return gzipProblem(m, header, size);
  if (header.format === FORMAT_ZSTD && !readRegion(m.memoryFile, streamOffset(header), ZSTD_MAGIC.length).equals(ZSTD_MAGIC)) {
    return `header says zstd, but no zstd frame starts at byte ${streamOffset(header)}`;
  }
  return null;
}

/**
 * The problem with a dump's memory file, or null when it is sound: its
 * structure, then its sha256 (a dump waiting in the spool has none yet: its
 * structure is all there is to check).
 */
export async function checkDump(m: Manifest): Promise<string | null> {
  const problem = checkStructure(m);
  if (problem !== null || !hashKnown(m)) return problem;
  let hashes;
  try {
    hashes = await hashStored(m.memoryFile, readSaveImageHeader(m.memoryFile));
  } catch (err) {
    // zlib's errors carry a Z_* code (Z_DATA_ERROR, Z_BUF_ERROR), zstd's exit status is a CommandError: the stream itself is damaged.
    // Only zstd's own verdict on the stream (exit 1): not a timeout, a kill, or zstd that could not run.
    const zstd = err instanceof CommandError && err.command === 'zstd' && !err.timedOut && err.status >= 1 && err.status < 126;
    if (!/^Z_/.test(String((err as NodeJS.ErrnoException).code)) && !zstd) throw err;
    const damaged = `its ${zstd ? 'zstd' : 'gzip'} stream does not decompress (${(err as Error).message})`;
    // Changed since it was archived (the usual case), or stored damaged: the sha256 tells, read again only now.
    const { sha256 } = await sha256File(m.memoryFile);
    return sha256 !== m.sha256 ? `sha256 ${sha256} differs from the manifest's ${m.sha256}: ${damaged}` : `stored damaged: ${damaged}`;
  }
  if (hashes.sha256 !== m.sha256) return `sha256 ${hashes.sha256} differs from the manifest's ${m.sha256}`;
  if (m.raw !== undefined && hashes.raw !== undefined && (hashes.raw.sha256 !== m.raw.sha256 || hashes.raw.bytes !== m.raw.bytes)) {
    return `decompressed, it is not the image libvirt wrote (sha256 ${hashes.raw.sha256}, ${hashes.raw.bytes} bytes; the manifest says ${m.raw.sha256}, ${m.raw.bytes})`;
  }
  return null;
}
