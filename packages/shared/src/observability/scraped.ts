import type { Counter, Gauge, Registry } from 'prom-client';
import { promClient } from './prom-client.js';

/** prom-client's `collect`: empties the metric, then lets `fill` set it from state read now. */
function refilledBy<M extends { reset(): void }>(fill: (metric: M) => void): (this: M) => void {
  return function collect(this: M): void {
    this.reset();
    fill(this);
  };
}

/**
 * A gauge that is emptied and refilled by `fill` at every scrape, from state
 * read then, so it never shows a series of a source that is gone.
 */
export function scrapedGauge<L extends string>(registry: Registry, name: string, help: string, labelNames: L[], fill: (gauge: Gauge<L>) => void): void {
  new (promClient().Gauge)<L>({ name, help, labelNames, registers: [registry], collect: refilledBy(fill) });
}

/** A counter refilled the same way, from the running totals its sources keep. */
export function scrapedCounter<L extends string>(registry: Registry, name: string, help: string, labelNames: L[], fill: (counter: Counter<L>) => void): void {
  new (promClient().Counter)<L>({ name, help, labelNames, registers: [registry], collect: refilledBy(fill) });
}
