// The registry: VIRTSNAP_STORE's name -> its store. Built once, where the
// dependencies are (lib/deps.ts); nothing else asks which store it is.
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { resticStoreOf, type ArchivedDump } from '../manifest.js';
import { scanSpool } from '../spool.js';
import type { Config } from '../config.js';
import { DatasetStore } from './dataset.js';
import { DirStore } from './dir.js';
import { ResticDumpStore } from './restic.js';
import type { DumpStore, StoreScan } from './store.js';

export type StoreConfig = Pick<Config, 'store' | 'archiveDir' | 'overlayDir' | 'stateDir' | 'compression' | 'lockTimeoutMs' | 'libvirtUri'>;

const STORES: { [K in Config['store']['kind']]: (config: StoreConfig & { store: Extract<Config['store'], { kind: K }> }, host: string) => DumpStore } = {
  dir: (config, host) => new DirStore(config, host),
  restic: (config, host) => ResticDumpStore.of(config, config.store, host),
  dataset: (config, host) => new DatasetStore(config, host),
};

export function storeFor(config: StoreConfig, host = hostname()): DumpStore {
  const make = STORES[config.store.kind] as (c: StoreConfig, h: string) => DumpStore;
  return make(config, host);
}

/**
 * Every dump this host knows, once each: the store's and those waiting in
 * the spool. A killed archiver can leave a dump in both for a moment; the
 * stored copy wins unless its memory file should be here and is not.
 * `scan`: the store's, where the caller has it already (a scan reads every manifest).
 */
export function knownDumps(store: DumpStore, config: Pick<Config, 'overlayDir'>, scan: StoreScan = store.scan()): { dumps: ArchivedDump[]; broken: { file: string; reason: string }[] } {
  const spool = scanSpool(config);
  const byId = new Map<string, ArchivedDump>();
  for (const d of spool.dumps) byId.set(d.manifest.id, d);
  for (const d of scan.dumps) {
    const local = resticStoreOf(d.manifest) === null;
    if (!byId.has(d.manifest.id) || !local || existsSync(d.manifest.memoryFile)) byId.set(d.manifest.id, d);
  }
  const dumps = [...byId.values()].sort((a, b) => a.manifest.times.startedAt.localeCompare(b.manifest.times.startedAt));
  return { dumps, broken: [...scan.broken, ...spool.broken] };
}

export type { DumpStore, LocalDump, StoreScan } from './store.js';
