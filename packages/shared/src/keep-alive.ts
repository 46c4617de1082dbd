import type WebSocket from 'ws';
import { KeepAliveTimeoutError } from './errors.js';

/** What the sweeper needs of a connection: an idle pooled one, or a PoolConn. */
export interface Pingable {
  readonly webSocket: WebSocket;
  readonly transportOpen: boolean;
  destroy(error?: Error): void;
}

interface Liveness {
  target: Pingable;
  /** Our ping has gone unanswered since the last sweep. */
  owed: boolean;
  /** The peer pinged us since the last sweep. */
  heard: boolean;
}

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
  #periodMs: number;
  readonly #livenessByWebSocket = new Map<WebSocket, Liveness>();
  /** One listener for every tracked socket: a pong answers our ping; a ping from the peer proves the path alive just as well. */
  readonly #onHeard: (this: WebSocket) => void;
  #timer: NodeJS.Timeout | undefined;

  constructor(periodMs: number) {
    this.#periodMs = periodMs;
    const livenessByWebSocket = this.#livenessByWebSocket;
    this.#onHeard = function (this: WebSocket) {
      const liveness = livenessByWebSocket.get(this);
      if (liveness) {
        liveness.owed = false;
        liveness.heard = true;
      }
    };
  }

  get size(): number {
    return this.#livenessByWebSocket.size;
  }

  track(target: Pingable): void {
    const ws = target.webSocket;
    if (this.#livenessByWebSocket.has(ws)) return;
    ws.on('pong', this.#onHeard);
    ws.on('ping', this.#onHeard);
    this.#livenessByWebSocket.set(ws, { target, owed: false, heard: false });
    if (this.#timer === undefined) this.#startTimer();
  }

  /** Changes the period from the next sweep on. */
  setPeriod(periodMs: number): void {
    this.#periodMs = periodMs;
    if (this.#timer === undefined) return;
    this.#stopTimer();
    this.#startTimer();
  }

  untrack(target: Pingable): void {
    const ws = target.webSocket;
    if (!this.#livenessByWebSocket.delete(ws)) return;
    ws.removeListener('pong', this.#onHeard);
    ws.removeListener('ping', this.#onHeard);
    if (this.#livenessByWebSocket.size === 0) this.#stopTimer();
  }

  /** Stops the timer and forgets every connection (the connections are left as they are). */
  close(): void {
    for (const { target } of [...this.#livenessByWebSocket.values()]) this.untrack(target);
    this.#stopTimer();
  }

  #startTimer(): void {
    // Unref'd: liveness checks alone must never keep a process alive.
    this.#timer = setInterval(this.#sweep, this.#periodMs).unref();
  }

  #stopTimer(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  readonly #sweep = (): void => {
    for (const liveness of this.#livenessByWebSocket.values()) {
      const { target } = liveness;
      if (liveness.owed) {
        this.untrack(target);
        target.destroy(new KeepAliveTimeoutError(this.#periodMs));
      } else if (liveness.heard) {
        // Both ends sweep; when the peer's ping came first ours would only double the traffic.
        liveness.heard = false;
      } else if (target.transportOpen) {
        liveness.owed = true;
        target.webSocket.ping();
      }
    }
  };
}

