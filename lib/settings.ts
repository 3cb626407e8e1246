// Every setting of virtsnap, once: its name, default, kind, a one-line
// summary and the longer text. lib/config.ts reads its defaults from here;
// scripts/settings.ts writes the man page's ENVIRONMENT section,
// examples/virtsnap.env and doc/settings.md from it (test/unit/settings.test.ts
// fails when any of them differs from what it would write). In the texts,
// `code` is a literal (bold in the man page, its hyphens \-).

export type SettingKind = 'uri' | 'path' | 'choice' | 'seconds' | 'count' | 'file' | 'text';

export interface Setting {
  name: string;
  /** As it goes into the env file; '' is "not set". */
  default: string;
  kind: SettingKind;
  /** One line: what it is. */
  summary: string;
  /** What else a person needs to choose it, or ''. */
  text: string;
  /** A value to show in examples/virtsnap.env when the default is '' (it stays commented out). */
  example?: string;
}

/** The order is the one people read them in: where things are, how VMs are frozen, bounds, where dumps go, the rest. */
export const SETTINGS: readonly Setting[] = [
  { name: 'VIRTSNAP_LIBVIRT_URI', default: 'qemu:///system', kind: 'uri', summary: 'The libvirt connection.', text: '' },
  {
    name: 'VIRTSNAP_OVERLAY_DIR',
    default: '/var/lib/virtsnap/overlay',
    kind: 'path',
    summary: 'Overlays and RAM files while a VM is frozen, and the spool where dumps wait for the archiver.',
    text: "Never inside a dataset sanoid snapshots; QEMU's user must be able to reach it. It needs room for the RAM of the VMs frozen at once (twice the RAM for a live save) beside the dumps waiting in the spool: a VM whose dump would not fit gets no RAM that run, named by one ERROR line.",
  },
  { name: 'VIRTSNAP_ARCHIVE_DIR', default: '/var/lib/virtsnap/archive', kind: 'path', summary: 'RAM dumps and their manifests (the manifests only, with restic).', text: 'Cheaper storage is fine; it may sit on a replicated dataset.' },
  { name: 'VIRTSNAP_STATE_DIR', default: '/var/lib/virtsnap/state', kind: 'path', summary: 'Journal, locks and the metrics state.', text: '' },
  { name: 'VIRTSNAP_SANOID_CONF', default: '/etc/sanoid/sanoid.conf', kind: 'path', summary: "sanoid's config, read to learn which datasets use `recursive = zfs` and how old a dump may get.", text: '' },
  {
    name: 'VIRTSNAP_MODE',
    default: 'ram',
    kind: 'choice',
    summary: 'How VMs are frozen: `ram`, `pause` or `quiesce`, optionally per sanoid type.',
    text: '`ram`: RAM saved, disks on overlays outside the dataset until post commits them back. `pause`: RAM saved, then the guest stays paused until post resumes it (no overlay, no block commit; libvirt 8.2 or later). `quiesce`: the guest agent freezes the filesystems until post thaws them; no RAM dump, a restore boots. Per type, e.g. RAM for daily and up: `ram,frequently=quiesce,hourly=quiesce`; a run whose types name several modes takes the strongest (pause, then ram, then quiesce).',
  },
  {
    name: 'VIRTSNAP_LIVE',
    default: 'auto',
    kind: 'choice',
    summary: 'Save RAM while the guest runs (`auto`, `yes`) or with it paused (`no`).',
    text: '`auto` saves live wherever the stack keeps every page the guest writes, and pauses the guest for the save where QEMU is known to lose pages in a live save (QEMU before 9.0 under TCG). `yes` saves live there too, with a warning.',
  },
  { name: 'VIRTSNAP_QUIESCE_FALLBACK', default: 'ram', kind: 'choice', summary: '`quiesce` and a guest whose agent does not answer: `ram` instead (said in the log), or `fail`.', text: '' },
  { name: 'VIRTSNAP_AGENT_TIMEOUT', default: '10', kind: 'seconds', summary: 'Seconds for each guest agent call.', text: '' },
  { name: 'VIRTSNAP_PAUSE_MAX', default: '60', kind: 'seconds', summary: '`pause`: seconds a guest may stay paused waiting for post before the watchdog resumes it.', text: 'Its dump is then kept only if the snapshot was taken meanwhile.' },
  { name: 'VIRTSNAP_PARALLEL', default: '4', kind: 'count', summary: 'VMs frozen, and committed back, at once.', text: '' },
  { name: 'VIRTSNAP_SAVE_TIMEOUT', default: '600', kind: 'seconds', summary: 'Seconds for one RAM save.', text: '' },
  { name: 'VIRTSNAP_COMMIT_TIMEOUT', default: '300', kind: 'seconds', summary: "Seconds for committing one disk's overlay back.", text: '' },
  { name: 'VIRTSNAP_LOCK_TIMEOUT', default: '120', kind: 'seconds', summary: 'Seconds to wait for a VM another run holds, and for a lock.', text: '' },
  {
    name: 'VIRTSNAP_DEFINE_TIMEOUT',
    default: '120',
    kind: 'seconds',
    summary: '`virtsnap restore`: seconds for defining a domain.',
    text: 'libvirt may be slow to define on a host without udev (`/dev/kvm` 0600); after a timeout virtsnap asks libvirt what happened before it calls the call failed.',
  },
  { name: 'VIRTSNAP_RESTORE_TIMEOUT', default: '600', kind: 'seconds', summary: '`virtsnap restore`: seconds for reading a RAM dump back.', text: '' },
  {
    name: 'VIRTSNAP_STORE',
    default: 'dir',
    kind: 'choice',
    summary: 'Where RAM dumps live: `dir` (the archive dir), `restic:REPO` or `dataset`.',
    text: "`dir` and `restic:REPO` (a path, or an sftp:, s3: or rest: repository, as restic takes it; `restic` alone takes RESTIC_REPOSITORY or RESTIC_REPOSITORY_FILE from the env file): post seals each dump into the spool, and an archiver moves it into the store after the run, retrying while the store is away. With restic each dump is one restic snapshot of the raw save image and its meta dir, tagged `virtsnap`, `virtsnap-id=ID`, `virtsnap-domain=NAME` and `virtsnap-guid=GUID`; the archive dir keeps the manifests; create the repository with `restic init --repository-version 2`; restic reads its other settings (RESTIC_CACHE_DIR, AWS_*, ...) from the env file, and nothing else sees them. `dataset`: the RAM goes into the VM's own dataset (`.virtsnap/DOMAIN/`), so that the snapshot holds disks, RAM and definition of one instant, replicates with it and is pruned with it. VIRTSNAP_ARCHIVE and VIRTSNAP_RAM_STORE of earlier versions are still read.",
  },
  { name: 'VIRTSNAP_RESTIC_PASSWORD_FILE', default: '', kind: 'file', summary: "The restic repository's password, one line, in a file (0600).", text: 'Required with `restic:REPO`, unless the env file gives RESTIC_PASSWORD_FILE.', example: '/etc/virtsnap/restic.password' },
  {
    name: 'VIRTSNAP_COMPRESS',
    default: 'auto',
    kind: 'choice',
    summary: 'How the archiver compresses dumps in the archive dir: `auto`, `gzip`, `zstd` or `no`.',
    text: '`auto` (also `yes`): zstd where this host\'s libvirt restores zstd save images (10.4 and later) and zstd is installed, gzip elsewhere. Either stays a save image `virsh restore` reads as it is. `zstd -1` ran 4x as fast as `gzip -1` for the same size on the bed; a dump is read where it is restored, so a replica on an older libvirt needs `gzip`. Not used with restic (it compresses and deduplicates itself).',
  },
  { name: 'VIRTSNAP_WATCHDOG', default: 'auto', kind: 'choice', summary: 'How the watchdog and the archiver are started: `auto` (systemd-run where systemd is PID 1, else detached) or `detached`.', text: '' },
  { name: 'VIRTSNAP_METRICS_FILE', default: '', kind: 'file', summary: "A Prometheus textfile for node_exporter's textfile collector, rewritten after every run and every dump stored.", text: 'Empty: none.', example: '/var/lib/prometheus/node-exporter/virtsnap.prom' },
  { name: 'VIRTSNAP_LOG', default: 'info', kind: 'choice', summary: '`info` or `debug` (debug also prints stack traces).', text: '' },
];

/** The defaults, by name: what lib/config.ts merges the env file and the environment over. */
export function settingDefaults(): Record<string, string> {
  return Object.fromEntries(SETTINGS.map((s) => [s.name, s.default]));
}
