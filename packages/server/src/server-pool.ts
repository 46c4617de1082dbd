import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { SecureContextOptions, TlsOptions } from 'node:tls';
import { WebSocketServer, type WebSocket } from 'ws';
import {
  ErrorCountingEmitter,
  DEFAULT_MAX_PAYLOAD_BYTES,
  IdleConnections,
  IdleSocket,
  KEEPALIVE_HEADER,
  KEEPALIVE_VALUE,
  PendingGet,
  PoolClosedError,
  checkInt,
  checkMs,
  PoolConn,
  generateId,
  rawSocketOf,
  sendIdFrame,
  type GetOptions,
} from '@pool/shared';
import { HeadersDeadline, httpTimeouts, listen, pathOf, refusalFor, refuseUpgrade } from './admission.js';
import { parseAllowlist, type Allowlist } from './allowlist.js';

/** Options for {@link ServerPool}. */
export interface ServerPoolOptions {
  /** Interface to listen on. Default: all interfaces (Node's default). Ignored with `server`. */
  host?: string;
  /** Port to listen on; 0 picks a free one (see `address()`). Default: 0. Ignored with `server`. */
  port?: number;
  /**
   * An existing http(s) server to attach to instead of listening ourselves. The
   * pool handles upgrades on path `/`; other paths are left to the server's
   * other `'upgrade'` listeners (answered 404 when there are none).
   */
  server?: Server;
  /**
   * Certificate and key (any `tls.createServer` options) for `wss://`. TLS 1.3 is
   * the minimum. Omitted: plain `ws://`, for development and tests only.
   */
  tls?: SecureContextOptions & Pick<TlsOptions, 'ALPNProtocols' | 'SNICallback'>;
  /** Most idle pooled connections held, upgrades in flight included; past it, 503. Default: 100. */
  maxCap?: number;
  /**
   * Peers allowed to connect: IPs and CIDR ranges, IPv4 and IPv6. Empty or
   * omitted: everyone. Checked on the upgrade request, before any WebSocket exists.
   */
  allow?: string | readonly string[];
  /** npws's single allowed client IP; merged into `allow`. */
  clientIP?: string;
  /**
   * Keep-alive period in ms: TCP keep-alive on every socket and, with peers that
   * negotiated it, a ping per period (a missed pong destroys the connection).
   * Default: 30000. 0 disables pings and TCP keep-alive.
   */
  keepAlive?: number;
  /** Shared secret the client must present in the `x-pool-token` header; else 401. Default: none. */
  token?: string;
  /** Time a client has for its TLS handshake, and again for its request headers, in ms (slowloris defence). Default: 10000. */
  headersTimeout?: number;
  /** Largest WebSocket message accepted, in bytes. Default: 16 MiB. */
  maxPayload?: number;
}

/** What `IncomingGet` resolves with. */
export interface IncomingConnection {
  /** The ID the client read; hand it to the agent so it can `OutgoingGet(id)`. */
  id: string;
  conn: PoolConn;
}

type State = 'idle' | 'listening' | 'closed';

/**
 * The relay's pool: accepts WebSocket upgrades from agents, gives each a fresh
 * CSPRNG ID, keeps them idle, and hands them out with `IncomingGet`.
 *
 * Events: `'connection'` (id) when a connection joins the pool; `'close'` after
 * `Close()`; `'error'` (error) for failures outside any call, emitted only when
 * something listens (they are always counted in `ErrorCount()`).
 */
export class ServerPool extends ErrorCountingEmitter {
  readonly #maxCap: number;
  readonly #keepAliveMs: number;
  readonly #allowlist: Allowlist;
  readonly #token: string | undefined;
  readonly #listen: { host: string | undefined; port: number };
  readonly #ownsServer: boolean;
  readonly #server: Server;
  /** Only on a server we created: an attached server's owner sets its own limits. */
  readonly #headersDeadline: HeadersDeadline | undefined;
  readonly #wss: WebSocketServer;
  readonly #idle: IdleConnections;
  /** Every open connection's ID, idle or handed out: new IDs must avoid all of them. */
  readonly #liveIds = new Set<string>();
  readonly #incomingWaiters: PendingGet<IncomingConnection>[] = [];
  /** Sockets between our accept and ws's callback; counted against `maxCap`, destroyed by `Close()`. */
  readonly #upgrading = new Set<Duplex>();
  #state: State = 'idle';
  #started: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: ServerPoolOptions = {}) {
    super();
    this.#maxCap = checkInt('maxCap', options.maxCap ?? 100, 1);
    this.#keepAliveMs = checkMs('keepAlive', options.keepAlive ?? 30_000);
    const allow = typeof options.allow === 'string' ? [options.allow] : [...(options.allow ?? [])];
    if (options.clientIP) allow.push(options.clientIP);
    this.#allowlist = parseAllowlist(allow);
    this.#token = options.token;
    this.#listen = { host: options.host, port: checkInt('port', options.port ?? 0, 0, 65_535) };
    const headersTimeout = checkMs('headersTimeout', options.headersTimeout ?? 10_000, 1);

    this.#ownsServer = options.server === undefined;
    const serverOptions = httpTimeouts(headersTimeout);
    this.#server =
      options.server ??
      (options.tls
        ? createHttpsServer({ ...options.tls, ...serverOptions, minVersion: 'TLSv1.3' })
        : createHttpServer(serverOptions));
    this.#headersDeadline = this.#ownsServer ? new HeadersDeadline(this.#server, headersTimeout) : undefined;
    this.#wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      clientTracking: false,
      maxPayload: checkInt('maxPayload', options.maxPayload ?? DEFAULT_MAX_PAYLOAD_BYTES, 1),
    });
    this.#wss.on('headers', this.#confirmKeepAlive);
    this.#idle = new IdleConnections(this.#keepAliveMs || 30_000, this.reportError, (id) => this.#liveIds.delete(id));
  }

  /** Starts listening (or attaches to `server`). Resolves once connections are accepted. Idempotent. */
  ServerManager(): Promise<void> {
    this.#started ??= this.#start();
    return this.#started;
  }

  async #start(): Promise<void> {
    if (this.#state === 'closed') throw new PoolClosedError();
    this.#server.on('upgrade', this.#onUpgrade);
    if (this.#ownsServer) {
      this.#server.on('request', this.#onPlainRequest);
      this.#server.on('error', this.reportError);
      await listen(this.#server, this.#listen.port, this.#listen.host);
    }
    // Close() may have run while we were waiting to listen.
    if (this.#closing === undefined) this.#state = 'listening';
  }

  /** The listening address (as `net.Server#address()`), or null before `ServerManager()` resolves. */
  address(): AddressInfo | null {
    const address = this.#server.address();
    return typeof address === 'object' ? address : null;
  }

  /**
   * Takes an idle connection: at once if one is pooled (the longest-idle one),
   * else the moment one arrives (waiters are served first come, first served).
   * Works before `ServerManager()`; the get simply waits.
   *
   * Rejects with `ERR_POOL_TIMEOUT` after `timeoutMs` milliseconds, `ERR_POOL_ABORTED`
   * when `options.signal` aborts, `ERR_POOL_CLOSED` on `Close()`, and
   * `ERR_INVALID_OPTION` for a bad timeout.
   */
  async IncomingGet(timeoutMs: number, options: GetOptions = {}): Promise<IncomingConnection> {
    checkMs('timeoutMs', timeoutMs);
    if (this.#state === 'closed') throw new PoolClosedError();
    const conn = this.#idle.takeOldest();
    if (conn) return this.#leased(conn);
    const get: PendingGet<IncomingConnection> = new PendingGet(timeoutMs, options, () => {
      this.#incomingWaiters.splice(this.#incomingWaiters.indexOf(get), 1);
    });
    if (!get.settled) this.#incomingWaiters.push(get);
    return get.promise;
  }

  /** True once listening and until `Close()`. */
  Ready(): boolean {
    return this.#state === 'listening';
  }

  /** Idle pooled connections, ready for `IncomingGet`. */
  Active(): number {
    return this.#idle.size;
  }

  /** The most idle connections held (`maxCap`). */
  Capacity(): number {
    return this.#maxCap;
  }

  /** Closes every idle connection (handed-out ones are untouched); agents refill. */
  Flush(): Promise<void> {
    return this.#idle.closeAll();
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

  async #close(): Promise<void> {
    this.#state = 'closed';
    for (const get of this.#incomingWaiters.splice(0)) get.reject(new PoolClosedError());
    for (const socket of this.#upgrading) socket.destroy();
    this.#server.removeListener('upgrade', this.#onUpgrade);
    if (this.#ownsServer) {
      this.#server.removeListener('request', this.#onPlainRequest);
      // Not awaiting 'close': it waits for every socket, handed-out ones included.
      if (this.#server.listening) this.#server.close();
      this.#server.closeIdleConnections();
      this.#headersDeadline?.close();
    }
    await this.#idle.closeAll();
    this.#idle.close();
    this.emit('close');
  }

  readonly #onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer): void => {
    this.#headersDeadline?.met(socket);
    socket.on('error', this.reportError);
    if (pathOf(request.url) !== '/') {
      // Another listener on a shared server may own this path.
      if (this.#server.listenerCount('upgrade') === 1) refuseUpgrade(socket, 404, 'not found');
      return;
    }
    const refusal = refusalFor(request, this.#allowlist, this.#token);
    if (refusal) return refuseUpgrade(socket, refusal, 'unauthorized');
    if (this.#state !== 'listening' || this.#idle.size + this.#upgrading.size >= this.#maxCap) {
      return refuseUpgrade(socket, 503, 'pool full');
    }
    this.#upgrading.add(socket);
    // ws answers a malformed handshake (bad key or version) itself and never calls back.
    const forget = (): void => {
      this.#upgrading.delete(socket);
    };
    socket.once('close', forget);
    this.#wss.handleUpgrade(request, socket, head, (ws) => {
      socket.removeListener('close', forget);
      forget();
      this.#admit(ws, request);
    });
  };

  #admit(ws: WebSocket, request: IncomingMessage): void {
    if (this.#state === 'closed') {
      ws.terminate();
      return;
    }
    const id = generateId((candidate) => this.#liveIds.has(candidate));
    sendIdFrame(ws, id);
    this.#liveIds.add(id);
    if (this.#keepAliveMs > 0) rawSocketOf(ws).setKeepAlive(true, this.#keepAliveMs);

    const waiter = this.#incomingWaiters.find((get) => !get.settled);
    if (waiter) {
      this.#incomingWaiters.splice(0, this.#incomingWaiters.indexOf(waiter) + 1);
      waiter.resolve(this.#leased(new PoolConn(ws, id)));
    } else {
      this.#idle.add(new IdleSocket(ws, id), this.#keepAliveMs > 0 && this.#peerNegotiatedKeepAlive(request));
    }
    this.emit('connection', id);
  }

  /** A connection leaves the pool: its ID stays taken until its WebSocket closes. */
  #leased(conn: PoolConn): IncomingConnection {
    conn.once('transportClose', () => this.#liveIds.delete(conn.id));
    return { id: conn.id, conn };
  }


  #peerNegotiatedKeepAlive(request: IncomingMessage): boolean {
    return request.headers[KEEPALIVE_HEADER] === KEEPALIVE_VALUE;
  }

  readonly #confirmKeepAlive = (headers: string[], request: IncomingMessage): void => {
    if (this.#keepAliveMs > 0 && this.#peerNegotiatedKeepAlive(request)) {
      headers.push(`${KEEPALIVE_HEADER}: ${KEEPALIVE_VALUE}`);
    }
  };

  readonly #onPlainRequest = (request: IncomingMessage, response: ServerResponse): void => {
    this.#headersDeadline?.met(request.socket);
    const [status, body] = pathOf(request.url) === '/' ? [426, 'this endpoint speaks WebSocket only'] : [404, 'not found'];
    response.writeHead(status, {
      'Content-Type': 'text/plain',
      'Content-Length': Buffer.byteLength(body),
      Connection: 'close',
      ...(status === 426 && { Upgrade: 'websocket' }),
    });
    response.end(body);
  };

}
