/**
 * Where a pooled connection is in its life. An agent's connection goes
 * dialing → handshaking → idle → leased → closed; a relay's starts at
 * handshaking (the upgrade request has arrived). Either may skip idle when a
 * waiting get takes it at once, and may close from any state.
 */
export type ConnectionState = 'dialing' | 'handshaking' | 'idle' | 'leased' | 'closed';

/** The states a connection can be counted in while it is open. */
export type OpenState = Exclude<ConnectionState, 'closed'>;

const OPEN_STATES: readonly OpenState[] = ['dialing', 'handshaking', 'idle', 'leased'];

/** The transitions that are expected; any other is reconciled and counted. */
const EXPECTED_NEXT: Record<ConnectionState, ReadonlySet<ConnectionState>> = {
  dialing: new Set(['handshaking', 'closed']),
  handshaking: new Set(['idle', 'leased', 'closed']),
  idle: new Set(['leased', 'closed']),
  leased: new Set(['closed']),
  closed: new Set(),
};

const FIRST_STATES: ReadonlySet<ConnectionState> = new Set(['dialing', 'handshaking']);

/** Options for {@link ConnectionTracker}. */
export interface ConnectionTrackerOptions {
  /** How many of the latest lease durations the percentiles are taken over. Default: 1024. */
  leaseSamples?: number;
  /** A monotonic clock in milliseconds. Default: `performance.now`. For tests. */
  now?: () => number;
}

/** One connection, as {@link ConnectionTracker.lifecycleOf} reports it. */
export interface Lifecycle {
  state: OpenState;
  /** When it entered `state`, in ms since the epoch. */
  since: number;
  /** The listen (relay) or connect (agent) address it belongs to. */
  address: string;
}

/** Connections on one listen or connect address. */
export interface AddressOccupancy {
  /** Open now (dialing through leased). */
  open: number;
  /** Most open at once. */
  peak: number;
}

/** A snapshot from {@link ConnectionTracker.stats}. */
export interface TrackerStats {
  /** Open connections in each state now. */
  byState: Record<OpenState, number>;
  /** All open connections now. */
  open: number;
  /** Connections closed since the tracker was made. */
  closed: number;
  /** Most connections open at once. */
  peak: number;
  /** Transitions that did not follow the expected order; each was reconciled. */
  reconciled: number;
  /** Lease durations (leased → closed) over the latest `leaseSamples` leases, in ms. */
  leaseMs: { count: number; p50: number; p99: number };
  byAddress: Record<string, AddressOccupancy>;
}

interface Entry {
  state: OpenState;
  /** Monotonic ms. */
  since: number;
  address: string;
}

/**
 * Every connection's lifecycle, for statistics: counts per state, peak
 * concurrency, lease durations and per-address occupancy, as a `stats()`
 * snapshot or a one-line `report()` for periodic logging.
 *
 * It records rather than enforces (after the Go connectiontracker): a
 * transition out of the expected order is applied anyway, counted in
 * `reconciled`, and reported as `false`; it never throws. The newer state
 * wins, and `closed` always removes the entry, so no connection dangles.
 * Every call is O(1).
 */
export class ConnectionTracker {
  readonly #entryByKey = new Map<object, Entry>();
  readonly #byState: Record<OpenState, number> = { dialing: 0, handshaking: 0, idle: 0, leased: 0 };
  readonly #occupancyByAddress = new Map<string, AddressOccupancy>();
  readonly #leaseDurations: Float64Array;
  #leasesRecorded = 0;
  #closed = 0;
  #peak = 0;
  #reconciled = 0;
  readonly #now: () => number;

  constructor(options: ConnectionTrackerOptions = {}) {
    this.#leaseDurations = new Float64Array(options.leaseSamples ?? 1024);
    this.#now = options.now ?? (() => performance.now());
  }

  /**
   * Records that the connection `key` entered `state`. `address` labels a
   * connection the tracker has not seen yet. Returns false when the transition
   * was not the expected one (and was reconciled).
   */
  transition(key: object, state: ConnectionState, address = ''): boolean {
    const now = this.#now();
    const entry = this.#entryByKey.get(key);
    if (entry === undefined) {
      // Closing a connection never seen leaves nothing behind to reconcile but the count.
      if (state === 'closed') return this.#unexpected();
      this.#open(key, state, address, now);
      return FIRST_STATES.has(state) || this.#unexpected();
    }
    const expected = EXPECTED_NEXT[entry.state].has(state);
    if (entry.state === 'leased' && state !== 'leased') this.#recordLease(now - entry.since);
    this.#byState[entry.state]--;
    if (state === 'closed') {
      this.#entryByKey.delete(key);
      this.#occupancyByAddress.get(entry.address)!.open--;
      this.#closed++;
    } else {
      this.#byState[state]++;
      entry.state = state;
      entry.since = now;
    }
    return expected || this.#unexpected();
  }

  /** Where the connection is now, or undefined once closed (or never seen). */
  lifecycleOf(key: object): Lifecycle | undefined {
    const entry = this.#entryByKey.get(key);
    if (entry === undefined) return undefined;
    return { state: entry.state, since: Date.now() - (this.#now() - entry.since), address: entry.address };
  }

  /** Open connections per state, and reconciled transitions: `stats()` without the lease percentiles, O(1). */
  counts(): Pick<TrackerStats, 'byState' | 'reconciled'> {
    return { byState: { ...this.#byState }, reconciled: this.#reconciled };
  }

  stats(): TrackerStats {
    const samples = this.#leaseDurations.slice(0, Math.min(this.#leasesRecorded, this.#leaseDurations.length)).sort();
    return {
      byState: { ...this.#byState },
      open: this.#entryByKey.size,
      closed: this.#closed,
      peak: this.#peak,
      reconciled: this.#reconciled,
      leaseMs: { count: this.#leasesRecorded, p50: percentile(samples, 0.5), p99: percentile(samples, 0.99) },
      byAddress: Object.fromEntries([...this.#occupancyByAddress].map(([address, occupancy]) => [address, { ...occupancy }])),
    };
  }

  /** One line for a periodic log: `open=12 (dialing=0 handshaking=1 idle=8 leased=3) peak=20 …`. */
  report(): string {
    const stats = this.stats();
    const states = OPEN_STATES.map((state) => `${state}=${stats.byState[state]}`).join(' ');
    const addresses = Object.entries(stats.byAddress)
      .map(([address, { open, peak }]) => ` [${address || '-'} open=${open} peak=${peak}]`)
      .join('');
    const lease = `lease_p50=${stats.leaseMs.p50.toFixed(1)}ms lease_p99=${stats.leaseMs.p99.toFixed(1)}ms`;
    return `open=${stats.open} (${states}) peak=${stats.peak} closed=${stats.closed} ${lease} reconciled=${stats.reconciled}${addresses}`;
  }

  #open(key: object, state: OpenState, address: string, now: number): void {
    let occupancy = this.#occupancyByAddress.get(address);
    if (occupancy === undefined) {
      occupancy = { open: 0, peak: 0 };
      this.#occupancyByAddress.set(address, occupancy);
    }
    occupancy.open++;
    occupancy.peak = Math.max(occupancy.peak, occupancy.open);
    this.#entryByKey.set(key, { state, since: now, address });
    this.#byState[state]++;
    this.#peak = Math.max(this.#peak, this.#entryByKey.size);
  }

  #recordLease(ms: number): void {
    this.#leaseDurations[this.#leasesRecorded % this.#leaseDurations.length] = ms;
    this.#leasesRecorded++;
  }

  #unexpected(): false {
    this.#reconciled++;
    return false;
  }
}

/** The value below which a fraction `q` of the sorted samples lie (0 for none). */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}
