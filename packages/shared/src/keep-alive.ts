import { KeepAliveTimeoutError } from './errors.js';
import type { PoolConn } from './pool-conn.js';

/**
 * Pong-based liveness for a pool's idle connections, with one timer per pool
 * rather than one per connection (10,000 idle connections cost one sweep).
 *
 * Each sweep pings every tracked connection; one that has not answered the
 * previous sweep's ping (a whole period) is destroyed with
 * `ERR_KEEPALIVE_TIMEOUT`. A dead peer is therefore caught within one to two
 * periods. Only track connections whose peer negotiated keep-alive: a Go npws
 * peer does not answer pings on idle connections.
 */
export class KeepAliveSweeper {
  readonly #periodMs: number;
  /** For each tracked connection, whether it still owes a pong, and the listener that clears that. */
  readonly #pongOwedByConn = new Map<PoolConn, { owed: boolean; onPong: () => void }>();
  #timer: NodeJS.Timeout | undefined;

  constructor(periodMs: number) {
    this.#periodMs = periodMs;
  }

  get size(): number {
    return this.#pongOwedByConn.size;
  }

  track(conn: PoolConn): void {
    if (this.#pongOwedByConn.has(conn)) return;
    const entry = { owed: false, onPong: () => { entry.owed = false; } };
    conn.webSocket.on('pong', entry.onPong);
    this.#pongOwedByConn.set(conn, entry);
    if (this.#timer === undefined) {
      // Unref'd: liveness checks alone must never keep a process alive.
      this.#timer = setInterval(this.#sweep, this.#periodMs).unref();
    }
  }

  untrack(conn: PoolConn): void {
    const entry = this.#pongOwedByConn.get(conn);
    if (entry === undefined) return;
    conn.webSocket.removeListener('pong', entry.onPong);
    this.#pongOwedByConn.delete(conn);
    if (this.#pongOwedByConn.size === 0) this.#stopTimer();
  }

  /** Stops the timer and forgets every connection (the connections are left as they are). */
  close(): void {
    for (const conn of [...this.#pongOwedByConn.keys()]) this.untrack(conn);
    this.#stopTimer();
  }

  #stopTimer(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  readonly #sweep = (): void => {
    for (const [conn, entry] of this.#pongOwedByConn) {
      if (entry.owed) {
        this.untrack(conn);
        conn.destroy(new KeepAliveTimeoutError(this.#periodMs));
      } else if (conn.transportOpen) {
        entry.owed = true;
        conn.webSocket.ping();
      }
    }
  };
}

