import { setMaxListeners } from 'node:events';
import type { ClientRequestArgs, IncomingMessage } from 'node:http';
import { connect as connectTcp } from 'node:net';
import { connect as connectTls, createSecureContext, type ConnectionOptions, type TLSSocket } from 'node:tls';
import pRetry, { AbortError } from 'p-retry';
import WebSocket from 'ws';
import {
  ConnectionTracker,
  PoolClosedError,
  PoolDrainingError,
  PoolError,
  parseId,
  type DrainResult,
  type Extensions,
  type GetOptions,
  type Logger,
  type MetricsOptions,
  type PooledConn,
  type IdleConnection,
  type TransportName,
  ErrorCountingEmitter,
  HandshakeClosedError,
  HandshakeTimeoutError,
  InvalidOptionError,
  IdleSocket,
  PoolConn,
  POOL_ALPN,
  RawIdleSocket,
  TransportUnavailableError,
  adoptRawConn,
  encodePreface,
  parseAnswer,
  readLine,
  upgradeRejection,
  DEFAULT_MAX_PAYLOAD_BYTES,
  IdleConnections,
  KeepAliveSweeper,
  LeasedConnections,
  PendingGet,
  PoolMetrics,
  TOKEN_HEADER,
  checkInt,
  checkMs,
  checkOrdered,
  drainPool,
  negotiated,
  offerHeaders,
  outcomeOf,
  receiveIdle,
} from '@pool/shared/internal';
import { nextBurst, nextCapacity, nextInterval, outageInterval } from './adapt.js';
import { resolveRelayTarget, type AgentIdentityOptions, type TlsMode } from './server-address.js';
import { TlsSessionCache } from './tls-session-cache.js';
import { pinCertificate, tlsOptionsOf, type TlsConnect } from './certificate-pin.js';

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
   * the connection). Handed-out connections are pinged too: a tunnel whose
   * transport went silent is destroyed with `ERR_KEEPALIVE_TIMEOUT` within two
   * periods. Default: 30000. 0 disables both.
   */
  keepAlive?: number;
  /**
   * Offer half-close on every dial (a relay of ours confirms it; a Go npws one
   * does not): `end()` then ends one direction only. Default: true.
   */
  halfClose?: boolean;
  /** Transport security. Default: `'verified'` (`'off'` for a `ws://` URL). See {@link TlsMode}. */
  tls?: TlsMode;
  /**
   * How pooled connections travel: `'tls'` raw TLS (ALPN `pool/1`: after a
   * one-line preface and answer, the bytes themselves, with no framing; a
   * relay that does not choose it fails the dial with
   * `ERR_TRANSPORT_UNAVAILABLE`); `'websocket'` npws's WebSocket wire (for a
   * Go npws relay, and paths through HTTP proxies); `'auto'` offers both
   * and uses what the relay chooses. Default: `'auto'` with TLS, else `'websocket'`.
   */
  transport?: 'auto' | 'tls' | 'websocket';
  /** Shared secret sent in the `x-pool-token` upgrade header. Default: none. */
  token?: string;
  /** This agent's key, presented in every TLS handshake (mutual TLS); see {@link AgentIdentityOptions}. Needs TLS. Default: none. */
  identity?: AgentIdentityOptions;
  /**
   * Extra headers sent on every upgrade (an Agent sends its relay session
   * here). Reconfigurable: the next dial sends the new ones. Default: none.
   */
  headers?: Readonly<Record<string, string>>;
  /** Time for one dial, from TCP connect to the ID frame, in ms. Default: 10000. */
  handshakeTimeout?: number;
  /** Retries of a failed dial within a round (jittered exponential back-off, 100 ms to 1 s). Default: 2. */
  dialRetries?: number;
  /** Largest WebSocket message accepted, in bytes. Default: 16 MiB. */
  maxPayload?: number;
  /**
   * Most dials in flight at once, in ms-long TLS handshakes, in a fill round
   * and again for `dialNow`. Bounds the CPU burst on both ends and the memory
   * the handshakes hold at their peak. Default: 32.
   */
  dialConcurrency?: number;
  /**
   * Resume TLS sessions across dials (TLS 1.3 tickets): several times cheaper
   * than a full handshake for both sides, with forward secrecy kept. Default: true.
   */
  tlsSessionReuse?: boolean;
  /** Publish Prometheus metrics (`pool_*`, label `pool` = `name`, default `'agent'`). Default: none. */
  metrics?: MetricsOptions;
  /** A pino-compatible logger. Default: silent. */
  logger?: Logger;
}

/** The options `reconfigure` can change on a running pool. */
export type ClientPoolSettings = Pick<ClientPoolOptions, 'minCap' | 'maxCap' | 'minInterval' | 'maxInterval' | 'keepAlive' | 'headers'>;

interface Settings {
  minCap: number;
  maxCap: number;
  minInterval: number;
  maxInterval: number;
  keepAliveMs: number;
  headers: Readonly<Record<string, string>>;
}

/** Validates every setting at once, so that a bad one changes nothing. */
function parseSettings(settings: ClientPoolSettings): Settings {
  const minCap = checkInt('minCap', settings.minCap ?? 1, 1);
  const maxCap = checkInt('maxCap', settings.maxCap ?? Math.max(minCap, 20), 1);
  checkOrdered('minCap', minCap, 'maxCap', maxCap);
  const minInterval = checkMs('minInterval', settings.minInterval ?? 500);
  const maxInterval = checkMs('maxInterval', settings.maxInterval ?? 5_000);
  checkOrdered('minInterval', minInterval, 'maxInterval', maxInterval);
  return { minCap, maxCap, minInterval, maxInterval, keepAliveMs: checkMs('keepAlive', settings.keepAlive ?? 30_000), headers: { ...settings.headers } };
}

/** Counters for what the manager has done; cheap to read at any time. */
export interface ClientPoolStats {
  /** WebSocket dials started (each retry counts). */
  dials: number;
  /** Dials that ended in an error. */
  dialFailures: number;
  /** Fill rounds completed: one per interval, the rounds the npws rules adapt on. */
  rounds: number;
  /** Top-ups between rounds, each replacing connections that were taken; they adapt nothing. */
  topUps: number;
  /** Dials started by `dialNow` (demand), retries excluded. */
  demandDials: number;
  /** Capacity that demand added on top of the npws capacity, now; it decays while the pool stays idle. */
  burst: number;
}

/** Why the manager's sleep between rounds ended. */
type WakeReason = 'due' | 'round' | 'topUp';
/** Quiet time after the last connection taken before a top-up dials, in ms (see `#settle`). */
const TOP_UP_SETTLE_MS = 50;

/** `new`: not started, or drained (`ClientManager()` starts it). */
type State = 'new' | 'running' | 'draining' | 'closed';

/** Outcomes so far of the dials of one fill round. */
interface DialRound {
  successes: number;
  /** Failures since the round's last success: a relay that died mid-round shows here. */
  failuresInARow: number;
}

/** Failures in a row after which a round starts and retries no more dials. */
const OUTAGE_FAILURES = 3;

/** Refusals that another attempt within the same round cannot change. */
const FINAL_REFUSALS = new Set(['ERR_POOL_FORBIDDEN', 'ERR_POOL_UNAUTHORIZED', 'ERR_POOL_FULL', 'ERR_TLS_CERT_PIN', 'ERR_TRANSPORT_UNAVAILABLE']);

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
  /** Every connection's lifecycle: `stats()` and `report()` for monitoring. */
  readonly tracker = new ConnectionTracker();
  readonly #url: string;
  /** The relay's host:port, as connections are tracked. */
  readonly #trackedAddress: string;
  readonly #tls: ConnectionOptions | undefined;
  readonly #token: string | undefined;
  readonly #halfClose: boolean;
  readonly #transport: 'auto' | 'tls' | 'websocket';
  /** What the relay chose on the last dial; `'auto'` dials straight to WebSocket once it chose that. */
  #transportInUse: TransportName | undefined;
  /** The relay's host and port, for raw dials. */
  readonly #relay: { host: string; port: number };
  readonly #sweeper: KeepAliveSweeper;
  #headers: Record<string, string>;
  #settingsInput: ClientPoolSettings;
  #settings: Settings;
  readonly #handshakeTimeoutMs: number;
  readonly #dialRetries: number;
  readonly #dialConcurrency: number;
  readonly #maxPayload: number;
  readonly #tlsSessions: TlsSessionCache | undefined;
  /** ws's `createConnection` for our dials (session reuse, a certificate pin), or undefined for ws's own. */
  readonly #tlsConnect: TlsConnect | undefined;
  readonly #idle: IdleConnections;
  readonly #leases: LeasedConnections;
  readonly #metrics: PoolMetrics | undefined;
  readonly #claimWaiters = new Map<string, PendingGet<PooledConn>[]>();
  /** Aborts the manager's dials in flight and its sleep between rounds: on `Close()` or `Drain()`. */
  #run: AbortController | undefined;
  readonly #stats = { dials: 0, dialFailures: 0, rounds: 0, topUps: 0, demandDials: 0 };
  /** The npws capacity. */
  #capacity: number;
  /** Capacity raised by demand (`dialNow`), decaying while the pool stays idle; 0 when none. */
  #burst = 0;
  /** Connections handed out since the last fill round began: the users of a burst that found one idle. */
  #takenSinceRound = 0;
  /** A top-up since the last round ended with 3 failed dials in a row (a relay at its maxCap answers 503): none until the next round. */
  #topUpsRefused = false;
  /** Demand dials still to start, and in flight. */
  #demandOwed = 0;
  #demandInFlight = 0;
  /** Dials in flight, of fill rounds and demand alike. */
  #dialsInFlight = 0;
  #demandRound: DialRound = { successes: 0, failuresInARow: 0 };
  #interval: number;
  #state: State = 'new';
  #manager: Promise<void> | undefined;
  /** Ends the manager's sleep: `round` for a fill round now, `topUp` to replace what was taken. */
  #wakeManager: ((reason: WakeReason) => void) | undefined;
  #closing: Promise<void> | undefined;
  #draining: Promise<DrainResult> | undefined;
  /** Every dial of the last round failed: the relay is down or refusing us. */
  #lastRoundFailed = false;

  constructor(options: ClientPoolOptions) {
    super(options.logger);
    const target = resolveRelayTarget(options.server, options.tls, options.identity);
    this.#url = target.url;
    const url = new URL(target.url);
    this.#trackedAddress = url.host;
    this.#relay = { host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(url.port || 443) };
    this.#transport = options.transport ?? (target.tls ? 'auto' : 'websocket');
    if (!['auto', 'tls', 'websocket'].includes(this.#transport)) throw new InvalidOptionError('transport', this.#transport, "'auto', 'tls' or 'websocket'");
    if (this.#transport !== 'websocket' && target.tls === undefined) throw new InvalidOptionError('transport', this.#transport, "'websocket' for a ws:// relay: the raw transport is TLS");
    this.#transportInUse = this.#transport === 'websocket' ? 'websocket' : this.#transport === 'tls' ? 'tls' : undefined;
    // One secure context for every dial: without it tls.connect builds a new one
    // (CA store included) per connection, a tenth of the cost of a fill.
    this.#tls = target.tls && { ...target.tls, secureContext: createSecureContext(target.tls) };
    const { minCap, maxCap, minInterval, maxInterval, keepAlive, headers } = options;
    this.#settingsInput = { minCap, maxCap, minInterval, maxInterval, keepAlive, headers };
    this.#settings = parseSettings(this.#settingsInput);
    this.#handshakeTimeoutMs = checkMs('handshakeTimeout', options.handshakeTimeout ?? 10_000, 1);
    this.#dialRetries = checkInt('dialRetries', options.dialRetries ?? 2, 0, 10);
    this.#dialConcurrency = checkInt('dialConcurrency', options.dialConcurrency ?? 32, 1);
    this.#maxPayload = checkInt('maxPayload', options.maxPayload ?? DEFAULT_MAX_PAYLOAD_BYTES, 1);
    this.#tlsSessions = this.#tls && options.tlsSessionReuse !== false ? new TlsSessionCache() : undefined;
    this.#tlsConnect = target.fingerprint === undefined ? this.#tlsSessions?.createConnection : pinCertificate(target.fingerprint, this.#tlsSessions?.createConnection);
    this.#token = options.token;
    this.#halfClose = options.halfClose ?? true;
    this.#headers = this.#upgradeHeaders();
    this.#capacity = this.#settings.minCap;
    this.#interval = this.#settings.minInterval;
    this.#sweeper = new KeepAliveSweeper(this.#settings.keepAliveMs);
    this.#leases = new LeasedConnections(this.#sweeper);
    this.#idle = new IdleConnections(this.#sweeper, this.reportError, (socket) => {
      this.tracker.transition(trackingKeyOf(socket), 'closed');
    });
    this.#metrics =
      options.metrics &&
      new PoolMetrics(options.metrics, 'agent', {
        tracker: this.tracker,
        capacity: () => this.Capacity(),
        interval: () => this.#interval,
        leasedBytes: () => this.#leases.bytes(),
      });
  }

  /** The extensions this pool offers on a dial now. */
  #extensions(): Extensions {
    return { keepAlive: this.#settings.keepAliveMs > 0, halfClose: this.#halfClose };
  }

  #upgradeHeaders(): Record<string, string> {
    const headers = { ...this.#settings.headers, ...offerHeaders(this.#extensions()) };
    if (this.#token !== undefined) headers[TOKEN_HEADER] = this.#token;
    return headers;
  }

  /**
   * Starts the manager loop and returns at once; after a drain, starts it
   * again. Idempotent; a closed pool stays closed.
   */
  ClientManager(): void {
    if (this.#state !== 'new' || this.#draining) return;
    this.#state = 'running';
    const run = new AbortController();
    // Every dial in flight (and its p-retry) listens for the abort: up to dialConcurrency at once, by design.
    setMaxListeners(0, run.signal);
    this.#run = run;
    this.#manager = this.#manage(run.signal);
  }

  /**
   * Takes the pooled connection with this ID: at once if it is here, else the
   * moment it arrives (no polling). Works before `ClientManager()`.
   *
   * Rejects with `ERR_INVALID_ID` for a malformed ID (at once), `ERR_POOL_TIMEOUT`
   * after `timeoutMs` milliseconds, `ERR_POOL_ABORTED` when `options.signal`
   * aborts, and `ERR_POOL_CLOSED` on `Close()`.
   */
  OutgoingGet(id: string, timeoutMs: number, options: GetOptions = {}): Promise<PooledConn> {
    const get = this.#outgoingGet(id, timeoutMs, options);
    return this.#metrics ? this.#metrics.observeGet(get) : get;
  }

  async #outgoingGet(id: string, timeoutMs: number, options: GetOptions): Promise<PooledConn> {
    const key = parseId(id);
    checkMs('timeoutMs', timeoutMs);
    if (this.#state === 'closed') throw new PoolClosedError();
    if (this.#state === 'draining') throw new PoolDrainingError();
    const conn = this.#idle.take(key);
    if (conn) return this.#leased(conn);
    const get: PendingGet<PooledConn> = new PendingGet(timeoutMs, options, () => this.#forgetWaiter(key, get));
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

  /**
   * The transport of the latest dials: `'tls'` or `'websocket'`, or
   * undefined while `'auto'` has not yet heard what the relay chooses.
   */
  Transport(): TransportName | undefined {
    return this.#transportInUse;
  }

  /** Idle pooled connections. */
  Active(): number {
    return this.#idle.size;
  }

  /**
   * Current target pool size: the npws capacity (adapting between `minCap`
   * and `maxCap`), or what demand raised it to (see `dialNow`) while that decays.
   */
  Capacity(): number {
    return Math.max(this.#capacity, this.#burst);
  }

  /**
   * Dials for demand the application knows of, such as users waiting at the
   * relay for a pooled connection, on top of the fill rounds and without
   * waiting for one: `count` is how many connections are wanted now, and
   * dials already started by an earlier call count towards it (so a caller
   * can pass the latest absolute figure each time). At most `dialConcurrency`
   * run at once; each finished one starts the next until `count` have been
   * started, or 3 have failed in a row.
   *
   * Capacity is raised to the burst, up to `maxCap`: `count` plus the
   * connections taken since the last fill round began (the users of the
   * burst the idle pool served), so that the next burst of that size finds
   * all its connections waiting. It decays by one per fill round in which the
   * pool stays more than 80% idle. A success also ends an outage back-off at
   * once.
   * Does nothing unless the manager runs. Throws `ERR_INVALID_OPTION` for a
   * negative or fractional count.
   */
  dialNow(count: number): void {
    checkInt('count', count, 0);
    const signal = this.#run?.signal;
    if (this.#state !== 'running' || signal === undefined || signal.aborted) return;
    // The burst is those still waiting and those the idle pool already served: the next one should find all of them waiting.
    this.#burst = Math.min(this.#settings.maxCap, Math.max(this.#burst, count + this.#takenSinceRound));
    this.#demandOwed = Math.max(0, count - this.#demandInFlight);
    this.#demandRound = { successes: 0, failuresInARow: 0 };
    this.#startDemandDials(signal);
  }

  #startDemandDials(signal: AbortSignal): void {
    const round = this.#demandRound;
    // maxCap bounds what is idle or on its way; what the relay's users take leaves room for more.
    const room = (): boolean => this.#demandInFlight < this.#dialConcurrency && this.#idle.size + this.#dialsInFlight < this.#settings.maxCap;
    while (this.#demandOwed > 0 && room() && !signal.aborted) {
      if (round.failuresInARow >= OUTAGE_FAILURES) {
        this.#demandOwed = 0;
        return;
      }
      this.#demandOwed--;
      this.#demandInFlight++;
      this.#stats.demandDials++;
      this.#dial(round, signal)
        .catch(() => {})
        .finally(() => {
          this.#demandInFlight--;
          this.#startDemandDials(signal);
        });
    }
  }

  /** Current pause between fill rounds, in ms; adapts between `minInterval` and `maxInterval`. */
  Interval(): number {
    return this.#interval;
  }

  /** Connections handed out whose WebSockets are still open. */
  Leased(): number {
    return this.#leases.size;
  }

  /**
   * Changes settings of the running pool; what is omitted stays as it is.
   * The next fill round (started at once) works within the new bounds:
   * capacity and interval are clamped into them, and connections over a
   * lowered capacity are not closed (they leave as they are used). A new
   * `keepAlive` applies to idle connections from their next sweep and to new
   * dials. No connection is dropped. Throws `ERR_INVALID_OPTION` for any bad
   * value, and then nothing changes.
   */
  reconfigure(changes: ClientPoolSettings): void {
    const input = { ...this.#settingsInput, ...changes };
    const settings = parseSettings(input);
    this.#settingsInput = input;
    this.#settings = settings;
    this.#headers = this.#upgradeHeaders();
    this.#capacity = Math.min(settings.maxCap, Math.max(settings.minCap, this.#capacity));
    this.#burst = Math.min(settings.maxCap, this.#burst);
    this.#interval = Math.min(settings.maxInterval, Math.max(settings.minInterval, this.#interval));
    this.#sweeper.setPeriod(settings.keepAliveMs);
    // Not the headers: they carry secrets.
    const { minCap, maxCap, minInterval, maxInterval, keepAliveMs } = settings;
    this.logger.info({ minCap, maxCap, minInterval, maxInterval, keepAlive: keepAliveMs }, 'pool reconfigured');
    this.#wakeManager?.('round');
  }

  /**
   * Stops taking work and waits for it to finish: the manager stops (dials in
   * flight are cut), waiting and new gets reject with `ERR_POOL_DRAINING`,
   * idle connections are closed; then it waits up to `timeoutMs` for the
   * connections already handed out to close, and destroys those still open.
   * `ClientManager()` starts the pool again; `Close()` ends it.
   */
  Drain(timeoutMs: number): Promise<DrainResult> {
    checkMs('timeoutMs', timeoutMs);
    if (this.#state === 'closed') return Promise.reject(new PoolClosedError());
    this.#draining ??= this.#drain(timeoutMs).finally(() => {
      this.#draining = undefined;
    });
    return this.#draining;
  }

  async #drain(timeoutMs: number): Promise<DrainResult> {
    this.#state = 'draining';
    const result = await drainPool(
      { logger: this.logger, idle: this.#idle, leases: this.#leases, stopWork: () => this.#stopWork(new PoolDrainingError()) },
      timeoutMs,
    );
    if (this.#state === 'draining') this.#state = 'new';
    return result;
  }

  /** Stops the manager and its dials, and rejects every waiting get with `reason`. */
  async #stopWork(reason: Error): Promise<void> {
    this.#run?.abort();
    for (const waiters of this.#claimWaiters.values()) {
      for (const get of waiters) get.reject(reason);
    }
    this.#claimWaiters.clear();
    await this.#manager;
  }

  /**
   * Destroys every connection, idle and handed out, that has no liveness of
   * its own (raw TLS, or a WebSocket without keep-alive): for when the relay
   * is known to be unreachable some other way (an Agent's control channel
   * went silent). The manager refills. Returns how many.
   */
  DestroyUnwatched(): number {
    const destroyed = this.#idle.destroyUnwatched() + this.#leases.destroyWhere((conn) => !conn.extensions.keepAlive);
    this.#wakeManager?.('round');
    return destroyed;
  }

  /** Closes every idle connection; the manager refills at once. */
  async Flush(): Promise<void> {
    await this.#idle.closeAll();
    this.#wakeManager?.('round');
  }

  /** A snapshot of the manager's counters. */
  stats(): ClientPoolStats {
    return { ...this.#stats, burst: this.#burst };
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
    await this.#stopWork(new PoolClosedError());
    await this.#idle.closeAll();
    this.#sweeper.close();
    this.#metrics?.detach();
    this.emit('close');
  }

  async #manage(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const wasDown = this.#lastRoundFailed;
      await this.#fillRound(signal);
      this.#stats.rounds++;
      // The relay is back: refill now rather than after the outage's long interval.
      if (wasDown && !this.#lastRoundFailed) continue;
      await this.#untilNextRound(signal);
    }
  }

  /**
   * Waits out the interval, or until something asks for a round at once. A
   * connection taken meanwhile is replaced at once by a top-up, which leaves
   * the interval, the capacity and the burst alone: were each top-up a round,
   * a burst served from the idle pool would read as hundreds of rounds with
   * the pool over 80% idle, and the burst capacity and the interval would be
   * gone by its end.
   */
  async #untilNextRound(signal: AbortSignal): Promise<void> {
    const due = performance.now() + this.#interval;
    while (!signal.aborted && (await this.#sleep(due - performance.now(), signal)) === 'topUp') {
      await this.#settle(signal);
      await this.#topUp(signal);
    }
  }

  /**
   * Before a top-up: lets a burst finish taking connections, for the dials'
   * TLS handshakes would compete with its users for the CPU. Each connection
   * taken restarts the wait; a pool down to an eighth of its capacity waits
   * for nothing. A burst of 100 into the default 128 is thus served before
   * its replacements dial: at a quarter and 20 ms, a first burst's p50 was
   * 90 ms on loopback and 2.0-2.7 RTT over a 50 ms WAN; at an eighth and
   * 50 ms, 50 ms and 1.85-1.92 RTT.
   */
  async #settle(signal: AbortSignal): Promise<void> {
    while (!signal.aborted && this.#idle.size >= this.Capacity() / 8 && (await this.#sleep(TOP_UP_SETTLE_MS, signal)) === 'topUp');
  }

  /** Dials until the pool is back at its capacity, checking for room before each dial. */
  async #topUp(signal: AbortSignal): Promise<void> {
    // During an outage only the rounds' single probes dial, and a relay that refused the last
    // top-up is left alone until the next round: each user taken would otherwise cost it failed dials.
    if (this.#lastRoundFailed || this.#topUpsRefused) return;
    this.#stats.topUps++;
    const round: DialRound = { successes: 0, failuresInARow: 0 };
    await this.#dialWhile(round, signal, this.#dialConcurrency, () => true);
    if (round.failuresInARow >= OUTAGE_FAILURES) this.#topUpsRefused = true;
  }

  /**
   * Runs `dialers` dial loops at once. Before each dial, a loop checks that the
   * pool has room, that the round has not failed {@link OUTAGE_FAILURES} times
   * in a row (the relay is down or refusing us, from the start or since it
   * died mid-round: start no more), and, last, `claim()`, which takes one of
   * the caller's dials and says false when none is left.
   */
  async #dialWhile(round: DialRound, signal: AbortSignal, dialers: number, claim: () => boolean): Promise<void> {
    const dialer = async (): Promise<void> => {
      while (this.#belowCapacity() && !signal.aborted && round.failuresInARow < OUTAGE_FAILURES && claim()) {
        await this.#dialWithRetry(round, signal).catch(() => {});
      }
    };
    await Promise.all(Array.from({ length: dialers }, dialer));
  }

  /**
   * Whether one more dial fits: idle plus in flight under the capacity. Asked
   * before each dial, not once per round, because demand dials that finished
   * meanwhile may have filled the pool, and a dial past it would meet the
   * relay's maxCap (503). `#dial` counts itself in flight before its first
   * await, so dialers started in one go each see those started before them.
   */
  #belowCapacity(): boolean {
    return this.#idle.size + this.#dialsInFlight < this.Capacity();
  }

  /** A dial succeeded after an outage: leave the back-off and let the manager refill at once. */
  #outageOver(): void {
    if (!this.#lastRoundFailed) return;
    this.#lastRoundFailed = false;
    this.#interval = this.#settings.minInterval;
    this.#wakeManager?.('round');
  }

  async #fillRound(signal: AbortSignal): Promise<void> {
    this.#takenSinceRound = 0;
    this.#topUpsRefused = false;
    const idle = this.#idle.size;
    const target = this.Capacity();
    const wanted = Math.max(0, target - idle - this.#demandInFlight);
    // During an outage one probe per round finds out whether the relay is back.
    const attempts = this.#lastRoundFailed ? Math.min(1, wanted) : wanted;
    if (!this.#lastRoundFailed) {
      this.#interval = nextInterval({
        idle,
        capacity: target,
        interval: this.#interval,
        minInterval: this.#settings.minInterval,
        maxInterval: this.#settings.maxInterval,
      });
    }
    const round: DialRound = { successes: 0, failuresInARow: 0 };
    let started = 0;
    // Until we hold a TLS ticket, one dial goes first so that the rest can resume its session.
    if (attempts > 1 && this.#tlsSessions?.empty) {
      started++;
      await this.#dialWithRetry(round, signal).catch(() => {});
    }
    const claimAttempt = (): boolean => {
      if (started >= attempts) return false;
      started++;
      return true;
    };
    await this.#dialWhile(round, signal, Math.min(this.#dialConcurrency, attempts), claimAttempt);
    if (signal.aborted) return;
    // Read after the round: a reconfiguration during it applies now.
    const { minCap, maxCap, minInterval, maxInterval } = this.#settings;
    // The npws rule sees the dials npws would have made; those for the burst are demand's.
    const npwsAttempts = Math.min(started, Math.max(0, this.#capacity - idle));
    const npwsSuccesses = Math.min(round.successes, npwsAttempts);
    this.#capacity = nextCapacity({ successes: npwsSuccesses, attempts: npwsAttempts, capacity: this.#capacity, minCap, maxCap });
    this.#burst = nextBurst({ burst: this.#burst, idle, capacity: target });
    const failed = started > 0 && round.successes === 0;
    if (failed) {
      this.#lastRoundFailed = true;
      // The relay may come back as another version: ask again what it takes.
      if (this.#transport === 'auto') this.#transportInUse = undefined;
      this.#interval = outageInterval(this.#interval, minInterval, maxInterval);
    } else if (round.successes > 0) {
      this.#outageOver();
    }
  }

  #dialWithRetry(round: DialRound, signal: AbortSignal): Promise<void> {
    return pRetry(() => this.#dial(round, signal), {
      // During an outage the probe does not retry: the doubling interval is the back-off.
      retries: this.#lastRoundFailed ? 0 : this.#dialRetries,
      // Retries are for a blip in a healthy round. Once dials have failed
      // several times in a row the relay is down: stop here, and let the next
      // rounds probe it one dial at a time.
      shouldRetry: () => round.failuresInARow < OUTAGE_FAILURES,
      minTimeout: 100,
      maxTimeout: 1_000,
      randomize: true,
      signal,
    });
  }

  async #dial(round: DialRound, signal: AbortSignal): Promise<void> {
    this.#dialsInFlight++;
    try {
      await this.#dialOnce(round, signal);
    } finally {
      this.#dialsInFlight--;
    }
  }

  async #dialOnce(round: DialRound, signal: AbortSignal): Promise<void> {
    this.#stats.dials++;
    let socket: IdleConnection;
    try {
      socket = this.#transportInUse === 'websocket' ? await this.#dialWebSocket(signal) : await this.#dialRaw(signal);
    } catch (error) {
      if (signal.aborted) throw new AbortError('the pool stopped');
      round.failuresInARow++;
      this.#stats.dialFailures++;
      this.reportError(error as Error);
      throw error instanceof PoolError && FINAL_REFUSALS.has(error.code) ? new AbortError(error) : error;
    }
    this.#metrics?.handshake('success');
    if (signal.aborted) {
      this.tracker.transition(trackingKeyOf(socket), 'closed');
      socket.destroy();
      return;
    }
    round.successes++;
    round.failuresInARow = 0;
    const { keepAliveMs } = this.#settings;
    if (keepAliveMs > 0) socket.transportSocket.setKeepAlive(true, keepAliveMs);
    this.#admit(socket);
    this.#outageOver();
  }

  /** One WebSocket dial, to the ID: npws's wire, with the extensions the relay confirms. */
  async #dialWebSocket(signal: AbortSignal): Promise<IdleSocket> {
    const offered = this.#extensions();
    const ws = new WebSocket(this.#url, {
      perMessageDeflate: false,
      headers: this.#headers,
      maxPayload: this.#maxPayload,
      ...this.#tls,
      ...(this.#tlsConnect && { createConnection: this.#tlsConnect }),
    });
    this.tracker.transition(ws, 'dialing', this.#trackedAddress);
    let upgraded = false;
    let extensions = offered;
    ws.once('upgrade', (response: IncomingMessage) => {
      upgraded = true;
      extensions = negotiated(response.headers, offered);
      this.tracker.transition(ws, 'handshaking');
      this.#metrics?.dial('success');
    });
    const abort = (): void => ws.terminate();
    signal.addEventListener('abort', abort);
    try {
      return await receiveIdle(ws, this.#handshakeTimeoutMs, () => extensions);
    } catch (error) {
      this.tracker.transition(ws, 'closed');
      if (!signal.aborted) this.#metrics?.[upgraded ? 'handshake' : 'dial'](outcomeOf(error));
      throw error;
    } finally {
      signal.removeEventListener('abort', abort);
    }
  }

  /**
   * One raw TLS dial, offering ALPN `pool/1` (and `http/1.1` in `'auto'`):
   * the preface goes out with the handshake's last flight, the answer brings
   * the ID. A relay that chooses WebSocket makes `'auto'` dial that from now on.
   */
  async #dialRaw(signal: AbortSignal): Promise<IdleConnection> {
    const deadline = performance.now() + this.#handshakeTimeoutMs;
    const tcp = connectTcp({ ...this.#relay, noDelay: true });
    tcp.on('error', () => {});
    const options = {
      ...this.#tls,
      ...this.#relay,
      socket: tcp,
      ALPNProtocols: this.#transport === 'tls' ? [POOL_ALPN] : [POOL_ALPN, 'http/1.1'],
    };
    const socket = this.#tlsConnect ? this.#tlsConnect(options as ClientRequestArgs) : connectTls(tlsOptionsOf(options as ClientRequestArgs));
    this.tracker.transition(socket, 'dialing', this.#trackedAddress);
    const abort = (): void => {
      socket.destroy();
      tcp.destroy();
    };
    signal.addEventListener('abort', abort);
    let secured = false;
    try {
      await secureConnection(socket, this.#handshakeTimeoutMs);
      secured = true;
      this.#metrics?.dial('success');
      if (socket.alpnProtocol !== POOL_ALPN) {
        socket.destroy();
        this.tracker.transition(socket, 'closed');
        const chosen = socket.alpnProtocol || 'no ALPN protocol';
        if (this.#transport === 'tls') throw new TransportUnavailableError(chosen);
        this.#transportInUse = 'websocket';
        this.logger.info({ chosen }, 'the relay takes WebSocket pooled connections only');
        return await this.#dialWebSocket(signal);
      }
      this.#transportInUse = 'tls';
      this.tracker.transition(socket, 'handshaking');
      socket.write(encodePreface(this.#headers));
      const answer = parseAnswer(await readLine(socket, Math.max(1, deadline - performance.now())));
      if (answer.status !== 200 || !('id' in answer)) throw upgradeRejection(answer.status, 'reason' in answer ? answer.reason : undefined);
      return new RawIdleSocket(adoptRawConn(socket, answer.id, tcp));
    } catch (error) {
      socket.destroy();
      tcp.destroy();
      this.tracker.transition(socket, 'closed');
      if (!signal.aborted) this.#metrics?.[secured ? 'handshake' : 'dial'](outcomeOf(error));
      // A relay without ALPN of its own ends a handshake that offers only pool/1 with this alert.
      if ((error as { code?: string }).code === 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL') throw new TransportUnavailableError('none of the offered protocols');
      throw error;
    } finally {
      signal.removeEventListener('abort', abort);
    }
  }

  #admit(socket: IdleConnection): void {
    const { id } = socket;
    const waiters = this.#claimWaiters.get(id);
    const waiter = waiters?.find((get) => !get.settled);
    if (waiters && waiter) {
      waiters.splice(0, waiters.indexOf(waiter) + 1);
      if (waiters.length === 0) this.#claimWaiters.delete(id);
      waiter.resolve(this.#leased(socket.claim()));
    } else {
      this.#claimWaiters.delete(id);
      this.tracker.transition(trackingKeyOf(socket), 'idle');
      this.#idle.add(socket);
    }
    this.emit('connection', id);
  }

  #leased(conn: PooledConn): PooledConn {
    const key = trackingKeyOf(conn);
    this.tracker.transition(key, 'leased');
    this.#leases.add(conn, () => this.tracker.transition(key, 'closed'));
    this.#takenSinceRound++;
    // The manager replaces what was taken without waiting out its interval, and demand waiting for room goes on.
    this.#wakeManager?.('topUp');
    if (this.#demandOwed > 0 && this.#run) this.#startDemandDials(this.#run.signal);
    return conn;
  }

  #forgetWaiter(id: string, get: PendingGet<PooledConn>): void {
    const waiters = this.#claimWaiters.get(id);
    if (!waiters) return;
    waiters.splice(waiters.indexOf(get), 1);
    if (waiters.length === 0) this.#claimWaiters.delete(id);
  }

  #sleep(ms: number, signal: AbortSignal): Promise<WakeReason> {
    return new Promise((resolve) => {
      const done = (reason: WakeReason): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', aborted);
        this.#wakeManager = undefined;
        resolve(reason);
      };
      const aborted = (): void => done('round');
      const timer = setTimeout(done, Math.max(0, ms), 'due');
      this.#wakeManager = done;
      signal.addEventListener('abort', aborted);
    });
  }

}

/** What a connection is tracked under from its dial on: its WebSocket, or its TLS socket on the raw transport. */
function trackingKeyOf(connection: IdleConnection | PooledConn): object {
  return connection instanceof IdleSocket || connection instanceof PoolConn ? connection.webSocket : connection.transportSocket;
}

/** Resolves once the TLS handshake is done; rejects with its error, a close, or `ERR_HANDSHAKE_TIMEOUT`. */
function secureConnection(socket: TLSSocket, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (error?: Error): void => {
      clearTimeout(timer);
      socket.removeListener('secureConnect', onSecure);
      socket.removeListener('error', settle);
      socket.removeListener('close', onClose);
      socket.on('error', () => {});
      if (error) reject(error);
      else resolve();
    };
    // A certificate pin's check runs first and destroys a connection it refuses: its error follows.
    const onSecure = (): void => {
      if (!socket.destroyed) settle();
    };
    const onClose = (): void => settle(new HandshakeClosedError(1006));
    const timer = setTimeout(() => settle(new HandshakeTimeoutError(timeoutMs)), timeoutMs);
    socket.once('secureConnect', onSecure);
    socket.once('error', settle);
    socket.once('close', onClose);
  });
}
