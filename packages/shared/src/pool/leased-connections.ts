import type { IdleConnections } from './idle-connections.js';
import type { KeepAliveSweeper } from './keep-alive.js';
import type { Logger } from '../observability/logger.js';
import type { PooledConn } from '../transport/pooled-conn.js';
import { PoolConn } from '../wire/pool-conn.js';

/** Payload bytes moved through a pool's leased connections. */
export interface LeasedBytes {
  /** Received from the peer. */
  read: number;
  /** Sent to the peer. */
  written: number;
}

/** What a drain did. */
export interface DrainResult {
  /** Leased connections still open at the deadline, and destroyed. */
  destroyed: number;
}

/**
 * The connections a pool has handed out, until their WebSockets close: what
 * a drain waits for, where the bytes that went through the pool are counted
 * (those of open leases included, so a long tunnel shows its traffic before
 * it ends), and where their liveness is kept: a handed-out connection that
 * negotiated keep-alive is pinged like an idle one, so that a tunnel whose
 * transport went silent is destroyed (`ERR_KEEPALIVE_TIMEOUT`) within two
 * keep-alive periods.
 */
export class LeasedConnections {
  readonly #open = new Set<PooledConn>();
  readonly #closedBytes: LeasedBytes = { read: 0, written: 0 };
  readonly #sweeper: KeepAliveSweeper;
  #emptied: Array<() => void> = [];

  constructor(sweeper: KeepAliveSweeper) {
    this.#sweeper = sweeper;
  }

  get size(): number {
    return this.#open.size;
  }

  /** Tracks a connection just handed out; `onClosed` runs once when its transport closes. */
  add(conn: PooledConn, onClosed: (conn: PooledConn) => void): void {
    this.#open.add(conn);
    const pinged = conn instanceof PoolConn && conn.extensions.keepAlive && conn.transportOpen;
    if (pinged) this.#sweeper.track(conn);
    conn.once('transportClose', () => {
      if (pinged) this.#sweeper.untrack(conn);
      this.#open.delete(conn);
      this.#closedBytes.read += conn.bytesRead;
      this.#closedBytes.written += conn.bytesWritten;
      onClosed(conn);
      if (this.#open.size === 0) for (const resolve of this.#emptied.splice(0)) resolve();
    });
  }

  /** Destroys every open lease that `select` picks; returns how many. */
  destroyWhere(select: (conn: PooledConn) => boolean): number {
    const doomed = [...this.#open].filter(select);
    for (const conn of doomed) conn.destroy();
    return doomed.length;
  }

  /** Bytes through every connection ever leased. O(open leases). */
  bytes(): LeasedBytes {
    let { read, written } = this.#closedBytes;
    for (const conn of this.#open) {
      read += conn.bytesRead;
      written += conn.bytesWritten;
    }
    return { read, written };
  }

  /** Waits up to `timeoutMs` for every open one to close, then destroys those still open. */
  async drain(timeoutMs: number): Promise<DrainResult> {
    const emptied = await this.#whenEmpty(timeoutMs);
    return { destroyed: emptied ? 0 : this.#destroyAll() };
  }

  #whenEmpty(timeoutMs: number): Promise<boolean> {
    if (this.#open.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.#emptied = this.#emptied.filter((waiter) => waiter !== done);
        resolve(false);
      }, timeoutMs);
      this.#emptied.push(done);
    });
  }

  #destroyAll(): number {
    const count = this.#open.size;
    for (const conn of this.#open) conn.destroy();
    return count;
  }
}

/** What a drain works through; both pools have these. */
export interface Drainable {
  readonly logger: Logger;
  readonly idle: IdleConnections;
  readonly leases: LeasedConnections;
  /** Stops new work (dials, upgrades) and rejects waiting gets; resolves once stopped. */
  stopWork(): Promise<void> | void;
}

/**
 * A drain's steps, the same for both pools: stop new work, close the idle
 * connections, give the leased ones until `timeoutMs`, destroy the rest.
 */
export async function drainPool(pool: Drainable, timeoutMs: number): Promise<DrainResult> {
  pool.logger.info({ leased: pool.leases.size, idle: pool.idle.size, timeoutMs }, 'pool draining');
  await pool.stopWork();
  await pool.idle.closeAll();
  const result = await pool.leases.drain(timeoutMs);
  pool.logger.info(result, 'pool drained');
  return result;
}
