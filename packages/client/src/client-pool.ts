import { setMaxListeners } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { createSecureContext, type ConnectionOptions } from 'node:tls';
import pRetry, { AbortError } from 'p-retry';
import WebSocket from 'ws';
import {
  ErrorCountingEmitter,
  DEFAULT_MAX_PAYLOAD_BYTES,
  IdleConnections,
  KEEPALIVE_HEADER,
  KEEPALIVE_VALUE,
  PendingGet,
  PoolClosedError,
  PoolError,
  TOKEN_HEADER,
  checkInt,
  checkMs,
  checkOrdered,
  parseId,
  rawSocketOf,
  receiveIdle,
  type GetOptions,
  type IdleSocket,
  type PoolConn,
} from '@pool/shared';
import { nextCapacity, nextInterval, outageInterval } from './adapt.js';
import { resolveRelayTarget, type TlsMode } from './server-address.js';
import { TlsSessionCache } from './tls-session-cache.js';

/** Options for {@link ClientPool}. */
export interface ClientPoolOptions {
  /** The relay: `host:port` (TLS per `tls`) or a `ws://` / `wss://` URL. Required. */
  server: string;
  /** Capacity never shrinks below this. Default: 1. */
  minCap?: number;
  /** Capacity never grows above this. Default: `max(minCap, 20)`. */
  maxCap?: number;
  /** Shortest pause between fill rounds, in ms. Default: 500. */
  minInterval?: number;
  /** Longest pause between fill rounds (and the outage back-off ceiling), in ms. Default: 5000. */
  maxInterval?: number;
  /**
   * Keep-alive period in ms: TCP keep-alive on every socket and, when the relay
   * confirms it, a ping per period on idle connections (a missed pong destroys
   * the connection). Default: 30000. 0 disables both.
   */
  keepAlive?: number;
  /** Transport security. Default: `'verified'` (`'off'` for a `ws://` URL). See {@link TlsMode}. */
  tls?: TlsMode;
  /** Shared secret sent in the `x-pool-token` upgrade header. Default: none. */
  token?: string;
  /** Time for one dial, from TCP connect to the ID frame, in ms. Default: 10000. */
  handshakeTimeout?: number;
  /** Retries of a failed dial within a round (jittered exponential back-off, 100 ms to 1 s). Default: 2. */
  dialRetries?: number;
  /** Largest WebSocket message accepted, in bytes. Default: 16 MiB. */
  maxPayload?: number;
  /**
   * Most dials in flight at once, in ms-long TLS handshakes. Bounds the CPU
   * burst on both ends and the memory the handshakes hold at their peak.
   * Default: 32.
   */
  dialConcurrency?: number;
  /**
   * Resume TLS sessions across dials (TLS 1.3 tickets): several times cheaper
   * than a full handshake for both sides, with forward secrecy kept. Default: true.
   */
  tlsSessionReuse?: boolean;
}

/** Counters for what the manager has done; cheap to read at any time. */
export interface ClientPoolStats {
  /** WebSocket dials started (each retry counts). */
  dials: number;
  /** Dials that ended in an error. */
  dialFailures: number;
  /** Fill rounds completed. */
  rounds: number;
}

type State = 'new' | 'running' | 'closed';

/** Outcomes so far of the dials of one fill round. */
interface DialRound {
  successes: number;
  failures: number;
}

/** Failures without a success after which a round stops retrying. */
const OUTAGE_FAILURES = 3;

/** Refusals that another attempt within the same round cannot change. */
const FINAL_REFUSALS = new Set(['ERR_POOL_FORBIDDEN', 'ERR_POOL_UNAUTHORIZED', 'ERR_POOL_FULL']);

/**
 * The agent's pool: keeps pre-dialled connections to the relay, adapting how
 * many and how often as npws does, and hands one out by the ID the relay chose.
 *
 * Events: `'connection'` (id) when a connection joins the pool; `'close'` after
 * `Close()`; `'error'` (error) for failures outside any call (failed dials
 * among them), emitted only when something listens; they always count in
 * `ErrorCount()`.
 */
export class ClientPool extends ErrorCountingEmitter {
  readonly #url: string;
  readonly #tls: ConnectionOptions | undefined;
  readonly #headers: Record<string, string>;
  readonly #minCap: number;
  readonly #maxCap: number;
  readonly #minInterval: number;
  readonly #maxInterval: number;
  readonly #keepAliveMs: number;
  readonly #handshakeTimeoutMs: number;
  readonly #dialRetries: number;
  readonly #dialConcurrency: number;
  readonly #maxPayload: number;
  readonly #tlsSessions: TlsSessionCache | undefined;
  readonly #idle: IdleConnections;
  readonly #claimWaiters = new Map<string, PendingGet<PoolConn>[]>();
  /** Aborts dials in flight and the sleep between rounds when the pool closes. */
  readonly #lifetime = new AbortController();
  readonly #stats: ClientPoolStats = { dials: 0, dialFailures: 0, rounds: 0 };
  #capacity: number;
  #interval: number;
  #state: State = 'new';
  #manager: Promise<void> | undefined;
  #wakeManager: (() => void) | undefined;
  #closing: Promise<void> | undefined;
  /** Every dial of the last round failed: the relay is down or refusing us. */
  #lastRoundFailed = false;

  constructor(options: ClientPoolOptions) {
    super();
    const target = resolveRelayTarget(options.server, options.tls);
    this.#url = target.url;
    // One secure context for every dial: without it tls.connect builds a new one
    // (CA store included) per connection, a tenth of the cost of a fill.
    this.#tls = target.tls && { ...target.tls, secureContext: createSecureContext(target.tls) };
    this.#minCap = checkInt('minCap', options.minCap ?? 1, 1);
    this.#maxCap = checkInt('maxCap', options.maxCap ?? Math.max(this.#minCap, 20), 1);
    checkOrdered('minCap', this.#minCap, 'maxCap', this.#maxCap);
    this.#minInterval = checkMs('minInterval', options.minInterval ?? 500);
    this.#maxInterval = checkMs('maxInterval', options.maxInterval ?? 5_000);
    checkOrdered('minInterval', this.#minInterval, 'maxInterval', this.#maxInterval);
    this.#keepAliveMs = checkMs('keepAlive', options.keepAlive ?? 30_000);
    this.#handshakeTimeoutMs = checkMs('handshakeTimeout', options.handshakeTimeout ?? 10_000, 1);
    this.#dialRetries = checkInt('dialRetries', options.dialRetries ?? 2, 0, 10);
    this.#dialConcurrency = checkInt('dialConcurrency', options.dialConcurrency ?? 32, 1);
    this.#maxPayload = checkInt('maxPayload', options.maxPayload ?? DEFAULT_MAX_PAYLOAD_BYTES, 1);
    this.#tlsSessions = this.#tls && options.tlsSessionReuse !== false ? new TlsSessionCache() : undefined;
    this.#headers = {};
    if (this.#keepAliveMs > 0) this.#headers[KEEPALIVE_HEADER] = KEEPALIVE_VALUE;
    if (options.token !== undefined) this.#headers[TOKEN_HEADER] = options.token;
    this.#capacity = this.#minCap;
    this.#interval = this.#minInterval;
    this.#idle = new IdleConnections(this.#keepAliveMs || 30_000, this.reportError);
    // Every dial in flight (and its p-retry) listens for the abort: up to dialConcurrency at once, by design.
    setMaxListeners(0, this.#lifetime.signal);
  }

  /** Starts the manager loop and returns at once. Idempotent; a closed pool stays closed. */
  ClientManager(): void {
    if (this.#state !== 'new') return;
    this.#state = 'running';
    this.#manager = this.#manage();
  }

  /**
   * Takes the pooled connection with this ID: at once if it is here, else the
   * moment it arrives (no polling). Works before `ClientManager()`.
   *
   * Rejects with `ERR_INVALID_ID` for a malformed ID (at once), `ERR_POOL_TIMEOUT`
   * after `timeoutMs` milliseconds, `ERR_POOL_ABORTED` when `options.signal`
   * aborts, and `ERR_POOL_CLOSED` on `Close()`.
   */
  async OutgoingGet(id: string, timeoutMs: number, options: GetOptions = {}): Promise<PoolConn> {
    const key = parseId(id);
    checkMs('timeoutMs', timeoutMs);
    if (this.#state === 'closed') throw new PoolClosedError();
    const conn = this.#idle.take(key);
    if (conn) return this.#leased(conn);
    const get: PendingGet<PoolConn> = new PendingGet(timeoutMs, options, () => this.#forgetWaiter(key, get));
    if (!get.settled) {
      const waiters = this.#claimWaiters.get(key);
      if (waiters) waiters.push(get);
      else this.#claimWaiters.set(key, [get]);
    }
    return get.promise;
  }

  /** True while the manager runs (after `ClientManager()`, until `Close()`). */
  Ready(): boolean {
    return this.#state === 'running';
  }

  /** Idle pooled connections. */
  Active(): number {
    return this.#idle.size;
  }

  /** Current target pool size; adapts between `minCap` and `maxCap`. */
  Capacity(): number {
    return this.#capacity;
  }

  /** Current pause between fill rounds, in ms; adapts between `minInterval` and `maxInterval`. */
  Interval(): number {
    return this.#interval;
  }

  /** Closes every idle connection; the manager refills at once. */
  async Flush(): Promise<void> {
    await this.#idle.closeAll();
    this.#wakeManager?.();
  }


  /** A snapshot of the manager's counters. */
  stats(): ClientPoolStats {
    return { ...this.#stats };
  }

  /**
   * Stops the manager and every dial in flight, closes every idle connection,
   * rejects waiting gets with `ERR_POOL_CLOSED`, and clears every timer.
   * Connections already handed out stay open. Idempotent.
   */
  Close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#state = 'closed';
    this.#lifetime.abort();
    for (const waiters of this.#claimWaiters.values()) {
      for (const get of waiters) get.reject(new PoolClosedError());
    }
    this.#claimWaiters.clear();
    await this.#manager;
    await this.#idle.closeAll();
    this.#idle.close();
    this.emit('close');
  }

  async #manage(): Promise<void> {
    const { signal } = this.#lifetime;
    while (!signal.aborted) {
      await this.#fillRound();
      this.#stats.rounds++;
      await this.#sleep(this.#interval);
    }
  }

  async #fillRound(): Promise<void> {
    const idle = this.#idle.size;
    const wanted = Math.max(0, this.#capacity - idle);
    // During an outage one probe per round finds out whether the relay is back.
    const attempts = this.#lastRoundFailed ? Math.min(1, wanted) : wanted;
    if (!this.#lastRoundFailed) {
      this.#interval = nextInterval({
        idle,
        capacity: this.#capacity,
        interval: this.#interval,
        minInterval: this.#minInterval,
        maxInterval: this.#maxInterval,
      });
    }
    const round: DialRound = { successes: 0, failures: 0 };
    let started = 0;
    // Until we hold a TLS ticket, one dial goes first so that the rest can resume its session.
    if (attempts > 1 && this.#tlsSessions?.empty) {
      started++;
      await this.#dialWithRetry(round).catch(() => {});
    }
    // A round that keeps failing without a success has found the relay down: start no more dials.
    const relayDown = (): boolean => round.successes === 0 && round.failures >= OUTAGE_FAILURES;
    const dialer = async (): Promise<void> => {
      while (started < attempts && !this.#lifetime.signal.aborted && !relayDown()) {
        started++;
        await this.#dialWithRetry(round).catch(() => {});
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.#dialConcurrency, attempts) }, dialer));
    if (this.#lifetime.signal.aborted) return;
    this.#capacity = nextCapacity({
      successes: round.successes,
      attempts,
      capacity: this.#capacity,
      minCap: this.#minCap,
      maxCap: this.#maxCap,
    });
    this.#lastRoundFailed = attempts > 0 && round.successes === 0;
    if (this.#lastRoundFailed) this.#interval = outageInterval(this.#interval, this.#minInterval, this.#maxInterval);
  }

  #dialWithRetry(round: DialRound): Promise<void> {
    return pRetry(() => this.#dial(round), {
      // During an outage the probe does not retry: the doubling interval is the back-off.
      retries: this.#lastRoundFailed ? 0 : this.#dialRetries,
      // Retries are for a blip in a healthy round. Once a round has failed
      // repeatedly without a single success the relay is down: stop here, and
      // let the next rounds probe it one dial at a time.
      shouldRetry: () => round.successes > 0 || round.failures < OUTAGE_FAILURES,
      minTimeout: 100,
      maxTimeout: 1_000,
      randomize: true,
      signal: this.#lifetime.signal,
    });
  }

  async #dial(round: DialRound): Promise<void> {
    this.#stats.dials++;
    const ws = new WebSocket(this.#url, {
      perMessageDeflate: false,
      headers: this.#headers,
      maxPayload: this.#maxPayload,
      ...this.#tls,
      ...(this.#tlsSessions && { createConnection: this.#tlsSessions.createConnection }),
    });
    let pingable = false;
    ws.once('upgrade', (response: IncomingMessage) => {
      pingable = this.#keepAliveMs > 0 && response.headers[KEEPALIVE_HEADER] === KEEPALIVE_VALUE;
    });
    const abort = (): void => ws.terminate();
    this.#lifetime.signal.addEventListener('abort', abort);
    let socket: IdleSocket;
    try {
      socket = await receiveIdle(ws, this.#handshakeTimeoutMs);
    } catch (error) {
      if (this.#lifetime.signal.aborted) throw new AbortError('the pool closed');
      round.failures++;
      this.#stats.dialFailures++;
      this.reportError(error as Error);
      throw error instanceof PoolError && FINAL_REFUSALS.has(error.code) ? new AbortError(error) : error;
    } finally {
      this.#lifetime.signal.removeEventListener('abort', abort);
    }
    if (this.#lifetime.signal.aborted) {
      socket.destroy();
      return;
    }
    round.successes++;
    if (this.#keepAliveMs > 0) rawSocketOf(socket.webSocket).setKeepAlive(true, this.#keepAliveMs);
    this.#admit(socket, pingable);
  }

  #admit(socket: IdleSocket, pingable: boolean): void {
    const { id } = socket;
    const waiters = this.#claimWaiters.get(id);
    const waiter = waiters?.find((get) => !get.settled);
    if (waiters && waiter) {
      waiters.splice(0, waiters.indexOf(waiter) + 1);
      if (waiters.length === 0) this.#claimWaiters.delete(id);
      waiter.resolve(this.#leased(socket.claim()));
    } else {
      this.#claimWaiters.delete(id);
      this.#idle.add(socket, pingable);
    }
    this.emit('connection', id);
  }

  #leased(conn: PoolConn): PoolConn {
    // The manager refills what was taken without waiting out its interval.
    this.#wakeManager?.();
    return conn;
  }

  #forgetWaiter(id: string, get: PendingGet<PoolConn>): void {
    const waiters = this.#claimWaiters.get(id);
    if (!waiters) return;
    waiters.splice(waiters.indexOf(get), 1);
    if (waiters.length === 0) this.#claimWaiters.delete(id);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#lifetime.signal.removeEventListener('abort', done);
        this.#wakeManager = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wakeManager = done;
      this.#lifetime.signal.addEventListener('abort', done);
    });
  }

}
