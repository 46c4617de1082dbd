import type WebSocket from 'ws';
import { KeepAliveTimeoutError } from '../core/errors.js';
import { rawSocketOf } from '../wire/pool-conn.js';

/** What the sweeper needs of a connection: an idle pooled one, or a PoolConn. */
export interface Pingable {
  readonly webSocket: WebSocket;
  readonly transportOpen: boolean;
  destroy(error?: Error): void;
}

/** Sweeps per keep-alive period. */
export const SWEEPS_PER_PERIOD = 2;
/** Silence, in periods, after which we ping. */
export const PING_AFTER_PERIODS = 1;
/**
 * Silence, in periods, after which a connection is dead. Sweeps come every
 * half period, so a peer last heard at L is judged by L + 1.5 + 0.5 = L + 2
 * periods at the latest, whatever the phase; and a sweep that finds it silent
 * for 1.5 periods came after one that found it silent for a period and pinged
 * it, so a live peer has had half a period to answer.
 */
export const DEAD_AFTER_PERIODS = 1.5;

export type LivenessAction = 'wait' | 'ping' | 'destroy';

/**
 * What a sweep does with one connection, given how long its peer has been
 * silent (no pong, no ping) in keep-alive periods, whether our side is
 * paused, and whether we have pinged it since we last heard it.
 *
 * Silence is measured in time, not in sweeps: when both ends sweep, whichever
 * finds a period of silence first pings, the other hears that ping and stays
 * quiet, so a connection carries about one ping per period.
 *
 * A paused socket reads nothing, so its peer's pings and pongs sit unread:
 * it cannot be judged, but it pings at every sweep so that its peer, which
 * is reading, keeps hearing it.
 */
export function livenessAction(silentPeriods: number, paused: boolean, pinged: boolean): LivenessAction {
  if (paused) return 'ping';
  // Only a peer that was asked can be judged: a sweep that came late (a busy process) asks first.
  if (silentPeriods >= DEAD_AFTER_PERIODS && pinged) return 'destroy';
  return silentPeriods >= PING_AFTER_PERIODS ? 'ping' : 'wait';
}

interface Liveness {
  target: Pingable;
  /** When the peer was last heard (`performance.now()`, ms). */
  lastHeard: number;
  /** We pinged it since. */
  pinged: boolean;
  /** The socket's `bytesRead` at the last sweep: bytes arriving prove the peer alive as well as a pong. */
  bytesRead: number;
}

/**
 * Pong-based liveness for a pool's connections (idle ones, and handed-out ones
 * whose peer negotiated keep-alive), with one timer per pool rather than one
 * per connection: 10,000 connections cost one sweep.
 *
 * A sweep runs every half period. A connection whose peer has been silent for
 * a period is pinged; one silent for a period and a half is destroyed with
 * `ERR_KEEPALIVE_TIMEOUT`, so a dead peer is caught within two periods,
 * whatever the phase. A ping from the peer counts as hearing it, so when both
 * ends sweep, each connection carries about one ping per period; so does any
 * byte read from the socket since the last sweep, so that a tunnel busy
 * under load is never judged on a pong that waits behind its data. Only track
 * connections whose peer negotiated keep-alive: a Go npws peer does not
 * answer pings on idle connections.
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
        liveness.lastHeard = performance.now();
        liveness.pinged = false;
      }
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
    this.#livenessByWebSocket.set(ws, { target, lastHeard: performance.now(), pinged: false, bytesRead: rawSocketOf(ws).bytesRead });
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
    const now = performance.now();
    for (const liveness of this.#livenessByWebSocket.values()) {
      const { target } = liveness;
      if (!target.transportOpen) continue;
      const paused = target.webSocket.isPaused;
      // A busy tunnel whose pong queues behind its data is heard through its data.
      const { bytesRead } = rawSocketOf(target.webSocket);
      if (paused || bytesRead !== liveness.bytesRead) {
        liveness.lastHeard = now;
        liveness.pinged = false;
      }
      liveness.bytesRead = bytesRead;
      switch (livenessAction((now - liveness.lastHeard) / this.#periodMs, paused, liveness.pinged)) {
        case 'destroy':
          this.untrack(target);
          target.destroy(new KeepAliveTimeoutError(this.#periodMs));
          break;
        case 'ping':
          liveness.pinged = true;
          target.webSocket.ping();
          break;
        case 'wait':
          break;
      }
    }
  };
}
