// The registry: VIRTSNAP_STORE's name -> its store. Built once, where the
// dependencies are (lib/deps.ts); nothing else asks which store it is.
import { hostname } from 'node:os';
import type { Config } from '../config.js';
import { DatasetStore } from './dataset.js';
import { DirStore } from './dir.js';
import { ResticDumpStore } from './restic.js';
import type { DumpStore } from './store.js';

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

export type { DumpStore, LocalDump, StoreScan } from './store.js';
