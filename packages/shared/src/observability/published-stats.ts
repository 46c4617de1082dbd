import type { Registry } from 'prom-client';
import type { MetricsOptions } from './metrics.js';

/** The stats sources of each kind of series, per registry, by their `pool` label. */
const sourcesByRegistry = new WeakMap<Registry, Map<string, Map<string, () => unknown>>>();

/**
 * Publishes `stats` in `options.registry` under the `pool` label
 * (`options.name`, else `defaultName`), for series that read every source of
 * their `kind` at scrape time. The series are registered once per registry,
 * by `register`, when the first source of that kind arrives: pools sharing a
 * registry share them. Returns the function that removes this source.
 */
export function publishStats<T>(
  kind: string,
  options: MetricsOptions,
  defaultName: string,
  stats: () => T,
  register: (registry: Registry, sources: ReadonlyMap<string, () => T>) => void,
): () => void {
  let kinds = sourcesByRegistry.get(options.registry);
  if (kinds === undefined) {
    kinds = new Map();
    sourcesByRegistry.set(options.registry, kinds);
  }
  let sources = kinds.get(kind) as Map<string, () => T> | undefined;
  if (sources === undefined) {
    sources = new Map();
    kinds.set(kind, sources as Map<string, () => unknown>);
    register(options.registry, sources);
  }
  const pool = options.name ?? defaultName;
  sources.set(pool, stats);
  return () => sources.delete(pool);
}
