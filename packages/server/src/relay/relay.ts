import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createSecureContext } from 'node:tls';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import {
  InvalidOptionError,
  PoolClosedError,
  ServiceListenError,
  type DrainResult,
  type FlowMessage,
  type ConnectMessage,
  type PooledConn,
  splice,
  ErrorCountingEmitter,
  AGENT_ID_HEADER,
  AGENT_NAME_HEADER,
  CONTROL_FEATURES_HEADER,
  CONTROL_MAX_BYTES,
  CONTROL_PATH,
  CONTROL_SILENCE_PERIODS,
  CONTROL_PINGS_PER_PERIOD,
  DEFAULT_SERVICE,
  SERVICES_HEADER,
  checkInt,
  checkMs,
  listen,
  parseControlFeatures,
} from '@pool/shared/internal';
import { selectAlpn } from '../pool/alpn.js';
import { HeadersDeadline, answerPlainRequest, httpTimeouts, pathOf, refuseUpgrade } from '../pool/admission.js';
import { AgentSessions, type AgentIdentity, type AgentState } from './agent-sessions.js';
import { ControlSession } from './control-session.js';
import { PublicService } from './public-service.js';
import type { RelayStats } from './stats.js';
import { UdpService } from './udp-service.js';
import { QueuedUser } from './queued-user.js';
import { normalizeAddress } from '../pool/allowlist.js';
import type { AdmissionLimits } from './admitted-users.js';
import { publishRelayMetrics } from './relay-metrics.js';
import type { AgentConfig, ServiceConfig, UdpOptions } from './relay-config.js';
import { DEFAULT_BACKLOG, ServerPool, type IncomingConnection, type ServerPoolOptions, type ServerPoolSettings } from '../pool/server-pool.js';

const AGENT_ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Default of {@link RelayOptions.maxWaiting}. */
export const DEFAULT_MAX_WAITING = 1_024;
/** The agent of a relay configured without `agents`: whoever the allowlist and `token` admit. */
const DEFAULT_AGENT = 'default';
/**
 * How long an agent's control channel has to answer a ping when another
 * process presents its credentials, in ms: alive, it stays and the newcomer
 * is refused (409); silent, the newcomer takes over. A live agent answers
 * within a round trip; a stalled one is not worth keeping users waiting for.
 */
export const LIVENESS_PROBE_MS = 1_000;

/** Options for {@link Relay}. */
export interface RelayOptions
  extends Pick<ServerPoolOptions, 'tls' | 'transport' | 'maxCap' | 'allow' | 'keepAlive' | 'halfClose' | 'backlog' | 'token' | 'headersTimeout' | 'maxPayload' | 'metrics' | 'logger'> {
  /** Interface for the agents' port (pool and control). Default: all interfaces. */
  host?: string;
  /** Port agents connect to (pool connections on `/`, control on `/control`). Default: 0 (any free port). */
  port?: number;
  /** Without `services`: interface for the one public port. Default: all interfaces. */
  publicHost?: string;
  /** Without `services`: the one public port, served by the agent's service `default`. Default: 0. */
  publicPort?: number;
  /** Without `services`: what users speak on the one public port. Default: `'tcp'`. */
  publicProtocol?: 'tcp' | 'udp';
  /** Without `services`: the flow settings when `publicProtocol` is `'udp'`. */
  udp?: UdpOptions;
  /**
   * The agents, by name, each with its own token (and optional allowlist). A
   * token names its agent: one agent's token never reaches another's control
   * channel, pool or users. Default: one unnamed agent admitted by `allow` and `token`.
   */
  agents?: Readonly<Record<string, AgentConfig>>;
  /**
   * Without `agents`: the SHA-256 fingerprint (`AB:CD:…` or 64 hex digits) of
   * the certificate the one agent presents (mutual TLS). With it, a
   * connection that does not present that key gets nothing, token or not.
   * Needs `tls`. Default: none (the token and allowlist decide).
   */
  agentFingerprint?: string;
  /** Public ports and the agent service behind each. Default: `publicHost:publicPort` to service `default`. */
  services?: readonly ServiceConfig[];
  /**
   * Most users of one TCP service waiting for a pooled connection at once;
   * one more is closed at once (counted in the service's `refused.serviceFull`).
   * Each holds a socket and at most one read of its bytes. Default: 1024.
   */
  maxWaiting?: number;
  /**
   * Most of those from one source address (IPv4-mapped IPv6 counted as
   * IPv4); one more is closed at once (`refused.sourceFull`). Default:
   * `maxWaiting`, so that a NAT's burst of honest users may fill the list;
   * on a full list a user from another address takes the place of the newest
   * waiting user of the address holding the most (`refused.displaced`), so a
   * flood from one address does not lock the others out.
   */
  maxWaitingPerSource?: number;
  /**
   * Most tunnels of one TCP service open at once from one source address
   * (waiting users included), so that one address cannot hold the target's
   * connections; one more is closed at once (`refused.sourceTunnels`).
   * 0: no limit. Default: 0, for a NAT of many honest users would meet any
   * figure that means something to an attacker.
   */
  maxTunnelsPerSource?: number;
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

/**
 * What {@link Relay#reload} can change while the relay runs: agents, services,
 * and the certificate of a relay that has TLS (a renewed one, for new
 * connections; the agents' port and TLS itself take a restart).
 */
export type RelayReload = Pick<RelayOptions, 'agents' | 'services'> & { tls?: { cert: string | Buffer; key: string | Buffer } };

/** Why a user got no tunnel, as counted in the stats. */
type NoTunnel = 'noAgent' | 'noConnection' | 'departed' | 'lostOrders';

/** An order for one pooled connection, but its ID: a TCP user's `connect` or a UDP user's `flow`. */
type Order = Omit<ConnectMessage, 'v' | 'id'> | Omit<FlowMessage, 'v' | 'id'>;

/**
 * The public half of NodePass-style tunnels: a {@link ServerPool} for the
 * agents' pooled connections, a control channel per agent, and a public TCP
 * port per service. Each user on a service's port takes an idle pooled
 * connection of the agent serving that service, tells that agent its ID, and
 * is spliced to it once the agent has claimed it.
 *
 * An agent is known by its token, and optionally by its key (a client
 * certificate whose fingerprint is pinned). On its control channel the relay
 * gives it a session secret, which its pooled connections present: a
 * connection is bound to the live session of the agent that dialled it, and a
 * token holder who is not that agent can neither slip connections in front of
 * users nor touch another agent. A second control channel with the agent's
 * credentials is refused (409, `ERR_AGENT_CONNECTED` at the agent) while the
 * first one answers a ping within {@link LIVENESS_PROBE_MS}; it takes over when
 * the first does not (counted in `controlReplaced`), or at once when the first
 * agent has left (it drains). When the agent instance changes, its idle pooled
 * connections are flushed, because only the agent that dialled them can claim them.
 *
 * With `metrics`, the relay publishes per agent and per service beside the
 * pool's series (`pool_relay_*`, labels `agent` and `service`).
 *
 * Events: `'agent'` (connected: boolean, name); `'tunnel'` ({ error, service })
 * when one ends; `'error'` for failures outside any call (emitted only when listened to).
 */
export class Relay extends ErrorCountingEmitter {
  readonly pool: ServerPool;
  readonly #server: Server;
  readonly #headersDeadline: HeadersDeadline;
  readonly #tls: boolean;
  readonly #serviceByName = new Map<string, PublicService | UdpService>();
  readonly #controlWss: WebSocketServer;
  readonly #agents: AgentSessions;
  #keepAliveMs: number;
  readonly #getTimeoutMs: number;
  readonly #backlog: number;
  readonly #listen: { host: string | undefined; port: number };
  readonly #userSockets = new Set<Socket>();
  /** The reload in progress, if any: the next one starts when it ends. */
  #reloading: Promise<unknown> = Promise.resolve();
  readonly #claimTimeoutMs: number;
  readonly #admissionLimits: AdmissionLimits;
  readonly #stats = { accepted: 0, finished: 0, noConnection: 0, noAgent: 0, departed: 0, claimRetries: 0, lostOrders: 0, controlReplaced: 0, controlRefused: 0, controlConflicts: 0, failed: 0 };
  /** Control refusals already logged at `warn`, by peer and reason. */
  readonly #controlRefusalsLogged = new Set<string>();
  /** Agents a demand message is due to at the end of this turn of the event loop: a burst of users makes one each. */
  readonly #demandDue = new Set<string>();
  #controlPing: NodeJS.Timeout | undefined;
  readonly #unpublishMetrics: (() => void) | undefined;
  #started = false;
  #closing: Promise<void> | undefined;

  constructor(options: RelayOptions = {}) {
    super(options.logger);
    this.#keepAliveMs = checkMs('keepAlive', options.keepAlive ?? 30_000);
    this.#getTimeoutMs = checkMs('getTimeout', options.getTimeout ?? 5_000);
    this.#claimTimeoutMs = checkMs('claimTimeout', options.claimTimeout ?? 2_000, 1);
    this.#backlog = checkInt('backlog', options.backlog ?? DEFAULT_BACKLOG, 1);
    const maxWaiting = checkInt('maxWaiting', options.maxWaiting ?? DEFAULT_MAX_WAITING, 1);
    this.#admissionLimits = {
      maxWaiting,
      maxWaitingPerSource: checkInt('maxWaitingPerSource', options.maxWaitingPerSource ?? maxWaiting, 1),
      maxTunnelsPerSource: checkInt('maxTunnelsPerSource', options.maxTunnelsPerSource ?? 0, 0),
    };
    this.#listen = { host: options.host, port: checkInt('port', options.port ?? 0, 0, 65_535) };
    const services = options.services ?? [
      {
        name: DEFAULT_SERVICE,
        agent: DEFAULT_AGENT,
        publicHost: options.publicHost,
        publicPort: checkInt('publicPort', options.publicPort ?? 0, 0, 65_535),
        ...(options.publicProtocol === 'udp' && { protocol: 'udp' as const, udp: options.udp }),
      },
    ];
    this.#tls = options.tls !== undefined;
    if (options.agents !== undefined && options.agentFingerprint !== undefined) throw new InvalidOptionError('agentFingerprint', options.agentFingerprint, 'none with agents: each agent has its own fingerprint');
    const identities = this.#keysNeedTls(agentIdentities(options.agents, options.agentFingerprint));
    this.#agents = new AgentSessions(identities, options.agents !== undefined);
    const headersTimeout = checkMs('headersTimeout', options.headersTimeout ?? 10_000, 1);
    const serverOptions = httpTimeouts(headersTimeout);
    // Agents may present a certificate (their key, where one is pinned); nobody has to,
    // so npws clients and agents without a key connect as before.
    this.#server = options.tls
      ? createHttpsServer({
          requestCert: true,
          rejectUnauthorized: false,
          ...(options.transport !== 'websocket' && { ALPNCallback: selectAlpn }),
          ...options.tls,
          ...serverOptions,
          minVersion: 'TLSv1.3',
        })
      : createHttpServer(serverOptions);
    this.#headersDeadline = new HeadersDeadline(this.#server, headersTimeout);
    this.pool = new ServerPool({ ...options, tokens: agentTokens(options.agents), server: this.#server, bind: this.#agents.bind });
    this.pool.on('error', this.forwardError);
    this.pool.on('waiting', (_waiting: number, agent: string | undefined) => this.#scheduleDemand(agent));
    this.#controlWss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      clientTracking: false,
      maxPayload: CONTROL_MAX_BYTES,
    });
    for (const service of services) this.#serviceByName.set(service.name, this.#publicService(service));
    this.#unpublishMetrics = options.metrics && publishRelayMetrics(options.metrics, () => this.stats());
  }

  /** The identities, unless one pins a key on a relay without TLS (`ERR_INVALID_OPTION`): an agent proves its key in the TLS handshake. */
  #keysNeedTls(identities: Map<string, AgentIdentity>): Map<string, AgentIdentity> {
    const pinned = [...identities].find(([, identity]) => identity.fingerprint !== undefined);
    if (!this.#tls && pinned) throw new InvalidOptionError(`agents.${pinned[0]}.fingerprint`, '<fingerprint>', 'tls: an agent proves its key in the TLS handshake');
    return identities;
  }

  #publicService(config: ServiceConfig): PublicService | UdpService {
    if (config.protocol === 'udp') return new UdpService(config, this.#openCarrier, this.reportError);
    return new PublicService(config, this.#admissionLimits, this.#onUser, this.reportError);
  }

  /** Listens on the agents' port and every public port. Rejects with the listen error (EADDRINUSE, …). */
  async start(): Promise<void> {
    if (this.#closing) throw new PoolClosedError('the relay is closed');
    this.#server.on('upgrade', this.#onUpgrade);
    this.#server.on('request', this.#onPlainRequest);
    await listen(this.#server, this.#listen.port, this.#listen.host, this.#backlog);
    // After the listen: its own failure is the rejection, reported once by the caller.
    this.#server.on('error', this.reportError);
    for (const service of this.#serviceByName.values()) await this.#listenService(service);
    await this.pool.ServerManager();
    this.#started = true;
    this.#startControlPing();
  }

  #startControlPing(): void {
    clearInterval(this.#controlPing);
    this.#controlPing = this.#keepAliveMs > 0 ? setInterval(this.#pingControls, this.#keepAliveMs / CONTROL_PINGS_PER_PERIOD).unref() : undefined;
  }

  /** The agents' port, and the public port of each service (`publicPort`: the first service's), once started. */
  address(): { port: number; publicPort: number; publicPorts: Record<string, number> } {
    const publicPorts = Object.fromEntries([...this.#serviceByName].filter(([, service]) => service.listening).map(([name, service]) => [name, service.port()]));
    return {
      port: (this.#server.address() as AddressInfo).port,
      publicPort: Object.values(publicPorts)[0] ?? 0,
      publicPorts,
    };
  }

  /**
   * Whether service `name` can serve a user now: it listens, and its agent is
   * on its control channel and serves it. For a load balancer's health check:
   * a relay whose agent is not back yet (after a restart) would only make its
   * users wait. Undefined for a service this relay does not have.
   */
  serviceReady(name: string): boolean | undefined {
    const service = this.#serviceByName.get(name);
    if (service === undefined) return undefined;
    const agent = this.#agents.get(service.config.agent);
    return service.listening && agent?.control !== undefined && agent.services.has(name);
  }

  stats(): RelayStats {
    const agents: RelayStats['agents'] = {};
    for (const agent of this.#agents.all()) {
      agents[agent.name] = {
        connected: agent.control !== undefined,
        idle: this.pool.Active(agent.name),
        waiting: this.pool.Waiting(agent.name),
        services: [...agent.services],
      };
    }
    return {
      ...this.#stats,
      open: this.#userSockets.size,
      waiting: this.pool.Waiting(),
      idle: this.pool.Active(),
      agentConnected: Object.values(agents).some((agent) => agent.connected),
      agents,
      services: Object.fromEntries([...this.#serviceByName].map(([name, service]) => [name, structuredClone(service.stats)])),
    };
  }

  /**
   * Changes the pool's settings while it runs (see `ServerPool#reconfigure`);
   * the allowlist guards the control channels too, and `keepAlive` also sets
   * their ping period. Throws `ERR_INVALID_OPTION`, changing nothing, for a bad value.
   */
  reconfigure(changes: ServerPoolSettings): void {
    this.pool.reconfigure(changes);
    if (changes.keepAlive === undefined) return;
    this.#keepAliveMs = changes.keepAlive;
    if (this.#server.listening && this.#closing === undefined) this.#startControlPing();
  }

  /**
   * Applies a new set of agents and services without dropping open tunnels:
   * tokens rotate for new connections, an agent that is gone loses its
   * control channel and idle connections, a service that is gone stops
   * listening (its open tunnels go on), a new one listens.
   *
   * All or nothing: every new public port is bound before anything changes,
   * and one that cannot be (`ERR_SERVICE_LISTEN`: in use, no permission, …)
   * rejects with the running configuration whole, so a later reload with the
   * same file applies it once the port is free. A service that changes but
   * keeps its port can only be bound once its old listener is closed; one
   * that fails then is left out (the next reload tries again) and resolved
   * in `notListening`.
   */
  reload(next: RelayReload): Promise<{ notListening: ServiceListenError[] }> {
    // One at a time: a second SIGHUP while one is binding would compare against a configuration about to change.
    const run = this.#reloading.then(() => this.#reload(next));
    this.#reloading = run.catch(() => {});
    return run;
  }

  async #reload(next: RelayReload): Promise<{ notListening: ServiceListenError[] }> {
    const identities = this.#keysNeedTls(agentIdentities(next.agents, undefined));
    // Checked before anything changes: a malformed pin leaves the running configuration whole.
    AgentSessions.check(identities);
    if (next.tls !== undefined && !this.#tls) throw new InvalidOptionError('tls', '<certificate>', 'a relay started without TLS: it takes TLS at a restart');
    // A key that does not match its certificate throws here, before anything changes.
    if (next.tls !== undefined) createSecureContext({ cert: next.tls.cert, key: next.tls.key });
    const wanted = new Map((next.services ?? []).map((service) => [service.name, service]));
    const going = [...this.#serviceByName.values()].filter((service) => {
      const config = wanted.get(service.config.name);
      return config === undefined || !sameService(config, service.config);
    });
    const coming = [...wanted.values()].filter((config) => {
      const running = this.#serviceByName.get(config.name);
      return running === undefined || going.includes(running);
    });
    const freed = new Set(going.map((service) => publicAddress(service.config)));
    const added = coming.map((config) => this.#publicService(config));
    // A port the running configuration holds is only free once its service goes: bound after the switch.
    const bindNow = added.filter((service) => !freed.has(publicAddress(service.config)));
    if (this.#started) {
      try {
        for (const service of bindNow) await this.#listenService(service);
      } catch (error) {
        for (const service of added) service.close();
        throw error;
      }
    }
    if (next.tls !== undefined) {
      (this.#server as HttpsServer).setSecureContext({ cert: next.tls.cert, key: next.tls.key });
      this.logger.info({}, 'certificate reloaded: new connections get it');
    }
    this.pool.reconfigure({ tokens: agentTokens(next.agents) ?? {} });
    for (const ended of this.#agents.update(identities, next.agents !== undefined)) {
      const control = ended.control;
      ended.control = undefined;
      control?.ws.close(1008, next.agents?.[ended.name] ? 'the key this agent proved is no longer pinned' : 'this agent is no longer configured');
      void this.pool.Flush(ended.name);
    }
    for (const service of going) {
      service.close();
      this.#serviceByName.delete(service.config.name);
      this.logger.info({ service: service.config.name }, 'service removed');
    }
    const notListening: ServiceListenError[] = [];
    for (const service of added) {
      if (this.#started && !bindNow.includes(service)) {
        try {
          await this.#listenService(service);
        } catch (error) {
          service.close();
          notListening.push(error as ServiceListenError);
          continue;
        }
      }
      this.#serviceByName.set(service.config.name, service);
      this.logger.info({ service: service.config.name, agent: service.config.agent, publicPort: service.config.publicPort }, 'service added');
    }
    for (const agent of this.#agents.all()) if (agent.control) this.#acceptServices(agent, agent.control.services);
    return { notListening };
  }

  /** Binds a service's public port; `ERR_SERVICE_LISTEN`, naming the service and the port, when it cannot. */
  async #listenService(service: PublicService | UdpService): Promise<void> {
    try {
      await service.listen(this.#backlog);
    } catch (error) {
      const { name, publicHost, publicPort, protocol } = service.config;
      throw new ServiceListenError(name, `${protocol ?? 'tcp'} ${publicHost === undefined ? '' : publicHost.includes(':') ? `[${publicHost}]` : publicHost}:${publicPort}`, error as Error);
    }
  }

  /**
   * Stops taking users (the public ports stop listening) and drains the pool:
   * open tunnels get up to `timeoutMs` to finish, and are cut after it. Call
   * `close()` afterwards; a drained relay is not restarted.
   */
  drain(timeoutMs: number): Promise<DrainResult> {
    for (const service of this.#serviceByName.values()) service.close();
    return this.pool.Drain(timeoutMs);
  }

  /** Stops every listener, closes the control channels, the pool and every open tunnel. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    clearInterval(this.#controlPing);
    this.#unpublishMetrics?.();
    for (const service of this.#serviceByName.values()) service.close();
    this.#server.removeListener('upgrade', this.#onUpgrade);
    this.#server.close();
    this.#server.closeIdleConnections();
    this.#headersDeadline.close();
    const controls = [...this.#agents.all()].flatMap((agent) => (agent.control ? [agent.control] : []));
    for (const control of controls) control.ws.close(1001);
    await this.pool.Close();
    for (const socket of this.#userSockets) socket.destroy();
    for (const control of controls) control.ws.terminate();
  }

  readonly #onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer): void => {
    this.#headersDeadline.met(socket);
    const path = pathOf(request.url);
    if (path === '/') return; // the pool's
    socket.on('error', this.reportError);
    if (path !== CONTROL_PATH) return refuseUpgrade(socket, 404, 'not found');
    const decision = this.pool.admit(request);
    const refuse = (status: number, reason: string): void => this.#refuseControl(request, socket, status, reason);
    if ('refused' in decision) return refuse(decision.refused, decision.refused === 401 ? 'wrong or missing token' : 'not in the allowlist');
    const agent = this.#agents.agentOf(request, decision.client);
    if (agent === undefined) return refuse(403, 'not an agent of this relay, or not from where it may connect');
    if (!this.#agents.presentsKey(agent, request)) return refuse(403, `agent ${agent.name} has a pinned key, and this connection did not present it`);
    const name = request.headers[AGENT_NAME_HEADER];
    if (typeof name === 'string' && name !== agent.name) return refuse(401, `this token is not the token of agent ${name}`);
    // An agent names its instance with a UUID; a request without one is not an agent,
    // and must not take the control channel from the one that is.
    const instanceId = request.headers[AGENT_ID_HEADER];
    if (typeof instanceId !== 'string' || !AGENT_ID_PATTERN.test(instanceId)) return refuse(400, 'missing or malformed agent id');
    const features = parseControlFeatures(request.headers[CONTROL_FEATURES_HEADER]);
    if (!features.has('session')) return refuse(400, 'this agent is too old: it does not take a session');
    const services = String(request.headers[SERVICES_HEADER] ?? DEFAULT_SERVICE).split(',').map((service) => service.trim()).filter(Boolean);
    const adopt = (): void =>
      this.#controlWss.handleUpgrade(request, socket, head, (ws) =>
        this.#adoptControl(agent, new ControlSession(ws, instanceId, features, services, this.reportError), request),
      );
    if (agent.control === undefined) adopt();
    else void this.#adoptUnlessAlive(agent, request, socket, adopt);
  };

  /**
   * A control upgrade for an agent that already has a channel: the newcomer
   * is refused (409) while that channel answers a ping, and adopted once it
   * does not. Every newcomer of the meantime waits for the same probe.
   */
  async #adoptUnlessAlive(agent: AgentState, request: IncomingMessage, socket: Duplex, adopt: () => void): Promise<void> {
    for (let current = agent.control; current !== undefined; current = agent.control) {
      const alive = await current.probe(LIVENESS_PROBE_MS);
      if (alive && agent.control === current) {
        this.#stats.controlConflicts++;
        return this.#refuseControl(request, socket, 409, `agent ${agent.name} is connected and answers: another process holds its credentials, and waits`);
      }
      // Silent: it is replaced. Replaced meanwhile: the one now in place is asked in turn.
      if (!alive && agent.control === current) break;
    }
    if (socket.destroyed || this.#closing) return void socket.destroy();
    adopt();
  }

  /**
   * Refuses a control upgrade, counted, and logged at `warn` the first time
   * for a peer and reason, then at `debug` while that agent keeps retrying
   * (a wrong token retries every second).
   */
  #refuseControl(request: IncomingMessage, socket: Duplex, status: number, reason: string): void {
    this.#stats.controlRefused++;
    const key = `${request.socket.remoteAddress} ${status} ${reason}`;
    const repeated = this.#controlRefusalsLogged.has(key);
    if (!repeated) {
      // Bounded: a scan from many addresses must not grow it for ever.
      if (this.#controlRefusalsLogged.size >= 1_000) this.#controlRefusalsLogged.clear();
      this.#controlRefusalsLogged.add(key);
    }
    this.logger[repeated ? 'debug' : 'warn']({ status, remoteAddress: request.socket.remoteAddress }, `control channel refused: ${reason}`);
    refuseUpgrade(socket, status, reason);
  }

  #adoptControl(agent: AgentState, control: ControlSession, request: IncomingMessage): void {
    const { ws, agentId: instanceId } = control;
    const previous = agent.control;
    agent.control = control;
    agent.leftAt = undefined;
    ws.on('error', this.reportError);
    ws.once('close', () => {
      if (agent.control !== control) return;
      agent.control = undefined;
      this.logger.info({ agent: agent.name, instanceId }, 'agent disconnected');
      this.emit('agent', false, agent.name);
    });
    control.onLeave = () => {
      if (agent.control !== control) return;
      // Its successor (a restart beside a draining process) is adopted at once, without a probe.
      agent.control = undefined;
      agent.session = undefined;
      agent.leftAt = performance.now();
      void this.pool.Flush(agent.name);
      this.logger.info({ agent: agent.name, instanceId }, 'agent left: it drains, and its successor may connect');
      this.emit('agent', false, agent.name);
      ws.close(1000, 'left');
    };
    const session = this.#agents.sessionFor(agent, instanceId, request);
    if (previous) {
      this.#stats.controlReplaced++;
      this.logger.warn({ agent: agent.name, instanceId, previousInstanceId: previous.agentId }, 'the control channel of this agent did not answer a ping: a new one takes over');
      previous.ws.terminate();
    }
    // Only the agent instance that dialled them can claim them.
    if (session.renewed) void this.pool.Flush(agent.name);
    control.send({ v: 1, type: 'session', secret: session.text });
    this.#acceptServices(agent, control.services);
    this.logger.info({ agent: agent.name, instanceId, services: [...agent.services], restarted: session.renewed && previous !== undefined }, 'agent connected');
    this.emit('agent', true, agent.name);
    for (const waiter of [...agent.controlWaiters]) waiter();
    if (this.pool.Waiting(agent.name) > 0) this.#scheduleDemand(agent.name);
  }

  /** Which of the services an agent declared it serves; what does not fit the configuration is told to it and logged. */
  #acceptServices(agent: AgentState, declared: readonly string[]): void {
    const accepted = new Set<string>();
    const refuse = (message: string): void => {
      this.logger.warn({ agent: agent.name }, message);
      agent.control?.send({ v: 1, type: 'notice', level: 'error', message });
    };
    for (const name of declared) {
      const service = this.#serviceByName.get(name);
      if (service === undefined) refuse(`unknown service ${name}: the relay has no such service`);
      else if (service.config.agent !== agent.name) refuse(`service ${name} belongs to agent ${service.config.agent}, not to ${agent.name}`);
      else if (service instanceof UdpService && !agent.control?.features.has('flows')) refuse(`service ${name} is UDP, which this agent cannot carry: upgrade it`);
      else accepted.add(name);
    }
    for (const service of this.#serviceByName.values()) {
      if (service.config.agent === agent.name && !accepted.has(service.config.name)) {
        const message = `service ${service.config.name} is this agent's, but it does not serve it: its users are refused`;
        this.logger.warn({ agent: agent.name }, message);
        agent.control?.send({ v: 1, type: 'notice', level: 'warn', message });
      }
    }
    agent.services = accepted;
  }

  /** Tells an agent, once per turn of the event loop, how many of its users wait for a pooled connection. */
  #scheduleDemand(agent: string | undefined): void {
    if (agent === undefined || this.#demandDue.has(agent)) return;
    this.#demandDue.add(agent);
    if (this.#demandDue.size > 1) return;
    setImmediate(() => {
      for (const name of this.#demandDue) {
        const control = this.#agents.get(name)?.control;
        const waiting = this.pool.Waiting(name);
        if (control?.features.has('demand') && waiting > 0 && control.ws.readyState === control.ws.OPEN) {
          control.send({ v: 1, type: 'demand', waiting });
        }
      }
      this.#demandDue.clear();
    });
  }

  /** Twice per keep-alive period: pings each control channel, and ends one that has been silent for too long. */
  readonly #pingControls = (): void => {
    const now = performance.now();
    for (const { name, control } of this.#agents.all()) {
      if (!control) continue;
      if (now - control.lastHeard >= CONTROL_SILENCE_PERIODS * this.#keepAliveMs) {
        control.ws.terminate();
        // A raw connection has no pings of its own: it shares the fate of its agent's control channel.
        this.pool.DestroyUnwatched(name);
      } else {
        control.ws.ping();
      }
    }
  };

  readonly #onUser = (user: Socket, service: PublicService): void => {
    this.#stats.accepted++;
    service.stats.accepted++;
    service.stats.open++;
    this.#userSockets.add(user);
    user.on('error', () => {});
    user.once('close', () => {
      this.#userSockets.delete(user);
      service.stats.open--;
    });
    void this.#tunnel(user, service);
  };

  async #tunnel(user: Socket, service: PublicService): Promise<void> {
    const agent = this.#agents.get(service.config.agent);
    if (agent === undefined || !this.#awaited(agent) || !agent.services.has(service.config.name)) {
      this.#stats.noAgent++;
      user.destroy();
      return;
    }
    const source = normalizeAddress(user.remoteAddress ?? '');
    const queued = new QueuedUser(user);
    let displaced = false;
    const admission = service.users.admit(source, () => {
      // Its place went to a user from an address with fewer waiting: it leaves as a user who closed would.
      displaced = true;
      service.stats.refused.displaced++;
      user.destroy();
    });
    if (typeof admission === 'string') {
      service.stats.refused[admission]++;
      queued.drop();
      return;
    }
    const { proxyProtocol } = service.config;
    const order: Order = {
      type: 'connect',
      service: service.config.name,
      ...(proxyProtocol && {
        proxy: proxyProtocol,
        source: { address: user.remoteAddress ?? '', port: user.remotePort ?? 0 },
        destination: { address: user.localAddress ?? '', port: user.localPort ?? 0 },
      }),
    };
    const outcome = await this.#claimedConnection(agent, order, queued.signal, queued);
    if (typeof outcome === 'string') {
      admission.ended();
      if (!displaced) this.#stats[outcome]++;
      queued.drop();
      return;
    }
    admission.served();
    queued.handOver(outcome.conn);
    const { error } = await splice(user, outcome.conn);
    admission.ended();
    this.#stats.finished++;
    service.stats.finished++;
    if (error) {
      this.#stats.failed++;
      service.stats.failed++;
    }
    this.emit('tunnel', { error, service: service.config.name });
  }

  /**
   * A pooled connection of the service's agent that the agent has claimed,
   * for one user: takes an idle one, orders the agent to claim it, and tries
   * another if the agent does not acknowledge within `claimTimeout`, all
   * within `getTimeout`. Or why not.
   *
   * With an agent that takes them (`early`), the user's first bytes go on the
   * connection right behind the order, so that they reach the target one
   * link traversal after the user sent them. A claim that does not come in
   * time is then cancelled rather than abandoned: only the agent's
   * `cancelled` lets another connection carry the same bytes, so none
   * reaches a target twice (docs/protocol.md, section 4).
   */
  async #claimedConnection(agent: AgentState, order: Order, userLeft: AbortSignal, user?: QueuedUser): Promise<IncomingConnection | NoTunnel> {
    const deadline = performance.now() + this.#getTimeoutMs;
    for (;;) {
      const remaining = deadline - performance.now();
      // Why this user gets nothing: its agent gone, or no connection in time.
      const missing = (): NoTunnel => (userLeft.aborted ? 'departed' : agent.control ? 'noConnection' : 'noAgent');
      if (remaining <= 0) return missing();
      let incoming: IncomingConnection;
      try {
        incoming = await this.pool.IncomingGet(remaining, { signal: userLeft, client: agent.name });
      } catch {
        return missing();
      }
      // Until it is spliced, a connection that breaks only fails its order (on 'transportClose'): its error is ours to swallow.
      incoming.conn.on('error', () => {});
      // The control channel of now, not of before the wait. One that dropped gets until
      // the user's deadline to come back: an agent reconnects within a second, same session.
      const control = await this.#controlOf(agent, deadline - performance.now(), userLeft);
      if (control === undefined) {
        incoming.conn.destroy();
        return missing();
      }
      const claimWindow = Math.max(1, Math.min(this.#claimTimeoutMs, deadline - performance.now()));
      const claim = control.order(incoming.conn, order, claimWindow, userLeft);
      const early = user !== undefined && control.features.has('early');
      if (early) user.sendEarly(incoming.conn);
      if (await claim) return incoming;
      if (early && !userLeft.aborted) {
        const answer = await control.cancel(incoming.conn.id, this.#claimTimeoutMs);
        if (answer === 'claimed' && !incoming.conn.destroyed) return incoming;
        if (answer !== 'cancelled') {
          incoming.conn.destroy();
          return 'lostOrders';
        }
        user.withdrawEarly();
      }
      incoming.conn.destroy();
      if (userLeft.aborted) return 'departed';
      this.#stats.claimRetries++;
    }
  }

  /**
   * A pooled connection, claimed by the service's agent, to carry flows of a
   * UDP service; undefined (counted) when there is none within `getTimeout`
   * or the service gives up on it first.
   */
  readonly #openCarrier = async (service: UdpService, maxDatagram: number, carrierEnded: AbortSignal): Promise<PooledConn | undefined> => {
    const agent = this.#agents.get(service.config.agent);
    if (agent === undefined || !this.#awaited(agent) || !agent.services.has(service.config.name)) {
      this.#stats.noAgent++;
      return undefined;
    }
    const outcome = await this.#claimedConnection(agent, { type: 'flow', service: service.config.name, maxDatagram }, carrierEnded);
    if (typeof outcome === 'string') {
      this.#stats[outcome]++;
      return undefined;
    }
    return outcome.conn;
  };

  /**
   * Whether a new user of `agent` may wait for it: it is connected, or it left
   * (drained) less than `getTimeout` ago, so that the users of a restart wait
   * for its successor instead of being refused.
   */
  #awaited(agent: AgentState): boolean {
    return agent.control !== undefined || (agent.leftAt !== undefined && performance.now() - agent.leftAt < this.#getTimeoutMs);
  }

  /** The agent's control channel; when it has none, waits for one up to `timeoutMs` (or until the user leaves). */
  #controlOf(agent: AgentState, timeoutMs: number, userLeft: AbortSignal): Promise<ControlSession | undefined> {
    if (agent.control || timeoutMs <= 0 || userLeft.aborted) return Promise.resolve(agent.control);
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        agent.controlWaiters.delete(done);
        userLeft.removeEventListener('abort', done);
        resolve(agent.control);
      };
      const timer = setTimeout(done, timeoutMs);
      agent.controlWaiters.add(done);
      userLeft.addEventListener('abort', done);
    });
  }

  readonly #onPlainRequest = (request: IncomingMessage, response: ServerResponse): void => {
    this.#headersDeadline.met(request.socket);
    answerPlainRequest(request, response, ['/', CONTROL_PATH]);
  };
}

/** The pool's named tokens: one per agent, named after it. */
function agentTokens(agents: RelayOptions['agents']): Record<string, string> | undefined {
  return agents && Object.fromEntries(Object.entries(agents).map(([name, agent]) => [name, agent.token]));
}

/** Agent name → what tells it apart beyond its token: its own allowlist, its pinned key. */
function agentIdentities(agents: RelayOptions['agents'], defaultFingerprint: string | undefined): Map<string, AgentIdentity> {
  if (agents === undefined) return new Map([[DEFAULT_AGENT, defaultFingerprint === undefined ? {} : { fingerprint: defaultFingerprint }]]);
  return new Map(Object.entries(agents).map(([name, agent]) => [name, { allow: agent.allow, fingerprint: agent.fingerprint }]));
}

/** Where a service listens; a port of 0 (any free one) never collides. */
function publicAddress(config: ServiceConfig): string {
  return config.publicPort === 0 ? `any:${config.name}` : `${config.protocol ?? 'tcp'}|${config.publicHost ?? ''}|${config.publicPort}`;
}

function sameService(a: ServiceConfig, b: ServiceConfig): boolean {
  return (
    a.agent === b.agent &&
    a.publicHost === b.publicHost &&
    a.publicPort === b.publicPort &&
    a.proxyProtocol === b.proxyProtocol &&
    (a.protocol ?? 'tcp') === (b.protocol ?? 'tcp') &&
    JSON.stringify(a.udp ?? {}) === JSON.stringify(b.udp ?? {})
  );
}
