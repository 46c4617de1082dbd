import type { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { promClient } from './prom-client.js';
import type { ConnectionTracker, OpenState } from './connection-tracker.js';
import { InvalidOptionError } from '../core/errors.js';
import { scrapedCounter, scrapedGauge } from './scraped.js';
import type { LeasedBytes } from '../pool/leased-connections.js';

/** Where a pool publishes Prometheus metrics. */
export interface MetricsOptions {
  /**
   * The prom-client registry to register in. The SDK never registers in
   * prom-client's global registry unless it is the one passed here.
   */
  registry: Registry;
  /**
   * The `pool` label of this pool's series, which tells pools sharing a
   * registry apart; unique per registry among open pools.
   * Default: `'relay'` for a ServerPool, `'agent'` for a ClientPool.
   */
  name?: string;
}

/** What a pool lets its metrics read at scrape time. */
export interface MetricsSource {
  tracker: ConnectionTracker;
  capacity(): number;
  /** The agent's fill interval, in ms. */
  interval?(): number;
  leasedBytes(): LeasedBytes;
  /** The relay's distinct clients. */
  clients?(): number;
}

/** Seconds a successful get waited, from 0.1 ms to 30 s. */
const GET_WAIT_BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30];

/** The metric objects of one registry, shared by every pool registered in it. */
class MetricFamilies {
  readonly sourceByPool = new Map<string, MetricsSource>();
  readonly dials: Counter<'pool' | 'outcome'>;
  readonly handshakes: Counter<'pool' | 'outcome'>;
  readonly upgradesRejected: Counter<'pool' | 'reason'>;
  readonly gets: Counter<'pool' | 'outcome'>;
  readonly getWait: Histogram<'pool'>;

  constructor(registry: Registry) {
    const registers = [registry];
    const sources = this.sourceByPool;
    const gauge = <L extends string>(name: string, help: string, labelNames: L[], read: (gauge: Gauge<L | 'pool'>) => void): void =>
      scrapedGauge<L | 'pool'>(registry, name, help, ['pool', ...labelNames], read);
    gauge('pool_connections', 'Pooled connections open now, by lifecycle state.', ['state'], (metric) => {
      for (const [pool, source] of sources) {
        const { byState } = source.tracker.counts();
        for (const state of Object.keys(byState) as OpenState[]) metric.set({ pool, state }, byState[state]);
      }
    });
    gauge('pool_websockets', 'WebSocket connections open now (idle and leased).', [], (metric) => {
      for (const [pool, source] of sources) {
        const { byState } = source.tracker.counts();
        metric.set({ pool }, byState.idle + byState.leased);
      }
    });
    gauge('pool_capacity', 'Target pool size (agent) or most idle connections held (relay).', [], (metric) => {
      for (const [pool, source] of sources) metric.set({ pool }, source.capacity());
    });
    gauge('pool_interval_seconds', "The agent's current pause between fill rounds.", [], (metric) => {
      for (const [pool, source] of sources) if (source.interval) metric.set({ pool }, source.interval() / 1000);
    });
    gauge('pool_clients', 'Distinct clients (token identity or IP) with an open connection to the relay.', [], (metric) => {
      for (const [pool, source] of sources) if (source.clients) metric.set({ pool }, source.clients());
    });
    scrapedCounter(registry, 'pool_leased_bytes_total', 'Payload bytes moved through leased connections (open ones included).', ['pool', 'direction'], (metric) => {
      for (const [pool, source] of sources) {
        const { read, written } = source.leasedBytes();
        metric.inc({ pool, direction: 'received' }, read);
        metric.inc({ pool, direction: 'sent' }, written);
      }
    });
    scrapedCounter(registry, 'pool_lifecycle_reconciled_total', 'Connection state transitions that came out of order and were reconciled.', ['pool'], (metric) => {
      for (const [pool, source] of sources) metric.inc({ pool }, source.tracker.counts().reconciled);
    });
    const counter = <L extends string>(name: string, help: string, label: L): Counter<'pool' | L> =>
      new (promClient().Counter)<'pool' | L>({ name, help, labelNames: ['pool', label], registers });
    this.dials = counter('pool_dials_total', 'Agent dials (TCP, TLS and the HTTP upgrade), by outcome: success or an error code.', 'outcome');
    this.handshakes = counter('pool_handshakes_total', 'ID handshakes after the upgrade, by outcome: success or an error code.', 'outcome');
    this.upgradesRejected = counter('pool_upgrades_rejected_total', 'Upgrade requests the relay refused, by HTTP status (403, 401, 503, 404).', 'reason');
    this.gets = counter('pool_gets_total', 'IncomingGet / OutgoingGet calls, by outcome: success or an error code.', 'outcome');
    this.getWait = new (promClient().Histogram)({
      name: 'pool_get_wait_seconds',
      help: 'How long successful gets waited for their connection.',
      labelNames: ['pool'],
      buckets: GET_WAIT_BUCKETS,
      registers,
    });
  }
}

const familiesByRegistry = new WeakMap<Registry, MetricFamilies>();

/**
 * One pool's handle on its registry's metrics. Counters are bumped as things
 * happen (O(1), no I/O); gauges are read from the pool when scraped.
 */
export class PoolMetrics {
  readonly #families: MetricFamilies;
  readonly #pool: string;

  constructor(options: MetricsOptions, defaultName: string, source: MetricsSource) {
    let families = familiesByRegistry.get(options.registry);
    if (families === undefined) {
      families = new MetricFamilies(options.registry);
      familiesByRegistry.set(options.registry, families);
    }
    const pool = options.name ?? defaultName;
    if (families.sourceByPool.has(pool)) {
      throw new InvalidOptionError('metrics.name', pool, 'a name no other open pool uses in this registry');
    }
    families.sourceByPool.set(pool, source);
    this.#families = families;
    this.#pool = pool;
  }

  dial(outcome: string): void {
    this.#families.dials.inc({ pool: this.#pool, outcome });
  }

  handshake(outcome: string): void {
    this.#families.handshakes.inc({ pool: this.#pool, outcome });
  }

  upgradeRejected(status: number): void {
    this.#families.upgradesRejected.inc({ pool: this.#pool, reason: String(status) });
  }

  /** Counts a get by how it ends, and how long it waited if it succeeds. Returns `get` itself. */
  observeGet<T>(get: Promise<T>): Promise<T> {
    const started = performance.now();
    const pool = this.#pool;
    get.then(
      () => {
        this.#families.gets.inc({ pool, outcome: 'success' });
        this.#families.getWait.observe({ pool }, (performance.now() - started) / 1000);
      },
      (error: unknown) => this.#families.gets.inc({ pool, outcome: outcomeOf(error) }),
    );
    return get;
  }

  /** The pool closed: its gauges leave the registry (its counters stay, as counters do). */
  detach(): void {
    this.#families.sourceByPool.delete(this.#pool);
  }
}

/**
 * A bounded label value for an error: our `code`s and Node's errno codes
 * (ECONNREFUSED, …) as they are, anything else `'error'`, so that a label
 * never takes an unbounded set of values.
 */
export function outcomeOf(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^(?:ERR_[A-Z0-9_]{1,40}|E[A-Z0-9]{2,20})$/.test(code) ? code : 'error';
}
