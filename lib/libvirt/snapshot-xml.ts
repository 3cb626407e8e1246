// The <domainsnapshot> document for one freeze.
//
// Every disk is named explicitly. libvirt's default for a disk we do not
// mention is an external snapshot with a generated name next to the source,
// which fails for a cdrom with media ("not a regular file; refusing to
// generate external snapshot name") and would put an overlay inside the very
// dataset we are about to snapshot.

export interface SnapshotDiskSpec {
  target: string;
  /** Overlay file to switch the disk to, or null to leave the disk alone (snapshot='no'). */
  overlay: string | null;
  /** Leave the disk as it is but count it in (snapshot='manual', libvirt >= 8.2): its storage is snapshotted by someone else. */
  manual?: boolean;
}

export interface SnapshotSpec {
  name: string;
  description: string;
  memoryFile: string;
  disks: SnapshotDiskSpec[];
}

export function escapeXml(value: string): string {
  return value
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;');
}

function diskXml(disk: SnapshotDiskSpec): string {
  const name = escapeXml(disk.target);
  if (disk.manual) return `    <disk name='${name}' snapshot='manual'/>`;
  if (disk.overlay === null) return `    <disk name='${name}' snapshot='no'/>`;
  return [
    `    <disk name='${name}' snapshot='external' type='file'>`,
    `      <driver type='qcow2'/>`,
    `      <source file='${escapeXml(disk.overlay)}'/>`,
    `    </disk>`,
  ].join('\n');
}

export function snapshotXml(spec: SnapshotSpec): string {
  return [
    '<domainsnapshot>',
    `  <name>${escapeXml(spec.name)}</name>`,
    `  <description>${escapeXml(spec.description)}</description>`,
    `  <memory snapshot='external' file='${escapeXml(spec.memoryFile)}'/>`,
    '  <disks>',
    ...spec.disks.map(diskXml),
    '  </disks>',
    '</domainsnapshot>',
    '',
  ].join('\n');
}
