import { Counter, Gauge, type Registry } from 'prom-client';

/**
 * A gauge that is emptied and refilled by `fill` at every scrape, from state
 * read then, so it never shows a series of a source that is gone.
 */
export function scrapedGauge<L extends string>(registry: Registry, name: string, help: string, labelNames: L[], fill: (gauge: Gauge<L>) => void): void {
  new Gauge<L>({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      fill(this);
    },
  });
}

/** A counter refilled the same way, from the running totals its sources keep. */
export function scrapedCounter<L extends string>(registry: Registry, name: string, help: string, labelNames: L[], fill: (counter: Counter<L>) => void): void {
  new Counter<L>({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      fill(this);
    },
  });
}
