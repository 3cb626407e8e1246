// `virtsnap verify`: is each RAM dump still what `virsh restore` needs?
// Header (magic, version, format, XML length), the embedded domain XML
// (parses, names the manifest's domain), and the sha256 in the manifest.
import { statSync } from 'node:fs';
import { sha256File, scanArchive, snapshotNames, type Manifest } from './archive.js';
import { parseDomainXml } from './libvirt/domain-xml.js';
import { HEADER_BYTES, readSaveImageHeader, readSaveImageXml } from './libvirt/save-image.js';
import { datasetOfSnapshot, isInSubtree, isDatasetName } from './zfs.js';

export interface Verdict {
  id: string;
  domain: string;
  file: string;
  ok: boolean;
  /** What is wrong, or 'ok'. */
  detail: string;
}

/** libvirt's formats: 0 raw .. 5 zstd, 6 sparse (mapped-ram). */
const MAX_FORMAT = 6;

/**
 * The problem with a dump's memory file that shows without reading it all
 * (header, embedded XML, size), or null: cheap enough for `virtsnap check`
 * on every monitoring tick.
 */
export function checkStructure(m: Manifest): string | null {
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
  if (header.format > MAX_FORMAT) return `unknown save image format ${header.format}`;
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
  return null;
}

/** The problem with a dump's memory file, or null when it is sound: its structure, then its sha256. */
export async function checkDump(m: Manifest): Promise<string | null> {
  const problem = checkStructure(m);
  if (problem !== null) return problem;
  const { sha256 } = await sha256File(m.memoryFile);
  if (sha256 !== m.sha256) return `sha256 ${sha256} differs from the manifest's ${m.sha256}`;
  return null;
}

/** `target`: a dataset (its subtree's dumps) or a domain name; all dumps when absent. */
export async function verifyArchive(archiveDir: string, target?: string): Promise<Verdict[]> {
  const scan = scanArchive(archiveDir);
  const verdicts: Verdict[] = scan.broken.map((b) => ({ id: b.file, domain: '?', file: b.file, ok: false, detail: b.reason }));
  const matches = (m: Manifest): boolean => {
    if (target === undefined) return true;
    if (m.domain.name === target) return true;
    return isDatasetName(target) && snapshotNames(m).some((s) => isInSubtree(datasetOfSnapshot(s), target));
  };
  for (const { manifest } of scan.dumps.filter((d) => matches(d.manifest))) {
    const problem = await checkDump(manifest);
    verdicts.push({ id: manifest.id, domain: manifest.domain.name, file: manifest.memoryFile, ok: problem === null, detail: problem ?? 'ok' });
  }
  return verdicts;
}
