import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import {
  ErrorCountingEmitter,
  AGENT_ID_HEADER,
  CONTROL_FEATURES_HEADER,
  CONTROL_MAX_BYTES,
  CONTROL_PATH,
  PoolClosedError,
  checkInt,
  checkMs,
  listen,
  parseControlFeatures,
  type DrainResult,
  splice,
} from '@pool/shared';
import { HeadersDeadline, httpTimeouts, pathOf, refuseUpgrade } from './admission.js';
import { ControlSession } from './control-session.js';
import { QueuedUser } from './queued-user.js';
import { DEFAULT_BACKLOG, ServerPool, type IncomingConnection, type ServerPoolOptions, type ServerPoolSettings } from './server-pool.js';

const AGENT_ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Options for {@link Relay}. */
export interface RelayOptions
  extends Pick<ServerPoolOptions, 'tls' | 'maxCap' | 'allow' | 'keepAlive' | 'halfClose' | 'backlog' | 'token' | 'tokens' | 'headersTimeout' | 'maxPayload' | 'metrics' | 'logger'> {
  /** Interface for the agents' port (pool and control). Default: all interfaces. */
  host?: string;
  /** Port agents connect to (pool connections on `/`, control on `/control`). Default: 0 (any free port). */
  port?: number;
  /** Interface for the public port users connect to. Default: all interfaces. */
  publicHost?: string;
  /** Port users connect to; each connection is tunnelled to the agent's target. Default: 0. */
  publicPort?: number;
  /**
   * How long a user's connection waits for a pooled connection that the agent
   * has claimed, retries included, before it is closed, in ms. Default: 5000.
   */
  getTimeout?: number;
  /**
   * How long the agent has to acknowledge a connect order before the relay
   * closes that pooled connection and tries another (within `getTimeout`), in
   * ms. The user's bytes wait at the relay until the claim, so a retry loses
   * none. Agents without the acknowledgement are not timed. Default: 2000.
   */
  claimTimeout?: number;
}

/** Counters since start; cheap to read. */
export interface RelayStats {
  /** User connections accepted on the public port. */
  accepted: number;
  /** Tunnels that ended, cleanly or not. */
  finished: number;
  /** Tunnels open right now. */
  open: number;
  /** User connections closed because no pooled connection came within `getTimeout`. */
  noConnection: number;
  /** User connections closed because no agent was on the control channel, or it left while they waited. */
  noAgent: number;
  /** Users who left while waiting for a pooled connection. */
  departed: number;
  /** Orders the agent did not claim in time (or whose connection closed first), retried with another connection. */
  claimRetries: number;
  /** Users waiting for a pooled connection right now. */
  waiting: number;
  /** Tunnels that ended in an error (reset, target unreachable, …). */
  failed: number;
  /** Idle pooled connections. */
  idle: number;
  /** Whether an agent holds the control channel. */
  agentConnected: boolean;
}

/**
 * The public half of a NodePass-style tunnel: a {@link ServerPool} for the
 * agent's pooled connections, a control channel to the agent, and a public
 * TCP port. Each user connection on the public port takes an idle pooled
 * connection, tells the agent its ID, and is spliced to it.
 *
 * One agent serves a relay at a time: a new control connection replaces the
 * old one (an agent that restarted, or reconnected after a network fault). When
 * the agent instance changes, idle pooled connections are flushed, because only
 * the agent that dialled them can claim them.
 *
 * Events: `'agent'` (connected: boolean); `'tunnel'` ({ error }) when one ends;
 * `'error'` for failures outside any call (emitted only when listened to).
 */
export class Relay extends ErrorCountingEmitter {
  readonly pool: ServerPool;
  readonly #server: Server;
  readonly #headersDeadline: HeadersDeadline;
  readonly #publicServer: NetServer;
  readonly #controlWss: WebSocketServer;
  #keepAliveMs: number;
  readonly #getTimeoutMs: number;
  readonly #backlog: number;
  readonly #listen: { host: string | undefined; port: number; publicHost: string | undefined; publicPort: number };
  readonly #userSockets = new Set<Socket>();
  readonly #claimTimeoutMs: number;
  readonly #stats = { accepted: 0, finished: 0, noConnection: 0, noAgent: 0, departed: 0, claimRetries: 0, failed: 0 };
  #control: ControlSession | undefined;
  /** A demand message is due at the end of this turn of the event loop: a burst of users makes one. */
  #demandDue = false;
  #controlPing: NodeJS.Timeout | undefined;
  #closing: Promise<void> | undefined;

  constructor(options: RelayOptions = {}) {
    super(options.logger);
    this.#keepAliveMs = checkMs('keepAlive', options.keepAlive ?? 30_000);
    this.#getTimeoutMs = checkMs('getTimeout', options.getTimeout ?? 5_000);
    this.#claimTimeoutMs = checkMs('claimTimeout', options.claimTimeout ?? 2_000, 1);
    this.#backlog = checkInt('backlog', options.backlog ?? DEFAULT_BACKLOG, 1);
    this.#listen = {
      host: options.host,
      port: checkInt('port', options.port ?? 0, 0, 65_535),
      publicHost: options.publicHost,
      publicPort: checkInt('publicPort', options.publicPort ?? 0, 0, 65_535),
    };
    const headersTimeout = checkMs('headersTimeout', options.headersTimeout ?? 10_000, 1);
    const serverOptions = httpTimeouts(headersTimeout);
    this.#server = options.tls
      ? createHttpsServer({ ...options.tls, ...serverOptions, minVersion: 'TLSv1.3' })
      : createHttpServer(serverOptions);
    this.#headersDeadline = new HeadersDeadline(this.#server, headersTimeout);
    this.pool = new ServerPool({ ...options, server: this.#server });
    this.pool.on('error', this.reportError);
    this.pool.on('waiting', this.#scheduleDemand);
    this.#controlWss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      clientTracking: false,
      maxPayload: CONTROL_MAX_BYTES,
    });
    // noDelay: tunnels carry request/response traffic; Nagle plus delayed ACKs would add tens of ms.
    // allowHalfOpen: a user's FIN ends one direction only; splice carries it to the target.
    this.#publicServer = createNetServer({ allowHalfOpen: true, noDelay: true }, this.#onUser);
  }

  /** Listens on both ports. Rejects with the listen error (EADDRINUSE, …). */
  async start(): Promise<void> {
    if (this.#closing) throw new PoolClosedError('the relay is closed');
    this.#server.on('upgrade', this.#onUpgrade);
    this.#server.on('request', this.#onPlainRequest);
    this.#server.on('error', this.reportError);
    this.#publicServer.on('error', this.reportError);
    await listen(this.#server, this.#listen.port, this.#listen.host, this.#backlog);
    await listen(this.#publicServer, this.#listen.publicPort, this.#listen.publicHost, this.#backlog);
    await this.pool.ServerManager();
    this.#startControlPing();
  }

  #startControlPing(): void {
    clearInterval(this.#controlPing);
    this.#controlPing = this.#keepAliveMs > 0 ? setInterval(this.#pingControl, this.#keepAliveMs).unref() : undefined;
  }

  /** The agents' port and the public port, once started. */
  address(): { port: number; publicPort: number } {
    return {
      port: (this.#server.address() as AddressInfo).port,
      publicPort: (this.#publicServer.address() as AddressInfo).port,
    };
  }

  stats(): RelayStats {
    return {
      ...this.#stats,
      open: this.#userSockets.size,
      waiting: this.pool.Waiting(),
      idle: this.pool.Active(),
      agentConnected: this.#control !== undefined,
    };
  }

  /**
   * Changes the pool's settings while it runs (see `ServerPool#reconfigure`);
   * the allowlist and tokens guard the control channel too, and `keepAlive`
   * also sets its ping period. Throws `ERR_INVALID_OPTION`, changing nothing, for a bad value.
   */
  reconfigure(changes: ServerPoolSettings): void {
    this.pool.reconfigure(changes);
    if (changes.keepAlive === undefined) return;
    this.#keepAliveMs = changes.keepAlive;
    if (this.#server.listening && this.#closing === undefined) this.#startControlPing();
  }

  /**
   * Stops taking users (the public port stops listening) and drains the pool:
   * open tunnels get up to `timeoutMs` to finish, and are cut after it. Call
   * `close()` afterwards; a drained relay is not restarted.
   */
  drain(timeoutMs: number): Promise<DrainResult> {
    if (this.#publicServer.listening) this.#publicServer.close();
    return this.pool.Drain(timeoutMs);
  }

  /** Stops both listeners, closes the control channel, the pool and every open tunnel. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    clearInterval(this.#controlPing);
    if (this.#publicServer.listening) this.#publicServer.close();
    this.#server.removeListener('upgrade', this.#onUpgrade);
    this.#server.close();
    this.#server.closeIdleConnections();
    this.#headersDeadline.close();
    this.#control?.ws.close(1001);
    await this.pool.Close();
    for (const socket of this.#userSockets) socket.destroy();
    this.#control?.ws.terminate();
  }

  readonly #onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer): void => {
    this.#headersDeadline.met(socket);
    const path = pathOf(request.url);
    if (path === '/') return; // the pool's
    socket.on('error', this.reportError);
    if (path !== CONTROL_PATH) return refuseUpgrade(socket, 404, 'not found');
    const decision = this.pool.admit(request);
    if ('refused' in decision) return refuseUpgrade(socket, decision.refused, 'unauthorized');
    // An agent names itself with a UUID; a request without one is not an agent,
    // and must not take the control channel from the one that is.
    const agentId = request.headers[AGENT_ID_HEADER];
    if (typeof agentId !== 'string' || !AGENT_ID_PATTERN.test(agentId)) return refuseUpgrade(socket, 400, 'missing or malformed agent id');
    const features = parseControlFeatures(request.headers[CONTROL_FEATURES_HEADER]);
    this.#controlWss.handleUpgrade(request, socket, head, (ws) => this.#adoptControl(new ControlSession(ws, agentId, features, this.reportError)));
  };

  #adoptControl(control: ControlSession): void {
    const { ws, agentId } = control;
    const previous = this.#control;
    this.#control = control;
    ws.on('error', this.reportError);
    ws.once('close', () => {
      if (this.#control !== control) return;
      this.#control = undefined;
      this.logger.info({ agentId }, 'agent disconnected');
      this.emit('agent', false);
    });
    if (previous) {
      previous.ws.terminate();
      if (previous.agentId !== agentId) void this.pool.Flush();
    }
    this.logger.info({ agentId, restarted: previous !== undefined && previous.agentId !== agentId }, 'agent connected');
    this.emit('agent', true);
    if (this.pool.Waiting() > 0) this.#scheduleDemand();
  }

  /** Tells the agent, once per turn of the event loop, how many users wait for a pooled connection. */
  readonly #scheduleDemand = (): void => {
    if (this.#demandDue) return;
    this.#demandDue = true;
    setImmediate(() => {
      this.#demandDue = false;
      const control = this.#control;
      const waiting = this.pool.Waiting();
      if (control?.features.has('demand') && waiting > 0 && control.ws.readyState === control.ws.OPEN) {
        control.send({ v: 1, type: 'demand', waiting });
      }
    });
  };

  readonly #pingControl = (): void => {
    const control = this.#control;
    if (!control) return;
    if (!control.alive) {
      control.ws.terminate();
      return;
    }
    control.alive = false;
    control.ws.ping();
  };

  readonly #onUser = (user: Socket): void => {
    this.#stats.accepted++;
    this.#userSockets.add(user);
    user.on('error', () => {});
    user.once('close', () => this.#userSockets.delete(user));
    void this.#tunnel(user);
  };

  async #tunnel(user: Socket): Promise<void> {
    if (!this.#control) {
      this.#stats.noAgent++;
      user.destroy();
      return;
    }
    const queued = new QueuedUser(user);
    const outcome = await this.#claimedConnection(queued.signal);
    if (typeof outcome === 'string') {
      this.#stats[outcome]++;
      queued.drop();
      return;
    }
    queued.handOver(outcome.conn);
    const { error } = await splice(user, outcome.conn);
    this.#stats.finished++;
    if (error) this.#stats.failed++;
    this.emit('tunnel', { error });
  }

  /**
   * A pooled connection the agent has claimed, for one user: takes an idle
   * one, orders the agent to claim it, and tries another if the agent does
   * not acknowledge within `claimTimeout`, all within `getTimeout`. Or why not.
   */
  async #claimedConnection(userLeft: AbortSignal): Promise<IncomingConnection | 'noAgent' | 'noConnection' | 'departed'> {
    const deadline = performance.now() + this.#getTimeoutMs;
    for (;;) {
      const control = this.#control;
      if (!control) return 'noAgent';
      const remaining = deadline - performance.now();
      if (remaining <= 0) return 'noConnection';
      // Stops when the user leaves, and when the agent this user waits on goes.
      const stop = new AbortController();
      const abort = (): void => stop.abort();
      userLeft.addEventListener('abort', abort);
      control.ended.addEventListener('abort', abort);
      try {
        let incoming: IncomingConnection;
        try {
          incoming = await this.pool.IncomingGet(remaining, { signal: stop.signal });
        } catch {
          return userLeft.aborted ? 'departed' : control.ended.aborted ? 'noAgent' : 'noConnection';
        }
        // The control channel of now, not of before the wait: the agent may have reconnected meanwhile.
        const current = this.#control;
        if (current === undefined || current.ended.aborted) {
          incoming.conn.destroy();
          return 'noAgent';
        }
        if (await current.order(incoming.conn, Math.min(this.#claimTimeoutMs, remaining), userLeft)) return incoming;
        incoming.conn.destroy();
        if (userLeft.aborted) return 'departed';
        this.#stats.claimRetries++;
      } finally {
        userLeft.removeEventListener('abort', abort);
        control.ended.removeEventListener('abort', abort);
      }
    }
  }

  readonly #onPlainRequest = (request: IncomingMessage, response: ServerResponse): void => {
    this.#headersDeadline.met(request.socket);
    response.writeHead(426, { 'Content-Type': 'text/plain', 'Content-Length': 0, Connection: 'close' });
    response.end();
  };

}
