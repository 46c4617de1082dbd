import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { SecureContextOptions, TLSSocket, TlsOptions } from 'node:tls';
import { WebSocketServer, type WebSocket } from 'ws';
import {
  ConnectionTracker,
  PoolClosedError,
  PoolDrainingError,
  InvalidOptionError,
  PoolConn,
  generateId,
  type DrainResult,
  type Extensions,
  type GetOptions,
  type Logger,
  type MetricsOptions,
  type PooledConn,
  type RawPoolConn,
  type TransportName,
  RawIdleSocket,
  adoptRawConn,
  encodeAnswer,
  parsePreface,
  readLine,
  ErrorCountingEmitter,
  DEFAULT_MAX_PAYLOAD_BYTES,
  IdleConnections,
  IdleSocket,
  KeepAliveSweeper,
  LeasedConnections,
  PendingGet,
  PoolMetrics,
  checkInt,
  checkMs,
  confirmHeaderLines,
  drainPool,
  negotiated,
  listen,
  rawSocketOf,
  sendIdFrame,
} from '@pool/shared/internal';
import { HeadersDeadline, admit, answerPlainRequest, httpTimeouts, pathOf, refuseUpgrade, type AdmissionDecision, type AdmissionPolicy, type PoolRequest } from './admission.js';
import { routeByAlpn, selectAlpn, type TransportChoice } from './alpn.js';
import { parseAllowlist } from './allowlist.js';
import { ClientGroups, type ClientGroup } from './client-groups.js';
import { parseTokens } from './token.js';

/** Options for {@link ServerPool}. */
export interface ServerPoolOptions {
  /** Interface to listen on. Default: all interfaces (Node's default). Ignored with `server`. */
  host?: string;
  /** Port to listen on; 0 picks a free one (see `address()`). Default: 0. Ignored with `server`. */
  port?: number;
  /**
   * Connections the kernel queues before we accept them (`listen()` backlog;
   * the kernel caps it at `net.core.somaxconn`). Node's 511 drops SYNs when
   * an agent dials a burst, and each dropped SYN costs that dial a 1 s
   * retransmit. Default: {@link DEFAULT_BACKLOG}. Ignored with `server`.
   */
  backlog?: number;
  /**
   * An existing http(s) server to attach to instead of listening ourselves. The
   * pool handles upgrades on path `/`; other paths are left to the server's
   * other `'upgrade'` listeners (answered 404 when there are none). For the
   * raw TLS transport it must be an https server that selects ALPN `pool/1`
   * (create it with `ALPNCallback: selectAlpn`); the pool then
   * takes its TLS connections that negotiated it.
   */
  server?: Server;
  /**
   * Which transports pooled connections may use: `'auto'` both, chosen by
   * the client's ALPN (`pool/1`: raw TLS, the bytes themselves after a
   * one-line preface; anything else: WebSocket, as npws); `'tls'` raw TLS
   * only (WebSocket upgrades are refused with 426); `'websocket'` WebSocket
   * only. Raw TLS needs TLS. Default: `'auto'` with TLS, else `'websocket'`.
   */
  transport?: TransportChoice;
  /**
   * Certificate and key (any `tls.createServer` options) for `wss://`. TLS 1.3 is
   * the minimum. Omitted: plain `ws://`, for development and tests only.
   */
  tls?: SecureContextOptions & Pick<TlsOptions, 'ALPNProtocols' | 'SNICallback'>;
  /** Most idle pooled connections held, upgrades in flight included; past it, 503. Default: 100. */
  maxCap?: number;
  /**
   * Peers allowed to connect: IPs and CIDR ranges, IPv4 and IPv6. Omitted:
   * everyone; given but empty: `ERR_INVALID_OPTION`. Checked on the upgrade
   * request, before any WebSocket exists.
   */
  allow?: string | readonly string[];
  /** npws's single allowed client IP; merged into `allow`. */
  clientIP?: string;
  /**
   * Keep-alive period in ms: TCP keep-alive on every socket and, with peers that
   * negotiated it, a ping per period (a missed pong destroys the connection).
   * Pings reach handed-out connections too: a tunnel whose transport went
   * silent is destroyed with `ERR_KEEPALIVE_TIMEOUT` within two periods.
   * Default: 30000. 0 disables pings and TCP keep-alive.
   */
  keepAlive?: number;
  /**
   * Confirm half-close to clients that offer it (ours do): `end()` then ends
   * one direction only, and the connection closes once both have ended.
   * Default: true. A Go npws client never offers it.
   */
  halfClose?: boolean;
  /** Shared secret the client must present in the `x-pool-token` header; else 401. Default: none. */
  token?: string;
  /**
   * Named secrets, `client name → secret`: a client presenting one is admitted
   * and known by that name (see `'clientUp'`). Combines with `token`. Default: none.
   */
  tokens?: Readonly<Record<string, string>>;
  /** Time a client has for its TLS handshake, and again for its request headers, in ms (slowloris defence). Default: 10000. */
  headersTimeout?: number;
  /** Largest WebSocket message accepted, in bytes. Default: 16 MiB. */
  maxPayload?: number;
  /**
   * Most idle connections of one client (upgrades in flight included), by
   * client; past it, that client gets 503. Gets waiting for that client add
   * room, as for `maxCap`. Clients not listed are bounded by `maxCap` alone.
   * Default: none.
   */
  clientMaxCap?: Readonly<Record<string, number>>;
  /**
   * Decides, before the upgrade, which client a connection belongs to: called
   * once the allowlist and token have admitted it, with the client they
   * identified (the token's name, else the IP). Returns the client to file
   * the connection under (what `IncomingGet(…, { client })` asks for), or an
   * HTTP status to refuse it with. A relay binds each connection to the live
   * session of the agent that dialled it this way. Default: the client as identified.
   */
  bind?: (request: PoolRequest, client: string) => string | 401 | 403 | 503;
  /** Publish Prometheus metrics (`pool_*`, label `pool` = `name`, default `'relay'`). Default: none. */
  metrics?: MetricsOptions;
  /** A pino-compatible logger. Default: silent. */
  logger?: Logger;
}

/** The options `reconfigure` can change on a running pool. */
export type ServerPoolSettings = Pick<ServerPoolOptions, 'maxCap' | 'allow' | 'clientIP' | 'keepAlive' | 'token' | 'tokens'>;

interface Settings {
  maxCap: number;
  keepAliveMs: number;
  admission: AdmissionPolicy;
}

/** Connections queued by the kernel before accept, on listeners we create: enough for 1,000 simultaneous dials. */
export const DEFAULT_BACKLOG = 2_048;

/** Validates every setting at once, so that a bad one changes nothing. */
function parseSettings(settings: ServerPoolSettings): Settings {
  const allow = typeof settings.allow === 'string' ? [settings.allow] : [...(settings.allow ?? [])];
  // An allowlist that was given but holds nothing must not quietly admit everyone (npws's empty `clientIP` still does).
  if (settings.allow !== undefined && allow.every((entry) => entry.trim() === '')) {
    throw new InvalidOptionError('allow', settings.allow, 'at least one IP or CIDR range (leave it out to admit everyone)');
  }
  if (settings.clientIP) allow.push(settings.clientIP);
  return {
    maxCap: checkInt('maxCap', settings.maxCap ?? 100, 1),
    keepAliveMs: checkMs('keepAlive', settings.keepAlive ?? 30_000),
    admission: { allowlist: parseAllowlist(allow), tokens: parseTokens(settings.token, settings.tokens) },
  };
}

/** Options of `IncomingGet`. */
export interface IncomingGetOptions extends GetOptions {
  /** Only a connection of this client (see `bind`, and the token names of `tokens`). Default: any client, as npws. */
  client?: string;
}

/** What `IncomingGet` resolves with. */
export interface IncomingConnection {
  /** The ID the client read; hand it to the agent so it can `OutgoingGet(id)`. */
  id: string;
  /** A {@link PoolConn} on the WebSocket transport, the TLS socket itself on the raw one. */
  conn: PooledConn;
  /** The client that dialled it. */
  client: string;
}

interface IncomingWaiter {
  get: PendingGet<IncomingConnection>;
  client: string | undefined;
}

/** `idle`: not started, or drained (upgrades are refused with 503; gets wait). */
type State = 'idle' | 'listening' | 'draining' | 'closed';

/**
 * The relay's pool: accepts WebSocket upgrades from agents, gives each a fresh
 * CSPRNG ID, keeps them idle, and hands them out with `IncomingGet`.
 *
 * Events: `'connection'` (id) when a connection joins the pool; `'waiting'`
 * (count, client) when an `IncomingGet` starts waiting because none is idle,
 * with the number now waiting for that client (all, for a get of any client):
 * the demand to pass to the agents; `'clientUp'`
 * (client) when a client's first connection arrives and `'clientDown'`
 * (client) once when its last one closes; `'close'` after `Close()`;
 * `'error'` (error) for failures outside any call, emitted only when
 * something listens (they are always counted in `ErrorCount()`).
 */
export class ServerPool extends ErrorCountingEmitter {
  /** Every connection's lifecycle: `stats()` and `report()` for monitoring. */
  readonly tracker = new ConnectionTracker();
  #settingsInput: ServerPoolSettings;
  #settings: Settings;
  readonly #listen: { host: string | undefined; port: number; backlog: number };
  readonly #halfClose: boolean;
  readonly #transport: TransportChoice;
  readonly #headersTimeoutMs: number;
  /** Open connections (idle or handed out) by transport. */
  readonly #openByTransport: Record<TransportName, number> = { websocket: 0, tls: 0 };
  readonly #sweeper: KeepAliveSweeper;
  readonly #ownsServer: boolean;
  readonly #server: Server;
  /** Only on a server we created: an attached server's owner sets its own limits. */
  readonly #headersDeadline: HeadersDeadline | undefined;
  readonly #wss: WebSocketServer;
  readonly #idle: IdleConnections;
  readonly #leases: LeasedConnections;
  /** Every open connection's ID, idle or handed out (new IDs must avoid all of them), and its client. */
  readonly #clientById = new Map<string, { group: ClientGroup; transport: TransportName }>();
  /** The client of each connection handed out. */
  readonly #clientOfLease = new WeakMap<PooledConn, string>();
  readonly #clients: ClientGroups;
  readonly #metrics: PoolMetrics | undefined;
  /** The address connections are tracked under, once listening. */
  #trackedAddress = '';
  readonly #incomingWaiters: IncomingWaiter[] = [];
  /** Upgrades in flight per client, for `clientMaxCap`. */
  readonly #upgradingByClient = new Map<string, number>();
  readonly #clientMaxCap: ReadonlyMap<string, number>;
  readonly #bind: NonNullable<ServerPoolOptions['bind']> | undefined;
  /** Sockets between our accept and ws's callback; counted against `maxCap`, destroyed by `Close()`. */
  readonly #upgrading = new Set<Duplex>();
  #state: State = 'idle';
  /** Gives the server's raw TLS connections back to HTTP (on `Close()`). */
  #unrouteRaw: (() => void) | undefined;
  #started: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  #draining: Promise<DrainResult> | undefined;

  constructor(options: ServerPoolOptions = {}) {
    super(options.logger);
    const { maxCap, allow, clientIP, keepAlive, token, tokens } = options;
    this.#settingsInput = { maxCap, allow, clientIP, keepAlive, token, tokens };
    this.#settings = parseSettings(this.#settingsInput);
    this.#listen = {
      host: options.host,
      port: checkInt('port', options.port ?? 0, 0, 65_535),
      backlog: checkInt('backlog', options.backlog ?? DEFAULT_BACKLOG, 1),
    };
    this.#halfClose = options.halfClose ?? true;
    this.#bind = options.bind;
    this.#clientMaxCap = new Map(Object.entries(options.clientMaxCap ?? {}).map(([client, cap]) => [client, checkInt(`clientMaxCap.${client}`, cap, 1)]));
    const headersTimeout = checkMs('headersTimeout', options.headersTimeout ?? 10_000, 1);
    this.#headersTimeoutMs = headersTimeout;
    const secure = options.server ? options.server instanceof HttpsServer : options.tls !== undefined;
    this.#transport = options.transport ?? (secure ? 'auto' : 'websocket');
    if (!['auto', 'tls', 'websocket'].includes(this.#transport)) throw new InvalidOptionError('transport', this.#transport, "'auto', 'tls' or 'websocket'");
    if (this.#transport !== 'websocket' && !secure) throw new InvalidOptionError('transport', this.#transport, "'websocket' without TLS: the raw transport is TLS");

    this.#ownsServer = options.server === undefined;
    const serverOptions = httpTimeouts(headersTimeout);
    const alpn = this.#transport !== 'websocket' && options.tls?.ALPNProtocols === undefined ? { ALPNCallback: selectAlpn } : {};
    this.#server =
      options.server ??
      (options.tls
        ? createHttpsServer({ ...options.tls, ...alpn, ...serverOptions, minVersion: 'TLSv1.3' })
        : createHttpServer(serverOptions));
    this.#headersDeadline = this.#ownsServer ? new HeadersDeadline(this.#server, headersTimeout) : undefined;
    this.#wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      clientTracking: false,
      maxPayload: checkInt('maxPayload', options.maxPayload ?? DEFAULT_MAX_PAYLOAD_BYTES, 1),
    });
    this.#wss.on('headers', this.#confirmExtensions);
    this.#sweeper = new KeepAliveSweeper(this.#settings.keepAliveMs);
    this.#leases = new LeasedConnections(this.#sweeper);
    this.#idle = new IdleConnections(this.#sweeper, this.reportError, (socket) => {
      this.tracker.transition(socket.transportSocket, 'closed');
      this.#forget(socket.id);
    });
    this.#clients = new ClientGroups(
      (client) => this.emit('clientUp', client),
      (client) => this.emit('clientDown', client),
    );
    this.#metrics =
      options.metrics &&
      new PoolMetrics(options.metrics, 'relay', {
        tracker: this.tracker,
        capacity: () => this.#settings.maxCap,
        leasedBytes: () => this.#leases.bytes(),
        clients: () => this.#clients.size,
      });
  }

  /**
   * Starts listening (or attaches to `server`); after a drain, starts taking
   * connections again. Resolves once connections are accepted. Idempotent.
   */
  async ServerManager(): Promise<void> {
    if (this.#state === 'closed') throw new PoolClosedError();
    this.#started ??= this.#start();
    await this.#started;
    // Close() or Drain() may have run while we were waiting to listen.
    if (this.#state === 'idle' && this.#closing === undefined && this.#draining === undefined) this.#state = 'listening';
  }

  async #start(): Promise<void> {
    this.#server.on('upgrade', this.#onUpgrade);
    if (this.#transport !== 'websocket' && this.#server instanceof HttpsServer) this.#unrouteRaw = routeByAlpn(this.#server, this.#onRawConnection);
    if (this.#ownsServer) {
      this.#server.on('request', this.#onPlainRequest);
      this.#server.on('error', this.reportError);
      await listen(this.#server, this.#listen.port, this.#listen.host, this.#listen.backlog);
    }
    const address = this.address();
    this.#trackedAddress = address ? `${address.address}:${address.port}` : '';
    this.logger.info({ address: this.#trackedAddress }, 'pool listening');
  }

  /** The listening address (as `net.Server#address()`), or null before `ServerManager()` resolves. */
  address(): AddressInfo | null {
    const address = this.#server.address();
    return typeof address === 'object' ? address : null;
  }

  /**
   * Takes an idle connection: at once if one is pooled (the longest-idle one),
   * else the moment one arrives (waiters are served first come, first served).
   * With `options.client`, only a connection of that client. Works before
   * `ServerManager()`; the get simply waits.
   *
   * Rejects with `ERR_POOL_TIMEOUT` after `timeoutMs` milliseconds, `ERR_POOL_ABORTED`
   * when `options.signal` aborts, `ERR_POOL_CLOSED` on `Close()`, and
   * `ERR_INVALID_OPTION` for a bad timeout.
   */
  IncomingGet(timeoutMs: number, options: IncomingGetOptions = {}): Promise<IncomingConnection> {
    const get = this.#incomingGet(timeoutMs, options);
    return this.#metrics ? this.#metrics.observeGet(get) : get;
  }

  async #incomingGet(timeoutMs: number, options: IncomingGetOptions): Promise<IncomingConnection> {
    checkMs('timeoutMs', timeoutMs);
    if (this.#state === 'closed') throw new PoolClosedError();
    if (this.#state === 'draining') throw new PoolDrainingError();
    const { client } = options;
    const idle = this.#idle.takeOldest(client);
    if (idle) return this.#leased(idle.conn, idle.client);
    const waiter: IncomingWaiter = {
      client,
      get: new PendingGet(timeoutMs, options, () => {
        this.#incomingWaiters.splice(this.#incomingWaiters.indexOf(waiter), 1);
      }),
    };
    if (!waiter.get.settled) {
      this.#incomingWaiters.push(waiter);
      this.emit('waiting', this.Waiting(client), client);
    }
    return waiter.get.promise;
  }

  /**
   * `IncomingGet`s waiting for a connection (those for `client` when given):
   * users queued for want of an idle one.
   */
  Waiting(client?: string): number {
    if (client === undefined) return this.#incomingWaiters.length;
    let waiting = 0;
    for (const waiter of this.#incomingWaiters) if (waiter.client === client) waiting++;
    return waiting;
  }

  /** True once listening and until `Close()`. */
  Ready(): boolean {
    return this.#state === 'listening';
  }

  /** Idle pooled connections (of `client` when given), ready for `IncomingGet`. */
  Active(client?: string): number {
    return client === undefined ? this.#idle.size : this.#idle.sizeOf(client);
  }

  /** The most idle connections held (`maxCap`). */
  Capacity(): number {
    return this.#settings.maxCap;
  }

  /** Connections handed out whose WebSockets are still open. */
  Leased(): number {
    return this.#leases.size;
  }

  /** Open pooled connections (idle or handed out) on each transport. */
  Transports(): Record<TransportName, number> {
    return { ...this.#openByTransport };
  }

  /** Distinct clients (named token, else IP) with an open connection. */
  Clients(): number {
    return this.#clients.size;
  }

  /**
   * Changes settings of the running pool; what is omitted stays as it is.
   * Upgrades from now on see the new allowlist, tokens and `maxCap` (idle
   * connections over a lowered cap are not closed: they leave as they are
   * used); a new `keepAlive` applies to idle connections from their next
   * sweep. No connection is dropped. Throws `ERR_INVALID_OPTION` for any bad
   * value, and then nothing changes.
   */
  reconfigure(changes: ServerPoolSettings): void {
    const input = { ...this.#settingsInput, ...changes };
    const settings = parseSettings(input);
    this.#settingsInput = input;
    this.#settings = settings;
    this.#sweeper.setPeriod(settings.keepAliveMs);
    this.logger.info({ maxCap: settings.maxCap, keepAlive: settings.keepAliveMs }, 'pool reconfigured');
  }

  /**
   * Checks an upgrade request against the allowlist and tokens, as the pool
   * does for its own: for other upgrade paths on a shared server (the relay's
   * control channel).
   */
  admit(request: PoolRequest): AdmissionDecision {
    return admit(request, this.#settings.admission);
  }

  /**
   * Destroys every connection of `client`, idle and handed out, that has no
   * liveness of its own (raw TLS, or a WebSocket without keep-alive): for
   * when the client is known to be unreachable some other way (a relay's
   * agent whose control channel went silent). Returns how many.
   */
  DestroyUnwatched(client: string): number {
    const idle = this.#idle.destroyUnwatched(client);
    return idle + this.#leases.destroyWhere((conn) => !conn.extensions.keepAlive && this.#clientOfLease.get(conn) === client);
  }

  /** Closes every idle connection (of `client` when given; handed-out ones are untouched); agents refill. */
  Flush(client?: string): Promise<void> {
    return this.#idle.closeAll(1001, client);
  }

  /**
   * Stops accepting, closes every idle connection and every upgrade in flight,
   * rejects waiting gets with `ERR_POOL_CLOSED`, and clears every timer.
   * Connections already handed out stay open. Idempotent.
   */
  Close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  /**
   * Stops taking work and waits for it to finish: upgrades are refused with
   * 503, upgrades in flight are cut, waiting and new gets reject with
   * `ERR_POOL_DRAINING`, idle connections are closed; then it waits up to
   * `timeoutMs` for the connections already handed out to close, and destroys
   * those still open. The listener stays open. `ServerManager()` starts the
   * pool again; `Close()` ends it.
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
    if (this.#state === 'draining') this.#state = 'idle';
    return result;
  }

  #stopWork(reason: Error): void {
    for (const { get } of this.#incomingWaiters.splice(0)) get.reject(reason);
    for (const socket of this.#upgrading) socket.destroy();
  }

  async #close(): Promise<void> {
    this.#state = 'closed';
    this.#stopWork(new PoolClosedError());
    this.#server.removeListener('upgrade', this.#onUpgrade);
    this.#unrouteRaw?.();
    if (this.#ownsServer) {
      this.#server.removeListener('request', this.#onPlainRequest);
      // Not awaiting 'close': it waits for every socket, handed-out ones included.
      if (this.#server.listening) this.#server.close();
      this.#server.closeIdleConnections();
      this.#headersDeadline?.close();
    }
    await this.#idle.closeAll();
    this.#sweeper.close();
    this.#metrics?.detach();
    this.emit('close');
  }

  readonly #onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer): void => {
    this.#headersDeadline?.met(socket);
    socket.on('error', this.reportError);
    if (pathOf(request.url) !== '/') {
      // Another listener on a shared server may own this path.
      if (this.#server.listenerCount('upgrade') === 1) this.#refuse(socket, 404, 'not found');
      return;
    }
    if (this.#transport === 'tls') return this.#refuse(socket, 426, 'this pool takes raw TLS only (ALPN pool/1)');
    const decision = this.#decide(request);
    if ('status' in decision) return this.#refuse(socket, decision.status, decision.reason);
    const { client } = decision;
    const upgraded = this.#upgradeStarted(client);
    this.#upgrading.add(socket);
    this.tracker.transition(socket, 'handshaking', this.#trackedAddress);
    // ws answers a malformed handshake (bad key or version) itself and never calls back.
    const abandoned = (): void => {
      upgraded();
      this.#upgrading.delete(socket);
      this.tracker.transition(socket, 'closed');
      this.#metrics?.handshake('ERR_HANDSHAKE_CLOSED');
    };
    socket.once('close', abandoned);
    this.#wss.handleUpgrade(request, socket, head, (ws) => {
      socket.removeListener('close', abandoned);
      upgraded();
      this.#upgrading.delete(socket);
      this.#admit(ws, request, client);
    });
  };

  /**
   * Whom a new connection belongs to, or why it is refused (before any
   * WebSocket or ID exists): the allowlist and token, `bind`, the pool's
   * state, `maxCap` and `clientMaxCap`. The same on both transports.
   */
  #decide(request: PoolRequest): { client: string } | { status: number; reason: string } {
    const decision = admit(request, this.#settings.admission);
    if ('refused' in decision) return { status: decision.refused, reason: 'unauthorized' };
    const client = this.#bind ? this.#bind(request, decision.client) : decision.client;
    if (typeof client === 'number') return { status: client, reason: client === 503 ? 'not taking connections' : 'unauthorized' };
    if (this.#state !== 'listening') return { status: 503, reason: 'not taking connections' };
    // maxCap bounds the idle pool; a connection that arrives for a waiting get is handed out at once, never idle.
    if (this.#idle.size + this.#upgrading.size >= this.#settings.maxCap + this.#incomingWaiters.length) return { status: 503, reason: 'pool full' };
    const clientCap = this.#clientMaxCap.get(client);
    const upgradingForClient = this.#upgradingByClient.get(client) ?? 0;
    if (clientCap !== undefined && this.#idle.sizeOf(client) + upgradingForClient >= clientCap + this.Waiting(client)) return { status: 503, reason: 'pool full for this client' };
    return { client };
  }

  /** Counts a connection of `client` between its admission and its ID; returns what uncounts it. */
  #upgradeStarted(client: string): () => void {
    this.#upgradingByClient.set(client, (this.#upgradingByClient.get(client) ?? 0) + 1);
    return () => {
      const left = (this.#upgradingByClient.get(client) ?? 1) - 1;
      if (left > 0) this.#upgradingByClient.set(client, left);
      else this.#upgradingByClient.delete(client);
    };
  }

  /**
   * A TLS connection that negotiated `pool/1`: the allowlist first, then its
   * preface (one line within `headersTimeout`), judged as an upgrade request
   * would be; the answer carries its ID, or the refusal and its reason.
   */
  readonly #onRawConnection = (socket: TLSSocket): void => {
    socket.on('error', this.reportError);
    // The HTTP server sets this on its own connections; this one never reaches it. Nagle would hold a tunnel's replies.
    socket.setNoDelay(true);
    if (!this.#settings.admission.allowlist.allows(socket.remoteAddress)) return this.#refuseRaw(socket, 403, 'unauthorized');
    if (this.#state !== 'listening') return this.#refuseRaw(socket, 503, 'not taking connections');
    this.#upgrading.add(socket);
    this.tracker.transition(socket, 'handshaking', this.#trackedAddress);
    readLine(socket, this.#headersTimeoutMs).then(
      (line) => {
        this.#upgrading.delete(socket);
        let headers: Record<string, string>;
        try {
          headers = parsePreface(line);
        } catch (error) {
          this.tracker.transition(socket, 'closed');
          return this.#refuseRaw(socket, 400, (error as Error).message);
        }
        const decision = this.#decide({ headers, socket });
        if ('status' in decision) {
          this.tracker.transition(socket, 'closed');
          return this.#refuseRaw(socket, decision.status, decision.reason);
        }
        const id = this.#newId(decision.client, 'tls');
        socket.write(encodeAnswer({ status: 200, id }));
        this.#pooled(adoptRawConn(socket, id), decision.client);
      },
      () => {
        // Closed, silent or garbled before its preface: nothing was admitted.
        this.#upgrading.delete(socket);
        this.tracker.transition(socket, 'closed');
        this.#metrics?.handshake('ERR_HANDSHAKE_CLOSED');
      },
    );
  };

  #refuseRaw(socket: TLSSocket, status: number, reason: string): void {
    this.#metrics?.upgradeRejected(status);
    this.logger.debug({ status, remoteAddress: socket.remoteAddress }, 'raw connection refused');
    socket.end(encodeAnswer({ status, reason }));
    socket.setTimeout(this.#headersTimeoutMs, () => socket.destroy());
  }

  #refuse(socket: Duplex, status: number, body: string): void {
    this.#metrics?.upgradeRejected(status);
    this.logger.debug({ status, remoteAddress: (socket as { remoteAddress?: string }).remoteAddress }, 'upgrade refused');
    refuseUpgrade(socket, status, body);
  }

  #admit(ws: WebSocket, request: IncomingMessage, client: string): void {
    const socket = rawSocketOf(ws);
    if (this.#state !== 'listening') {
      // Closed or drained while ws completed the handshake.
      this.tracker.transition(socket, 'closed');
      this.#metrics?.handshake(this.#state === 'closed' ? 'ERR_POOL_CLOSED' : 'ERR_POOL_DRAINING');
      ws.terminate();
      return;
    }
    const id = this.#newId(client, 'websocket');
    sendIdFrame(ws, id);
    const extensions = negotiated(request.headers, this.#extensions());
    this.#pooled(new IdleSocket(ws, id, extensions, client), client);
  }

  /** A fresh ID, unique among the open connections, taken for `client` until its connection closes. */
  #newId(client: string, transport: TransportName): string {
    const id = generateId((candidate) => this.#clientById.has(candidate));
    this.#clientById.set(id, { group: this.#clients.join(client), transport });
    this.#openByTransport[transport]++;
    this.#metrics?.handshake('success');
    return id;
  }

  /** A connection that has its ID: handed to the first get waiting for its client, else kept idle. */
  #pooled(connection: IdleSocket | RawPoolConn, client: string): void {
    const socket = connection.transportSocket;
    const { keepAliveMs } = this.#settings;
    if (keepAliveMs > 0) socket.setKeepAlive(true, keepAliveMs);
    const index = this.#incomingWaiters.findIndex((waiter) => !waiter.get.settled && (waiter.client === undefined || waiter.client === client));
    if (index >= 0) {
      const [waiter] = this.#incomingWaiters.splice(index, 1);
      const conn = connection instanceof IdleSocket ? new PoolConn(connection.webSocket, connection.id, { extensions: connection.extensions }) : connection;
      waiter!.get.resolve(this.#leased(conn, client));
    } else {
      this.tracker.transition(socket, 'idle');
      this.#idle.add(connection instanceof IdleSocket ? connection : new RawIdleSocket(connection, client));
    }
    this.emit('connection', connection.id);
  }

  /** A connection leaves the pool: its ID stays taken, and its client present, until its transport closes. */
  #leased(conn: PooledConn, client: string): IncomingConnection {
    const socket = conn.transportSocket;
    this.tracker.transition(socket, 'leased');
    this.#clientOfLease.set(conn, client);
    this.#leases.add(conn, () => {
      this.tracker.transition(socket, 'closed');
      this.#forget(conn.id);
    });
    return { id: conn.id, conn, client };
  }

  /** A connection's transport has closed: its ID is free again. */
  #forget(id: string): void {
    const open = this.#clientById.get(id);
    if (open === undefined) return;
    this.#clientById.delete(id);
    this.#openByTransport[open.transport]--;
    this.#clients.leave(open.group);
  }

  /** The extensions this pool offers its clients now. */
  #extensions(): Extensions {
    return { keepAlive: this.#settings.keepAliveMs > 0, halfClose: this.#halfClose };
  }

  readonly #confirmExtensions = (headers: string[], request: IncomingMessage): void => {
    headers.push(...confirmHeaderLines(negotiated(request.headers, this.#extensions())));
  };

  readonly #onPlainRequest = (request: IncomingMessage, response: ServerResponse): void => {
    this.#headersDeadline?.met(request.socket);
    answerPlainRequest(request, response, ['/']);
  };
}
