import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { DatagramBatch, readDatagrams, type Endpoint, type PoolConn } from '@pool/shared/internal';
import type { ServiceStats } from './public-service.js';
import type { ServiceConfig } from './relay-config.js';

/** How a UDP service treats its flows (a flow: the datagrams of one user address and port). */
export interface UdpOptions {
  /** A flow with no datagram either way for this long is closed on both ends and its pooled connection released, in ms. Default: 60000. */
  idleTimeout?: number;
  /**
   * Most flows open at once. A datagram that would open one more closes the
   * least recently active flow to make room (counted in `flowsEvicted`), so a
   * spray of sources cannot lock new users out. Default: 1024.
   */
  maxFlows?: number;
  /**
   * Most flows of one source address (any port); its next one replaces its
   * own least recently active flow. Default: a quarter of `maxFlows`.
   */
  maxFlowsPerSource?: number;
  /**
   * Reflection budget: a flow sends its user at most this many times the
   * bytes it received from that address, plus 4 KiB, so a datagram with a
   * forged source cannot turn the service into an amplifier (the excess is
   * dropped, `replyBudget`). 0 switches the budget off (a service that
   * streams far more than it hears, such as a game state feed). Default: 10.
   */
  replyRatio?: number;
  /** The largest datagram carried, either way, in bytes; a larger one is dropped (and counted), never split. Default: 65507. */
  maxDatagram?: number;
}

const UDP_DEFAULTS = { idleTimeout: 60_000, maxFlows: 1_024, maxDatagram: 65_507, replyRatio: 10 } as const;
/** What a flow may send its user before it has heard anything back beyond its first datagram: one reply or a few. */
export const REPLY_ALLOWANCE_BYTES = 4 * 1024;

/** Why a datagram was not delivered. */
export type UdpDropReason = 'oversized' | 'queueFull' | 'backpressure' | 'noConnection' | 'sendFailed' | 'replyBudget';

/** A UDP service's datagrams since the relay started. */
export interface UdpStats {
  /** Datagrams and bytes from users (into the tunnel) and to users (out of it). */
  datagrams: { fromUsers: number; toUsers: number };
  bytes: { fromUsers: number; toUsers: number };
  /** Datagrams dropped, by reason. */
  dropped: Record<UdpDropReason, number>;
  /** Flows closed to make room for a new one: the table was full, or their address held its share. */
  flowsEvicted: number;
}

/** Gets a pooled connection the agent has claimed for a new flow, or undefined (counted by the caller's stats). */
export type FlowOpener = (service: UdpService, source: Endpoint, maxDatagram: number, signal: AbortSignal) => Promise<PoolConn | undefined>;

/**
 * What a flow keeps while its pooled connection is being claimed: at most 64
 * datagrams and 64 KiB, so that many new sources sending large datagrams at
 * once hold at most `maxFlows` × 64 KiB. More are dropped.
 */
const OPENING_QUEUE_DATAGRAMS = 64;
const OPENING_QUEUE_BYTES = 64 * 1024;
/** Socket buffers asked of the kernel for the public port (it caps them at its own maximum). */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

/** One user address and port on a UDP service, and the pooled connection that carries its datagrams. */
class UdpFlow {
  /** The user's address (without the port): what its share of the table is counted by. */
  readonly address: string;
  /** Bytes it may still send its user (the reflection budget); Infinity when the service has none. */
  replyBudget: number;
  conn: PoolConn | undefined;
  /** The datagrams for `conn` of this turn of the event loop, written together. */
  batch: DatagramBatch | undefined;
  queued: Buffer[] = [];
  queuedBytes = 0;
  closed = false;
  readonly closing = new AbortController();
  readonly idle: NodeJS.Timeout;

  constructor(address: string, replyBudget: number, idleTimeoutMs: number, onIdle: () => void) {
    this.address = address;
    this.replyBudget = replyBudget;
    this.idle = setTimeout(onIdle, idleTimeoutMs).unref();
  }
}

/**
 * A UDP service's public port: each user address and port is a flow, carried
 * on a pooled connection of its own that the agent claims for it (a `flow`
 * order), datagrams framed with their length.
 */
export class UdpService {
  readonly config: ServiceConfig;
  readonly stats: ServiceStats & { udp: UdpStats };
  readonly #options: Required<UdpOptions>;
  readonly #socket: UdpSocket;
  /** Flows by `address|port`, least recently active first (a flow moves to the end on each datagram). */
  readonly #flowBySource = new Map<string, UdpFlow>();
  readonly #flowCountByAddress = new Map<string, number>();
  readonly #openFlow: FlowOpener;
  readonly #onError: (error: Error) => void;
  #listening = false;
  #closed = false;

  constructor(config: ServiceConfig, openFlow: FlowOpener, onError: (error: Error) => void) {
    this.config = config;
    const maxFlows = config.udp?.maxFlows ?? UDP_DEFAULTS.maxFlows;
    this.#options = { ...UDP_DEFAULTS, maxFlowsPerSource: Math.max(1, Math.floor(maxFlows / 4)), ...config.udp };
    this.#openFlow = openFlow;
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

  /** Stops listening and ends every flow: on UDP the public port is the users' only connection. */
  close(): void {
    this.#listening = false;
    if (!this.#closed) {
      // Also a socket that never bound (its bind failed, or start() never ran): it holds a handle all the same.
      this.#closed = true;
      this.#socket.close();
    }
    for (const [source, flow] of this.#flowBySource) this.#end(source, flow);
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
      flow = this.#start(source, { address: from.address, port: from.port });
    } else {
      this.#flowBySource.delete(source);
      this.#flowBySource.set(source, flow);
    }
    flow.idle.refresh();
    flow.replyBudget += this.#options.replyRatio * datagram.length;
    if (flow.batch === undefined) {
      if (flow.queued.length >= OPENING_QUEUE_DATAGRAMS || flow.queuedBytes + datagram.length > OPENING_QUEUE_BYTES) return this.#drop('queueFull');
      flow.queued.push(datagram);
      flow.queuedBytes += datagram.length;
      return;
    }
    this.#forward(flow.batch, datagram);
  };

  #forward(batch: DatagramBatch, datagram: Buffer): void {
    if (!batch.add(datagram)) this.#drop('backpressure');
  }

  /**
   * Before a flow from `address` opens: closes that address's least recently
   * active flow if it holds its share, else the service's least recently
   * active one if the table is full.
   */
  #makeRoom(address: string): void {
    const ownFlows = this.#flowCountByAddress.get(address) ?? 0;
    const full = this.#flowBySource.size >= this.#options.maxFlows;
    if (ownFlows < this.#options.maxFlowsPerSource && !full) return;
    for (const [source, flow] of this.#flowBySource) {
      if (ownFlows >= this.#options.maxFlowsPerSource && flow.address !== address) continue;
      this.stats.udp.flowsEvicted++;
      this.#end(source, flow);
      return;
    }
  }

  #start(source: string, endpoint: Endpoint): UdpFlow {
    const budget = this.#options.replyRatio === 0 ? Infinity : REPLY_ALLOWANCE_BYTES;
    const flow = new UdpFlow(endpoint.address, budget, this.#options.idleTimeout, () => this.#end(source, flow));
    this.#flowBySource.set(source, flow);
    this.#flowCountByAddress.set(endpoint.address, (this.#flowCountByAddress.get(endpoint.address) ?? 0) + 1);
    this.stats.accepted++;
    this.stats.open++;
    // An opener that fails is a flow without a connection, never an unhandled rejection.
    void this.#openFlow(this, endpoint, this.#options.maxDatagram, flow.closing.signal)
      .catch((error: unknown) => {
        this.#onError(error as Error);
        return undefined;
      })
      .then((conn) => this.#opened(source, flow, endpoint, conn));
    return flow;
  }

  #opened(source: string, flow: UdpFlow, user: Endpoint, conn: PoolConn | undefined): void {
    if (conn === undefined || flow.closed) {
      conn?.destroy();
      this.stats.udp.dropped.noConnection += flow.queued.length;
      if (!flow.closed) this.stats.failed++;
      this.#end(source, flow);
      return;
    }
    flow.conn = conn;
    const batch = new DatagramBatch(conn);
    flow.batch = batch;
    conn.on('error', () => {});
    conn.once('close', () => this.#end(source, flow));
    readDatagrams(
      conn,
      this.#options.maxDatagram,
      (datagrams) => {
        if (datagrams.length > 0) flow.idle.refresh();
        for (const datagram of datagrams) this.#reply(datagram, user, flow);
      },
      this.#onError,
    );
    for (const datagram of flow.queued.splice(0)) this.#forward(batch, datagram);
  }

  #reply(datagram: Buffer, user: Endpoint, flow: UdpFlow): void {
    if (!this.#listening) return;
    if (datagram.length > flow.replyBudget) return this.#drop('replyBudget');
    flow.replyBudget -= datagram.length;
    const { udp } = this.stats;
    udp.datagrams.toUsers++;
    udp.bytes.toUsers += datagram.length;
    this.#socket.send(datagram, user.port, user.address, (error) => {
      if (error) this.#drop('sendFailed');
    });
  }

  #end(source: string, flow: UdpFlow): void {
    if (flow.closed) return;
    flow.closed = true;
    clearTimeout(flow.idle);
    flow.closing.abort();
    this.#flowBySource.delete(source);
    const flowsOfAddress = (this.#flowCountByAddress.get(flow.address) ?? 1) - 1;
    if (flowsOfAddress === 0) this.#flowCountByAddress.delete(flow.address);
    else this.#flowCountByAddress.set(flow.address, flowsOfAddress);
    this.stats.open--;
    this.stats.finished++;
    flow.batch?.discard();
    flow.conn?.destroy();
  }
}
