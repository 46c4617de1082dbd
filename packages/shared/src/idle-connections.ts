import { KeepAliveSweeper } from './keep-alive.js';
import type { PoolConn } from './pool-conn.js';

/** How long `closeAll` waits for peers to answer the close handshake before terminating, in ms. */
const CLOSE_GRACE_MS = 1_000;

/**
 * The idle half of a pool: connections waiting to be claimed, keyed by ID in
 * arrival order. While a connection sits here the pool owns it: its errors are
 * reported to `onError` rather than crashing the process, it is pinged if its
 * peer negotiated keep-alive, and it is dropped and destroyed the moment its
 * WebSocket closes, so a dead connection is never handed out.
 */
export class IdleConnections {
  readonly #idleById = new Map<string, PoolConn>();
  /**
   * Arrival order for takeOldest. Iterating the Map from its start after many
   * deletions walks the holes V8 leaves until it rehashes, so keep a queue;
   * entries whose connection has gone are skipped lazily.
   */
  #arrivals: PoolConn[] = [];
  #arrivalsHead = 0;
  readonly #sweeper: KeepAliveSweeper;
  readonly #onError: (error: Error, conn: PoolConn) => void;
  readonly #cleanupByConn = new Map<PoolConn, () => void>();

  /**
   * @param keepAliveMs ping period for connections added with `pingable`, in ms.
   * @param onError called with errors of idle connections (they are destroyed).
   */
  constructor(keepAliveMs: number, onError: (error: Error, conn: PoolConn) => void) {
    this.#sweeper = new KeepAliveSweeper(keepAliveMs);
    this.#onError = onError;
  }

  get size(): number {
    return this.#idleById.size;
  }

  /**
   * Adds a connection. `pingable`: the peer negotiated pong-based keep-alive.
   * A connection with the ID of one already here replaces it (the old one is
   * destroyed): only a relay restart can reuse a live ID, and then the old one is stale.
   */
  add(conn: PoolConn, pingable: boolean): void {
    this.#idleById.get(conn.id)?.destroy();
    const onError = (error: Error): void => this.#onError(error, conn);
    const onTransportClose = (): void => {
      this.#remove(conn);
      conn.destroy();
    };
    conn.on('error', onError);
    conn.once('transportClose', onTransportClose);
    this.#cleanupByConn.set(conn, () => {
      conn.removeListener('error', onError);
      conn.removeListener('transportClose', onTransportClose);
    });
    this.#idleById.set(conn.id, conn);
    this.#arrivals.push(conn);
    // Connections taken by ID leave stale entries behind: keep the queue within twice the pool.
    if (this.#arrivals.length - this.#arrivalsHead > 2 * this.#idleById.size + 64) this.#compactArrivals(true);
    if (pingable) this.#sweeper.track(conn);
  }

  /** Removes and returns the live connection with this ID, if there is one. */
  take(id: string): PoolConn | undefined {
    const conn = this.#idleById.get(id);
    if (conn === undefined) return undefined;
    this.#remove(conn);
    if (conn.transportOpen) return conn;
    conn.destroy();
    return undefined;
  }

  /** Removes and returns the longest-idle live connection, if there is one. */
  takeOldest(): PoolConn | undefined {
    while (this.#arrivalsHead < this.#arrivals.length) {
      const candidate = this.#arrivals[this.#arrivalsHead++]!;
      if (this.#idleById.get(candidate.id) !== candidate) continue; // taken or closed since
      const conn = this.take(candidate.id);
      if (conn) {
        this.#compactArrivals();
        return conn;
      }
    }
    this.#compactArrivals();
    return undefined;
  }

  #compactArrivals(force = false): void {
    if (!force && this.#arrivalsHead < 1024 && this.#arrivalsHead * 2 < this.#arrivals.length) return;
    this.#arrivals = this.#arrivals.slice(this.#arrivalsHead).filter((conn) => this.#idleById.get(conn.id) === conn);
    this.#arrivalsHead = 0;
  }

  /**
   * Closes every idle connection with `code` (1001, going away, by default) and
   * resolves once their peers have answered, or after a short grace period in
   * which the stragglers are terminated.
   */
  async closeAll(code = 1001): Promise<void> {
    const conns = [...this.#idleById.values()];
    for (const conn of conns) this.#remove(conn);
    this.#arrivals = [];
    this.#arrivalsHead = 0;
    await Promise.all(conns.map((conn) => closeWithin(conn, code, CLOSE_GRACE_MS)));
  }

  /** Stops keep-alive. Call after `closeAll` when the pool shuts down. */
  close(): void {
    this.#sweeper.close();
  }

  #remove(conn: PoolConn): void {
    if (this.#idleById.get(conn.id) === conn) this.#idleById.delete(conn.id);
    this.#sweeper.untrack(conn);
    this.#cleanupByConn.get(conn)?.();
    this.#cleanupByConn.delete(conn);
  }
}

function closeWithin(conn: PoolConn, code: number, graceMs: number): Promise<void> {
  conn.on('error', () => {}); // the peer may drop instead of answering; we are closing anyway
  if (!conn.transportOpen) {
    conn.destroy();
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => conn.destroy(), graceMs);
    conn.once('transportClose', () => {
      clearTimeout(timer);
      conn.destroy();
      resolve();
    });
    conn.webSocket.close(code);
  });
}
