// Bounded concurrency for the per-VM steps of a run (VIRTSNAP_PARALLEL).

/** Runs `work` on every item, at most `limit` at a time, in order of start; resolves when all are done. `work` must not throw. */
export async function inParallel<T>(items: readonly T[], limit: number, work: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      await work(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, limit), items.length) }, worker));
}
