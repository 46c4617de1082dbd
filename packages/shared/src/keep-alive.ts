import type WebSocket from 'ws';
import { KeepAliveTimeoutError } from './errors.js';

/** What the sweeper needs of a connection: an idle pooled one, or a PoolConn. */
export interface Pingable {
  readonly webSocket: WebSocket;
  readonly transportOpen: boolean;
  destroy(error?: Error): void;
}

/** Sweeps per keep-alive period. */
export const SWEEPS_PER_PERIOD = 2;
/** Sweeps of silence after which we ping: half a period's silence is worth a question. */
export const PING_AFTER_SWEEPS = 2;
/**
 * Sweeps of silence after which a connection is dead. A peer heard just
 * before sweep k is stamped k-1; it is judged at sweep k+3, at most four
 * half-periods (two periods) after it was last heard, and a live peer has had
 * at least half a period to answer the ping sent at k+1.
 */
export const DEAD_AFTER_SWEEPS = 4;

export type LivenessAction = 'wait' | 'ping' | 'destroy';

/**
 * What a sweep does with one connection, given how many sweeps ago its peer
 * was last heard (a pong or a ping) and whether our side is paused.
 *
 * A paused socket reads nothing, so its peer's pings and pongs sit unread:
 * it cannot be judged, but it pings at every sweep so that its peer, which
 * is reading, keeps hearing it.
 */
export function livenessAction(silentSweeps: number, paused: boolean): LivenessAction {
  if (paused) return 'ping';
  if (silentSweeps >= DEAD_AFTER_SWEEPS) return 'destroy';
  return silentSweeps >= PING_AFTER_SWEEPS ? 'ping' : 'wait';
}

interface Liveness {
  target: Pingable;
  /** The sweep count when the peer was last heard. */
  lastHeard: number;
}

/**
 * Pong-based liveness for a pool's connections (idle ones, and handed-out ones
 * whose peer negotiated keep-alive), with one timer per pool rather than one
 * per connection: 10,000 connections cost one sweep.
 *
 * A sweep runs every half period. A connection whose peer has been silent for
 * half a period is pinged; one silent for two periods is destroyed with
 * `ERR_KEEPALIVE_TIMEOUT`, so a dead peer is caught within two periods,
 * whatever the phase. A ping from the peer counts as hearing it, so when both
 * ends sweep, each connection carries about one ping per period. Only track
 * connections whose peer negotiated keep-alive: a Go npws peer does not
 * answer pings on idle connections.
 */
export class KeepAliveSweeper {
  #periodMs: number;
  #sweeps = 0;
  readonly #livenessByWebSocket = new Map<WebSocket, Liveness>();
  /** One listener for every tracked socket: a pong answers our ping; a ping from the peer proves the path alive just as well. */
  readonly #onHeard: (this: WebSocket) => void;
  #timer: NodeJS.Timeout | undefined;

  constructor(periodMs: number) {
    this.#periodMs = periodMs;
    const livenessByWebSocket = this.#livenessByWebSocket;
    const sweeper = this;
    this.#onHeard = function (this: WebSocket) {
      const liveness = livenessByWebSocket.get(this);
      if (liveness) liveness.lastHeard = sweeper.#sweeps;
    };
  }

  get size(): number {
    return this.#livenessByWebSocket.size;
  }

  /** The keep-alive period, in ms. */
  get periodMs(): number {
    return this.#periodMs;
  }

  /** Pings `target` from now on; a no-op while the period is 0 (keep-alive off). */
  track(target: Pingable): void {
    const ws = target.webSocket;
    if (this.#periodMs === 0 || this.#livenessByWebSocket.has(ws)) return;
    ws.on('pong', this.#onHeard);
    ws.on('ping', this.#onHeard);
    this.#livenessByWebSocket.set(ws, { target, lastHeard: this.#sweeps });
    if (this.#timer === undefined) this.#startTimer();
  }

  /** Changes the period from the next sweep on; 0 turns keep-alive off and forgets every connection. */
  setPeriod(periodMs: number): void {
    this.#periodMs = periodMs;
    if (periodMs === 0) this.close();
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
    this.#timer = setInterval(this.#sweep, Math.max(1, this.#periodMs / SWEEPS_PER_PERIOD)).unref();
  }

  #stopTimer(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  readonly #sweep = (): void => {
    const sweeps = ++this.#sweeps;
    for (const liveness of this.#livenessByWebSocket.values()) {
      const { target } = liveness;
      if (!target.transportOpen) continue;
      const paused = target.webSocket.isPaused;
      if (paused) liveness.lastHeard = sweeps;
      switch (livenessAction(sweeps - liveness.lastHeard, paused)) {
        case 'destroy':
          this.untrack(target);
          target.destroy(new KeepAliveTimeoutError(this.#periodMs));
          break;
        case 'ping':
          target.webSocket.ping();
          break;
        case 'wait':
          break;
      }
    }
  };
}
