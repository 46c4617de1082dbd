import { KeepAliveTimeoutError } from './errors.js';
import type { PoolConn } from './pool-conn.js';

/**
 * Pong-based liveness for a pool's idle connections, with one timer per pool
 * rather than one per connection (10,000 idle connections cost one sweep).
 *
 * Each sweep pings every tracked connection the peer has not itself pinged
 * since the last sweep; one that has not answered the previous sweep's ping
 * (a whole period) is destroyed with `ERR_KEEPALIVE_TIMEOUT`. A dead peer is
 * therefore caught within one to two periods, and when both ends sweep, each
 * connection carries about one ping per period instead of two. Only track connections whose peer negotiated keep-alive: a Go npws
 * peer does not answer pings on idle connections.
 */
export class KeepAliveSweeper {
  readonly #periodMs: number;
  /**
   * For each tracked connection: whether it owes a pong, whether the peer
   * pinged us since the last sweep, and the listener that records both.
   */
  readonly #pongOwedByConn = new Map<PoolConn, { owed: boolean; heard: boolean; onHeard: (data: Buffer) => void }>();
  #timer: NodeJS.Timeout | undefined;

  constructor(periodMs: number) {
    this.#periodMs = periodMs;
  }

  get size(): number {
    return this.#pongOwedByConn.size;
  }

  track(conn: PoolConn): void {
    if (this.#pongOwedByConn.has(conn)) return;
    const entry = {
      owed: false,
      heard: false,
      onHeard: () => {
        entry.owed = false;
        entry.heard = true;
      },
    };
    // A pong answers our ping; a ping from the peer proves the path alive just as well.
    conn.webSocket.on('pong', entry.onHeard);
    conn.webSocket.on('ping', entry.onHeard);
    this.#pongOwedByConn.set(conn, entry);
    if (this.#timer === undefined) {
      // Unref'd: liveness checks alone must never keep a process alive.
      this.#timer = setInterval(this.#sweep, this.#periodMs).unref();
    }
  }

  untrack(conn: PoolConn): void {
    const entry = this.#pongOwedByConn.get(conn);
    if (entry === undefined) return;
    conn.webSocket.removeListener('pong', entry.onHeard);
    conn.webSocket.removeListener('ping', entry.onHeard);
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
      } else if (entry.heard) {
        // Both ends sweep; when the peer's ping came first ours would only double the traffic.
        entry.heard = false;
      } else if (conn.transportOpen) {
        entry.owed = true;
        conn.webSocket.ping();
      }
    }
  };
}

