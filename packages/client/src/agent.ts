import { randomUUID } from 'node:crypto';
import type { ClientRequest, ClientRequestArgs, IncomingMessage } from 'node:http';
import { lookup } from 'node:dns/promises';
import { connect, isIPv6, type Socket } from 'node:net';
import WebSocket from 'ws';
import {
  AgentConnectedError,
  UnknownServiceError,
  InvalidOptionError,
  TargetUnreachableError,
  splice,
  type DrainResult,
  type PooledConn,
  ErrorCountingEmitter,
  AGENT_ID_HEADER,
  AGENT_NAME_HEADER,
  DEFAULT_SERVICE,
  NAME_PATTERN,
  SERVICES_HEADER,
  SESSION_HEADER,
  type ConnectMessage,
  type FlowMessage,
  CONTROL_FEATURES,
  CONTROL_FEATURES_HEADER,
  CONTROL_MAX_BYTES,
  CONTROL_PATH,
  CONTROL_SILENCE_PERIODS,
  CONTROL_PINGS_PER_PERIOD,
  ControlMessageError,
  TOKEN_HEADER,
  checkMs,
  readUpgradeRejection,
  decodeControl,
  encodeControl,
} from '@pool/shared/internal';
import { ClientPool, type ClientPoolOptions, type ClientPoolSettings } from './client-pool.js';
import { proxyHeader } from './proxy-header.js';
import { resolveRelayTarget } from './server-address.js';
import { certificateHint, pinCertificate } from './certificate-pin.js';
import { publishAgentMetrics } from './agent-metrics.js';
import type { AgentStats } from './agent-stats.js';
import { FlowCarrier, type FlowCounters, type ResolvedTarget } from './flow-carrier.js';

/** Options for {@link Agent}: those of its {@link ClientPool}, plus where tunnels lead. */
export interface AgentOptions extends ClientPoolOptions {
  /**
   * The local service each tunnel connects to, `host:port` (`[v6]:port` for
   * IPv6): the relay's service `default`. Give this or `services`.
   */
  target?: string;
  /**
   * The services this agent serves, by name, each to its local `host:port`:
   * the relay's configuration says which public port each name has. Default: none.
   */
  services?: Readonly<Record<string, string>>;
  /**
   * This agent's name, as the relay's configuration knows it. The relay
   * identifies an agent by its token; a name that is not its token's is
   * refused, which catches a token given to the wrong agent. Default: none.
   */
  name?: string;
  /** How long to wait for a pooled connection the relay named, in ms. Default: 5000. */
  claimTimeout?: number;
  /** How long to wait for the target to accept a connection, in ms. Default: 5000. */
  targetTimeout?: number;
}

/** Splits `host:port` / `[v6]:port`; throws `InvalidOptionError` otherwise. */
export function parseHostPort(name: string, value: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([A-Za-z0-9._-]+)):(\d{1,5})$/.exec(value);
  const port = Number(match?.[3]);
  if (!match || port < 1 || port > 65_535 || (match[1] !== undefined && !isIPv6(match[1]))) throw new InvalidOptionError(name, value, 'host:port');
  return { host: (match[1] ?? match[2])!, port };
}

const CONTROL_RETRY_MIN_MS = 200;
/**
 * Longest pause between control reconnects, in ms: a restarted relay is
 * serving users within about a second. A refused TCP connect per second costs
 * the relay nothing worth saving.
 */
const CONTROL_RETRY_MAX_MS = 1_000;
/**
 * Pause before asking again while the relay says this agent is connected
 * elsewhere (409), in ms, jittered ±25%: the other process may run for good
 * (two agents with one token), so asking often would only fill both logs.
 */
const CONTROL_CONFLICT_RETRY_MS = 2_000;

/**
 * The private half of a NodePass-style tunnel: a {@link ClientPool} of
 * connections to the relay, and a control channel on which the relay names
 * the pooled connection to use for each user. Each one is claimed with
 * `OutgoingGet`, connected to `target`, and spliced to it.
 *
 * The control channel reconnects by itself with jittered exponential back-off
 * (200 ms up to 1 s) and is kept alive with pings. The agent acknowledges
 * each claim on it (the relay retries an order that is not acknowledged in
 * time), and dials at once for the users the relay says are waiting.
 *
 * Tunnels carry half-close: a user's or the target's end-of-stream ends that
 * direction only, when the relay negotiated it (ours does; see `halfClose`).
 *
 * Events: `'control'` (connected: boolean); `'tunnel'` ({ error }) when one
 * ends; `'notice'` ({ level, message }) when the relay reports a problem with
 * this agent's configuration (also logged); `'error'` for failures outside any
 * call (emitted only when listened to).
 */
export class Agent extends ErrorCountingEmitter {
  readonly pool: ClientPool;
  /** This process's identity towards the relay: a restart is a new agent, a reconnect is not. */
  readonly agentId = randomUUID();
  readonly #targetByService: ReadonlyMap<string, { host: string; port: number }>;
  #session: string | undefined;
  /** The code of the last control failure, while they repeat. */
  #lastControlFailure: string | undefined;
  readonly #controlUrl: string;
  readonly #controlOptions: WebSocket.ClientOptions | ClientRequestArgs;
  readonly #claimTimeoutMs: number;
  readonly #targetTimeoutMs: number;
  readonly #keepAliveMs: number;

  readonly #tunnelById = new Map<string, PooledConn>();
  /** Claims in progress, by connection ID: a `cancel` of the relay's stops one before it succeeds. */
  readonly #claimsById = new Map<string, AbortController>();
  readonly #stats = { orders: 0, finished: 0, claimFailures: 0, targetFailures: 0, demands: 0, unknownServices: 0, controlConnects: 0 };
  readonly #flowCounters: FlowCounters = { flowsOpen: 0, flowFailures: 0, datagramsDropped: { oversized: 0, backpressure: 0 } };
  readonly #unpublishMetrics: (() => void) | undefined;
  #control: WebSocket | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #pingTimer: NodeJS.Timeout | undefined;
  #retryDelayMs = CONTROL_RETRY_MIN_MS;
  #controlState: AgentStats['control'] = 'down';
  #closed = false;

  constructor(options: AgentOptions) {
    super(options.logger);
    const services = Object.entries(options.services ?? {});
    if (options.target !== undefined) services.push([DEFAULT_SERVICE, options.target]);
    if (services.length === 0) throw new InvalidOptionError('target', undefined, 'a target, or at least one service');
    for (const [name] of services) if (!NAME_PATTERN.test(name)) throw new InvalidOptionError('service name', name, 'letters, digits, . _ - (up to 63)');
    if (options.name !== undefined && !NAME_PATTERN.test(options.name)) throw new InvalidOptionError('name', options.name, 'letters, digits, . _ - (up to 63)');
    this.#targetByService = new Map(services.map(([name, target]) => [name, parseHostPort(`service ${name}`, target)]));
    this.#claimTimeoutMs = checkMs('claimTimeout', options.claimTimeout ?? 5_000);
    this.#targetTimeoutMs = checkMs('targetTimeout', options.targetTimeout ?? 5_000, 1);
    this.pool = new ClientPool(options);
    this.pool.on('error', this.forwardError);
    this.#unpublishMetrics = options.metrics && publishAgentMetrics(options.metrics, () => this.stats());
    this.#keepAliveMs = options.keepAlive ?? 30_000;
    const relay = resolveRelayTarget(options.server, options.tls, options.identity);
    this.#controlUrl = new URL(CONTROL_PATH, relay.url).href;
    const headers: Record<string, string> = {
      [AGENT_ID_HEADER]: this.agentId,
      [CONTROL_FEATURES_HEADER]: CONTROL_FEATURES.join(','),
      [SERVICES_HEADER]: [...this.#targetByService.keys()].join(','),
    };
    if (options.token !== undefined) headers[TOKEN_HEADER] = options.token;
    if (options.name !== undefined) headers[AGENT_NAME_HEADER] = options.name;
    this.#controlOptions = {
      perMessageDeflate: false,
      maxPayload: CONTROL_MAX_BYTES,
      headers,
      handshakeTimeout: 10_000,
      ...relay.tls,
      ...(relay.fingerprint !== undefined && { createConnection: pinCertificate(relay.fingerprint) }),
    };
  }

  /**
   * Starts the control channel, and the pool once the relay has given this
   * agent its session (pooled connections must present it); returns at once.
   */
  start(): void {
    if (this.#closed || this.#control) return;
    this.#connectControl();
  }

  stats(): AgentStats {
    const { dials, demandDials, rounds, topUps } = this.pool.stats();
    return {
      ...this.#stats,
      control: this.#controlState,
      transport: this.pool.Transport() ?? 'unknown',
      flowsOpen: this.#flowCounters.flowsOpen,
      flowFailures: this.#flowCounters.flowFailures,
      datagramsDropped: { ...this.#flowCounters.datagramsDropped },
      dials,
      demandDials,
      rounds,
      topUps,
      open: this.#tunnelById.size,
      idle: this.pool.Active(),
      capacity: this.pool.Capacity(),
      interval: this.pool.Interval(),
    };
  }

  /** Changes the pool's settings while it runs; see `ClientPool#reconfigure`. */
  reconfigure(changes: ClientPoolSettings): void {
    this.pool.reconfigure(changes);
  }

  /**
   * Stops taking new tunnels: gives the relay its session up (`leave`, so that
   * a successor with the same credentials is served at once; the control
   * channel is not reconnected), stops the pool's dials, and gives open
   * tunnels up to `timeoutMs` to finish, then cuts them. Call `close()` afterwards.
   */
  drain(timeoutMs: number): Promise<DrainResult> {
    this.#controlState = 'left';
    clearTimeout(this.#retryTimer);
    const control = this.#control;
    if (control?.readyState === WebSocket.OPEN) control.send(encodeControl({ v: 1, type: 'leave' }));
    else control?.terminate();
    return this.pool.Drain(timeoutMs);
  }

  /** Closes the control channel, the pool and every open tunnel; clears every timer. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    clearInterval(this.#pingTimer);
    this.#unpublishMetrics?.();
    this.#control?.terminate();
    for (const conn of this.#tunnelById.values()) conn.destroy();
    await this.pool.Close();
  }

  #connectControl(): void {
    const ws = new WebSocket(this.#controlUrl, this.#controlOptions);
    this.#control = ws;
    let lastHeard = performance.now();
    const heard = (): void => {
      lastHeard = performance.now();
    };
    let opened = false;
    let refused = false;
    let conflict = false;
    ws.on('error', (error: Error) => {
      // After a refusal, ws only adds that the handshake was cut: the refusal said it all.
      if (!refused) this.#controlFailed(error);
    });
    ws.on('unexpected-response', (_request: ClientRequest, response: IncomingMessage) => {
      refused = true;
      readUpgradeRejection(response, (rejection) => {
        conflict = rejection instanceof AgentConnectedError;
        if (conflict && this.#controlState !== 'left') this.#controlState = 'standby';
        this.#controlFailed(rejection);
        ws.terminate();
      });
    });
    ws.on('open', () => {
      opened = true;
      heard();
      this.#lastControlFailure = undefined;
      this.#stats.controlConnects++;
      this.#retryDelayMs = CONTROL_RETRY_MIN_MS;
      if (this.#controlState !== 'left') this.#controlState = 'up';
      this.logger.info({ relay: this.#controlUrl }, 'control channel connected');
      this.emit('control', true);
      if (this.#keepAliveMs > 0) {
        // As the relay does: two periods of silence end the channel, and it reconnects.
        this.#pingTimer = setInterval(() => {
          if (performance.now() - lastHeard < CONTROL_SILENCE_PERIODS * this.#keepAliveMs) {
            ws.ping();
            return;
          }
          ws.terminate();
          // A raw connection has no pings of its own: it shares the fate of the control channel.
          this.pool.DestroyUnwatched();
        }, this.#keepAliveMs / CONTROL_PINGS_PER_PERIOD);
      }
    });
    ws.on('pong', heard);
    ws.on('ping', heard);
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      heard();
      try {
        if (isBinary) throw new ControlMessageError('binary, expected JSON text');
        const message = decodeControl(data.toString());
        if (message.type === 'connect') {
          void this.#serve(message);
        } else if (message.type === 'flow') {
          void this.#serveFlows(message);
        } else if (message.type === 'cancel') {
          this.#answerCancel(message.id);
        } else if (message.type === 'demand') {
          this.#stats.demands++;
          this.pool.dialNow(message.waiting);
        } else if (message.type === 'session') {
          this.#startSession(message.secret);
        } else if (message.type === 'notice') {
          this.logger[message.level]({ relay: this.#controlUrl }, `relay: ${message.message}`);
          this.emit('notice', message);
        } else {
          throw new ControlMessageError(`${message.type} is not for agents`);
        }
      } catch (error) {
        this.reportError(error as Error);
      }
    });
    ws.once('close', () => {
      clearInterval(this.#pingTimer);
      if (this.#control === ws) this.#control = undefined;
      if (opened) this.emit('control', false);
      if (this.#closed || this.#controlState === 'left') return;
      if (!conflict) this.#controlState = 'down';
      // Full jitter: a fleet of agents that lost one relay does not return in lockstep.
      const delay = conflict
        ? Math.round(CONTROL_CONFLICT_RETRY_MS * (0.75 + Math.random() / 2))
        : Math.round(this.#retryDelayMs * (0.5 + Math.random() / 2));
      this.#retryDelayMs = Math.min(CONTROL_RETRY_MAX_MS, this.#retryDelayMs * 2);
      this.#retryTimer = setTimeout(() => this.#connectControl(), delay);
    });
  }

  /**
   * A control connection failed. The same failure again and again (a wrong
   * token, a relay that is down) is logged once at `error`, then at `debug`
   * until the channel opens, while the agent keeps retrying; each is counted.
   */
  #controlFailed(error: Error): void {
    const code = (error as { code?: string }).code ?? error.message;
    const repeated = this.#lastControlFailure === code;
    this.#lastControlFailure = code;
    this.forwardError(error);
    if (repeated) this.logger.debug({ err: error, relay: this.#controlUrl }, 'control channel still failing');
    else if (error instanceof AgentConnectedError) this.logger.warn({ err: error, relay: this.#controlUrl }, `standby: ${error.message}; asking again every few seconds`);
    else this.logger.error({ err: error, relay: this.#controlUrl }, `control channel failed: ${error.message}${certificateHint(code)}; retrying every second at most`);
  }

  /**
   * The relay's session for this control channel: pooled connections present
   * it from now on. A new one (the relay restarted, or took us for a new
   * agent) makes the idle connections useless, so they go and the pool refills.
   */
  #startSession(secret: string): void {
    const previous = this.#session;
    this.#session = secret;
    this.pool.reconfigure({ headers: { [SESSION_HEADER]: secret } });
    if (previous === undefined) this.pool.ClientManager();
    else if (previous !== secret) void this.pool.Flush();
  }

  /**
   * The relay gave up waiting for the claim of `id`. A claim still waiting for
   * its connection stops, and the relay may carry the user's bytes elsewhere
   * (`cancelled`: none reached a target here); a connection already claimed is
   * the user's (`claimed` again). One this agent does not know was never
   * claimed, or its tunnel is over and the relay heard `claimed` before.
   */
  #answerCancel(id: string): void {
    const claiming = this.#claimsById.get(id);
    claiming?.abort();
    const answer = this.#tunnelById.has(id) ? 'claimed' : 'cancelled';
    const control = this.#control;
    if (control?.readyState === WebSocket.OPEN) control.send(encodeControl({ v: 1, type: answer, id }));
  }

  /**
   * Claims the pooled connection an order names, for a service this agent
   * serves, and acknowledges the claim; undefined (counted, reported) when it
   * cannot. The connection is then a tunnel until it closes.
   */
  async #claim(order: ConnectMessage | FlowMessage): Promise<{ conn: PooledConn; target: { host: string; port: number } } | undefined> {
    const { id } = order;
    this.#stats.orders++;
    const service = order.service ?? DEFAULT_SERVICE;
    const target = this.#targetByService.get(service);
    let conn: PooledConn;
    const claiming = new AbortController();
    this.#claimsById.set(id, claiming);
    try {
      conn = await this.pool.OutgoingGet(id, this.#claimTimeoutMs, { signal: claiming.signal });
    } catch (error) {
      // Cancelled by the relay: it has been told, and carries the user elsewhere.
      if (claiming.signal.aborted) return undefined;
      this.#stats.claimFailures++;
      this.reportError(error as Error);
      return undefined;
    } finally {
      this.#claimsById.delete(id);
    }
    conn.on('error', () => {});
    if (target === undefined) {
      this.#stats.unknownServices++;
      this.reportError(new UnknownServiceError(service));
      conn.refuseTarget('unknown service');
      return undefined;
    }
    this.#tunnelById.set(id, conn);
    conn.once('close', () => this.#tunnelById.delete(id));
    // The relay holds its user's bytes until this arrives, and cancels the order without it.
    const control = this.#control;
    if (control?.readyState === WebSocket.OPEN) control.send(encodeControl({ v: 1, type: 'claimed', id }));
    return { conn, target };
  }

  async #serve(order: ConnectMessage): Promise<void> {
    const claimed = await this.#claim(order);
    if (claimed === undefined) return;
    const { conn, target } = claimed;
    try {
      const socket = await this.#dialTarget(target);
      // The target learns the user's address before any byte of the user's.
      if (order.proxy && order.source && order.destination) socket.write(proxyHeader(order.proxy, order.source, order.destination));
      const { error } = await splice(conn, socket);
      this.emit('tunnel', { error });
    } catch (error) {
      this.#stats.targetFailures++;
      this.reportError(error as Error);
      // A distinct close code lets the relay drop its user at once.
      conn.refuseTarget('target unreachable');
      this.emit('tunnel', { error });
    } finally {
      this.#stats.finished++;
    }
  }

  /**
   * A carrier of UDP flows: the relay sends many flows of the service on this
   * one connection, each to its own socket here (see {@link FlowCarrier}).
   * The target's address is looked up once for the carrier.
   */
  async #serveFlows(order: FlowMessage): Promise<void> {
    const claimed = await this.#claim(order);
    if (claimed === undefined) return;
    const { conn, target } = claimed;
    let resolved: ResolvedTarget;
    try {
      const { address, family } = await lookup(target.host);
      resolved = { address, family: family === 6 ? 6 : 4, port: target.port };
    } catch (error) {
      this.#stats.targetFailures++;
      this.reportError(new TargetUnreachableError(`${target.host}:${target.port}`, `cannot be resolved (${(error as { code?: string }).code ?? (error as Error).message})`, error as Error));
      conn.refuseTarget('target unreachable');
      this.#stats.finished++;
      return;
    }
    const targetName = `${target.host}:${target.port}`;
    const carrier = new FlowCarrier(conn, resolved, order.maxDatagram, this.#flowCounters, (error) =>
      this.logger.debug({ err: error, target: targetName }, 'UDP target error'),
    );
    await carrier.run(this.reportError);
    this.#stats.finished++;
  }

  #dialTarget(address: { host: string; port: number }): Promise<Socket> {
    return new Promise((resolve, reject) => {
      // noDelay: tunnels carry request/response traffic; Nagle plus delayed ACKs would add tens of ms.
      // allowHalfOpen: the target's FIN ends one direction only; splice carries it to the user.
      const socket = connect({ ...address, timeout: this.#targetTimeoutMs, noDelay: true, allowHalfOpen: true });
      const target = `${address.host}:${address.port}`;
      const fail = (error: TargetUnreachableError): void => {
        socket.destroy();
        reject(error);
      };
      const onError = (error: Error): void =>
        fail(new TargetUnreachableError(target, `refused the connection (${(error as { code?: string }).code ?? error.message})`, error));
      const onTimeout = (): void => fail(new TargetUnreachableError(target, `did not accept within ${this.#targetTimeoutMs} ms`));
      socket.once('error', onError);
      socket.once('timeout', onTimeout);
      socket.once('connect', () => {
        // From here splice owns the socket and reports its errors. It takes over a microtask
        // later, and an error emitted on the next tick must still find a listener.
        socket.removeListener('error', onError);
        socket.removeListener('timeout', onTimeout);
        socket.on('error', () => {});
        socket.setTimeout(0);
        resolve(socket);
      });
    });
  }
}
