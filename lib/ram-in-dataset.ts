// RAM inside the snapshot (VIRTSNAP_STORE=dataset): the pre hook has
// libvirt write the RAM dump into the VM's own dataset, at
// `<mountpoint>/.virtsnap/<domain>/<id>.save`, beside the XML and NVRAM
// copies, and writes `<id>.json` (its manifest) once the save is complete.
// sanoid's snapshot then holds disks, RAM and definition of one instant:
// syncoid replicates it with no extra step, the dataset's `compression`
// compresses it, and sanoid's pruning frees it.
//
// The live files must be gone before the disks move again (the block
// commit, or the resume in pause mode): a later snapshot that still caught
// them would pair this RAM with newer disks. The thaw removes them first,
// whatever step it starts from. As a second line, the manifest records each
// disk image's size and mtime right after the save (the disks stand still
// until the commit); a restore refuses a dump whose disks differ from that
// in the snapshot. `zfs send | zfs recv` keeps file sizes and mtimes.
import { lstatSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { DUMP_ID, type DumpDisk, type Manifest } from './manifest.js';
import { datasetMetaDir, DATASET_META_DEPTH } from './domain-files.js';
import { VirtsnapError } from './errors.js';
import { checkStructure } from './dump-check.js';
import { withSafeDir } from './safe-dir.js';
import { ensureDirBelow, fileSafe, writeJsonAtomic } from './fsutil.js';

/** Where the RAM of one freeze goes and what is known of the dataset, in the journal entry. */
export interface RamInDataset {
  /** The memory file's size once the save completed (written into the journal with step frozen). */
  bytes?: number;
  /** The dataset whose snapshot holds the RAM (the one holding every frozen disk of the VM). */
  dataset: string;
  mountpoint: string;
  /** `<mountpoint>/.virtsnap/<domain>`. */
  dir: string;
}

/** A disk as it stood when the RAM was saved: what a restore compares the snapshot's disk with. */
export interface DiskIdentity {
  bytes: number;
  /** Nanoseconds since the epoch, as a string (zfs-fuse keeps whole seconds). */
  mtimeNs: string;
}

/** The manifest beside a RAM dump inside a dataset. */
export interface InDatasetManifest extends Omit<Manifest, 'snapshots' | 'sha256' | 'memoryFile' | 'metaDir'> {
  store: { kind: 'dataset'; dataset: string; mountpoint: string };
  /** The snapshot names the run was to take (dataset@snapname, as named on this host then). */
  snapshotNames: string[];
  disks: (DumpDisk & { identity: DiskIdentity | null })[];
}

/** The names of a dump's two files in `.virtsnap/<domain>/`. */
export function ramFileName(id: string, kind: 'save' | 'json'): string {
  return `${id}.${kind}`;
}

/** The dump's two files in the dataset. */
export function ramFiles(dir: string, id: string): { save: string; manifest: string } {
  return { save: path.join(dir, ramFileName(id, 'save')), manifest: path.join(dir, ramFileName(id, 'json')) };
}

/** The RAM location for a domain frozen in dataset mode. */
export function ramInDatasetOf(dataset: string, mountpoint: string, domainName: string): RamInDataset {
  return { dataset, mountpoint, dir: datasetMetaDir(mountpoint, domainName) };
}

/**
 * Why RAM cannot go into this dataset for this VM, or null. Every frozen disk
 * must be in one mounted dataset: the snapshot that holds the RAM must hold
 * all of them (a VM spread over several datasets is refused, and named).
 */
export function ramInDatasetProblem(domainName: string, datasets: string[], mountpoint: string | undefined): string | null {
  if (datasets.length !== 1) {
    return `domain ${JSON.stringify(domainName)} has disks in ${datasets.join(' and ')}: VIRTSNAP_STORE=dataset needs every disk of a VM in one dataset, so that one snapshot holds disks and RAM; move the disks, or use VIRTSNAP_STORE=dir`;
  }
  if (mountpoint === undefined) {
    return `dataset ${datasets[0]} of domain ${JSON.stringify(domainName)} is not mounted: VIRTSNAP_STORE=dataset writes the RAM into it; mount it, or use VIRTSNAP_STORE=dir`;
  }
  return null;
}

/**
 * libvirt writes the RAM by path, not through our checked directory handle:
 * the mountpoint above `.virtsnap/` must be one nobody but root can change
 * (no symlink swapped in under libvirt's open).
 */
export function assertMountpointPrivate(mountpoint: string): void {
  const st = lstatSync(mountpoint);
  if (st.isSymbolicLink() || !st.isDirectory()) throw new VirtsnapError(`mountpoint ${mountpoint} is not a directory: cannot put RAM into it`);
  const othersWrite = (st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0;
  if (st.uid !== 0 || othersWrite) {
    throw new VirtsnapError(
      `mountpoint ${mountpoint} can be changed by users other than root: libvirt would write RAM (guest secrets) through it; chown root and chmod go-w it, or use VIRTSNAP_STORE=dir`,
    );
  }
}

export function diskIdentity(file: string): DiskIdentity | null {
  try {
    const st = statSync(file, { bigint: true });
    return { bytes: Number(st.size), mtimeNs: st.mtimeNs.toString() };
  } catch {
    return null;
  }
}

/** Writes the manifest beside the saved RAM (the save is complete: libvirt's header says so). */
export function writeInDatasetManifest(where: RamInDataset, manifest: InDatasetManifest): void {
  withSafeDir(where.dir, { ours: DATASET_META_DEPTH, create: false }, (d) => {
    if (d === null) throw new VirtsnapError(`${where.dir} is gone: cannot write the manifest of the RAM dump`);
    d.writeFile(ramFileName(manifest.id, 'json'), `${JSON.stringify(manifest, null, 2)}\n`);
  });
}

/** Removes a dump's files from the live dataset (never through a symlink); nothing there is fine. */
export function removeLiveRam(dir: string, id: string): void {
  withSafeDir(dir, { ours: DATASET_META_DEPTH, create: false }, (d) => {
    if (d === null) return;
    // The manifest first: a RAM file without it is never taken for a dump.
    d.removeFile(ramFileName(id, 'json'));
    d.removeFile(ramFileName(id, 'save'));
  });
}

/** The dump ids whose manifest sits in a (cloned or rolled back) dataset's `.virtsnap/<domain>/`. */
export function inDatasetDumps(mountpoint: string): { domainDir: string; manifest: InDatasetManifest | null; problem: string | null; id: string }[] {
  const top = withSafeDir(path.join(mountpoint, '.virtsnap'), { ours: 1, create: false }, (d) => d?.list() ?? []);
  const found: { domainDir: string; manifest: InDatasetManifest | null; problem: string | null; id: string }[] = [];
  for (const domain of top.sort()) {
    const dir = path.join(mountpoint, '.virtsnap', domain);
    // One checked handle on the domain's dir for the listing and every manifest read.
    withSafeDir(dir, { ours: DATASET_META_DEPTH, create: false }, (d) => {
      for (const name of (d?.list() ?? []).filter((n) => n.endsWith('.json') && DUMP_ID.test(n.slice(0, -'.json'.length))).sort()) {
        const id = name.slice(0, -'.json'.length);
        try {
          const m = JSON.parse(String(d!.readFile(name))) as InDatasetManifest;
          if (m.id !== id || m.store?.kind !== 'dataset' || !Array.isArray(m.disks)) throw new Error('not a virtsnap RAM manifest');
          found.push({ domainDir: dir, manifest: m, problem: null, id });
        } catch (err) {
          found.push({ domainDir: dir, manifest: null, problem: `manifest ${path.join(dir, name)} is damaged (${(err as Error).message})`, id });
        }
      }
    });
  }
  return found;
}

/**
 * What is wrong with a RAM dump found in a snapshot (a clone of it, or the
 * dataset rolled back to it), or null: the save image is complete and for
 * this domain, and each disk, mapped from where it was to where it is now,
 * has the size and mtime it had when the RAM was saved.
 */
export function inDatasetProblem(m: InDatasetManifest, saveFile: string, diskNow: (source: string) => string | null): string | null {
  // The save image as verify checks an archived one: header, complete, this domain's XML, the size its manifest says.
  const structure = checkStructure({ memoryFile: saveFile, compression: null, domain: m.domain, bytes: m.bytes });
  if (structure !== null) return `${saveFile}: ${structure}`;
  for (const disk of m.disks) {
    if (disk.identity === null) return `disk ${disk.target} (${disk.source}) could not be looked at when the RAM was saved, so whether the snapshot holds it as it was then is unknown`;
    const file = diskNow(disk.source);
    const now = file === null ? null : diskIdentity(file);
    if (now === null) return `disk ${disk.target} (${disk.source}) is not in the snapshot`;
    if (now.bytes !== disk.identity.bytes || now.mtimeNs !== disk.identity.mtimeNs) {
      return `disk ${disk.target} changed after the RAM was saved (size ${now.bytes}, mtime ${now.mtimeNs}; at the save ${disk.identity.bytes}, ${disk.identity.mtimeNs}): this RAM is not of this snapshot's instant`;
    }
  }
  return null;
}

/**
 * The newest RAM dump each domain has inside snapshots, as post last saw
 * it: `STATE_DIR/in-snapshots/<uuid>.json`. `virtsnap status` and `check`
 * read it (with ZFS as the judge of whether its snapshots still exist):
 * with the RAM in the dataset, the archive has nothing to tell them.
 */
export function recordLatestInSnapshots(stateDir: string, manifest: Manifest): void {
  const dir = path.join(stateDir, 'in-snapshots');
  ensureDirBelow(dir, 'VIRTSNAP_STATE_DIR');
  writeJsonAtomic(path.join(dir, `${fileSafe(manifest.domain.uuid)}.json`), manifest);
}

export function latestInSnapshots(stateDir: string): Manifest[] {
  const dir = path.join(stateDir, 'in-snapshots');
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.json'));
  } catch {
    return [];
  }
  return names.flatMap((n) => {
    try {
      const m = JSON.parse(readFileSync(path.join(dir, n), 'utf8')) as Manifest;
      return Array.isArray(m.snapshots) && typeof m.domain?.uuid === 'string' ? [m] : [];
    } catch {
      return [];
    }
  });
}
