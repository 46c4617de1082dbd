import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { FlowWriter, MAX_FLOW_NUMBER, readDatagrams, type Endpoint, type PooledConn, type ReadFrame } from '@pool/shared/internal';
import type { ServiceStats, UdpDropReason, UdpStats } from './stats.js';
import type { ServiceConfig, UdpOptions } from './relay-config.js';

const UDP_DEFAULTS = { idleTimeout: 60_000, maxFlows: 1_024, maxDatagram: 65_507, replyRatio: 10 } as const;
/** What a flow may send its user before it has heard anything back beyond its first datagram: one reply or a few. */
export const REPLY_ALLOWANCE_BYTES = 4 * 1024;

/** Gets a pooled connection the agent has claimed as a carrier of the service's flows, or undefined (counted by the caller's stats). */
export type FlowOpener = (service: UdpService, maxDatagram: number, signal: AbortSignal) => Promise<PooledConn | undefined>;

/**
 * What a flow keeps while its carrier is being claimed: at most 64
 * datagrams and 64 KiB, so that many new sources sending large datagrams at
 * once hold at most `maxFlows` × 64 KiB. More are dropped.
 */
const OPENING_QUEUE_DATAGRAMS = 64;
const OPENING_QUEUE_BYTES = 64 * 1024;
/** Socket buffers asked of the kernel for the public port (it caps them at its own maximum). */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;
/**
 * Flows a carrier takes before the service opens another, up to
 * {@link MAX_CARRIERS}: a spray of new sources costs table entries, not
 * dials, and one slow connection holds up a fraction of the flows.
 */
const FLOWS_PER_CARRIER = 64;
const MAX_CARRIERS = 4;

/** A pooled connection that carries flows of one service, each under its own number. */
class Carrier {
  conn: PooledConn | undefined;
  writer: FlowWriter | undefined;
  readonly flowByNumber = new Map<number, UdpFlow>();
  /** Aborts when the carrier ends, so that a claim still running gives up. */
  readonly ending = new AbortController();
  ended = false;
  /** Runs while it carries no flow: an unused carrier goes back after the idle timeout. */
  unused: NodeJS.Timeout | undefined;
}

/** One user address and port on a UDP service. */
class UdpFlow {
  readonly source: string;
  readonly user: Endpoint;
  readonly number: number;
  readonly carrier: Carrier;
  /** Bytes it may still send its user (the reflection budget); Infinity when the service has none. */
  replyBudget: number;
  /** Datagrams that arrived while the carrier was being claimed. */
  queued: Buffer[] = [];
  queuedBytes = 0;
  ended = false;
  readonly idle: NodeJS.Timeout;

  constructor(source: string, user: Endpoint, number: number, carrier: Carrier, replyBudget: number, idleTimeoutMs: number, onIdle: () => void) {
    this.source = source;
    this.user = user;
    this.number = number;
    this.carrier = carrier;
    this.replyBudget = replyBudget;
    this.idle = setTimeout(onIdle, idleTimeoutMs).unref();
  }
}

/**
 * A UDP service's public port. Each user address and port is a flow; the
 * flows ride a few pooled connections (carriers) that the agent claims for
 * the service (a `flow` order), each datagram framed with its length and its
 * flow's number. A new user costs a table entry, not a dial.
 */
export class UdpService {
  readonly config: ServiceConfig;
  readonly stats: ServiceStats & { udp: UdpStats };
  readonly #options: Required<UdpOptions>;
  readonly #socket: UdpSocket;
  /** Flows by `address|port`, least recently active first (a flow moves to the end on each datagram). */
  readonly #flowBySource = new Map<string, UdpFlow>();
  readonly #flowCountByAddress = new Map<string, number>();
  readonly #carriers = new Set<Carrier>();
  #lastFlowNumber = 0;
  readonly #openCarrier: FlowOpener;
  readonly #onError: (error: Error) => void;
  #listening = false;
  #closed = false;

  constructor(config: ServiceConfig, openCarrier: FlowOpener, onError: (error: Error) => void) {
    this.config = config;
    const maxFlows = config.udp?.maxFlows ?? UDP_DEFAULTS.maxFlows;
    this.#options = { ...UDP_DEFAULTS, maxFlowsPerSource: Math.max(1, Math.floor(maxFlows / 16)), ...config.udp };
    this.#openCarrier = openCarrier;
    this.#onError = onError;
    this.stats = {
      agent: config.agent,
      accepted: 0,
      finished: 0,
      failed: 0,
      open: 0,
      udp: {
        datagrams: { fromUsers: 0, toUsers: 0 },
        bytes: { fromUsers: 0, toUsers: 0 },
        dropped: { oversized: 0, queueFull: 0, backpressure: 0, noConnection: 0, sendFailed: 0, replyBudget: 0 },
        flowsEvicted: 0,
        carriers: 0,
      },
    };
    this.#socket = createSocket({ type: config.publicHost !== undefined && isIPv6(config.publicHost) ? 'udp6' : 'udp4' });
    this.#socket.on('message', this.#onDatagram);
  }

  get listening(): boolean {
    return this.#listening;
  }

  /** Binds the public port (IPv4 on all interfaces unless `publicHost` says otherwise). */
  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#socket.once('error', reject);
      this.#socket.bind({ port: this.config.publicPort, address: this.config.publicHost }, () => {
        this.#socket.removeListener('error', reject);
        this.#socket.on('error', this.#onError);
        this.#listening = true;
        for (const size of ['setRecvBufferSize', 'setSendBufferSize'] as const) {
          try {
            this.#socket[size](SOCKET_BUFFER_BYTES);
          } catch {
            // The kernel's own default is what it is; datagrams still flow.
          }
        }
        resolve();
      });
    });
  }

  port(): number {
    return this.#socket.address().port;
  }

  /** Stops listening and ends every flow and carrier: on UDP the public port is the users' only connection. */
  close(): void {
    this.#listening = false;
    if (!this.#closed) {
      // Also a socket that never bound (its bind failed, or start() never ran): it holds a handle all the same.
      this.#closed = true;
      this.#socket.close();
    }
    for (const carrier of this.#carriers) this.#endCarrier(carrier);
  }

  #drop(reason: UdpDropReason): void {
    this.stats.udp.dropped[reason]++;
  }

  readonly #onDatagram = (datagram: Buffer, from: RemoteInfo): void => {
    const { udp } = this.stats;
    udp.datagrams.fromUsers++;
    udp.bytes.fromUsers += datagram.length;
    if (datagram.length > this.#options.maxDatagram) return this.#drop('oversized');
    const source = `${from.address}|${from.port}`;
    let flow = this.#flowBySource.get(source);
    if (flow === undefined) {
      this.#makeRoom(from.address);
      flow = this.#startFlow(source, { address: from.address, port: from.port });
    } else {
      this.#flowBySource.delete(source);
      this.#flowBySource.set(source, flow);
    }
    flow.idle.refresh();
    flow.replyBudget += this.#options.replyRatio * datagram.length;
    const { writer } = flow.carrier;
    if (writer === undefined) {
      if (flow.queued.length >= OPENING_QUEUE_DATAGRAMS || flow.queuedBytes + datagram.length > OPENING_QUEUE_BYTES) return this.#drop('queueFull');
      flow.queued.push(datagram);
      flow.queuedBytes += datagram.length;
      return;
    }
    if (!writer.add(flow.number, datagram)) this.#drop('backpressure');
  };

  /**
   * Before a flow from `address` opens: closes that address's least recently
   * active flow if it holds its share, else the service's least recently
   * active one if the table is full.
   */
  #makeRoom(address: string): void {
    const ownFlows = this.#flowCountByAddress.get(address) ?? 0;
    const full = this.#flowBySource.size >= this.#options.maxFlows;
    if (ownFlows < this.#options.maxFlowsPerSource && !full) return;
    for (const flow of this.#flowBySource.values()) {
      if (ownFlows >= this.#options.maxFlowsPerSource && flow.user.address !== address) continue;
      this.stats.udp.flowsEvicted++;
      this.#endFlow(flow, true);
      return;
    }
  }

  #startFlow(source: string, user: Endpoint): UdpFlow {
    const carrier = this.#carrierForNewFlow();
    let number = this.#lastFlowNumber;
    do number = number === MAX_FLOW_NUMBER ? 1 : number + 1;
    while (carrier.flowByNumber.has(number));
    this.#lastFlowNumber = number;
    const budget = this.#options.replyRatio === 0 ? Infinity : REPLY_ALLOWANCE_BYTES;
    const flow: UdpFlow = new UdpFlow(source, user, number, carrier, budget, this.#options.idleTimeout, () => this.#endFlow(flow, true));
    carrier.flowByNumber.set(number, flow);
    if (carrier.unused !== undefined) {
      clearTimeout(carrier.unused);
      carrier.unused = undefined;
    }
    this.#flowBySource.set(source, flow);
    this.#flowCountByAddress.set(user.address, (this.#flowCountByAddress.get(user.address) ?? 0) + 1);
    this.stats.accepted++;
    this.stats.open++;
    return flow;
  }

  /** The carrier with the fewest flows, or a new one while those have their fill and there is room for more. */
  #carrierForNewFlow(): Carrier {
    let least: Carrier | undefined;
    for (const carrier of this.#carriers) if (least === undefined || carrier.flowByNumber.size < least.flowByNumber.size) least = carrier;
    if (least !== undefined && (least.flowByNumber.size < FLOWS_PER_CARRIER || this.#carriers.size >= MAX_CARRIERS)) return least;
    const carrier = new Carrier();
    this.#carriers.add(carrier);
    this.stats.udp.carriers++;
    // An opener that fails is a carrier without a connection, never an unhandled rejection.
    void this.#openCarrier(this, this.#options.maxDatagram, carrier.ending.signal)
      .catch((error: unknown) => {
        this.#onError(error as Error);
        return undefined;
      })
      .then((conn) => this.#opened(carrier, conn));
    return carrier;
  }

  #opened(carrier: Carrier, conn: PooledConn | undefined): void {
    if (conn === undefined || carrier.ended) {
      conn?.destroy();
      for (const flow of carrier.flowByNumber.values()) {
        this.stats.udp.dropped.noConnection += flow.queued.length;
        this.stats.failed++;
      }
      this.#endCarrier(carrier);
      return;
    }
    carrier.conn = conn;
    const writer = new FlowWriter(conn);
    carrier.writer = writer;
    conn.on('error', () => {});
    conn.once('close', () => this.#endCarrier(carrier));
    readDatagrams(conn, this.#options.maxDatagram, (frames) => this.#fromAgent(carrier, frames), this.#onError);
    for (const flow of carrier.flowByNumber.values()) {
      for (const datagram of flow.queued) if (!writer.add(flow.number, datagram)) this.#drop('backpressure');
      flow.queued = [];
      flow.queuedBytes = 0;
    }
    if (carrier.flowByNumber.size === 0) this.#markUnused(carrier);
  }

  #fromAgent(carrier: Carrier, frames: ReadFrame[]): void {
    for (const { flow: number, datagram } of frames) {
      // Unknown: a flow that ended here a moment ago (its last replies, or the agent's own end of it).
      const flow = carrier.flowByNumber.get(number);
      if (flow === undefined) continue;
      // The agent closed the flow's socket. The end goes back all the same: a datagram of
      // ours already on its way there opened a new socket for the number, which it closes.
      if (datagram === undefined) this.#endFlow(flow, true);
      else {
        flow.idle.refresh();
        this.#reply(datagram, flow);
      }
    }
  }

  #reply(datagram: Buffer, flow: UdpFlow): void {
    if (!this.#listening) return;
    if (datagram.length > flow.replyBudget) return this.#drop('replyBudget');
    flow.replyBudget -= datagram.length;
    const { udp } = this.stats;
    udp.datagrams.toUsers++;
    udp.bytes.toUsers += datagram.length;
    this.#socket.send(datagram, flow.user.port, flow.user.address, (error) => {
      if (error) this.#drop('sendFailed');
    });
  }

  /** Forgets `flow`, and with `tellAgent` has the agent close its socket. */
  #endFlow(flow: UdpFlow, tellAgent: boolean): void {
    if (flow.ended) return;
    flow.ended = true;
    clearTimeout(flow.idle);
    this.#flowBySource.delete(flow.source);
    const flowsOfAddress = (this.#flowCountByAddress.get(flow.user.address) ?? 1) - 1;
    if (flowsOfAddress === 0) this.#flowCountByAddress.delete(flow.user.address);
    else this.#flowCountByAddress.set(flow.user.address, flowsOfAddress);
    this.stats.open--;
    this.stats.finished++;
    const { carrier } = flow;
    carrier.flowByNumber.delete(flow.number);
    if (carrier.ended) return;
    if (tellAgent) carrier.writer?.end(flow.number);
    if (carrier.flowByNumber.size === 0 && carrier.writer !== undefined) this.#markUnused(carrier);
  }

  /** A carrier without flows stays for the idle timeout, for the next user, and then goes back. */
  #markUnused(carrier: Carrier): void {
    carrier.unused ??= setTimeout(() => this.#endCarrier(carrier), this.#options.idleTimeout).unref();
  }

  /** Ends a carrier and every flow on it (their users' next datagrams start new flows). */
  #endCarrier(carrier: Carrier): void {
    if (carrier.ended) return;
    carrier.ended = true;
    clearTimeout(carrier.unused);
    carrier.ending.abort();
    this.#carriers.delete(carrier);
    this.stats.udp.carriers--;
    for (const flow of carrier.flowByNumber.values()) this.#endFlow(flow, false);
    carrier.writer?.discard();
    carrier.conn?.destroy();
  }
}
